/* y = x @ W^T for W stored as ggml blocks (Q8_0, Q4_0, Q4_1), without unpacking W to memory.
 *
 * Layout (ggml-common.h): each row of W is n_in/32 blocks; a block has an fp16 scale d
 * (Q4_1: then an fp16 minimum m) and 32 quants. Q4 nibbles: byte j holds weight j (low)
 * and weight j+16 (high). Per block: Q8_0 sum = d*q.x; Q4_0 sum = d*(q.x) - 8*d*sum(x);
 * Q4_1 sum = d*(q.x) + m*sum(x). sum(x) per block is computed once per input row.
 *
 * x and y are float32; accumulation is float32 in a different order than
 * "dequantize then matmul", so results agree to rounding, not bit for bit.
 * Threads: OpenMP over output rows (torch's own libgomp is reused when loaded).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

enum { Q8_0 = 0, Q4_0 = 1, Q4_1 = 2 };
static const int BLOCK_BYTES[3] = {34, 18, 20};

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

/* q . x over one block of 32 weights (without scale). */
static inline float block_dot(const uint8_t *q, const float *x, int kind) {
#ifdef __AVX512F__
    __m512 lo, hi;
    if (kind == Q8_0) {
        lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)q)));
        hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(q + 16))));
    } else {
        __m128i raw = _mm_loadu_si128((const __m128i *)q), mask = _mm_set1_epi8(0x0F);
        lo = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(raw, mask)));
        hi = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(raw, 4), mask)));
    }
    __m512 acc = _mm512_mul_ps(lo, _mm512_loadu_ps(x));
    acc = _mm512_fmadd_ps(hi, _mm512_loadu_ps(x + 16), acc);
    return _mm512_reduce_add_ps(acc);
#else
    float acc = 0.0f;
    if (kind == Q8_0) {
        for (int j = 0; j < 32; j++) acc += (float)(int8_t)q[j] * x[j];
    } else {
        for (int j = 0; j < 16; j++) acc += (float)(q[j] & 0x0F) * x[j] + (float)(q[j] >> 4) * x[j + 16];
    }
    return acc;
#endif
}

static float row_dot(const uint8_t *row, const float *x, const float *xsum, int64_t n_blocks, int kind) {
    const int bytes = BLOCK_BYTES[kind];
    float total = 0.0f;
    for (int64_t b = 0; b < n_blocks; b++) {
        const uint8_t *blk = row + b * bytes;
        const float d = fp16_to_fp32(read_u16(blk));
        if (kind == Q8_0) {
            total += d * block_dot(blk + 2, x + 32 * b, kind);
        } else if (kind == Q4_0) {
            total += d * block_dot(blk + 2, x + 32 * b, kind) - 8.0f * d * xsum[b];
        } else {
            const float m = fp16_to_fp32(read_u16(blk + 2));
            total += d * block_dot(blk + 4, x + 32 * b, kind) + m * xsum[b];
        }
    }
    return total;
}

/* w: n_out rows of packed blocks; x: (m, n_in); y: (m, n_out). Returns 0, or -1 on bad input. */
int giraffe_qmatmul(const uint8_t *w, int kind, int64_t n_out, int64_t n_in,
                    const float *x, int64_t m, float *y, int n_threads) {
    if (kind < 0 || kind > 2 || n_in % 32 != 0) return -1;
    const int64_t n_blocks = n_in / 32, row_bytes = n_blocks * BLOCK_BYTES[kind];
    float *xsum = (float *)malloc(sizeof(float) * (size_t)(m * n_blocks));
    if (!xsum) return -1;
    for (int64_t i = 0; i < m * n_blocks; i++) {
        float s = 0.0f;
        for (int j = 0; j < 32; j++) s += x[i * 32 + j];
        xsum[i] = s;
    }
    #pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int64_t o = 0; o < n_out; o++) {
        const uint8_t *row = w + o * row_bytes;
        for (int64_t r = 0; r < m; r++) {
            y[r * n_out + o] = row_dot(row, x + r * n_in, xsum + r * n_blocks, n_blocks, kind);
        }
    }
    free(xsum);
    return 0;
}
