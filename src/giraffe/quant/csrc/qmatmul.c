/* y = x @ W^T for W stored as ggml blocks, without unpacking W to memory.
 *
 * Block layouts (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K) live in blocks.h, which
 * turns any 32 weights of a row into floats. One input row of Q8_0/Q4_0/Q4_1 takes a
 * shortcut: per block, Q8_0 sum = d*q.x; Q4_0 sum = d*(q.x) - 8*d*sum(x);
 * Q4_1 sum = d*(q.x) + m*sum(x), with sum(x) per block computed once per input row.
 *
 * x and y are float32; accumulation is float32 in a different order than
 * "dequantize then matmul", so results agree to rounding, not bit for bit.
 * Threads: OpenMP over output rows (torch's own libgomp is reused when loaded).
 */
#include <stddef.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <omp.h>
#include <string.h>
#include <math.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

#include "blocks.h"
#include "gemm_i8.h"
#include "attention.h"

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

/* One row of blocks -> n_in floats, exactly as ggml's dequantize (see blocks.h). */
static void unpack_row(const uint8_t *row, int kind, int64_t n_blocks, float *y) {
    for (int64_t b = 0; b < n_blocks; b++) sub_block_scalar(row, kind, b, y + 32 * b);
}

#define ROW_CHUNK 8 /* input rows multiplied per pass over a weight row (accumulators in registers) */

#ifdef __AVX512F__
/* y[r][o], y[r][o+1] for up to ROW_CHUNK input rows at once: each block of the two weight
 * rows is unpacked once, into registers, and every x vector loaded serves both rows; one
 * horizontal sum per output at the end. `pair` = 0 for a last, unpaired weight row. */
static void rows_times_chunk(const uint8_t *row, int64_t row_bytes, int pair, int kind, int64_t n_blocks,
                             const float *x, int64_t n_in, int rows, float *out, int64_t out_stride) {
    __m512 acc0[ROW_CHUNK], acc1[ROW_CHUNK];
    for (int r = 0; r < ROW_CHUNK; r++) acc0[r] = acc1[r] = _mm512_setzero_ps();
    for (int64_t b = 0; b < n_blocks; b++) {
        __m512 lo0, hi0, lo1 = _mm512_setzero_ps(), hi1 = lo1;
        sub_block_values(row, kind, b, &lo0, &hi0);
        if (pair) sub_block_values(row + row_bytes, kind, b, &lo1, &hi1);
        const float *xb = x + 32 * b;
        #pragma GCC unroll 8
        for (int r = 0; r < ROW_CHUNK; r++) {
            if (r < rows) {
                const __m512 xl = _mm512_loadu_ps(xb + r * n_in), xh = _mm512_loadu_ps(xb + r * n_in + 16);
                acc0[r] = _mm512_fmadd_ps(hi0, xh, _mm512_fmadd_ps(lo0, xl, acc0[r]));
                acc1[r] = _mm512_fmadd_ps(hi1, xh, _mm512_fmadd_ps(lo1, xl, acc1[r]));
            }
        }
    }
    for (int r = 0; r < rows; r++) {
        out[r * out_stride] = _mm512_reduce_add_ps(acc0[r]);
        if (pair) out[r * out_stride + 1] = _mm512_reduce_add_ps(acc1[r]);
    }
}
#endif

#ifdef __AVX512F__
enum { HALF_ROWS = 4, HALF_PREFETCH_BYTES = 8192 };

/* How far ahead half_rows_dot(2) prefetch: a whole number of HALF_ROWS-row groups, at least
 * HALF_PREFETCH_BYTES (see half_rows_dot). */
static inline int64_t half_prefetch_ahead(int64_t row_bytes) {
    const int64_t group = HALF_ROWS * row_bytes;
    return group * ((HALF_PREFETCH_BYTES + group - 1) / group);
}

/* Block b of one F16/BF16 weight row, widened (lo: weights 0-15, hi: 16-31), and the same
 * place `ahead` bytes on prefetched. */
static inline __attribute__((always_inline)) void half_row_block(const uint8_t *row, int kind, int64_t b,
                                                                 int64_t ahead, __m512 *lo, __m512 *hi) {
    _mm_prefetch((const char *)(row + 64 * b + ahead), _MM_HINT_T1);
    sub_block_values(row, kind, b, lo, hi);
}

/* y[o..o+3] = x . w[o..o+3] for one row x over F16/BF16 weight rows (4, or fewer at the
 * end): eight independent accumulators (four rows, two halves of each 32-weight block),
 * each weight widened exactly, and the next rows' bytes prefetched. Why its own kernel:
 * rows_times_chunk, made for batches of rows, read one row's 2-byte weights at ~11 GB/s
 * (its two accumulators form dependent FMA chains); a decode step streams them.
 * Prefetch: each row's bytes a whole number of 4-row groups ahead, at least
 * HALF_PREFETCH_BYTES - the same place in a later group, which the stream (contiguous
 * rows) reaches next. A fixed 4 KB ahead mostly landed inside the group being read
 * (SmolLM2 BF16, a token: 11-12.7 ms at 4 KB, 9.2-10.5 ms with whole groups >= 8 KB,
 * 9.5-11.1 ms with a fixed 8 KB; measured 2026-12-07, three alternating rounds). */
static void half_rows_dot(const uint8_t *w, int64_t row_bytes, int kind, int n_rows, int64_t n_blocks,
                          const float *x, float *y) {
    const int64_t ahead = half_prefetch_ahead(row_bytes);
    __m512 lo[HALF_ROWS], hi[HALF_ROWS];
    for (int k = 0; k < HALF_ROWS; k++) lo[k] = hi[k] = _mm512_setzero_ps();
    for (int64_t b = 0; b < n_blocks; b++) {
        const __m512 xl = _mm512_loadu_ps(x + 32 * b), xh = _mm512_loadu_ps(x + 32 * b + 16);
        #pragma GCC unroll 4
        for (int k = 0; k < HALF_ROWS; k++) {
            if (k < n_rows) {
                __m512 wl, wh;
                half_row_block(w + k * row_bytes, kind, b, ahead, &wl, &wh);
                lo[k] = _mm512_fmadd_ps(wl, xl, lo[k]);
                hi[k] = _mm512_fmadd_ps(wh, xh, hi[k]);
            }
        }
    }
    for (int k = 0; k < n_rows; k++) y[k] = _mm512_reduce_add_ps(_mm512_add_ps(lo[k], hi[k]));
}

/* y[0][o..o+3], y[1][o..o+3] for two input rows (y_stride apart) over F16/BF16 weight rows:
 * as half_rows_dot, each weight widened once for both rows (16 accumulators). Written out
 * beside half_rows_dot on purpose: one function with a constant "second row" flag ran a
 * single row 1.7x slower (the 49152 x 576 head, 2.0 ms vs 1.1-1.2; measured 2026-12-07). */
static void half_rows_dot2(const uint8_t *w, int64_t row_bytes, int kind, int n_rows, int64_t n_blocks,
                           const float *x, int64_t n_in, float *y, int64_t y_stride) {
    const int64_t ahead = half_prefetch_ahead(row_bytes);
    __m512 lo0[HALF_ROWS], hi0[HALF_ROWS], lo1[HALF_ROWS], hi1[HALF_ROWS];
    for (int k = 0; k < HALF_ROWS; k++) lo0[k] = hi0[k] = lo1[k] = hi1[k] = _mm512_setzero_ps();
    for (int64_t b = 0; b < n_blocks; b++) {
        const __m512 xl0 = _mm512_loadu_ps(x + 32 * b), xh0 = _mm512_loadu_ps(x + 32 * b + 16);
        const __m512 xl1 = _mm512_loadu_ps(x + n_in + 32 * b), xh1 = _mm512_loadu_ps(x + n_in + 32 * b + 16);
        #pragma GCC unroll 4
        for (int k = 0; k < HALF_ROWS; k++) {
            if (k < n_rows) {
                __m512 wl, wh;
                half_row_block(w + k * row_bytes, kind, b, ahead, &wl, &wh);
                lo0[k] = _mm512_fmadd_ps(wl, xl0, lo0[k]), hi0[k] = _mm512_fmadd_ps(wh, xh0, hi0[k]);
                lo1[k] = _mm512_fmadd_ps(wl, xl1, lo1[k]), hi1[k] = _mm512_fmadd_ps(wh, xh1, hi1[k]);
            }
        }
    }
    for (int k = 0; k < n_rows; k++) {
        y[k] = _mm512_reduce_add_ps(_mm512_add_ps(lo0[k], hi0[k]));
        y[y_stride + k] = _mm512_reduce_add_ps(_mm512_add_ps(lo1[k], hi1[k]));
    }
}

/* The many-row F16/BF16 product (a prompt's): panels of PANEL_COLS output columns, each
 * widened once to float32 k-major (panel[k][c], n_in x 32 floats, in L2), against tiles of
 * PANEL_ROWS input rows: 12 rows x 2 vectors of columns = 24 accumulators, each k one
 * broadcast per row and two FMAs. Each output is summed over k in order, exactly widened
 * weights times float32 activations: dequantize-then-matmul's numbers to float32 rounding.
 * Why: half_rows_dot2 rereads every weight once per two rows; the 512-token SmolLM2 BF16
 * prompt took 2.1 s there and 0.8 s on torch's dequantize-then-GEMM. From
 * HALF_GEMM_MIN_ROWS rows on, where the two cross (1536 x 576 BF16, 2 threads: the row
 * kernel ~0.02 ms a row, the panels' widening ~0.15 ms once; measured 2026-12-07). */
enum { PANEL_COLS = 32, PANEL_ROWS = 12, HALF_GEMM_MIN_ROWS = 10 };

/* A 16 x 16 block of floats transposed in registers: r[i] = row i -> r[i] = column i. */
static inline __attribute__((always_inline)) void transpose16(__m512 r[16]) {
    __m512 t[16];
    for (int i = 0; i < 8; i++) { /* pairs of rows interleaved */
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) { /* then fours, within each 128-bit lane */
        r[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
        r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    for (int i = 0; i < 4; i++) { /* then the 128-bit lanes themselves, twice */
        t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
        t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xDD);
        t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
        t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xDD);
    }
    for (int i = 0; i < 4; i++) {
        r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xDD);
        r[i + 4] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0x88);
        r[i + 12] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0xDD);
    }
}

/* Columns o .. o + cols - 1 of the weights, widened, as panel[k][c] (columns past cols 0):
 * 16 rows' block at a time, each half of it transposed in registers (a store a float with
 * a stride of 128 bytes took ~1 ms for a 1536 x 576 weight, as long as 16 rows' GEMM). */
static void half_panel(const uint8_t *w, int kind, int64_t row_bytes, int64_t n_blocks, int64_t o, int cols,
                       float *panel) {
    for (int c0 = 0; c0 < PANEL_COLS; c0 += 16)
        for (int64_t b = 0; b < n_blocks; b++) {
            __m512 lo[16], hi[16];
            for (int c = 0; c < 16; c++) {
                if (c0 + c < cols) sub_block_values(w + (o + c0 + c) * row_bytes, kind, b, &lo[c], &hi[c]);
                else lo[c] = hi[c] = _mm512_setzero_ps();
            }
            transpose16(lo), transpose16(hi);
            for (int j = 0; j < 16; j++) {
                _mm512_store_ps(panel + (32 * b + j) * PANEL_COLS + c0, lo[j]);
                _mm512_store_ps(panel + (32 * b + 16 + j) * PANEL_COLS + c0, hi[j]);
            }
        }
}

/* y[i][0..31] (masks k0, k1) = x[i] . panel for PANEL_ROWS input rows, of which the first
 * `rows` are stored (the rest: padding). Constant indices keep the accumulators in registers. */
static inline __attribute__((always_inline)) void half_gemm_tile(const float *panel, int64_t n_in, const float *x,
                                                                 float *y, int64_t y_stride, __mmask16 k0,
                                                                 __mmask16 k1, int rows) {
    __m512 a0[PANEL_ROWS], a1[PANEL_ROWS];
    #pragma GCC unroll 12
    for (int i = 0; i < PANEL_ROWS; i++) a0[i] = a1[i] = _mm512_setzero_ps();
    for (int64_t k = 0; k < n_in; k++) {
        const __m512 w0 = _mm512_load_ps(panel + PANEL_COLS * k), w1 = _mm512_load_ps(panel + PANEL_COLS * k + 16);
        #pragma GCC unroll 12
        for (int i = 0; i < PANEL_ROWS; i++) {
            const __m512 xi = _mm512_set1_ps(x[i * n_in + k]);
            a0[i] = _mm512_fmadd_ps(w0, xi, a0[i]), a1[i] = _mm512_fmadd_ps(w1, xi, a1[i]);
        }
    }
    #pragma GCC unroll 12
    for (int i = 0; i < PANEL_ROWS; i++)
        if (i < rows) {
            _mm512_mask_storeu_ps(y + i * y_stride, k0, a0[i]);
            _mm512_mask_storeu_ps(y + i * y_stride + 16, k1, a1[i]);
        }
}

/* Returns 0, or -1 out of memory (nothing written). The last, ragged tile of rows runs
 * from a zero-padded copy (its extra rows' outputs are not stored). */
static int half_gemm(const uint8_t *w, int kind, int64_t n_out, int64_t n_in, const float *x, int64_t m, float *y,
                     int64_t y_stride, int n_threads) {
    const int64_t n_blocks = n_in / 32, row_bytes = row_bytes_of(kind, n_in);
    const int64_t panels = (n_out + PANEL_COLS - 1) / PANEL_COLS, panel_floats = n_in * PANEL_COLS;
    const int64_t full = m / PANEL_ROWS * PANEL_ROWS, tail = m - full;
    /* per thread: its panel; once: the padded tail rows */
    float *buf = (float *)aligned_alloc(64, sizeof(float) * (size_t)((n_threads * PANEL_COLS + PANEL_ROWS) * n_in));
    if (!buf) return -1;
    float *padded = buf + n_threads * panel_floats;
    memset(padded, 0, sizeof(float) * (size_t)(PANEL_ROWS * n_in));
    memcpy(padded, x + full * n_in, sizeof(float) * (size_t)(tail * n_in));
    #pragma omp parallel num_threads(n_threads)
    {
        float *panel = buf + omp_get_thread_num() * panel_floats;
        #pragma omp for schedule(static)
        for (int64_t p = 0; p < panels; p++) {
            const int64_t o = p * PANEL_COLS;
            const int cols = n_out - o < PANEL_COLS ? (int)(n_out - o) : PANEL_COLS;
            const __mmask16 k0 = (__mmask16)(cols >= 16 ? 0xFFFF : (1u << cols) - 1);
            const __mmask16 k1 = (__mmask16)(cols <= 16 ? 0 : cols >= 32 ? 0xFFFF : (1u << (cols - 16)) - 1);
            half_panel(w, kind, row_bytes, n_blocks, o, cols, panel);
            for (int64_t r = 0; r < full; r += PANEL_ROWS)
                half_gemm_tile(panel, n_in, x + r * n_in, y + r * y_stride + o, y_stride, k0, k1, PANEL_ROWS);
            if (tail) half_gemm_tile(panel, n_in, padded, y + full * y_stride + o, y_stride, k0, k1, (int)tail);
        }
    }
    free(buf);
    return 0;
}

/* Input rows (m, n_in) against F16/BF16 weights. From HALF_GEMM_MIN_ROWS rows, half_gemm;
 * below, n_threads over groups of HALF_ROWS weight rows, each group against the input rows
 * two at a time (its 4 rows stay in L1 meanwhile). For a continuous batch of decode rows
 * this reads the weights once, not once a row as rows_times_chunk's pairs of weight rows
 * nearly did (measured 2026-12-07, the 49152 x 576 head: 2 rows 2.9 ms vs 5.9, 4 rows 3.7
 * vs 8.8). */
static void half_matmul(const uint8_t *w, int kind, int64_t n_out, int64_t n_in, const float *x, int64_t m,
                        float *y, int64_t y_stride, int n_threads) {
    if (m >= HALF_GEMM_MIN_ROWS && half_gemm(w, kind, n_out, n_in, x, m, y, y_stride, n_threads) == 0) return;
    const int64_t n_blocks = n_in / 32, row_bytes = row_bytes_of(kind, n_in);
    #pragma omp parallel for num_threads(n_threads) schedule(static) if (n_threads > 1)
    for (int64_t o = 0; o < n_out; o += HALF_ROWS) {
        const int n_rows = n_out - o < HALF_ROWS ? (int)(n_out - o) : HALF_ROWS;
        const uint8_t *wo = w + o * row_bytes;
        int64_t r = 0;
        for (; r + 1 < m; r += 2)
            half_rows_dot2(wo, row_bytes, kind, n_rows, n_blocks, x + r * n_in, n_in, y + r * y_stride + o, y_stride);
        if (r < m) half_rows_dot(wo, row_bytes, kind, n_rows, n_blocks, x + r * n_in, y + r * y_stride + o);
    }
}
#endif

/* Several input rows (a decode batch): a weight block is unpacked once per ROW_CHUNK rows
 * rather than once per row, so a batch of 16 costs far less than 16 single rows. */
static void qmatmul_rows(const uint8_t *w, int kind, int64_t n_out, int64_t n_in,
                         const float *x, int64_t m, float *y, int64_t y_stride, int n_threads) {
    const int64_t n_blocks = n_in / 32, row_bytes = row_bytes_of(kind, n_in);
#ifdef __AVX512F__
    #pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int64_t o = 0; o < n_out; o += 2) {
        const int pair = o + 1 < n_out;
        for (int64_t r0 = 0; r0 < m; r0 += ROW_CHUNK) {
            const int rows = m - r0 < ROW_CHUNK ? (int)(m - r0) : ROW_CHUNK;
            rows_times_chunk(w + o * row_bytes, row_bytes, pair, kind, n_blocks, x + r0 * n_in, n_in, rows,
                             y + r0 * y_stride + o, y_stride);
        }
    }
#else
    #pragma omp parallel num_threads(n_threads)
    {
        float *wr = (float *)malloc(sizeof(float) * (size_t)n_in);
        #pragma omp for schedule(static)
        for (int64_t o = 0; o < n_out; o++) {
            unpack_row(w + o * row_bytes, kind, n_blocks, wr);
            for (int64_t r = 0; r < m; r++) {
                float acc = 0.0f;
                for (int64_t k = 0; k < n_in; k++) acc += wr[k] * x[r * n_in + k];
                y[r * y_stride + o] = acc;
            }
        }
        free(wr);
    }
#endif
}

/* w: n_out rows of packed blocks; x: (m, n_in); y: (m, y_stride), columns 0..n_out-1
 * written. Returns 0, or -1 on bad input. */
static int qmatmul_strided(const uint8_t *w, int kind, int64_t n_out, int64_t n_in,
                           const float *x, int64_t m, float *y, int64_t y_stride, int n_threads) {
    if (!kind_ok(kind, n_in)) return -1;
#ifdef __AVX512F__
    if (is_float16(kind)) {
        half_matmul(w, kind, n_out, n_in, x, m, y, y_stride, n_threads);
        return 0;
    }
#endif
    if (m > 1 || kind > Q4_1) { /* the one-row shortcut below knows the first three types */
        qmatmul_rows(w, kind, n_out, n_in, x, m, y, y_stride, n_threads);
        return 0;
    }
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
            y[r * y_stride + o] = row_dot(row, x + r * n_in, xsum + r * n_blocks, n_blocks, kind);
        }
    }
    free(xsum);
    return 0;
}

/* w: n_out rows of packed blocks; x: (m, n_in); y: (m, n_out). Returns 0, or -1 on bad input. */
int giraffe_qmatmul(const uint8_t *w, int kind, int64_t n_out, int64_t n_in,
                    const float *x, int64_t m, float *y, int n_threads) {
    return qmatmul_strided(w, kind, n_out, n_in, x, m, y, n_out, n_threads);
}

/* ---- One whole decoder layer for one token (batch 1): the decode step without Python ----
 * Pre-norm block: x += o_proj(attn(rope(qkv(rmsnorm(x))))); then
 * x += down(act(gate(h)) * up(h)) with h = rmsnorm(x), plus the wiring other families add
 * (see decode_layer). The KV cache of this layer is
 * (Hkv, S_max, D) contiguous; the new key/value go to slot `slot`, attention sees
 * slots 0..slot. cos/sin are the rotary tables for this position, sin with its first
 * half negated (rotate-half layout: out = x*cos + roll(x, D/2)*sin).
 */
/* One projection, or several of the same input side by side (q|k|v, gate|up), each part
 * with its own block type (a Q4_K_M file mixes Q5_0 q/k with Q8_0 v). */
#define MAX_PARTS 3
typedef struct {
    const uint8_t *w[MAX_PARTS]; int kind[MAX_PARTS]; int64_t n_out[MAX_PARTS];
    int n_parts; int64_t n_in; const float *bias;
    /* the parts repacked for the int8 GEMM (gemm_i8.h), or NULL; used when use_i8 is set */
    const uint8_t *q8[MAX_PARTS]; const uint8_t *dm8[MAX_PARTS]; int64_t nib8[MAX_PARTS]; int64_t use_i8;
    /* a low-rank adapter beside each part (LoRA), when lora_r > 0: y += scale * B (A x),
     * A (r, n_in) and B (n_out, r) float32 */
    const float *lora_a[MAX_PARTS]; const float *lora_b[MAX_PARTS]; int64_t lora_r[MAX_PARTS];
    float lora_scale[MAX_PARTS];
    int64_t sform8[MAX_PARTS]; /* each part's scale form in the int8 form (gemm_i8.h's SF_*) */
} packed_matrix;

static int64_t total_out(const packed_matrix *m) {
    int64_t n = 0;
    for (int p = 0; p < m->n_parts; p++) n += m->n_out[p];
    return n;
}

/* out = (offset + w) * x / sqrt(mean(x^2) + eps); offset 1 is Gemma's norm (w stored around 0).
 * out may be x. */
static void rmsnorm(const float *x, const float *w, float offset, float eps, int64_t n, float *out) {
    double ss = 0.0;
    int64_t i0 = 0;
#ifdef __AVX512F__
    /* 16 float lanes, each widened to double before it joins the sum */
    __m512d acc_lo = _mm512_setzero_pd(), acc_hi = _mm512_setzero_pd();
    for (; i0 + 16 <= n; i0 += 16) {
        const __m512 v = _mm512_loadu_ps(x + i0);
        const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
        const __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
        acc_lo = _mm512_fmadd_pd(lo, lo, acc_lo);
        acc_hi = _mm512_fmadd_pd(hi, hi, acc_hi);
    }
    ss = _mm512_reduce_add_pd(_mm512_add_pd(acc_lo, acc_hi));
#endif
    for (int64_t i = i0; i < n; i++) ss += (double)x[i] * x[i];
    const float scale = 1.0f / sqrtf((float)(ss / n) + eps);
    for (int64_t i = 0; i < n; i++) out[i] = (offset + w[i]) * (x[i] * scale);
}

/* out = (x - mean) / sqrt(var + eps) * w + b (b may be NULL): LayerNorm (GPT-2, GPT-NeoX).
 * out may be x. */
static void layernorm(const float *x, const float *w, const float *b, float eps, int64_t n, float *out) {
    double sum = 0.0, ss = 0.0;
    for (int64_t i = 0; i < n; i++) sum += x[i];
    const double mean = sum / n;
    for (int64_t i = 0; i < n; i++) ss += ((double)x[i] - mean) * ((double)x[i] - mean);
    const float scale = 1.0f / sqrtf((float)(ss / n) + eps), m = (float)mean;
    for (int64_t i = 0; i < n; i++) out[i] = (x[i] - m) * scale * w[i] + (b ? b[i] : 0.0f);
}

static inline float dot(const float *a, const float *b, int n);

/* y[:, 0..n_out-1] (rows y_stride apart) += scale * (x @ A^T) @ B^T: a LoRA delta in float32. */
static void lora_delta(const float *A, const float *B, int64_t r, float scale, int64_t n_in, int64_t n_out,
                       const float *x, int64_t rows, float *y, int64_t y_stride, int n_threads) {
    float *t = (float *)malloc(sizeof(float) * (size_t)(rows * r)); /* (rows, r) */
    if (!t) return;
    #pragma omp parallel for num_threads(n_threads) schedule(static) if (rows * r * n_in > 65536)
    for (int64_t j = 0; j < rows * r; j++) t[j] = dot(A + (j % r) * n_in, x + (j / r) * n_in, (int)n_in);
    #pragma omp parallel for num_threads(n_threads) schedule(static) if (rows * r * n_out > 65536)
    for (int64_t o = 0; o < n_out; o++)
        for (int64_t i = 0; i < rows; i++) y[i * y_stride + o] += scale * dot(B + o * r, t + i * r, (int)r);
    free(t);
}

/* y (rows, n_out) = x (rows, n_in) @ W^T + bias: the int8 parts together (activations
 * rounded once, one parallel region), then any part on the float kernel, then adapters. */
static void matmul_rows(const packed_matrix *m, const float *x, int64_t rows, float *y, int n_threads) {
    const int64_t n_out = total_out(m);
    int done[MAX_PARTS] = {0};
#ifdef HAVE_GEMM_I8
    i8_part parts[MAX_PARTS];
    int n_i8 = 0;
    for (int p = 0, col = 0; p < m->n_parts; col += m->n_out[p], p++) {
        if (!(m->q8[p] && m->use_i8)) continue;
        const i8_part w = {m->q8[p], m->dm8[p], m->kind[p], (int)m->nib8[p], (int)m->sform8[p], m->n_out[p], y + col};
        parts[n_i8++] = w;
        done[p] = 1;
    }
    i8_acts s;
    if (n_i8 && i8_acts_make(x, rows, m->n_in, n_threads, &s) == 0) {
        gemm_i8_parts(parts, n_i8, &s, n_out, n_threads);
        i8_acts_free(&s);
    } else if (n_i8) { /* out of memory: each part on its own */
        for (int p = 0; p < m->n_parts; p++) done[p] = 0;
    }
#endif
    for (int p = 0, col = 0; p < m->n_parts; col += m->n_out[p], p++)
        if (!done[p] && m->w[p]) /* (a part with tiles only is always done above) */
            qmatmul_strided(m->w[p], m->kind[p], m->n_out[p], m->n_in, x, rows, y + col, n_out, n_threads);
    for (int p = 0, col = 0; p < m->n_parts; col += m->n_out[p], p++)
        if (m->lora_r[p] > 0)
            lora_delta(m->lora_a[p], m->lora_b[p], m->lora_r[p], m->lora_scale[p], m->n_in, m->n_out[p], x, rows,
                       y + col, n_out, n_threads);
    if (m->bias)
        for (int64_t r = 0; r < rows; r++)
            for (int64_t i = 0; i < n_out; i++) y[r * n_out + i] += m->bias[i];
}

/* RoPE on the first `rot` dims of each head of d (all of them, or fewer: partial rotary);
 * cos/sin hold `rot` values. */
static void rope(float *v, int heads, int d, int rot, const float *cos, const float *sin) {
    const int half = rot / 2;
    for (int h = 0; h < heads; h++) {
        float *x = v + h * d;
        /* two straight loops (no index wrap-around) so the compiler vectorises them */
        for (int i = 0; i < half; i++) {
            const float a = x[i], b = x[i + half];
            x[i] = a * cos[i] + b * sin[i];
            x[i + half] = b * cos[i + half] + a * sin[i + half];
        }
    }
}

static inline float dot(const float *a, const float *b, int n) {
#ifdef __AVX512F__
    if (n % 16 == 0) {
        __m512 acc = _mm512_setzero_ps();
        for (int i = 0; i < n; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc);
        return _mm512_reduce_add_ps(acc);
    }
#endif
    float acc = 0.0f;
    for (int i = 0; i < n; i++) acc += a[i] * b[i];
    return acc;
}

#ifdef __AVX512F__
/* Keys lo..hi of one head of D = 16 * nd <= 256 dims, unnormalised: m the largest scaled
 * score, l = sum e^(s - m), acc = sum e^(s - m) v (D floats). The scores by vector dot
 * products, their exponentials 16 at a time (attention.h's exp512, relative error ~1e-7),
 * P V with the D sums held in registers across all keys. Why: a decode row's attention
 * walked every key with a scalar expf and rewrote the output row per key; over a long
 * context it rivals the layer's products. scores: slots lo..hi of it are written. */
static void attend_part(const float *q, const float *kc, const float *vc, int64_t lo, int64_t hi, int nd,
                        float scale, float *scores, float *acc_out, float *m_out, float *l_out) {
    const int d = 16 * nd;
    float best = -INFINITY;
    for (int64_t s = lo; s <= hi; s++) {
        scores[s] = dot(q, kc + s * d, d) * scale;
        best = scores[s] > best ? scores[s] : best;
    }
    __m512 sum = _mm512_setzero_ps();
    const __m512 top = _mm512_set1_ps(best);
    for (int64_t s = lo; s <= hi; s += 16) {
        const __mmask16 k = hi + 1 - s >= 16 ? 0xFFFF : (__mmask16)((1u << (hi + 1 - s)) - 1);
        const __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, scores + s), top));
        _mm512_mask_storeu_ps(scores + s, k, e);
        sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(k, e));
    }
    __m512 acc[16];
    for (int t = 0; t < 16; t++) acc[t] = _mm512_setzero_ps();
    for (int64_t s = lo; s <= hi; s++) {
        const __m512 p = _mm512_set1_ps(scores[s]);
        const float *v = vc + s * d;
        #pragma GCC unroll 16
        for (int t = 0; t < 16; t++)
            if (t < nd) acc[t] = _mm512_fmadd_ps(p, _mm512_loadu_ps(v + 16 * t), acc[t]);
    }
    for (int t = 0; t < nd; t++) _mm512_storeu_ps(acc_out + 16 * t, acc[t]);
    *m_out = best, *l_out = _mm512_reduce_add_ps(sum);
}

/* attend_head for heads of 16k <= 256 dims: the whole span as one part, divided by its sum. */
static void attend_head16(const float *q, const float *kc, const float *vc, int64_t first, int64_t slot, int nd,
                          float scale, float *scores, float *out) {
    float m, l;
    attend_part(q, kc, vc, first, slot, nd, scale, scores, out, &m, &l);
    const __m512 inv = _mm512_set1_ps(1.0f / l);
    for (int t = 0; t < nd; t++) _mm512_storeu_ps(out + 16 * t, _mm512_mul_ps(_mm512_loadu_ps(out + 16 * t), inv));
}
#endif

/* softmax(q . k_s * scale) over slots first..slot, then the weighted sum of v_s; with
 * softcap > 0 each score becomes softcap * tanh(score / softcap) first (Gemma 2). */
static void attend_head(const float *q, const float *kc, const float *vc, int64_t first, int64_t slot,
                        int d, float scale, float softcap, float *scores, float *out) {
#ifdef __AVX512F__
    if (d % 16 == 0 && d <= 256 && softcap <= 0.0f) {
        if (d == 64) attend_head16(q, kc, vc, first, slot, 4, scale, scores, out); /* constant trip counts */
        else attend_head16(q, kc, vc, first, slot, d / 16, scale, scores, out);
        return;
    }
#endif
    float best = -INFINITY, total = 0.0f;
    for (int64_t s = first; s <= slot; s++) {
        scores[s] = dot(q, kc + s * d, d) * scale;
        if (softcap > 0.0f) scores[s] = softcap * tanhf(scores[s] / softcap);
        if (scores[s] > best) best = scores[s];
    }
    for (int64_t s = first; s <= slot; s++) { scores[s] = expf(scores[s] - best); total += scores[s]; }
    for (int i = 0; i < d; i++) out[i] = 0.0f;
    for (int64_t s = first; s <= slot; s++) {
        const float p = scores[s] / total, *v = vc + s * d;
        for (int i = 0; i < d; i++) out[i] += p * v[i];
    }
}

/* One activation of u: SiLU, GELU's tanh form, GELU's erf form 0.5 u (1 + erf(u / sqrt 2)),
 * or ReLU. */
enum { ACT_SILU = 0, ACT_GELU_TANH = 1, ACT_GELU = 2, ACT_RELU = 3 };
static inline float act_one(float u, int act) {
    const float c = 0.7978845608028654f;
    return act == ACT_RELU        ? (u > 0.0f ? u : 0.0f)
           : act == ACT_GELU      ? 0.5f * u * (1.0f + erff(u * 0.7071067811865476f))
           : act == ACT_GELU_TANH ? 0.5f * u * (1.0f + tanhf(c * (u + 0.044715f * u * u * u)))
                                  : u / (1.0f + expf(-u));
}

/* act(gate) * up for one row of gate|up (2 * hidden floats) into out (hidden floats).
 * SiLU and GELU's tanh form vectorised: SiLU is g * sigmoid(g), and
 * 0.5 g (1 + tanh(c (g + 0.044715 g^3))), c = sqrt(2/pi), is g * sigmoid(2 c (g + 0.044715 g^3)). */
static void act_times_up(const float *gate_up, int64_t hidden, int act, float *out) {
    const float c2 = 2.0f * 0.7978845608028654f;
    int64_t i = 0;
#ifdef __AVX512F__
    for (; (act == ACT_SILU || act == ACT_GELU_TANH) && i + 16 <= hidden; i += 16) {
        const __m512 g = _mm512_loadu_ps(gate_up + i), u = _mm512_loadu_ps(gate_up + hidden + i);
        __m512 z = g;
        if (act == ACT_GELU_TANH) {
            const __m512 inner = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_set1_ps(0.044715f), g), _mm512_mul_ps(g, g), g);
            z = _mm512_mul_ps(_mm512_set1_ps(c2), inner);
        }
        const __m512 sig = _mm512_div_ps(_mm512_set1_ps(1.0f),
                                         _mm512_add_ps(_mm512_set1_ps(1.0f), exp512(_mm512_sub_ps(_mm512_setzero_ps(), z))));
        _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_mul_ps(g, sig), u));
    }
#endif
    for (; i < hidden; i++) {
        const float g = gate_up[i];
        if (act == ACT_SILU || act == ACT_GELU_TANH) { /* the sigmoid form, as the vector loop */
            const float z = act == ACT_GELU_TANH ? c2 * (g + 0.044715f * g * g * g) : g;
            out[i] = g / (1.0f + expf(-z)) * gate_up[hidden + i];
        } else {
            out[i] = act_one(g, act) * gate_up[hidden + i];
        }
    }
}

/* act(u) for one row of a plain MLP's up projection (hidden floats), into out. */
static void act_plain(const float *up, int64_t hidden, int act, float *out) {
    for (int64_t i = 0; i < hidden; i++) out[i] = act_one(up[i], act);
}

/* The arguments of one layer step, declared once (giraffe.quant.decode_step.LayerStep
 * mirrors it; the library reports its size, and the caller stamps `size`, so a mismatch
 * is refused rather than read wrongly). Per layer: weights, norms, shapes and the block's
 * wiring; per call (written by giraffe_decode_layers from its decode_call): x, n, the
 * rotary rows, the cache, the slots and the scratch. */
typedef struct {
    int64_t size; /* sizeof(layer_step) as the caller sees it */
    float *x; int64_t n; int64_t dim;
    const float *attn_norm, *mlp_norm; float eps;
    const packed_matrix *qkv, *o, *gate_up, *down;
    int n_heads, kv_heads, head_dim;
    const float *cos, *sin; float *k_cache, *v_cache;
    int64_t row_stride; const int64_t *slots; int64_t max_len, window;
    float *scratch; int n_threads;
    /* the block's wiring beyond Llama's (all zero/NULL: a plain Llama block) */
    const float *q_norm, *k_norm;               /* per-head RMSNorm on q and k before RoPE (Qwen3, Gemma 3) */
    const float *attn_post_norm, *mlp_post_norm; /* norms of each branch before its residual add (Gemma) */
    float norm_offset;                           /* every norm multiplies by (norm_offset + w) (Gemma: 1) */
    float query_scale;                           /* multiplies q.k; 0 = 1/sqrt(head_dim) */
    float attn_softcap;                          /* scores -> cap * tanh(scores / cap); 0 = none (Gemma 2) */
    int activation;                              /* ACT_*: on the gate, or on up in a plain MLP */
    /* GPT-2 / GPT-NeoX wiring (all zero/NULL: Llama's) */
    int layer_norm;                              /* the block's two norms are LayerNorms, not RMSNorm */
    const float *attn_norm_bias, *mlp_norm_bias; /* their biases (NULL: none) */
    int rope_dims;                               /* RoPE turns the first rope_dims of each head (partial
                                                    rotary); 0 = all of it; -1 = no RoPE (learned positions) */
    int plain_mlp;                               /* down(act(up(h))): gate_up holds up alone */
    int parallel;                                /* x + attn(norm(x)) + mlp(norm'(x)) (GPT-NeoX) */
    int local_rope;                              /* takes the call's local RoPE table (Gemma 3 sliding layers) */
    const int64_t *positions;                    /* per call: each row's position, its row of cos/sin */
} layer_step;

/* The rows' norm: RMSNorm with (offset + w), or LayerNorm with w and b (b may be NULL). */
static void norm_rows(const float *x, int64_t rows, int64_t dim, int layer_norm, const float *w, const float *b,
                      float offset, float eps, float *out, int parallel, int n_threads) {
    #pragma omp parallel for num_threads(n_threads) if (parallel) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        if (layer_norm) layernorm(x + r * dim, w, b, eps, dim, out + r * dim);
        else rmsnorm(x + r * dim, w, offset, eps, dim, out + r * dim);
    }
}

/* x += a, or x = (x + a) + b (a parallel residual's order), over n rows of dim. */
static void add_rows(float *x, const float *a, const float *b, int64_t n, int64_t dim, int parallel, int n_threads) {
    #pragma omp parallel for num_threads(n_threads) if (parallel) schedule(static)
    for (int64_t r = 0; r < n; r++)
        for (int64_t i = r * dim; i < (r + 1) * dim; i++) x[i] = b ? (x[i] + a[i]) + b[i] : x[i] + a[i];
}

/* Whether decode_layer (or the team) refuses a layer's arguments: 1, or 0 when it takes them. */
static int layer_refuses(const layer_step *s) {
    const int head_dim = s->head_dim, rot = s->rope_dims == 0 ? head_dim : s->rope_dims;
    if (head_dim > 512 || s->activation < ACT_SILU || s->activation > ACT_RELU) return 1;
    if (s->kv_heads < 1 || s->n_heads % s->kv_heads) return 1;
    if (rot > head_dim || (rot > 0 && rot % 2) || (rot < 0 && rot != -1)) return 1;
    if ((s->q_norm == NULL) != (s->k_norm == NULL) || (s->attn_post_norm == NULL) != (s->mlp_post_norm == NULL))
        return 1;
    if (s->parallel && s->attn_post_norm) return 1;
    const int prompt = s->row_stride == 0 && s->n > 1;
    for (int64_t r = 0; r < s->n; r++) {
        if (s->slots[r] < 0 || s->slots[r] >= s->max_len) return 1;
        if (prompt && s->slots[r] != s->slots[0] + r) return 1;
    }
    return 0;
}

/* The first key slot a row at `slot` sees: 0, or where its window starts. */
static inline int64_t first_key(int64_t slot, int64_t window) {
    return window > 0 && slot - window + 1 > 0 ? slot - window + 1 : 0;
}

/* Row r's kv head g and the queries of its group, in proj (rows of q|k|v): QK-norm and RoPE
 * at the row's position, then its key and value into the cache at the row's slot. */
static void prep_kv_head(const layer_step *s, float *proj, int64_t r, int g) {
    const int head_dim = s->head_dim, group = s->n_heads / s->kv_heads;
    const int rot = s->rope_dims == 0 ? head_dim : s->rope_dims;
    const int64_t q_size = (int64_t)s->n_heads * head_dim, kv_size = (int64_t)s->kv_heads * head_dim;
    float *q = proj + r * (q_size + 2 * kv_size) + (int64_t)g * group * head_dim;
    float *k = proj + r * (q_size + 2 * kv_size) + q_size + (int64_t)g * head_dim;
    const float *v = k + kv_size;
    if (s->q_norm) {
        for (int hd = 0; hd < group; hd++)
            rmsnorm(q + hd * head_dim, s->q_norm, s->norm_offset, s->eps, head_dim, q + hd * head_dim);
        rmsnorm(k, s->k_norm, s->norm_offset, s->eps, head_dim, k);
    }
    if (rot > 0) {
        const float *cos = s->cos + s->positions[r] * rot, *sin = s->sin + s->positions[r] * rot;
        rope(q, group, head_dim, rot, cos, sin);
        rope(k, 1, head_dim, rot, cos, sin);
    }
    const int64_t at = r * s->row_stride + ((int64_t)g * s->max_len + s->slots[r]) * head_dim;
    memcpy(s->k_cache + at, k, sizeof(float) * head_dim);
    memcpy(s->v_cache + at, v, sizeof(float) * head_dim);
}

/* Attention of one (row, head), job = row * n_heads + head, over the row's keys into att
 * (rows of n_heads * head_dim); scores: max_len floats per job. */
static void attend_job(const layer_step *s, const float *proj, float *att, float *scores, int64_t job, float scale) {
    const int head_dim = s->head_dim, n_heads = s->n_heads, group = n_heads / s->kv_heads;
    const int64_t q_size = (int64_t)n_heads * head_dim, proj_size = q_size + 2 * (int64_t)s->kv_heads * head_dim;
    const int64_t r = job / n_heads, hd = job % n_heads, slot = s->slots[r], max_len = s->max_len;
    const float *kc = s->k_cache + r * s->row_stride + (hd / group) * max_len * head_dim;
    const float *vc = s->v_cache + r * s->row_stride + (hd / group) * max_len * head_dim;
    attend_head(proj + r * proj_size + hd * head_dim, kc, vc, first_key(slot, s->window), slot, head_dim, scale,
                s->attn_softcap, scores + job * max_len, att + r * q_size + hd * head_dim);
}

/* Rows of a prompt whose MLP runs at a time (decode_layer): the MLP is row by row, so its
 * gate|up and act buffers need hold only this many rows, not the whole prompt's - for a
 * 512-token SmolLM2 prompt 2.4 MB instead of 9.4 (part of the process's peak memory, with
 * the KV cache). A layer's MLP weights (1.5-9 MB) stay in the last-level cache between
 * chunks. */
enum { MLP_ROWS = 128 };

/* Whether decode_layer runs this call's attention with attention.h's flash kernel. */
static int uses_flash(const layer_step *s, int prompt) {
#ifdef __AVX512F__
    return prompt && s->head_dim % 16 == 0 && s->head_dim <= 256 && s->attn_softcap <= 0.0f;
#else
    (void)s, (void)prompt;
    return 0;
#endif
}

/* Where decode_layer's buffers start in the scratch (in floats), for n rows; `end` is the
 * floats it needs. h, proj, att: every row's; scores: per (row, head), none with the flash
 * kernel; mlp (gate|up), act, h2 (the MLP branch): MLP_ROWS rows' at most. team_layer
 * (decode_rows.h) lays out its n <= DECODE_ROWS_MAX rows the same way. */
typedef struct { int64_t h, proj, att, scores, mlp, act, h2, end; } scratch_layout;

static scratch_layout layout_of(const layer_step *s, int64_t n, int flash) {
    const int64_t q_size = (int64_t)s->n_heads * s->head_dim, kv_size = (int64_t)s->kv_heads * s->head_dim;
    const int64_t hidden = total_out(s->gate_up) / (s->plain_mlp ? 1 : 2), m = n < MLP_ROWS ? n : MLP_ROWS;
    scratch_layout l;
    l.h = 0, l.proj = n * s->dim, l.att = l.proj + n * (q_size + 2 * kv_size), l.scores = l.att + n * q_size;
    l.mlp = l.scores + (flash ? 0 : n * s->n_heads * s->max_len);
    l.act = l.mlp + m * 2 * hidden, l.h2 = l.act + m * hidden, l.end = l.h2 + m * s->dim;
    return l;
}

/* The floats of scratch a call of n rows needs (max_len: the cache's slots; prompt: the
 * rows are one sequence's, row_stride 0): the largest any of the layers asks for. */
int64_t giraffe_decode_scratch(layer_step *steps, int n_layers, int64_t n, int64_t max_len, int prompt) {
    int64_t most = 0;
    for (int i = 0; i < n_layers; i++) {
        layer_step s = steps[i];
        s.max_len = max_len;
        const int64_t need = layout_of(&s, n, uses_flash(&s, prompt && n > 1)).end;
        most = need > most ? need : most;
    }
    return most;
}

/* The MLP half of the block for m rows of x (h: their attention branch; branch: where
 * the MLP branch goes, h itself unless parallel), with decode_layer's buffers. */
static void mlp_rows(const layer_step *s, float *x, int64_t m, const float *h, float *branch, float *mlp,
                     float *act) {
    const int64_t dim = s->dim, hidden = total_out(s->gate_up) / (s->plain_mlp ? 1 : 2);
    const int many = m > 16, n_threads = s->n_threads; /* spread per-row work only when it pays */
    norm_rows(x, m, dim, s->layer_norm, s->mlp_norm, s->mlp_norm_bias, s->norm_offset, s->eps, branch, many,
              n_threads);
    matmul_rows(s->gate_up, branch, m, mlp, n_threads);
    #pragma omp parallel for num_threads(n_threads) if (many) schedule(static)
    for (int64_t r = 0; r < m; r++) {
        if (s->plain_mlp) act_plain(mlp + r * hidden, hidden, s->activation, act + r * hidden);
        else act_times_up(mlp + r * 2 * hidden, hidden, s->activation, act + r * hidden);
    }
    matmul_rows(s->down, act, m, branch, n_threads);
    if (s->mlp_post_norm) norm_rows(branch, m, dim, 0, s->mlp_post_norm, NULL, s->norm_offset, s->eps, branch, many, n_threads);
    if (s->parallel) add_rows(x, h, branch, m, dim, many, n_threads);
    else add_rows(x, branch, NULL, m, dim, many, n_threads);
}

/* One layer for n rows at once, one token each, in one of two shapes:
 * - n sequences (continuous batching): row r's keys/values live at k_cache + r * row_stride
 *   ((Hkv, S_max, D) per row); its token goes to slot slots[r] and attends to its own
 *   slots only. n = 1 is the one-sequence decode step.
 * - a prompt (row_stride == 0, n > 1): the rows are one sequence's consecutive tokens at
 *   slots slots[0], slots[0] + 1, ...; all share one cache and attend causally
 *   (attention.h's flash kernel where built, unless the scores are soft-capped).
 * The matrix products take all n rows together (the MLP's, MLP_ROWS at a time). cos/sin
 * are RoPE tables (position, rope dims); row r takes row positions[r]. The block:
 * h = norm(x); q, k, v = qkv(h); [q, k = q_norm(q), k_norm(k) per head]; [RoPE]; cache;
 * a = o(attention); x += [attn_post_norm](a); h = norm(x);
 * x += [mlp_post_norm](down(act(gate(h)) * up(h)))   (plain MLP: down(act(up(h))));
 * or, parallel: x += a + mlp(norm'(x)) with both norms of the block's input. */
static int decode_layer(const layer_step *s) {
    float *x = s->x;
    const int64_t n = s->n, dim = s->dim, max_len = s->max_len, row_stride = s->row_stride;
    const int64_t *slots = s->slots;
    const int head_dim = s->head_dim, n_heads = s->n_heads, kv_heads = s->kv_heads, n_threads = s->n_threads;
    if (layer_refuses(s)) return -1;
    const int prompt = row_stride == 0 && n > 1, flash = uses_flash(s, prompt);
    const int64_t q_size = (int64_t)n_heads * head_dim, proj_size = q_size + 2 * (int64_t)kv_heads * head_dim;
    const scratch_layout at = layout_of(s, n, flash);
    float *h = s->scratch + at.h, *proj = s->scratch + at.proj, *att = s->scratch + at.att;
    float *scores = s->scratch + at.scores;
    const int many = n > 16; /* spread the per-row work over threads only when it pays */
    norm_rows(x, n, dim, s->layer_norm, s->attn_norm, s->attn_norm_bias, s->norm_offset, s->eps, h, many, n_threads);
    matmul_rows(s->qkv, h, n, proj, n_threads);
    #pragma omp parallel for num_threads(n_threads) if (many) schedule(static)
    for (int64_t r = 0; r < n; r++)
        for (int g = 0; g < kv_heads; g++) prep_kv_head(s, proj, r, g);
    const float scale = s->query_scale > 0.0f ? s->query_scale : 1.0f / sqrtf((float)head_dim);
#ifdef __AVX512F__
    if (flash) {
        if (giraffe_attention_causal(proj, head_dim, proj_size, s->k_cache, s->v_cache, max_len * head_dim, head_dim,
                                     n_heads, kv_heads, n, slots[n - 1] + 1, head_dim, scale, s->window, att,
                                     head_dim, q_size, n_threads) != 0)
            return -1;
    } else
#endif
    {
        #pragma omp parallel for num_threads(n_threads) schedule(static)
        for (int64_t job = 0; job < n * n_heads; job++) attend_job(s, proj, att, scores, job, scale);
    }
    matmul_rows(s->o, att, n, h, n_threads); /* h: the attention branch */
    if (s->attn_post_norm) norm_rows(h, n, dim, 0, s->attn_post_norm, NULL, s->norm_offset, s->eps, h, many, n_threads);
    if (!s->parallel) add_rows(x, h, NULL, n, dim, many, n_threads); /* the MLP reads the updated x */
    for (int64_t r0 = 0; r0 < n; r0 += MLP_ROWS) {
        const int64_t m = n - r0 < MLP_ROWS ? n - r0 : MLP_ROWS;
        /* sequential blocks: the branch may reuse h (the attention branch, already added) */
        float *branch = s->parallel ? s->scratch + at.h2 : h + r0 * dim;
        mlp_rows(s, x + r0 * dim, m, h + r0 * dim, branch, s->scratch + at.mlp, s->scratch + at.act);
    }
    return 0;
}

/* What every layer of one call shares: the rows, the cache, the RoPE tables, the scratch.
 * Layer i's cache starts layer_stride floats after layer i-1's. The RoPE tables hold
 * rope_rows positions (cos, signed sin of each, rope dims wide); row r of x is at
 * position positions[r]. Sliding layers with their own RoPE base (layer_step.local_rope)
 * take cos_local/sin_local. */
typedef struct {
    int64_t size; /* sizeof(decode_call) as the caller sees it */
    float *x; int64_t n;
    const float *cos, *sin, *cos_local, *sin_local;
    const int64_t *positions; int64_t rope_rows;
    float *k_cache, *v_cache; int64_t layer_stride;
    int64_t row_stride; const int64_t *slots; int64_t max_len;
    float *scratch; int n_threads;
    /* the model's final norm, applied to x after the last layer (NULL: the caller does);
     * of the blocks' kind (layer_norm, norm_offset, eps of steps[0]) */
    const float *final_norm, *final_norm_bias;
    int team; /* decode rows may run as one team (decode_rows.h); 0: always layer by layer */
    /* optional, so that a token step needs no Python between its id and its logits:
     * ids (n): x is first filled with these rows of `embed` (its one part: ggml blocks, or
     * int8 tiles where it has none), times embed_scale unless 0; NULL: x is given.
     * head: after the final norm, logits = x @ head^T for the rows whose next token is
     * wanted (a prompt's last row; every decode row), and argmax (may be NULL) each such
     * row's first maximal logit; NULL: no head. */
    const int64_t *ids; const packed_matrix *embed; float embed_scale;
    const packed_matrix *head; float *logits; int64_t *argmax;
} decode_call;

int giraffe_layer_step_size(void) { return (int)sizeof(layer_step); }
int giraffe_packed_matrix_size(void) { return (int)sizeof(packed_matrix); }
int giraffe_decode_call_size(void) { return (int)sizeof(decode_call); }

/* Each field's name and offset, in declaration order, of the structs Python mirrors: with
 * the sizes above, a mirror that names, orders or places any field otherwise is refused. */
typedef struct { const char *name; int64_t at; } field_place;
#define OFF(T, f) {#f, (int64_t)offsetof(T, f)}
static const field_place LAYER_STEP_FIELDS[] = {
    OFF(layer_step, size), OFF(layer_step, x), OFF(layer_step, n), OFF(layer_step, dim),
    OFF(layer_step, attn_norm), OFF(layer_step, mlp_norm), OFF(layer_step, eps), OFF(layer_step, qkv),
    OFF(layer_step, o), OFF(layer_step, gate_up), OFF(layer_step, down), OFF(layer_step, n_heads),
    OFF(layer_step, kv_heads), OFF(layer_step, head_dim), OFF(layer_step, cos), OFF(layer_step, sin),
    OFF(layer_step, k_cache), OFF(layer_step, v_cache), OFF(layer_step, row_stride), OFF(layer_step, slots),
    OFF(layer_step, max_len), OFF(layer_step, window), OFF(layer_step, scratch), OFF(layer_step, n_threads),
    OFF(layer_step, q_norm), OFF(layer_step, k_norm), OFF(layer_step, attn_post_norm),
    OFF(layer_step, mlp_post_norm), OFF(layer_step, norm_offset), OFF(layer_step, query_scale),
    OFF(layer_step, attn_softcap), OFF(layer_step, activation), OFF(layer_step, layer_norm),
    OFF(layer_step, attn_norm_bias), OFF(layer_step, mlp_norm_bias), OFF(layer_step, rope_dims),
    OFF(layer_step, plain_mlp), OFF(layer_step, parallel), OFF(layer_step, local_rope), OFF(layer_step, positions)};
static const field_place PACKED_MATRIX_FIELDS[] = {
    OFF(packed_matrix, w), OFF(packed_matrix, kind), OFF(packed_matrix, n_out), OFF(packed_matrix, n_parts),
    OFF(packed_matrix, n_in), OFF(packed_matrix, bias), OFF(packed_matrix, q8), OFF(packed_matrix, dm8),
    OFF(packed_matrix, nib8), OFF(packed_matrix, use_i8), OFF(packed_matrix, lora_a), OFF(packed_matrix, lora_b),
    OFF(packed_matrix, lora_r), OFF(packed_matrix, lora_scale), OFF(packed_matrix, sform8)};
static const field_place DECODE_CALL_FIELDS[] = {
    OFF(decode_call, size), OFF(decode_call, x), OFF(decode_call, n), OFF(decode_call, cos),
    OFF(decode_call, sin), OFF(decode_call, cos_local), OFF(decode_call, sin_local), OFF(decode_call, positions),
    OFF(decode_call, rope_rows), OFF(decode_call, k_cache), OFF(decode_call, v_cache),
    OFF(decode_call, layer_stride), OFF(decode_call, row_stride), OFF(decode_call, slots),
    OFF(decode_call, max_len), OFF(decode_call, scratch), OFF(decode_call, n_threads),
    OFF(decode_call, final_norm), OFF(decode_call, final_norm_bias), OFF(decode_call, team),
    OFF(decode_call, ids), OFF(decode_call, embed), OFF(decode_call, embed_scale), OFF(decode_call, head),
    OFF(decode_call, logits), OFF(decode_call, argmax)};
#undef OFF

/* Struct `which` (0 layer_step, 1 packed_matrix, 2 decode_call) as "name@offset,..." in
 * out (NUL-terminated); returns its field count, or -1 (unknown struct, out too small). */
int giraffe_struct_fields(int which, char *out, int cap) {
    const field_place *fields[] = {LAYER_STEP_FIELDS, PACKED_MATRIX_FIELDS, DECODE_CALL_FIELDS};
    const int counts[] = {sizeof(LAYER_STEP_FIELDS) / sizeof(field_place),
                          sizeof(PACKED_MATRIX_FIELDS) / sizeof(field_place),
                          sizeof(DECODE_CALL_FIELDS) / sizeof(field_place)};
    if (which < 0 || which > 2 || cap < 1) return -1;
    int used = 0;
    out[0] = 0;
    for (int i = 0; i < counts[which]; i++) {
        const int n = snprintf(out + used, (size_t)(cap - used), "%s%s@%lld", i ? "," : "", fields[which][i].name,
                               (long long)fields[which][i].at);
        if (n < 0 || used + n >= cap) return -1;
        used += n;
    }
    return counts[which];
}

#include "decode_rows.h"

/* x (n, dim) = rows c->ids of c->embed, as the module path looks them up: from the ggml
 * blocks (ggml's dequantize), or from the int8 tiles where the blocks gave way to them
 * (the same numbers); then times embed_scale (Gemma's sqrt(width), already a float).
 * Returns 0, or -1 on an id outside the table or a table it cannot read. */
static int embed_rows(const decode_call *c, int64_t dim) {
    const packed_matrix *e = c->embed;
    if (!e || e->n_parts != 1 || e->n_in != dim || !kind_ok(e->kind[0], dim)) return -1;
    for (int64_t r = 0; r < c->n; r++)
        if (c->ids[r] < 0 || c->ids[r] >= e->n_out[0]) return -1;
    if (e->w[0]) {
        const int64_t row_bytes = row_bytes_of(e->kind[0], dim);
        /* a prompt's rows on every thread; a decode row's on this one (a fork costs more) */
        #pragma omp parallel for num_threads(c->n_threads) schedule(static) if (c->n * dim >= 65536)
        for (int64_t r = 0; r < c->n; r++) unpack_row(e->w[0] + c->ids[r] * row_bytes, e->kind[0], dim / 32, c->x + r * dim);
    } else {
#ifdef HAVE_GEMM_I8
        if (!e->q8[0] || giraffe_dequantize_i8(e->q8[0], e->dm8[0], e->kind[0], (int)e->nib8[0], (int)e->sform8[0],
                                               e->n_out[0], dim, c->ids, c->n, c->x, c->n_threads) != 0)
            return -1;
#else
        return -1;
#endif
    }
    if (c->embed_scale != 0.0f)
        for (int64_t i = 0; i < c->n * dim; i++) c->x[i] *= c->embed_scale;
    return 0;
}

/* The first index of the row's largest value, a NaN counting as largest (numpy's and
 * torch's argmax: a greedy step picks the same token from these logits as from theirs).
 * The maximum first (16 lanes at a time), then where it first is. */
static int64_t argmax_row(const float *v, int64_t n) {
    float best = v[0];
    int nan = 0;
    int64_t i = 0;
#ifdef __AVX512F__
    __m512 m = _mm512_set1_ps(v[0]);
    for (; i + 16 <= n; i += 16) {
        const __m512 x = _mm512_loadu_ps(v + i);
        nan |= _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q) != 0;
        m = _mm512_max_ps(m, x);
    }
    best = _mm512_reduce_max_ps(m); /* (used only when no lane held a NaN) */
#endif
    for (; i < n; i++) {
        nan |= v[i] != v[i];
        if (v[i] > best) best = v[i];
    }
    for (int64_t j = 0; j < n; j++)
        if (nan ? v[j] != v[j] : v[j] == best) return j;
    return 0;
}

/* The head on the rows whose next token is wanted: a prompt's last row (its other rows only
 * fill the cache), every row of a decode call. */
static int head_rows(const decode_call *c, int64_t dim) {
    const packed_matrix *h = c->head;
    if (h->n_in != dim || !c->logits) return -1;
    const int prompt = c->row_stride == 0 && c->n > 1;
    const int64_t rows = prompt ? 1 : c->n, V = total_out(h);
    matmul_rows(h, c->x + (c->n - rows) * dim, rows, c->logits, c->n_threads);
    for (int64_t r = 0; c->argmax && r < rows; r++) c->argmax[r] = argmax_row(c->logits + r * V, V);
    return 0;
}

/* Every layer in turn for c->n rows (see decode_layer), then the final norm. A few decode
 * rows (not a prompt) run as one team of threads when c->team allows (decode_rows.h: the
 * same numbers, without a parallel region per product). */
static int run_layers(const decode_call *c, layer_step *steps, int n_layers) {
#ifdef HAVE_GEMM_I8
    const int prompt = c->row_stride == 0 && c->n > 1;
    if (c->team && !prompt && c->n <= DECODE_ROWS_MAX && n_layers > 0 && rows_team_ok(steps, n_layers)) {
        for (int i = 0; i < n_layers; i++)
            if (layer_refuses(steps + i)) return -1 - i;
        if (decode_rows_team(c, steps, n_layers) == 0) return 0;
    }
#endif
    for (int i = 0; i < n_layers; i++)
        if (decode_layer(steps + i) != 0) return -1 - i;
    if (c->final_norm && n_layers > 0)
        norm_rows(c->x, c->n, steps[0].dim, steps[0].layer_norm, c->final_norm, c->final_norm_bias,
                  steps[0].norm_offset, steps[0].eps, c->x, c->n > 16, c->n_threads);
    return 0;
}

/* One call a token, no Python between its id and its logits (after ~60 MB of weights have
 * streamed through the caches, even one small torch op costs ~0.2 ms: its code and data are
 * cold): the embedding lookup when c->ids is set, every layer, the final norm, the head
 * and its argmax when c->head is set.
 * steps: n_layers structs holding each layer's fixed arguments; the call's are written
 * into them here. Returns 0; -1 - i when layer i refused its input;
 * -1000 on a struct declared differently by the caller; -2000 when a position is past
 * the RoPE tables (the caller grows them and calls again: no cache was written);
 * -3000 on an id outside the embedding, -3001 on a head that does not fit. */
int giraffe_decode_layers(const decode_call *c, layer_step *steps, int n_layers) {
    if (!c || c->size != (int64_t)sizeof(decode_call)) return -1000;
    if (n_layers > 0 && steps[0].rope_dims != -1) /* RoPE: every row's position in the tables */
        for (int64_t r = 0; r < c->n; r++)
            if (!c->cos || c->positions[r] < 0 || c->positions[r] >= c->rope_rows) return -2000;
    for (int i = 0; i < n_layers; i++) {
        layer_step *s = steps + i;
        if (s->size != (int64_t)sizeof(layer_step)) return -1000;
        s->x = c->x, s->n = c->n;
        s->cos = s->local_rope ? c->cos_local : c->cos;
        s->sin = s->local_rope ? c->sin_local : c->sin;
        s->positions = c->positions;
        s->k_cache = c->k_cache + i * c->layer_stride, s->v_cache = c->v_cache + i * c->layer_stride;
        s->row_stride = c->row_stride, s->slots = c->slots, s->max_len = c->max_len;
        s->scratch = c->scratch, s->n_threads = c->n_threads;
    }
    if (n_layers < 1) return c->ids || c->head ? -1000 : 0; /* (the width comes from a layer) */
    const int64_t dim = steps[0].dim;
    if (c->ids && embed_rows(c, dim) != 0) return -3000;
    const int status = run_layers(c, steps, n_layers);
    if (status != 0 || !c->head) return status;
    return head_rows(c, dim) == 0 ? 0 : -3001;
}

/* Unpack n_out rows of blocks to float32 (out: n_out x n_in), as ggml's dequantize does
 * (blocks.h). Used where a float matmul wins (many input rows). */
int giraffe_dequantize(const uint8_t *w, int kind, int64_t n_out, int64_t n_in, float *out, int n_threads) {
    if (!kind_ok(kind, n_in)) return -1;
    const int64_t n_blocks = n_in / 32, row_bytes = row_bytes_of(kind, n_in);
    #pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int64_t o = 0; o < n_out; o++) unpack_row(w + o * row_bytes, kind, n_blocks, out + o * n_in);
    return 0;
}
