/* Where the 32 weights of "sub-block" b of a packed row live, for every block type the
 * kernels know, and how to turn them into floats. Included by qmatmul.c (one library).
 *
 * Layouts follow ggml-common.h. Legacy types pack 32 weights per block:
 *   Q8_0 (34 B): fp16 d, 32 x int8 q                          w = d*q
 *   Q4_0 (18 B): fp16 d, 16 B nibbles                         w = d*(q-8)
 *   Q4_1 (20 B): fp16 d, fp16 m, 16 B nibbles                 w = d*q + m
 *   Q5_0 (22 B): fp16 d, u32 high bits, 16 B nibbles          w = d*(q-16)
 *   Q5_1 (24 B): fp16 d, fp16 m, u32 high bits, 16 B nibbles  w = d*q + m
 * (nibble byte j: weight j low, weight j+16 high; high bit of weight j: bit j of the u32).
 * K-quants pack 256 weights per super-block, as 8 sub-blocks of 32 (Q6_K: 16 of 16):
 *   Q4_K (144 B): fp16 d, fp16 dmin, 12 B of 6-bit scales/mins, 128 B nibbles
 *                 w = d*sc_j*q - dmin*m_j
 *   Q5_K (176 B): as Q4_K plus 32 B of fifth bits before the nibbles
 *   Q6_K (210 B): 128 B low nibbles, 64 B high 2-bit pairs, 16 x int8 scales, fp16 d
 *                 w = d*sc*(q-32)
 * Sub-block j of a Q4_K/Q5_K super-block: nibble bytes 32*(j/2).., low halves for even j,
 * high halves for odd j; its fifth bit is bit j of qh[l]. Q6_K: half h = j/4 and k = j%4
 * pick ql bytes 64*h + 32*(k&1) (low nibble for k < 2, else high), bits 2k..2k+1 of
 * qh[32*h + l], scales 8*h + 2k (weights 0-15) and 8*h + 2k + 1 (weights 16-31).
 */
#pragma once
#include <stdint.h>
#include <string.h>
#ifdef __F16C__
#include <immintrin.h>
#endif

/* Bumped whenever an exported signature, struct or table below changes; giraffe.quant.kernels
 * refuses a library whose version or block table differs from its own (never a wrong answer). */
#define GIRAFFE_ABI_VERSION 23

/* F16 and BF16 are plain 2-byte floats; here a "block" is 32 of them, so that the float
 * kernel walks their rows as it walks the 32-weight types'. */
enum { Q8_0 = 0, Q4_0 = 1, Q4_1 = 2, Q5_0 = 3, Q5_1 = 4, Q4_K = 5, Q5_K = 6, Q6_K = 7, F16 = 8, BF16 = 9, Q3_K = 10,
       IQ4_NL = 11, IQ4_XS = 12, Q2_K = 13, N_KINDS = 14 };
/* Bytes per block, and weights per block (32 for legacy types, 256 for K-quants). */
static const int BLOCK_BYTES[N_KINDS] = {34, 18, 20, 22, 24, 144, 176, 210, 64, 64, 110, 18, 136, 84};
static const int BLOCK_WEIGHTS[N_KINDS] = {32, 32, 32, 32, 32, 256, 256, 256, 32, 32, 256, 32, 256, 256};
/* The int8 form (sub_block_ints, gemm_i8.h): integer offset, whether a min is added, how the
 * integers are stored packed (0: a byte each; 1: 4 bits, two a byte; 2: 5 bits, as 4-bit
 * nibbles plus a plane of fifth bits; 3: 6 bits, nibbles plus planes of fifth and sixth
 * bits; 4: 4-bit indices into IQ4_VALUES, two a byte), whether each 16 weights have
 * their own scale (IQ4_XS: the same scale twice, so that its signed scales take Q6_K's
 * form) - and, with a min, their own min (Q2_K). */
static const int I8_OFFSET[N_KINDS] = {-128, -8, 0, -16, 0, 0, 0, -32, 0, 0, -4, -128, -128, 0};
static const int I8_HAS_MIN[N_KINDS] = {0, 0, 1, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 1};
static const int I8_NIBBLES[N_KINDS] = {0, 1, 1, 2, 2, 1, 2, 3, 0, 0, 1, 4, 4, 1};
static const int I8_SPLIT[N_KINDS] = {0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 1, 1};
/* The IQ4 types' non-linear grid (ggml's kvalues_iq4nl, -127 .. 113) plus 128: the unsigned
 * integers of their int8 form (offset -128). */
static const uint8_t IQ4_VALUES[16] = {1, 24, 45, 63, 79, 93, 106, 118, 129, 141, 153, 166, 181, 197, 217, 241};
/* Bit planes beside the nibbles in a packed form: fifth bits (2), fifth and sixth (3). */
static inline int i8_planes(int form) { return form == 2 ? 1 : form == 3 ? 2 : 0; }
/* An IQ4 integer back to its 4-bit index (the repack stores indices). */
static inline int iq4_index(uint8_t u) {
    int i = 0;
    while (i < 15 && IQ4_VALUES[i] != u) i++;
    return i;
}

/* Scale sets per block of 32 weights, in their order in a tile: d (of weights 0-15), then
 * with split scales d of weights 16-31, then with a min m (of 0-15), then with split
 * scales and a min m of 16-31. Q8_0: d; Q4_1, Q4_K: d, m; Q6_K, Q3_K: d, d; Q2_K: d, d,
 * m, m. */
static inline int i8_sets(int kind) { return 1 + I8_SPLIT[kind] + I8_HAS_MIN[kind] * (1 + I8_SPLIT[kind]); }
/* The set holding the scale (is_min 0) or the min (1) of half `half` of a block. */
static inline int i8_set(int split, int is_min, int half) {
    return is_min ? 1 + split + (split ? half : 0) : (split ? half : 0);
}

/* Whether the type has an int8 form at all: F16/BF16 weights are not integers, and
 * rounding them to int8 would change the file's numbers; they run on the float kernel. */
static const int I8_FORM[N_KINDS] = {1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1};
enum { BLOCK_TABLE_COLUMNS = 8 };

/* The table above, one row per code: code, weights, bytes, offset, has_min, nibbles, split, form.
 * Returns the number of rows written (N_KINDS), or -1 when `max_rows` is too small. */
int giraffe_block_table(int32_t *out, int max_rows) {
    if (max_rows < N_KINDS) return -1;
    for (int k = 0; k < N_KINDS; k++) {
        const int32_t row[BLOCK_TABLE_COLUMNS] = {k, BLOCK_WEIGHTS[k], BLOCK_BYTES[k], I8_OFFSET[k],
                                                  I8_HAS_MIN[k], I8_NIBBLES[k], I8_SPLIT[k], I8_FORM[k]};
        memcpy(out + k * BLOCK_TABLE_COLUMNS, row, sizeof(row));
    }
    return N_KINDS;
}

int giraffe_abi_version(void) { return GIRAFFE_ABI_VERSION; }

static inline int kind_ok(int kind, int64_t n_in) {
    return kind >= 0 && kind < N_KINDS && n_in % BLOCK_WEIGHTS[kind] == 0;
}

static inline int64_t row_bytes_of(int kind, int64_t n_in) {
    return n_in / BLOCK_WEIGHTS[kind] * BLOCK_BYTES[kind];
}

static inline int is_k_quant(int kind) { return BLOCK_WEIGHTS[kind] == 256; }
static inline int is_float16(int kind) { return kind == F16 || kind == BF16; }

/* A bfloat16 is the top half of a float32: widening is exact. */
static inline float bf16_to_fp32(uint16_t h) {
    const uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline float fp16_to_fp32(uint16_t h) {
#ifdef __F16C__
    return _cvtsh_ss(h);
#else
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF, bits;
    if (exp == 0) {
        if (man == 0) { bits = sign; }
        else { exp = 127 - 15 + 1; while (!(man & 0x400)) { man <<= 1; exp--; } man &= 0x3FF; bits = sign | (exp << 23) | (man << 13); }
    } else if (exp == 31) { bits = sign | 0x7F800000 | (man << 13); }
    else { bits = sign | ((exp + 127 - 15) << 23) | (man << 13); }
    float f; memcpy(&f, &bits, 4); return f;
#endif
}

static inline uint16_t read_u16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t read_u32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }

/* The 6-bit scale and min of sub-block j from a K-quant's 12 packed bytes. */
static inline void scale_min_k4(int j, const uint8_t *q, int *sc, int *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

/* Scale i (0-15, 6 bits) of a Q3_K super-block's 12 packed bytes: the low 4 bits from
 * bytes 0-7 (low nibbles for 0-7, high for 8-15), the top 2 from bytes 8-11 (ggml's
 * kmask1/kmask2 unpacking, one scale at a time). */
static inline int q3_k_scale(const uint8_t *sc, int i) {
    const int low = i < 8 ? sc[i] & 0x0F : sc[i - 8] >> 4;
    return low | (((sc[8 + i % 4] >> (2 * (i / 4))) & 3) << 4);
}

/* Scale j (0-7, 6 bits) of an IQ4_XS super-block: 4 low bits from scales_l (bytes 4-7),
 * 2 high from scales_h (bytes 2-3). */
static inline int iq4_xs_scale(const uint8_t *blk, int j) {
    return ((blk[4 + j / 2] >> (4 * (j % 2))) & 0x0F) | (((read_u16(blk + 2) >> (2 * j)) & 3) << 4);
}

/* Affine form of sub-block b: w[l] = mul[l < 16 ? 0 : 1] * q[l] + add, q[l] unsigned
 * (legacy Q4_0/Q5_0/Q6_K fold their offset into `add`/q). Q8_0 has signed q. */
typedef struct { const uint8_t *blk; int j; } sub_ref;

static inline sub_ref locate(const uint8_t *row, int kind, int64_t b) {
    sub_ref s;
    if (is_k_quant(kind)) {
        s.blk = row + (b / 8) * BLOCK_BYTES[kind];
        s.j = (int)(b % 8);
    } else {
        s.blk = row + b * BLOCK_BYTES[kind];
        s.j = 0;
    }
    return s;
}

/* A K-quant sub-block's scales as the file stores them: the super-block's d and dmin
 * (0 without mins) and the sub-block's integer scales in the order of its scale sets
 * (i8_sets): Q4_K/Q5_K sc, m (6 bits); Q6_K its two 16-weight int8 scales; Q3_K and IQ4_XS
 * theirs minus 32 (IQ4_XS's one scale twice); Q2_K sc, sc, m, m (4 bits each).
 * sub_block_ints' scales are d * sc and -dmin * m of these. */
static inline void k_scale_ints(const uint8_t *row, int kind, int64_t b, float *d, float *dmin, int *ints) {
    const sub_ref s = locate(row, kind, b);
    *dmin = 0.0f;
    if (kind == Q6_K) {
        const int8_t *scales = (const int8_t *)(s.blk + 192) + 8 * (s.j / 4) + 2 * (s.j % 4);
        *d = fp16_to_fp32(read_u16(s.blk + 208));
        ints[0] = scales[0], ints[1] = scales[1];
    } else if (kind == IQ4_XS) {
        *d = fp16_to_fp32(read_u16(s.blk));
        ints[0] = ints[1] = iq4_xs_scale(s.blk, s.j) - 32;
    } else if (kind == Q3_K) {
        *d = fp16_to_fp32(read_u16(s.blk + 108));
        ints[0] = q3_k_scale(s.blk + 96, 2 * s.j) - 32, ints[1] = q3_k_scale(s.blk + 96, 2 * s.j + 1) - 32;
    } else if (kind == Q2_K) { /* byte i of scales: scale i in its low nibble, min i in its high */
        const uint8_t s0 = s.blk[2 * s.j], s1 = s.blk[2 * s.j + 1];
        *d = fp16_to_fp32(read_u16(s.blk + 80)), *dmin = fp16_to_fp32(read_u16(s.blk + 82));
        ints[0] = s0 & 0x0F, ints[1] = s1 & 0x0F, ints[2] = s0 >> 4, ints[3] = s1 >> 4;
    } else {
        scale_min_k4(s.j, s.blk + 4, &ints[0], &ints[1]);
        *d = fp16_to_fp32(read_u16(s.blk)), *dmin = fp16_to_fp32(read_u16(s.blk + 2));
    }
}

/* The integer form of sub-block b of a row: 32 unsigned q, two scales and two mins, with
 *   w[l] = d[l / 16] * (q[l] + i8_offset(kind)) + m[l / 16].
 * Types without split scales have one scale and min per 32 weights (d[0] == d[1], m[0] ==
 * m[1]); Q6_K, Q3_K and Q2_K's 16-weight sub-blocks carry their own (Q2_K a min each too).
 * Values equal ggml's dequantize bit for bit (same roundings in the same order: the d*sc
 * product first, as ggml does). */
static inline void sub_block_ints(const uint8_t *row, int kind, int64_t b, uint8_t *q, float *d, float *m) {
    const sub_ref s = locate(row, kind, b);
    const uint8_t *blk = s.blk;
    const int j = s.j;
    m[0] = m[1] = 0.0f;
    if (kind == Q8_0) {
        d[0] = fp16_to_fp32(read_u16(blk));
        for (int l = 0; l < 32; l++) q[l] = (uint8_t)((int)(int8_t)blk[2 + l] + 128);
    } else if (kind <= Q5_1) {
        const int has_min = kind == Q4_1 || kind == Q5_1, five = kind == Q5_0 || kind == Q5_1;
        d[0] = fp16_to_fp32(read_u16(blk));
        if (has_min) m[0] = m[1] = fp16_to_fp32(read_u16(blk + 2));
        const uint32_t qh = five ? read_u32(blk + 2 + 2 * has_min) : 0;
        const uint8_t *nib = blk + 2 + 2 * has_min + 4 * five;
        for (int l = 0; l < 16; l++) {
            q[l] = (uint8_t)((nib[l] & 0x0F) | (((qh >> l) & 1) << 4));
            q[l + 16] = (uint8_t)((nib[l] >> 4) | (((qh >> (l + 16)) & 1) << 4));
        }
    } else if (kind == Q4_K || kind == Q5_K) {
        int sc, mn;
        scale_min_k4(j, blk + 4, &sc, &mn);
        d[0] = fp16_to_fp32(read_u16(blk)) * (float)sc;
        m[0] = m[1] = -fp16_to_fp32(read_u16(blk + 2)) * (float)mn;
        const uint8_t *qh = blk + 16, *nib = blk + 16 + (kind == Q5_K ? 32 : 0) + 32 * (j / 2);
        for (int l = 0; l < 32; l++) {
            int v = j % 2 ? nib[l] >> 4 : nib[l] & 0x0F;
            if (kind == Q5_K) v |= ((qh[l] >> j) & 1) << 4;
            q[l] = (uint8_t)v;
        }
    } else if (kind == IQ4_NL || kind == IQ4_XS) { /* d * grid[index], ggml's order */
        const uint8_t *nib = kind == IQ4_NL ? blk + 2 : blk + 8 + 16 * j;
        const float dd = fp16_to_fp32(read_u16(blk));
        d[0] = kind == IQ4_NL ? dd : dd * (float)(iq4_xs_scale(blk, j) - 32);
        for (int l = 0; l < 16; l++) {
            q[l] = IQ4_VALUES[nib[l] & 0x0F];
            q[l + 16] = IQ4_VALUES[nib[l] >> 4];
        }
    } else if (kind == Q2_K) { /* 2 bits from qs (shift 2 * (j % 4) in half j / 4); ggml's
                                  * dl * q - ml, with dl = d * sc and ml = dmin * m per 16 */
        const uint8_t *qs = blk + 16 + 32 * (j / 4);
        const float dd = fp16_to_fp32(read_u16(blk + 80)), dmin = fp16_to_fp32(read_u16(blk + 82));
        for (int h = 0; h < 2; h++) {
            d[h] = dd * (float)(blk[2 * j + h] & 0x0F);
            m[h] = -(dmin * (float)(blk[2 * j + h] >> 4));
        }
        for (int l = 0; l < 32; l++) q[l] = (uint8_t)((qs[l] >> (2 * (j % 4))) & 3);
        return;
    } else if (kind == Q3_K) { /* 2 low bits from qs (shift 2 * (j % 4) in half j / 4), the
                                  * third from bit j of hmask; ggml's q - (h ? 0 : 4) = (q + 4h) - 4 */
        const uint8_t *qs = blk + 32 + 32 * (j / 4);
        const float dd = fp16_to_fp32(read_u16(blk + 108));
        d[0] = dd * (float)(q3_k_scale(blk + 96, 2 * j) - 32);
        d[1] = dd * (float)(q3_k_scale(blk + 96, 2 * j + 1) - 32);
        for (int l = 0; l < 32; l++) q[l] = (uint8_t)(((qs[l] >> (2 * (j % 4))) & 3) | (((blk[l] >> j) & 1) << 2));
        return;
    } else { /* Q6_K: half h = j/4 and k = j%4 pick the low/high bits and two scales */
        const int h = j / 4, k = j % 4;
        const uint8_t *ql = blk + 64 * h + 32 * (k & 1), *qh = blk + 128 + 32 * h;
        const int8_t *sc = (const int8_t *)(blk + 192) + 8 * h + 2 * k;
        const float dd = fp16_to_fp32(read_u16(blk + 208));
        d[0] = dd * (float)sc[0];
        d[1] = dd * (float)sc[1];
        for (int l = 0; l < 32; l++) {
            const int low = k < 2 ? ql[l] & 0x0F : ql[l] >> 4;
            q[l] = (uint8_t)(low | (((qh[l] >> (2 * k)) & 3) << 4));
        }
        return;
    }
    d[1] = d[0];
}

static inline int i8_offset(int kind) { return I8_OFFSET[kind]; }

/* Scalar reference: the 32 weights of sub-block b of a row, exactly as ggml's dequantize:
 * d * (q + offset) + m from the integer form, in ggml's order of roundings. */
static void sub_block_scalar(const uint8_t *row, int kind, int64_t b, float *y) {
    if (is_float16(kind)) { /* the 32 floats themselves, widened exactly */
        const uint8_t *blk = row + 64 * b;
        for (int l = 0; l < 32; l++)
            y[l] = kind == F16 ? fp16_to_fp32(read_u16(blk + 2 * l)) : bf16_to_fp32(read_u16(blk + 2 * l));
        return;
    }
    uint8_t q[32];
    float d[2], m[2];
    sub_block_ints(row, kind, b, q, d, m);
    const int offset = i8_offset(kind);
    for (int l = 0; l < 32; l++) y[l] = d[l / 16] * (float)((int)q[l] + offset) + m[l / 16];
}

#ifdef __AVX512F__
#include <immintrin.h>

/* 32 unsigned bytes -> two float vectors (values 0-15, 16-31). */
static inline void bytes_to_floats(__m256i v, __m512 *lo, __m512 *hi) {
    *lo = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm256_castsi256_si128(v)));
    *hi = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm256_extracti128_si256(v, 1)));
}

/* Legacy 4/5-bit blocks: nibbles (+ fifth bits) as 32 unsigned bytes in weight order. */
static inline __m256i legacy_quants(const uint8_t *q, uint32_t qh, int five) {
    const __m128i raw = _mm_loadu_si128((const __m128i *)q), mask = _mm_set1_epi8(0x0F);
    __m256i v = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), mask), _mm_and_si128(raw, mask));
    if (five) v = _mm256_mask_add_epi8(v, (__mmask32)qh, v, _mm256_set1_epi8(16));
    return v;
}

/* The 32 weights of sub-block b as two float vectors; same numbers as sub_block_scalar. */
static inline void sub_block_values(const uint8_t *row, int kind, int64_t b, __m512 *lo, __m512 *hi) {
    if (is_float16(kind)) { /* widened exactly: fp16 by the F16C conversion, bf16 by a shift */
        const __m256i a = _mm256_loadu_si256((const __m256i *)(row + 64 * b));
        const __m256i c = _mm256_loadu_si256((const __m256i *)(row + 64 * b + 32));
        if (kind == F16) {
            *lo = _mm512_cvtph_ps(a), *hi = _mm512_cvtph_ps(c);
        } else {
            *lo = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(a), 16));
            *hi = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(c), 16));
        }
        return;
    }
    if (kind == Q3_K || kind == IQ4_NL || kind == IQ4_XS || kind == Q2_K) { /* the scalar form (float
                                                              * activations only: the int8 GEMM runs these) */
        float y[32];
        sub_block_scalar(row, kind, b, y);
        *lo = _mm512_loadu_ps(y), *hi = _mm512_loadu_ps(y + 16);
        return;
    }
    const sub_ref s = locate(row, kind, b);
    const uint8_t *blk = s.blk;
    const int j = s.j;
    __m512 ql, qhi, mul_lo, mul_hi, add;
    if (kind == Q8_0) {
        const __m512 d = _mm512_set1_ps(fp16_to_fp32(read_u16(blk)));
        *lo = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(blk + 2)))));
        *hi = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(blk + 18)))));
        return;
    }
    if (kind <= Q5_1) {
        const int has_min = kind == Q4_1 || kind == Q5_1, five = kind == Q5_0 || kind == Q5_1;
        const float d = fp16_to_fp32(read_u16(blk));
        const uint32_t qh = five ? read_u32(blk + 2 + 2 * has_min) : 0;
        bytes_to_floats(legacy_quants(blk + 2 + 2 * has_min + 4 * five, qh, five), &ql, &qhi);
        mul_lo = mul_hi = _mm512_set1_ps(d);
        const float offset = has_min ? 0.0f : (five ? 16.0f : 8.0f);
        add = _mm512_set1_ps(has_min ? fp16_to_fp32(read_u16(blk + 2)) : 0.0f);
        if (!has_min) { /* d*(q - offset), rounded as ggml does: subtract first */
            const __m512 off = _mm512_set1_ps(offset);
            *lo = _mm512_mul_ps(mul_lo, _mm512_sub_ps(ql, off));
            *hi = _mm512_mul_ps(mul_hi, _mm512_sub_ps(qhi, off));
            return;
        }
    } else if (kind == Q4_K || kind == Q5_K) {
        const float d = fp16_to_fp32(read_u16(blk)), dmin = fp16_to_fp32(read_u16(blk + 2));
        int sc, m;
        scale_min_k4(j, blk + 4, &sc, &m);
        const uint8_t *qhp = blk + 16, *q = blk + 16 + (kind == Q5_K ? 32 : 0) + 32 * (j / 2);
        const __m256i raw = _mm256_loadu_si256((const __m256i *)q), mask = _mm256_set1_epi8(0x0F);
        __m256i v = j % 2 ? _mm256_and_si256(_mm256_srli_epi16(raw, 4), mask) : _mm256_and_si256(raw, mask);
        if (kind == Q5_K) {
            const __m256i bits = _mm256_and_si256(_mm256_srli_epi16(_mm256_loadu_si256((const __m256i *)qhp), j),
                                                  _mm256_set1_epi8(1));
            v = _mm256_or_si256(v, _mm256_slli_epi16(bits, 4));
        }
        bytes_to_floats(v, &ql, &qhi);
        mul_lo = mul_hi = _mm512_set1_ps(d * (float)sc);
        add = _mm512_set1_ps(-dmin * (float)m);
    } else { /* Q6_K */
        const int h = j / 4, k = j % 4;
        const __m256i raw = _mm256_loadu_si256((const __m256i *)(blk + 64 * h + 32 * (k & 1)));
        const __m256i mask = _mm256_set1_epi8(0x0F);
        __m256i v = k < 2 ? _mm256_and_si256(raw, mask) : _mm256_and_si256(_mm256_srli_epi16(raw, 4), mask);
        const __m256i qh = _mm256_loadu_si256((const __m256i *)(blk + 128 + 32 * h));
        const __m256i bits = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * k), _mm256_set1_epi8(3));
        v = _mm256_or_si256(v, _mm256_slli_epi16(bits, 4));
        bytes_to_floats(v, &ql, &qhi);
        const int8_t *sc = (const int8_t *)(blk + 192) + 8 * h + 2 * k;
        const float d = fp16_to_fp32(read_u16(blk + 208));
        const __m512 off = _mm512_set1_ps(32.0f);
        /* d*sc*(q-32), in ggml's order: (d*sc) * (q-32) */
        *lo = _mm512_mul_ps(_mm512_set1_ps(d * (float)sc[0]), _mm512_sub_ps(ql, off));
        *hi = _mm512_mul_ps(_mm512_set1_ps(d * (float)sc[1]), _mm512_sub_ps(qhi, off));
        return;
    }
    /* multiply, then add: two roundings, as ggml's scalar dequantize does */
    *lo = _mm512_add_ps(_mm512_mul_ps(mul_lo, ql), add);
    *hi = _mm512_add_ps(_mm512_mul_ps(mul_hi, qhi), add);
}
#endif
