/* y = x @ W^T with int8 activations and VNNI integer dot products: the many-row path
 * (prompt prefill, a continuous batch of decode rows). Included by qmatmul.c.
 *
 * Why: a float32 matmul on 2 cores tops out near 200 GFLOP/s; `vpdpbusd` does 64
 * multiply-adds of bytes per instruction, about 4x the float rate. llama.cpp does the same:
 * it rounds activations to int8 per block of 32 (its Q8_0/Q8_1) before its dot products.
 *
 * Weights are repacked once (giraffe_repack_i8, via blocks.h's sub_block_ints) from any 32-weight sub-block with one
 * scale into an affine integer form  w = d * (q + offset) + m,  q unsigned 0..255:
 *   Q8_0: q = q8 + 128, offset -128      Q4_0: offset -8      Q5_0: offset -16
 *   Q4_1/Q5_1: m = min                   Q4_K/Q5_K: d = d*sc_j, m = -dmin*m_j
 *   Q6_K: offset -32, and two scales d*sc per 32 weights (its sub-blocks are 16 wide), no min
 * The layout serves the instruction: tiles of 16 output rows; per tile and block, 8 groups
 * of 64 bytes, group g holding weights 4g..4g+3 of each of the 16 rows, so one
 * `vpdpbusd` with 4 activation bytes broadcast adds 4 products into each row's lane.
 * Per tile and block also 16 scales d, then, for types with a min, 16 mins m; for Q6_K ("split" scales)
 * 16 scales of weights 0-15, then 16 of weights 16-31, whose integer sums are kept apart
 * (groups 0-3, then 4-7) and scaled each by its own. The scales are floats, or fp16
 * ("half") where every value is one exactly (the 32-weight types' d and m are the file's
 * own fp16 numbers; a K-quant's d * sc is not): 2 bytes a scale fewer to read per token. Types whose q fit 4 bits
 * (Q4_0, Q4_1, Q4_K) can stay two a byte instead ("nibbles": groups 2p and 2p+1 in the
 * low and high halves of the same 64 bytes), half the bytes that a bandwidth-bound
 * decode step reads, for two more instructions per 64 bytes. Types whose q fit 5 bits
 * (Q5_0, Q5_1, Q5_K) keep the nibbles plus, per tile and block, 8 x 64 bits of fifth bits
 * (bit i of word g: the weight in byte i of group g), added back with one masked add:
 * 320 bytes instead of 512. `form` names the three layouts: 0 bytes, 1 nibbles, 2 fives.
 *
 * Activations: per row and block, da = max|x| / 127 and a = round-to-nearest-even(x / da)
 * in -127..127, and isum = sum(a). Per block the integer part is exact:
 *   sum_j w_j x_j  ~  d * da * (q.a + offset * isum) + m * da * isum
 * so results equal "round x to int8 per block, then the float reference" to rounding.
 */
#pragma once
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define HAVE_GEMM_I8 1
#include <immintrin.h>

enum { I8_TILE = 16, I8_GROUP_BYTES = 64, I8_BLOCK_BYTES = 512, I8_NIBBLE_BYTES = 256 };

/* Bytes of one tile's block in a form: bytes, nibbles, nibbles + 64 bytes of fifth bits. */
static inline int i8_block_bytes(int form) { return form == 0 ? 512 : form == 1 ? 256 : 320; }

int giraffe_i8_supported(int kind) { return kind >= 0 && kind < N_KINDS; }

/* Types whose integers fit 4 bits, so the repacked weights can stay two a byte. */
int giraffe_i8_nibbles(int kind) { return giraffe_i8_supported(kind) ? I8_NIBBLES[kind] : 0; }

/* Floats of scales per tile and block: 16 d, then 16 m (or Q6_K's second scales) where the
 * type has them; types with neither keep the 16 d alone. */
static inline int i8_scales(int kind) { return I8_HAS_MIN[kind] || I8_SPLIT[kind] ? 2 * I8_TILE : I8_TILE; }

/* A form a type may be repacked in: bytes always, or its own packed form. */
static inline int form_ok(int kind, int form) { return form == 0 || form == giraffe_i8_nibbles(kind); }

/* One scale of the int8 form: a float, or its fp16 (exact: see the top). */
static inline void put_scale(uint8_t *dm, int64_t i, float v, int half) {
    if (half) ((uint16_t *)dm)[i] = _cvtss_sh(v, 0);
    else ((float *)dm)[i] = v;
}
static inline float get_scale(const uint8_t *dm, int64_t i, int half) {
    return half ? _cvtsh_ss(((const uint16_t *)dm)[i]) : ((const float *)dm)[i];
}
/* 16 scales from i on, as floats. */
static inline __m512 load_scales(const uint8_t *dm, int64_t i, int half) {
    return half ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(dm + 2 * i))) : _mm512_loadu_ps(dm + 4 * i);
}

/* n_out rows of packed blocks -> q (tiles * n_blocks * i8_block_bytes(form) bytes) and dm
 * (tiles * n_blocks * i8_scales(kind) scales, floats or fp16 when `half`), tiles =
 * ceil(n_out / 16); rows past n_out are zero. half is refused for K-quants (their scales
 * are products no fp16 holds). Returns 0 or -1. */
int giraffe_repack_i8(const uint8_t *w, int kind, int64_t n_out, int64_t n_in, uint8_t *q, uint8_t *dm,
                      int nibbles, int half, int n_threads) {
    if (!kind_ok(kind, n_in) || !giraffe_i8_supported(kind) || n_in % 32) return -1;
    if (!form_ok(kind, nibbles) || (half && BLOCK_WEIGHTS[kind] != 32)) return -1;
    const int block_bytes = i8_block_bytes(nibbles), scales = i8_scales(kind), es = half ? 2 : 4;
    const int64_t n_blocks = n_in / 32, tiles = (n_out + I8_TILE - 1) / I8_TILE;
    const int64_t rb = row_bytes_of(kind, n_in);
    #pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int64_t t = 0; t < tiles; t++) {
        for (int64_t b = 0; b < n_blocks; b++) {
            uint8_t *qt = q + (t * n_blocks + b) * block_bytes;
            uint8_t *dt = dm + (t * n_blocks + b) * scales * es;
            memset(qt, 0, block_bytes);
            memset(dt, 0, (size_t)es * scales);
            for (int c = 0; c < I8_TILE; c++) {
                const int64_t o = t * I8_TILE + c;
                if (o >= n_out) continue;
                uint8_t v[32];
                float d[2], m;
                sub_block_ints(w + o * rb, kind, b, v, d, &m);
                put_scale(dt, c, d[0], half);
                if (scales > I8_TILE) put_scale(dt, I8_TILE + c, I8_SPLIT[kind] ? d[1] : m, half);
                if (!nibbles)
                    for (int l = 0; l < 32; l++) qt[(l / 4) * I8_GROUP_BYTES + 4 * c + l % 4] = v[l];
                else /* groups 2p and 2p+1 share 64 bytes: low and high nibbles */
                    for (int l = 0; l < 32; l++) {
                        qt[(l / 8) * I8_GROUP_BYTES + 4 * c + l % 4] |= (uint8_t)((v[l] & 0x0F) << (l % 8 < 4 ? 0 : 4));
                        if (nibbles == 2 && v[l] & 0x10) { /* fifth bit: word l/4, bit of byte 4c + l%4 */
                            uint8_t *word = qt + I8_NIBBLE_BYTES + 8 * (l / 4);
                            const int bit = 4 * c + l % 4;
                            word[bit / 8] |= (uint8_t)(1u << (bit % 8));
                        }
                    }
            }
        }
    }
    return 0;
}

/* Rows of x -> int8 a, scale da and integer sum isum per block of 32 (isum_lo: of its
 * first 16, for types with a scale per 16 weights). */
static void quantize_activations(const float *x, int64_t m, int64_t n_in, int8_t *a, float *da, int32_t *isum,
                                 int32_t *isum_lo, int n_threads) {
    const int64_t n_blocks = n_in / 32;
    #pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int64_t r = 0; r < m; r++) {
        for (int64_t b = 0; b < n_blocks; b++) {
            const float *v = x + r * n_in + 32 * b;
            const __m512 lo = _mm512_loadu_ps(v), hi = _mm512_loadu_ps(v + 16);
            const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(lo), _mm512_abs_ps(hi)));
            const float d = amax / 127.0f, inv = d != 0.0f ? 1.0f / d : 0.0f;
            const __m512 s = _mm512_set1_ps(inv);
            /* cvtps rounds to nearest even (the default MXCSR mode), as torch.round */
            const __m512i qlo = _mm512_cvtps_epi32(_mm512_mul_ps(lo, s));
            const __m512i qhi = _mm512_cvtps_epi32(_mm512_mul_ps(hi, s));
            int8_t *out = a + r * n_in + 32 * b;
            _mm_storeu_si128((__m128i *)out, _mm512_cvtepi32_epi8(qlo));
            _mm_storeu_si128((__m128i *)(out + 16), _mm512_cvtepi32_epi8(qhi));
            da[r * n_blocks + b] = d;
            isum_lo[r * n_blocks + b] = _mm512_reduce_add_epi32(qlo);
            isum[r * n_blocks + b] = isum_lo[r * n_blocks + b] + _mm512_reduce_add_epi32(qhi);
        }
    }
}

#define I8_ROWS 4 /* input rows per micro-kernel call: 4 rows x 2 tiles = 8 int + 8 float accumulators */

/* y[r][0..31] for up to I8_ROWS rows against tiles t0 (and t1 unless t1 == NULL).
 * `split`: each 16 weights of a block have their own scale (Q6_K): the integer sums of
 * groups 0-3 and 4-7 are scaled apart. */
static inline __attribute__((always_inline)) void gemm_i8_block(
    const uint8_t *q0, const uint8_t *q1, const uint8_t *dm0, const uint8_t *dm1, int64_t n_blocks, const int8_t *a,
    int64_t n_in, const float *da, const int32_t *isum, const int32_t *isum_lo, int rows, int offset, int has_min,
    float *y, int64_t y_stride, int cols0, int cols1, const int nibbles, const int split, const int is_half) {
    const int block_bytes = i8_block_bytes(nibbles), scales = has_min || split ? 2 * I8_TILE : I8_TILE;
    const __m512i low4 = _mm512_set1_epi8(0x0F), fifth = _mm512_set1_epi8(0x10);
    __m512 acc0[I8_ROWS], acc1[I8_ROWS];
    for (int r = 0; r < I8_ROWS; r++) acc0[r] = acc1[r] = _mm512_setzero_ps();
    for (int64_t b = 0; b < n_blocks; b++) {
        const uint8_t *w0 = q0 + b * block_bytes, *w1 = q1 ? q1 + b * block_bytes : w0;
        const int8_t *ab = a + 32 * b;
        const int64_t s0 = b * scales; /* this block's first scale, in each tile's dm */
        const uint8_t *dm1b = dm1 ? dm1 : dm0;
        #pragma GCC unroll 2
        for (int half = 0; half < 2; half++) {
            if (half && !split) break; /* constant trip counts, so the loops unroll */
            __m512i i0[I8_ROWS], i1[I8_ROWS];
            #pragma GCC unroll 8
            for (int r = 0; r < I8_ROWS; r++) {
                const int64_t at = r * n_blocks + b;
                const int32_t sum = r >= rows ? 0 : !split ? isum[at] : half ? isum[at] - isum_lo[at] : isum_lo[at];
                i0[r] = i1[r] = _mm512_set1_epi32(offset * sum);
            }
            #pragma GCC unroll 8
            for (int g = 0; g < 8; g++) {
                if (split && g / 4 != half) continue;
                __m512i v0, v1;
                if (!nibbles) {
                    v0 = _mm512_loadu_si512(w0 + g * I8_GROUP_BYTES);
                    v1 = _mm512_loadu_si512(w1 + g * I8_GROUP_BYTES);
                } else { /* even g: the low nibbles of 64 bytes, odd g: their high nibbles */
                    v0 = _mm512_loadu_si512(w0 + (g / 2) * I8_GROUP_BYTES);
                    v1 = _mm512_loadu_si512(w1 + (g / 2) * I8_GROUP_BYTES);
                    if (g % 2) v0 = _mm512_srli_epi16(v0, 4), v1 = _mm512_srli_epi16(v1, 4);
                    v0 = _mm512_and_si512(v0, low4), v1 = _mm512_and_si512(v1, low4);
                    if (nibbles == 2) { /* OR in the fifth bits: 64 mask bits per group */
                        uint64_t b0, b1;
                        memcpy(&b0, w0 + I8_NIBBLE_BYTES + 8 * g, 8);
                        memcpy(&b1, w1 + I8_NIBBLE_BYTES + 8 * g, 8);
                        v0 = _mm512_mask_add_epi8(v0, _cvtu64_mask64(b0), v0, fifth);
                        v1 = _mm512_mask_add_epi8(v1, _cvtu64_mask64(b1), v1, fifth);
                    }
                }
                #pragma GCC unroll 8
                for (int r = 0; r < I8_ROWS; r++) {
                    if (r < rows) {
                        int32_t four;
                        memcpy(&four, ab + r * n_in + 4 * g, 4);
                        const __m512i x4 = _mm512_set1_epi32(four);
                        i0[r] = _mm512_dpbusd_epi32(i0[r], v0, x4);
                        i1[r] = _mm512_dpbusd_epi32(i1[r], v1, x4);
                    }
                }
            }
            const __m512 d0 = load_scales(dm0, s0 + half * I8_TILE, is_half);
            const __m512 d1 = load_scales(dm1b, s0 + half * I8_TILE, is_half);
            #pragma GCC unroll 8
            for (int r = 0; r < I8_ROWS; r++) {
                if (r < rows) {
                    const __m512 sa = _mm512_set1_ps(da[r * n_blocks + b]);
                    acc0[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i0[r]), _mm512_mul_ps(d0, sa), acc0[r]);
                    acc1[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i1[r]), _mm512_mul_ps(d1, sa), acc1[r]);
                }
            }
        }
        if (has_min) {
            const __m512 m0 = load_scales(dm0, s0 + I8_TILE, is_half), m1 = load_scales(dm1b, s0 + I8_TILE, is_half);
            #pragma GCC unroll 8
            for (int r = 0; r < I8_ROWS; r++) {
                if (r < rows) {
                    const __m512 sm = _mm512_set1_ps(da[r * n_blocks + b] * (float)isum[r * n_blocks + b]);
                    acc0[r] = _mm512_fmadd_ps(m0, sm, acc0[r]);
                    acc1[r] = _mm512_fmadd_ps(m1, sm, acc1[r]);
                }
            }
        }
    }
    const __mmask16 k0 = (__mmask16)((1u << cols0) - 1), k1 = (__mmask16)((1u << cols1) - 1);
    for (int r = 0; r < rows; r++) {
        _mm512_mask_storeu_ps(y + r * y_stride, k0, acc0[r]);
        if (q1) _mm512_mask_storeu_ps(y + r * y_stride + I8_TILE, k1, acc1[r]);
    }
}

/* Activations rounded to int8 once, for every product of the same input (q|k|v parts). */
typedef struct { int8_t *a; float *da; int32_t *isum, *isum_lo; int64_t m, n_in; } i8_acts;

static int i8_acts_make(const float *x, int64_t m, int64_t n_in, int n_threads, i8_acts *s) {
    const int64_t n_blocks = n_in / 32;
    s->m = m, s->n_in = n_in;
    s->a = (int8_t *)malloc((size_t)(m * n_in));
    s->da = (float *)malloc(sizeof(float) * (size_t)(m * n_blocks));
    s->isum = (int32_t *)malloc(sizeof(int32_t) * (size_t)(2 * m * n_blocks));
    if (!s->a || !s->da || !s->isum) { free(s->a); free(s->da); free(s->isum); return -1; }
    s->isum_lo = s->isum + m * n_blocks;
    quantize_activations(x, m, n_in, s->a, s->da, s->isum, s->isum_lo, m > 1 ? n_threads : 1);
    return 0;
}

static void i8_acts_free(i8_acts *s) { free(s->a); free(s->da); free(s->isum); }

/* One weight (tiles of giraffe_repack_i8) against the rounded activations. */
typedef struct { const uint8_t *q; const uint8_t *dm; int kind, form, half; int64_t n_out; float *y; } i8_part;

static inline int64_t i8_pairs(const i8_part *w) { return ((w->n_out + I8_TILE - 1) / I8_TILE + 1) / 2; }

/* Columns of tile pair p of one weight, for all rows: each thread owns whole pairs of tiles,
 * whose weights (16 KB per 512 inputs) stay in L1/L2 while every row chunk streams past. */
static void gemm_i8_pair(const i8_part *w, const i8_acts *s, int64_t p, int64_t y_stride) {
    const int64_t n_in = s->n_in, m = s->m, n_blocks = n_in / 32, tiles = (w->n_out + I8_TILE - 1) / I8_TILE;
    const int kind = w->kind, nibbles = w->form, offset = i8_offset(kind), has_min = I8_HAS_MIN[kind];
    const int64_t tile_dm = n_blocks * i8_scales(kind) * (w->half ? 2 : 4), tile_q = n_blocks * i8_block_bytes(nibbles);
    const int64_t t0 = 2 * p, col = t0 * I8_TILE;
    const int has1 = t0 + 1 < tiles;
    const int64_t left0 = w->n_out - col, left1 = left0 - I8_TILE;
    const int cols0 = left0 < I8_TILE ? (int)left0 : I8_TILE;
    const int cols1 = !has1 ? 0 : left1 < I8_TILE ? (int)left1 : I8_TILE;
    for (int64_t r0 = 0; r0 < m; r0 += I8_ROWS) {
        const int rows = m - r0 < I8_ROWS ? (int)(m - r0) : I8_ROWS;
        const uint8_t *q0 = w->q + t0 * tile_q, *q1 = has1 ? w->q + (t0 + 1) * tile_q : NULL;
        const uint8_t *dm0 = w->dm + t0 * tile_dm, *dm1 = has1 ? w->dm + (t0 + 1) * tile_dm : NULL;
        const int8_t *ar = s->a + r0 * n_in;
        float *yr = w->y + r0 * y_stride + col;
        const float *dar = s->da + r0 * n_blocks;
        const int32_t *isr = s->isum + r0 * n_blocks, *islo = s->isum_lo + r0 * n_blocks;
        /* calls with constant flags: each compiles to its own loop */
#define I8_BLOCK(NIB, MIN, SPLIT, HALF)                                                                          \
    gemm_i8_block(q0, q1, dm0, dm1, n_blocks, ar, n_in, dar, isr, islo, rows, offset, MIN, yr, y_stride, cols0, \
                  cols1, NIB, SPLIT, HALF)
        if (nibbles == 1) {
            if (w->half) I8_BLOCK(1, has_min, 0, 1); else I8_BLOCK(1, has_min, 0, 0);
        } else if (nibbles == 2) {
            if (w->half) I8_BLOCK(2, has_min, 0, 1); else I8_BLOCK(2, has_min, 0, 0);
        } else if (I8_SPLIT[kind]) {
            I8_BLOCK(0, 0, 1, 0); /* Q6_K: a K-quant, float scales */
        } else {
            if (w->half) I8_BLOCK(0, has_min, 0, 1); else I8_BLOCK(0, has_min, 0, 0);
        }
#undef I8_BLOCK
    }
}

/* Several weights of the same input (q|k|v segments) in one parallel region: one fork, no
 * barrier between the parts (each part's pairs are shared out, `nowait`). */
static void gemm_i8_parts(const i8_part *parts, int n_parts, const i8_acts *s, int64_t y_stride, int n_threads) {
    #pragma omp parallel num_threads(n_threads)
    for (int k = 0; k < n_parts; k++) {
        const int64_t pairs = i8_pairs(&parts[k]);
        #pragma omp for schedule(static) nowait
        for (int64_t p = 0; p < pairs; p++) gemm_i8_pair(&parts[k], s, p, y_stride);
    }
}

/* y (m rows, y_stride apart; columns 0..n_out-1) = x (m, n_in) @ W^T for W repacked by
 * giraffe_repack_i8 (`half`: its scales are fp16). `kind` gives the offset and whether
 * mins are there. Returns 0 or -1. */
int giraffe_gemm_i8(const uint8_t *q, const uint8_t *dm, int kind, int nibbles, int half, int64_t n_out,
                    int64_t n_in, const float *x, int64_t m, float *y, int64_t y_stride, int n_threads) {
    if (!giraffe_i8_supported(kind) || n_in % 32 || m < 1) return -1;
    if (!form_ok(kind, nibbles) || (half && BLOCK_WEIGHTS[kind] != 32)) return -1;
    i8_acts s;
    if (i8_acts_make(x, m, n_in, n_threads, &s) != 0) return -1;
    const i8_part w = {q, dm, kind, nibbles, half, n_out, y};
    gemm_i8_parts(&w, 1, &s, y_stride, n_threads);
    i8_acts_free(&s);
    return 0;
}

/* The weights back from the int8 form, as floats: rows `rows[0..n_rows-1]` (all n_out rows
 * in order when rows is NULL) into out (n_rows, n_in). w = d * (q + offset) + m, the same
 * numbers as ggml's dequantize of the blocks it was repacked from (sub_block_ints). This
 * lets the int8 form be the only resident copy: float paths and lookups read it. */
int giraffe_dequantize_i8(const uint8_t *q, const uint8_t *dm, int kind, int nibbles, int half, int64_t n_out,
                          int64_t n_in, const int64_t *rows, int64_t n_rows, float *out, int n_threads) {
    if (!giraffe_i8_supported(kind) || n_in % 32 || !form_ok(kind, nibbles)) return -1;
    if (half && BLOCK_WEIGHTS[kind] != 32) return -1;
    if (!rows) n_rows = n_out;
    for (int64_t i = 0; rows && i < n_rows; i++)
        if (rows[i] < 0 || rows[i] >= n_out) return -1;
    const int block_bytes = i8_block_bytes(nibbles);
    const int64_t n_blocks = n_in / 32;
    const int offset = I8_OFFSET[kind], has_min = I8_HAS_MIN[kind], split = I8_SPLIT[kind];
    #pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int64_t i = 0; i < n_rows; i++) {
        const int64_t o = rows ? rows[i] : i, t = o / I8_TILE;
        const int c = (int)(o % I8_TILE);
        for (int64_t b = 0; b < n_blocks; b++) {
            const uint8_t *qt = q + (t * n_blocks + b) * block_bytes;
            const uint8_t *dt = dm + (t * n_blocks + b) * i8_scales(kind) * (half ? 2 : 4);
            float *y = out + i * n_in + 32 * b;
            for (int l = 0; l < 32; l++) {
                int v;
                if (nibbles) v = (qt[(l / 8) * I8_GROUP_BYTES + 4 * c + l % 4] >> (l % 8 < 4 ? 0 : 4)) & 0x0F;
                else v = qt[(l / 4) * I8_GROUP_BYTES + 4 * c + l % 4];
                if (nibbles == 2) {
                    const int bit = 4 * c + l % 4;
                    v |= ((qt[I8_NIBBLE_BYTES + 8 * (l / 4) + bit / 8] >> (bit % 8)) & 1) << 4;
                }
                const float d = get_scale(dt, split && l >= 16 ? I8_TILE + c : c, half);
                y[l] = d * (float)(v + offset);
                if (has_min) y[l] += get_scale(dt, I8_TILE + c, half);
            }
        }
    }
    return 0;
}
#else
int giraffe_i8_supported(int kind) { (void)kind; return 0; }
int giraffe_i8_nibbles(int kind) { (void)kind; return 0; }
#endif
