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
 * Each tile block has 16 scales d, then, for types with a min, 16 mins m; for Q6_K ("split"
 * scales) 16 scales of weights 0-15, then 16 of weights 16-31, whose integer sums are kept
 * apart (groups 0-3, then 4-7) and scaled each by its own. How they are stored is the
 * "scale form", chosen so that no more bytes are read than the file's blocks hold:
 *   SF_FLOAT: 16 (or 32) floats per tile block (group-wise weights: any float scale);
 *   SF_HALF:  the same as fp16, where every value is one exactly (the 32-weight types' d
 *             and m are the file's own fp16 numbers);
 *   SF_K:     as K-quants store them: per tile and super-block of 256 inputs, 16 fp16 d
 *             (then 16 fp16 dmin, for Q4_K/Q5_K), then per tile block 16 + 16 bytes of
 *             integer scales (sc and m; Q6_K: its two signed 16-weight scales); the kernel
 *             forms d * sc and -(dmin * m) in float, the very roundings ggml makes.
 * Types whose q fit 4 bits (Q4_0, Q4_1, Q4_K) can stay two a byte ("nibbles": groups 2p
 * and 2p+1 in the low and high halves of the same 64 bytes), half the bytes that a
 * bandwidth-bound decode step reads, for two more instructions per 64 bytes. Types whose
 * q fit 5 bits (Q5_0, Q5_1, Q5_K) keep the nibbles plus, per tile and block, 8 x 64 bits
 * of fifth bits (bit i of word g: the weight in byte i of group g), added back with one
 * masked add: 320 bytes instead of 512; Q6_K's 6 bits add a plane of sixth bits: 384.
 * `form` names the four layouts: 0 bytes, 1 nibbles, 2 fives, 3 sixes.
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

/* Bytes of one tile's block in a form: bytes, nibbles, nibbles + 64 bytes of fifth bits,
 * nibbles + 64 of fifth and 64 of sixth bits, grid indices (nibbles). */
static inline int i8_block_bytes(int form) { return form == 0 ? 512 : form == 2 ? 320 : form == 3 ? 384 : 256; }

int giraffe_i8_supported(int kind) { return kind >= 0 && kind < N_KINDS && I8_FORM[kind]; }

/* The packed form of a type's integers (1 nibbles, 2 fives, 3 sixes, 4 grid indices;
 * 0: bytes only). */
int giraffe_i8_nibbles(int kind) { return giraffe_i8_supported(kind) ? I8_NIBBLES[kind] : 0; }

/* Scales per tile and block: 16 per scale set (blocks.h's i8_sets: d; d, m; d, d; or d, d,
 * m, m), one for each of the tile's rows. */
static inline int i8_scales(int kind) { return i8_sets(kind) * I8_TILE; }

/* A form a type may be repacked in: bytes always, or its own packed form. */
static inline int form_ok(int kind, int form) { return form == 0 || form == giraffe_i8_nibbles(kind); }

enum { SF_FLOAT = 0, SF_HALF = 1, SF_K = 2 };

/* The scale forms a type may take: SF_FLOAT always (group-wise weights use it); SF_HALF
 * for the 32-weight types, SF_K for K-quants (their own scales, exactly). */
static inline int scale_form_ok(int kind, int sform) {
    return sform == SF_FLOAT || sform == (BLOCK_WEIGHTS[kind] == 32 ? SF_HALF : SF_K);
}

/* Bytes of fp16 super-block scales per tile and super-block (SF_K): d, then dmin. */
static inline int k_super_bytes(int kind) { return I8_HAS_MIN[kind] ? 64 : 32; }

/* SF_K's layout within a tile's scales: super-block b/8's fp16 scales, then block b's
 * 16 bytes of integer scales per set after all super-blocks' (super_bytes =
 * k_super_bytes(kind), sets = i8_sets(kind)). */
static inline const uint8_t *k_super_at(const uint8_t *dm, int64_t b, int super_bytes) {
    return dm + (b / 8) * super_bytes;
}
static inline const uint8_t *k_ints_at(const uint8_t *dm, int64_t n_blocks, int64_t b, int super_bytes, int sets) {
    return dm + (n_blocks / 8) * super_bytes + b * 16 * sets;
}

/* Bytes of scales per tile, for n_blocks blocks of 32 inputs. */
static inline int64_t i8_tile_scale_bytes(int kind, int sform, int64_t n_blocks) {
    if (sform == SF_K) return (n_blocks / 8) * k_super_bytes(kind) + n_blocks * 16 * i8_sets(kind);
    return n_blocks * i8_scales(kind) * (sform == SF_HALF ? 2 : 4);
}

/* The int8 form's sizes, for giraffe.quant.kernels to check its own copy against when it
 * opens the library (so a drifted copy is an error, never a repack past the buffer):
 * out[0] bytes of a tile's block in `form`, out[1] bytes of a tile's scales for n_blocks
 * blocks in scale form sform. -1 for a form or scale form the kind does not take. */
int giraffe_i8_sizes(int kind, int form, int sform, int64_t n_blocks, int64_t *out) {
    if (!giraffe_i8_supported(kind) || !form_ok(kind, form) || !scale_form_ok(kind, sform)) return -1;
    out[0] = i8_block_bytes(form), out[1] = i8_tile_scale_bytes(kind, sform, n_blocks);
    return 0;
}

/* The float value of scale set `which` (i8_set) of row c in block b of a tile's scales:
 * what sub_block_ints gives, bit for bit. SF_K: d * sc for a scale (signed integers where
 * the scales are split), -(dmin * m) for a min. */
static inline float tile_scale(const uint8_t *dm, int kind, int sform, int64_t n_blocks, int64_t b, int c, int which) {
    if (sform == SF_K) {
        const int split = I8_SPLIT[kind], is_min = I8_HAS_MIN[kind] && which >= 1 + split;
        const uint16_t *super = (const uint16_t *)k_super_at(dm, b, k_super_bytes(kind));
        const uint8_t raw = k_ints_at(dm, n_blocks, b, k_super_bytes(kind), i8_sets(kind))[16 * which + c];
        const float v = _cvtsh_ss(super[16 * is_min + c]) * (split ? (float)(int8_t)raw : (float)raw);
        return is_min ? -v : v;
    }
    const int64_t i = b * i8_scales(kind) + I8_TILE * which + c;
    return sform == SF_HALF ? _cvtsh_ss(((const uint16_t *)dm)[i]) : ((const float *)dm)[i];
}

/* The 16 rows' scale set `which` of block b (as tile_scale, for all 16 rows); the flags
 * are the type's, as constants. */
static inline __attribute__((always_inline)) __m512 tile_scales(const uint8_t *dm, int64_t n_blocks, int64_t b,
                                                                int which, const int sform, const int has_min,
                                                                const int split) {
    const int sets = 1 + split + has_min * (1 + split); /* i8_sets, from the constant flags */
    if (sform == SF_K) {
        const int super_bytes = has_min ? 64 : 32, is_min = has_min && which >= 1 + split;
        const uint8_t *super = k_super_at(dm, b, super_bytes);
        const __m128i raw = _mm_loadu_si128((const __m128i *)(k_ints_at(dm, n_blocks, b, super_bytes, sets) + 16 * which));
        const __m512 sc = _mm512_cvtepi32_ps(split ? _mm512_cvtepi8_epi32(raw) : _mm512_cvtepu8_epi32(raw));
        const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(super + 32 * is_min)));
        const __m512 v = _mm512_mul_ps(d, sc);
        if (!is_min) return v;
        return _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(v), _mm512_set1_epi32((int)0x80000000u)));
    }
    const int64_t i = b * sets * I8_TILE + I8_TILE * which;
    return sform == SF_HALF ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(dm + 2 * i)))
                            : _mm512_loadu_ps(dm + 4 * i);
}

/* Write the scales of row c, block b into a tile's scales (inverse of tile_scale); d and m
 * as sub_block_ints gave them (SF_K reads the file's integers instead). */
static void put_tile_scales(uint8_t *dm, const uint8_t *row, int kind, int sform, int64_t n_blocks, int64_t b, int c,
                            const float *d, const float *m) {
    const int sets = i8_sets(kind), split = I8_SPLIT[kind];
    if (sform == SF_K) {
        float super_d, super_dmin;
        int ints[4];
        k_scale_ints(row, kind, b, &super_d, &super_dmin, ints);
        uint16_t *super = (uint16_t *)k_super_at(dm, b, k_super_bytes(kind));
        uint8_t *at = (uint8_t *)k_ints_at(dm, n_blocks, b, k_super_bytes(kind), sets);
        super[c] = _cvtss_sh(super_d, 0); /* the file's fp16, back to its own bits */
        if (I8_HAS_MIN[kind]) super[16 + c] = _cvtss_sh(super_dmin, 0);
        for (int set = 0; set < sets; set++) at[16 * set + c] = (uint8_t)ints[set];
        return;
    }
    for (int set = 0; set < sets; set++) {
        const int is_min = set >= 1 + split, half = split ? (is_min ? set - 1 - split : set) : 0;
        const float v = is_min ? m[half] : d[half];
        const int64_t i = b * i8_scales(kind) + I8_TILE * set + c;
        if (sform == SF_HALF) ((uint16_t *)dm)[i] = _cvtss_sh(v, 0);
        else ((float *)dm)[i] = v;
    }
}

/* n_out rows of packed blocks -> q (tiles * n_blocks * i8_block_bytes(form) bytes) and dm
 * (tiles * i8_tile_scale_bytes bytes, in scale form sform), tiles = ceil(n_out / 16);
 * rows past n_out are zero. Returns 0 or -1. */
int giraffe_repack_i8(const uint8_t *w, int kind, int64_t n_out, int64_t n_in, uint8_t *q, uint8_t *dm,
                      int nibbles, int sform, int n_threads) {
    if (!kind_ok(kind, n_in) || !giraffe_i8_supported(kind) || n_in % 32) return -1;
    if (!form_ok(kind, nibbles) || !scale_form_ok(kind, sform)) return -1;
    const int block_bytes = i8_block_bytes(nibbles);
    const int64_t n_blocks = n_in / 32, tiles = (n_out + I8_TILE - 1) / I8_TILE;
    const int64_t rb = row_bytes_of(kind, n_in), tile_dm = i8_tile_scale_bytes(kind, sform, n_blocks);
    #pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int64_t t = 0; t < tiles; t++) {
        uint8_t *dt = dm + t * tile_dm;
        memset(dt, 0, (size_t)tile_dm);
        for (int64_t b = 0; b < n_blocks; b++) {
            uint8_t *qt = q + (t * n_blocks + b) * block_bytes;
            memset(qt, 0, block_bytes);
            for (int c = 0; c < I8_TILE; c++) {
                const int64_t o = t * I8_TILE + c;
                if (o >= n_out) continue;
                uint8_t v[32];
                float d[2], m[2];
                sub_block_ints(w + o * rb, kind, b, v, d, m);
                put_tile_scales(dt, w + o * rb, kind, sform, n_blocks, b, c, d, m);
                if (!nibbles)
                    for (int l = 0; l < 32; l++) qt[(l / 4) * I8_GROUP_BYTES + 4 * c + l % 4] = v[l];
                else /* groups 2p and 2p+1 share 64 bytes: low and high nibbles */
                    for (int l = 0; l < 32; l++) {
                        const int nib = nibbles == 4 ? iq4_index(v[l]) : v[l] & 0x0F; /* form 4: grid index */
                        qt[(l / 8) * I8_GROUP_BYTES + 4 * c + l % 4] |= (uint8_t)(nib << (l % 8 < 4 ? 0 : 4));
                        /* fifth (and sixth) bits: word l/4 of their plane, bit of byte 4c + l%4 */
                        const int bit = 4 * c + l % 4;
                        for (int plane = 0; plane < i8_planes(nibbles); plane++)
                            if (v[l] & (0x10 << plane))
                                qt[I8_NIBBLE_BYTES + 64 * plane + 8 * (l / 4) + bit / 8] |= (uint8_t)(1u << (bit % 8));
                    }
            }
        }
    }
    return 0;
}

/* One row of x -> int8 a, scale da and integer sum isum per block of 32 (isum_lo: of its
 * first 16, for types with a scale per 16 weights). */
static inline void quantize_row(const float *x, int64_t n_in, int8_t *a, float *da, int32_t *isum, int32_t *isum_lo) {
    for (int64_t b = 0; b < n_in / 32; b++) {
        const float *v = x + 32 * b;
        const __m512 lo = _mm512_loadu_ps(v), hi = _mm512_loadu_ps(v + 16);
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(lo), _mm512_abs_ps(hi)));
        const float d = amax / 127.0f, inv = d != 0.0f ? 1.0f / d : 0.0f;
        const __m512 s = _mm512_set1_ps(inv);
        /* cvtps rounds to nearest even (the default MXCSR mode), as torch.round */
        const __m512i qlo = _mm512_cvtps_epi32(_mm512_mul_ps(lo, s));
        const __m512i qhi = _mm512_cvtps_epi32(_mm512_mul_ps(hi, s));
        _mm_storeu_si128((__m128i *)(a + 32 * b), _mm512_cvtepi32_epi8(qlo));
        _mm_storeu_si128((__m128i *)(a + 32 * b + 16), _mm512_cvtepi32_epi8(qhi));
        da[b] = d;
        isum_lo[b] = _mm512_reduce_add_epi32(qlo);
        isum[b] = isum_lo[b] + _mm512_reduce_add_epi32(qhi);
    }
}

/* m rows of x, each as quantize_row (threads over rows). */
static void quantize_activations(const float *x, int64_t m, int64_t n_in, int8_t *a, float *da, int32_t *isum,
                                 int32_t *isum_lo, int n_threads) {
    const int64_t n_blocks = n_in / 32;
    #pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int64_t r = 0; r < m; r++)
        quantize_row(x + r * n_in, n_in, a + r * n_in, da + r * n_blocks, isum + r * n_blocks, isum_lo + r * n_blocks);
}

/* m rows of x, each as quantize_row, on the calling thread (inside a parallel region). */
static void quantize_rows(const float *x, int64_t m, int64_t n_in, int8_t *a, float *da, int32_t *isum,
                          int32_t *isum_lo) {
    const int64_t n_blocks = n_in / 32;
    for (int64_t r = 0; r < m; r++)
        quantize_row(x + r * n_in, n_in, a + r * n_in, da + r * n_blocks, isum + r * n_blocks, isum_lo + r * n_blocks);
}

/* How far ahead a tile streamed from memory is prefetched (into L2). Why: a decode row
 * reads each weight once, two tiles of a pair side by side, and the hardware prefetchers,
 * which restart at every 4 KB page, left a 2-core product at ~13-15 GB/s where summing
 * memory reaches ~25-40; with this, 1-row products over 60-110 MB of SmolLM2-shaped layers
 * ran 23-35 % faster (Q4_0 and Q8_0; 2, 3, 4, 6 KB ahead alike, 1 KB or into L1 less). */
enum { I8_PREFETCH_BYTES = 4096 };
#define I8_ROWS 4 /* input rows per micro-kernel call: 4 rows x 2 tiles = 8 int + 8 float accumulators */

/* y[r][0..31] for up to I8_ROWS rows against tiles t0 (and t1 unless t1 == NULL).
 * `stream`: the tiles come straight from memory (not spelled out in scratch;
 * the first chunk of rows): prefetch ahead.
 * `split`: each 16 weights of a block have their own scale (Q6_K): the integer sums of
 * groups 0-3 and 4-7 are scaled apart. */
static inline __attribute__((always_inline)) void gemm_i8_block(
    const uint8_t *q0, const uint8_t *q1, const uint8_t *dm0, const uint8_t *dm1, int64_t n_blocks, const int8_t *a,
    int64_t n_in, const float *da, const int32_t *isum, const int32_t *isum_lo, int rows, int offset, int has_min,
    float *y, int64_t y_stride, int cols0, int cols1, int stream, const int nibbles, const int split,
    const int sform, const int one_row) {
    const int block_bytes = i8_block_bytes(nibbles);
    if (one_row) rows = 1; /* constant: the loops over rows below fold to one */
    const __m512i low4 = _mm512_set1_epi8(0x0F), fifth = _mm512_set1_epi8(0x10), sixth = _mm512_set1_epi8(0x20);
    __m512 acc0[I8_ROWS], acc1[I8_ROWS];
    for (int r = 0; r < I8_ROWS; r++) acc0[r] = acc1[r] = _mm512_setzero_ps();
    for (int64_t b = 0; b < n_blocks; b++) {
        const uint8_t *w0 = q0 + b * block_bytes, *w1 = q1 ? q1 + b * block_bytes : w0;
        const int8_t *ab = a + 32 * b;
        const uint8_t *dm1b = dm1 ? dm1 : dm0;
        if (stream) { /* into L2, I8_PREFETCH_BYTES ahead in each tile; past its end, the
                         * same tile of the next pair (this thread's next, 2 tiles on) */
            const int64_t ahead = b * block_bytes + I8_PREFETCH_BYTES, tile_q = n_blocks * block_bytes;
            const int64_t skip = ahead >= tile_q ? tile_q : 0;
            #pragma GCC unroll 8
            for (int l = 0; l < block_bytes; l += 64) {
                _mm_prefetch((const char *)w0 + I8_PREFETCH_BYTES + skip + l, _MM_HINT_T1);
                if (q1) _mm_prefetch((const char *)w1 + I8_PREFETCH_BYTES + skip + l, _MM_HINT_T1);
            }
        }
        #pragma GCC unroll 2
        for (int half = 0; half < 2; half++) {
            if (half && !split) break; /* constant trip counts, so the loops unroll */
            /* one row: two integer sums per tile, of the even and the odd groups, so the chains
             * of dependent vpdpbusd are half as long (a one-row product waits on their latency;
             * measured +20-30 % on a 576 x 576 Q4_0/Q8_0 product in L2). More rows have chains
             * enough side by side (there the second sums cost 10-20 %, measured). */
            __m512i i0[I8_ROWS], i1[I8_ROWS], j0[I8_ROWS], j1[I8_ROWS];
            #pragma GCC unroll 8
            for (int r = 0; r < I8_ROWS; r++) {
                const int64_t at = r * n_blocks + b;
                const int32_t sum = r >= rows ? 0 : !split ? isum[at] : half ? isum[at] - isum_lo[at] : isum_lo[at];
                i0[r] = i1[r] = _mm512_set1_epi32(offset * sum);
                j0[r] = j1[r] = _mm512_setzero_si512();
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
                    if (nibbles == 4) { /* grid indices -> their integers (IQ4_VALUES) */
                        const __m512i grid = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)IQ4_VALUES));
                        v0 = _mm512_shuffle_epi8(grid, v0), v1 = _mm512_shuffle_epi8(grid, v1);
                    }
                    if (nibbles == 2 || nibbles == 3) { /* OR in the fifth bits: 64 mask bits per group */
                        uint64_t b0, b1;
                        memcpy(&b0, w0 + I8_NIBBLE_BYTES + 8 * g, 8);
                        memcpy(&b1, w1 + I8_NIBBLE_BYTES + 8 * g, 8);
                        v0 = _mm512_mask_add_epi8(v0, _cvtu64_mask64(b0), v0, fifth);
                        v1 = _mm512_mask_add_epi8(v1, _cvtu64_mask64(b1), v1, fifth);
                    }
                    if (nibbles == 3) { /* and the sixth bits, from the next plane */
                        uint64_t b0, b1;
                        memcpy(&b0, w0 + I8_NIBBLE_BYTES + 64 + 8 * g, 8);
                        memcpy(&b1, w1 + I8_NIBBLE_BYTES + 64 + 8 * g, 8);
                        v0 = _mm512_mask_add_epi8(v0, _cvtu64_mask64(b0), v0, sixth);
                        v1 = _mm512_mask_add_epi8(v1, _cvtu64_mask64(b1), v1, sixth);
                    }
                }
                #pragma GCC unroll 8
                for (int r = 0; r < I8_ROWS; r++) {
                    if (r < rows) {
                        int32_t four;
                        memcpy(&four, ab + r * n_in + 4 * g, 4);
                        const __m512i x4 = _mm512_set1_epi32(four);
                        if (one_row && g % 2) {
                            j0[r] = _mm512_dpbusd_epi32(j0[r], v0, x4);
                            j1[r] = _mm512_dpbusd_epi32(j1[r], v1, x4);
                        } else {
                            i0[r] = _mm512_dpbusd_epi32(i0[r], v0, x4);
                            i1[r] = _mm512_dpbusd_epi32(i1[r], v1, x4);
                        }
                    }
                }
            }
            if (one_row) i0[0] = _mm512_add_epi32(i0[0], j0[0]), i1[0] = _mm512_add_epi32(i1[0], j1[0]);
            const __m512 d0 = tile_scales(dm0, n_blocks, b, half, sform, has_min, split);
            const __m512 d1 = tile_scales(dm1b, n_blocks, b, half, sform, has_min, split);
            #pragma GCC unroll 8
            for (int r = 0; r < I8_ROWS; r++) {
                if (r < rows) {
                    const __m512 sa = _mm512_set1_ps(da[r * n_blocks + b]);
                    acc0[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i0[r]), _mm512_mul_ps(d0, sa), acc0[r]);
                    acc1[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i1[r]), _mm512_mul_ps(d1, sa), acc1[r]);
                }
            }
        }
        #pragma GCC unroll 2
        for (int half = 0; has_min && half < 1 + split; half++) { /* the mins (Q2_K: one per 16) */
            const __m512 m0 = tile_scales(dm0, n_blocks, b, 1 + split + half, sform, 1, split);
            const __m512 m1 = tile_scales(dm1b, n_blocks, b, 1 + split + half, sform, 1, split);
            #pragma GCC unroll 8
            for (int r = 0; r < I8_ROWS; r++) {
                if (r < rows) {
                    const int64_t at = r * n_blocks + b;
                    const int32_t sum = !split ? isum[at] : half ? isum[at] - isum_lo[at] : isum_lo[at];
                    const __m512 sm = _mm512_set1_ps(da[at] * (float)sum);
                    acc0[r] = _mm512_fmadd_ps(m0, sm, acc0[r]);
                    acc1[r] = _mm512_fmadd_ps(m1, sm, acc1[r]);
                }
            }
        }
    }
    const __mmask16 k0 = (__mmask16)((1u << cols0) - 1), k1 = (__mmask16)((1u << cols1) - 1);
    #pragma GCC unroll 8
    for (int r = 0; r < I8_ROWS; r++) { /* constant indices: the accumulators stay in registers */
        if (r >= rows) break;
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
typedef struct { const uint8_t *q; const uint8_t *dm; int kind, form, sform; int64_t n_out; float *y; } i8_part;

static inline int64_t i8_pairs(const i8_part *w) { return ((w->n_out + I8_TILE - 1) / I8_TILE + 1) / 2; }

/* A tile's integers spelled out as bytes (form 0), every block, each plus `add` (modulo
 * 256): the unpacking the kernel would otherwise redo for each chunk of rows. add = 0
 * keeps them unsigned, for vpdpbusd; add = the type's offset makes them the signed
 * weights q + offset, for AMX's signed-by-signed product (gemm_amx.h). */
static void spell_tile(const uint8_t *q, int form, int64_t n_blocks, int add, uint8_t *out) {
    const __m512i low4 = _mm512_set1_epi8(0x0F), shift = _mm512_set1_epi8((char)add);
    for (int64_t b = 0; b < n_blocks; b++) {
        const uint8_t *w = q + b * i8_block_bytes(form);
        for (int g = 0; g < 8; g++) { /* as gemm_i8_block reads group g */
            __m512i v;
            if (form == 0) v = _mm512_loadu_si512(w + g * I8_GROUP_BYTES);
            else {
                v = _mm512_loadu_si512(w + (g / 2) * I8_GROUP_BYTES);
                if (g % 2) v = _mm512_srli_epi16(v, 4);
                v = _mm512_and_si512(v, low4);
            }
            if (form == 4) v = _mm512_shuffle_epi8(_mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)IQ4_VALUES)), v);
            for (int plane = 0; plane < i8_planes(form); plane++) { /* fifth, then sixth bits */
                uint64_t bits;
                memcpy(&bits, w + I8_NIBBLE_BYTES + 64 * plane + 8 * g, 8);
                v = _mm512_mask_add_epi8(v, _cvtu64_mask64(bits), v, _mm512_set1_epi8((char)(0x10 << plane)));
            }
            _mm512_storeu_si512(out + b * I8_BLOCK_BYTES + g * I8_GROUP_BYTES, _mm512_add_epi8(v, shift));
        }
    }
}

/* This thread's buffer of at least `bytes` (kept for the next call; NULL if out of memory). */
static uint8_t *thread_scratch(size_t bytes) {
    static __thread uint8_t *buf = NULL;
    static __thread size_t cap = 0;
    if (bytes > cap) {
        free(buf);
        cap = (bytes + 4095) / 4096 * 4096;
        buf = (uint8_t *)aligned_alloc(64, cap);
        if (!buf) cap = 0;
    }
    return buf;
}

/* Rows from which a pair's packed integers are spelled out as bytes once (a prompt, a large
 * batch) rather than unpacked for every chunk of I8_ROWS rows: below it, one-row decoding
 * reads the packed form straight from memory, its bandwidth being what bounds it. */
enum { I8_SPELL_ROWS = 2 * I8_ROWS + 1 };

/* Columns of tile pair p of one weight, for all rows: each thread owns whole pairs of tiles,
 * whose weights (16 KB per 512 inputs) stay in L1/L2 while every row chunk streams past. */
static void gemm_i8_pair(const i8_part *w, const i8_acts *s, int64_t p, int64_t y_stride) {
    const int64_t n_in = s->n_in, m = s->m, n_blocks = n_in / 32, tiles = (w->n_out + I8_TILE - 1) / I8_TILE;
    const int kind = w->kind, offset = i8_offset(kind), has_min = I8_HAS_MIN[kind];
    int nibbles = w->form;
    const int64_t tile_dm = i8_tile_scale_bytes(kind, w->sform, n_blocks), tile_q = n_blocks * i8_block_bytes(nibbles);
    const int64_t t0 = 2 * p, col = t0 * I8_TILE;
    const int has1 = t0 + 1 < tiles;
    const int64_t left0 = w->n_out - col, left1 = left0 - I8_TILE;
    const int cols0 = left0 < I8_TILE ? (int)left0 : I8_TILE;
    const int cols1 = !has1 ? 0 : left1 < I8_TILE ? (int)left1 : I8_TILE;
    const uint8_t *q0 = w->q + t0 * tile_q, *q1 = has1 ? w->q + (t0 + 1) * tile_q : NULL;
    const uint8_t *dm0 = w->dm + t0 * tile_dm, *dm1 = has1 ? w->dm + (t0 + 1) * tile_dm : NULL;
    uint8_t *spelled = nibbles && m >= I8_SPELL_ROWS ? thread_scratch((size_t)(2 * n_blocks * I8_BLOCK_BYTES)) : NULL;
    if (spelled) { /* the same integers as bytes: the kernel's byte form, no unpacking per chunk */
        spell_tile(q0, nibbles, n_blocks, 0, spelled);
        if (q1) spell_tile(q1, nibbles, n_blocks, 0, spelled + n_blocks * I8_BLOCK_BYTES);
        q0 = spelled, q1 = q1 ? spelled + n_blocks * I8_BLOCK_BYTES : NULL, nibbles = 0;
    }
    for (int64_t r0 = 0; r0 < m; r0 += I8_ROWS) {
        const int rows = m - r0 < I8_ROWS ? (int)(m - r0) : I8_ROWS;
        const int8_t *ar = s->a + r0 * n_in;
        float *yr = w->y + r0 * y_stride + col;
        const float *dar = s->da + r0 * n_blocks;
        const int32_t *isr = s->isum + r0 * n_blocks, *islo = s->isum_lo + r0 * n_blocks;
        /* calls with constant flags: each compiles to its own loop */
#define I8_CALL(NIB, MIN, SPLIT, SF, ONE)                                                                      \
    gemm_i8_block(q0, q1, dm0, dm1, n_blocks, ar, n_in, dar, isr, islo, rows, offset, MIN, yr, y_stride, cols0, \
                  cols1, !spelled && r0 == 0, NIB, SPLIT, SF, ONE)
#define I8_BLOCK(NIB, MIN, SPLIT, SF)                  \
    do {                                               \
        if (m == 1) I8_CALL(NIB, MIN, SPLIT, SF, 1);   \
        else I8_CALL(NIB, MIN, SPLIT, SF, 0);          \
    } while (0)
#define I8_FORMS(NIB)                                                        \
    do {                                                                     \
        if (w->sform == SF_HALF) I8_BLOCK(NIB, has_min, 0, SF_HALF);         \
        else if (w->sform == SF_K) I8_BLOCK(NIB, has_min, 0, SF_K);          \
        else I8_BLOCK(NIB, has_min, 0, SF_FLOAT);                            \
    } while (0)
#define I8_SPLIT_FORMS(NIB, MIN)                                           \
    do {                                                                   \
        if (w->sform == SF_K) I8_BLOCK(NIB, MIN, 1, SF_K);                 \
        else I8_BLOCK(NIB, MIN, 1, SF_FLOAT);                              \
    } while (0)
        if (I8_SPLIT[kind]) { /* scales per 16 weights: Q6_K, Q3_K, IQ4_XS, Q2_K (mins too) */
            if (has_min) {
                if (nibbles) I8_SPLIT_FORMS(1, 1); /* Q2_K */
                else I8_SPLIT_FORMS(0, 1);
            } else if (nibbles == 3) I8_SPLIT_FORMS(3, 0); /* Q6_K */
            else if (nibbles == 1) I8_SPLIT_FORMS(1, 0);   /* Q3_K */
            else if (nibbles == 4) I8_SPLIT_FORMS(4, 0);   /* IQ4_XS */
            else I8_SPLIT_FORMS(0, 0);
        } else if (nibbles == 1) I8_FORMS(1);
        else if (nibbles == 4) I8_FORMS(4); /* IQ4_NL */
        else if (nibbles == 2) I8_FORMS(2);
        else I8_FORMS(0);
#undef I8_SPLIT_FORMS
#undef I8_FORMS
#undef I8_BLOCK
#undef I8_CALL
    }
}

#include "gemm_amx.h"

/* Several weights of the same input (q|k|v segments) in one parallel region: one fork, no
 * barrier between the parts (each part's pairs are shared out, `nowait`). Products of
 * AMX_ROWS rows or more run on AMX tiles where the CPU has them (gemm_amx.h). */
static void gemm_i8_parts(const i8_part *parts, int n_parts, const i8_acts *s, int64_t y_stride, int n_threads) {
#ifdef HAVE_AMX
    amx_tables t;
    const int amx = s->m >= AMX_ROWS && amx_on() && amx_tables_make(parts, n_parts, s, n_threads, &t) == 0;
#endif
    #pragma omp parallel num_threads(n_threads)
    for (int k = 0; k < n_parts; k++) {
        const int64_t pairs = i8_pairs(&parts[k]);
        #pragma omp for schedule(static) nowait
        for (int64_t p = 0; p < pairs; p++) {
#ifdef HAVE_AMX
            if (amx) {
                gemm_amx_pair(&parts[k], s, &t, p, y_stride);
                continue;
            }
#endif
            gemm_i8_pair(&parts[k], s, p, y_stride);
        }
    }
#ifdef HAVE_AMX
    if (amx) free(t.da);
#endif
}

/* y (m rows, y_stride apart; columns 0..n_out-1) = x (m, n_in) @ W^T for W repacked by
 * giraffe_repack_i8 (its scales in form sform). `kind` gives the offset and whether mins
 * are there. Returns 0 or -1. */
int giraffe_gemm_i8(const uint8_t *q, const uint8_t *dm, int kind, int nibbles, int sform, int64_t n_out,
                    int64_t n_in, const float *x, int64_t m, float *y, int64_t y_stride, int n_threads) {
    if (!giraffe_i8_supported(kind) || n_in % 32 || m < 1) return -1;
    if (!form_ok(kind, nibbles) || !scale_form_ok(kind, sform)) return -1;
    i8_acts s;
    if (i8_acts_make(x, m, n_in, n_threads, &s) != 0) return -1;
    const i8_part w = {q, dm, kind, nibbles, sform, n_out, y};
    gemm_i8_parts(&w, 1, &s, y_stride, n_threads);
    i8_acts_free(&s);
    return 0;
}

/* The weights back from the int8 form, as floats: rows `rows[0..n_rows-1]` (all n_out rows
 * in order when rows is NULL) into out (n_rows, n_in). w = d * (q + offset) + m, the same
 * numbers as ggml's dequantize of the blocks it was repacked from (sub_block_ints). This
 * lets the int8 form be the only resident copy: float paths and lookups read it. */
int giraffe_dequantize_i8(const uint8_t *q, const uint8_t *dm, int kind, int nibbles, int sform, int64_t n_out,
                          int64_t n_in, const int64_t *rows, int64_t n_rows, float *out, int n_threads) {
    if (!giraffe_i8_supported(kind) || n_in % 32 || !form_ok(kind, nibbles)) return -1;
    if (!scale_form_ok(kind, sform)) return -1;
    if (!rows) n_rows = n_out;
    for (int64_t i = 0; rows && i < n_rows; i++)
        if (rows[i] < 0 || rows[i] >= n_out) return -1;
    const int block_bytes = i8_block_bytes(nibbles);
    const int64_t n_blocks = n_in / 32;
    const int offset = I8_OFFSET[kind], has_min = I8_HAS_MIN[kind], split = I8_SPLIT[kind];
    const int64_t tile_dm = i8_tile_scale_bytes(kind, sform, n_blocks);
    /* a few rows (a decode step's embedding lookup) on the calling thread: a fork and join
     * for one 576-float row cost more than the row (SmolLM2 decode: 50 -> 38 us a lookup) */
    #pragma omp parallel for num_threads(n_threads) schedule(static) if (n_rows * n_in >= 65536)
    for (int64_t i = 0; i < n_rows; i++) {
        const int64_t o = rows ? rows[i] : i, t = o / I8_TILE;
        const int c = (int)(o % I8_TILE);
        const uint8_t *dt = dm + t * tile_dm;
        for (int64_t b = 0; b < n_blocks; b++) {
            const uint8_t *qt = q + (t * n_blocks + b) * block_bytes;
            float *y = out + i * n_in + 32 * b;
            const float d0 = tile_scale(dt, kind, sform, n_blocks, b, c, i8_set(split, 0, 0));
            const float d1 = split ? tile_scale(dt, kind, sform, n_blocks, b, c, i8_set(split, 0, 1)) : d0;
            const float m0 = has_min ? tile_scale(dt, kind, sform, n_blocks, b, c, i8_set(split, 1, 0)) : 0.0f;
            const float m1 = has_min && split ? tile_scale(dt, kind, sform, n_blocks, b, c, i8_set(split, 1, 1)) : m0;
            for (int l = 0; l < 32; l++) {
                int v;
                if (nibbles) v = (qt[(l / 8) * I8_GROUP_BYTES + 4 * c + l % 4] >> (l % 8 < 4 ? 0 : 4)) & 0x0F;
                else v = qt[(l / 4) * I8_GROUP_BYTES + 4 * c + l % 4];
                if (nibbles == 4) v = IQ4_VALUES[v];
                const int bit = 4 * c + l % 4;
                for (int plane = 0; plane < i8_planes(nibbles); plane++) /* fifth and sixth bits */
                    v |= ((qt[I8_NIBBLE_BYTES + 64 * plane + 8 * (l / 4) + bit / 8] >> (bit % 8)) & 1) << (4 + plane);
                y[l] = (l < 16 ? d0 : d1) * (float)(v + offset);
                if (has_min) y[l] += l < 16 ? m0 : m1;
            }
        }
    }
    return 0;
}
#else
int giraffe_i8_supported(int kind) { (void)kind; return 0; }
int giraffe_amx(int want) { (void)want; return 0; }
int giraffe_i8_nibbles(int kind) { (void)kind; return 0; }
#endif
