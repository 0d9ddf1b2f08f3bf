/* The int8 GEMM's many-row products on AMX tiles (Intel's tile matrix unit, where the CPU
 * has it): the same integers and the same float steps as gemm_i8_block, so the same bits.
 * Included by gemm_i8.h; it knows the int8 form's tiles and activations, not models.
 *
 * Why: a prompt's products are bound by multiply-adds; `vpdpbusd` does 64 a cycle, one
 * `tdpbssd` 16 x 16 x 32 (8,192). What is left per block of 32 inputs is the float step
 * every output needs anyway (convert, times d * da, add), which is why this measured 1.4x
 * the VNNI path's rate (docs/engine.md), not 16x.
 *
 * How: per tile of 16 output rows and chunk of 16 activation rows, for each block of 32
 * inputs (each half of 16 where a type scales every 16 weights apart): A = the chunk's
 * int8 activations (16 rows x 32 bytes, n_in apart), B = the tile's block spelled as
 * bytes (8 rows x 64 bytes: group g holds weights 4g..4g+3 of each of the 16 output rows -
 * the vpdpbusd layout is AMX's B layout), C = A.B (16 x 16 int32). Where the type has an
 * offset, the bytes are the signed weights q + offset (every such type's fit -128..127)
 * and C = sum a * (q + offset) = gemm_i8_block's offset * isum + q.a, the same integer;
 * where it has none (the types with a min; giraffe's asymmetric int8 uses 0..255) they
 * stay unsigned and C = q.a (`tdpbsud`, signed activations by unsigned weights). C goes to
 * memory and each row takes gemm_i8_block's float step, block after block, so every sum
 * rounds as there. Products alternate between two sets of tile registers (0-2, 3-5) so
 * that one block's product runs while the previous block's float step does.
 *
 * Linux grants AMX's tile state to a process that asks (arch_prctl); where it refuses, or
 * `giraffe_amx(0)` turned it off, the VNNI path runs.
 */
#pragma once
#if defined(__AMX_INT8__) && defined(__AMX_TILE__)
#define HAVE_AMX 1
#include <sys/syscall.h>
#include <unistd.h>

enum { AMX_ROWS = 16, ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18 };

static int amx_granted = -1; /* -1: not asked yet */
static int amx_wanted = 1;

/* Whether products of AMX_ROWS rows or more run on tiles: asks Linux once (outside any
 * parallel region: gemm_i8_parts calls it first). */
static int amx_on(void) {
    if (amx_granted < 0) amx_granted = syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
    return amx_granted && amx_wanted;
}

/* want 0 or 1: turn the AMX path off or on (where granted); -1: ask only. Returns whether
 * it is on now. */
int giraffe_amx(int want) {
    if (want >= 0) amx_wanted = want;
    return amx_on();
}

typedef struct __attribute__((aligned(64))) {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} amx_config;

/* Tile registers 0-2 and 3-5: A (16 rows x k activation bytes), B (k / 4 rows of 16 x 4
 * weight bytes), C (16 x 16 int32); k = 32, or 16 for types scaled per 16 weights. */
static void amx_configure(int split) {
    amx_config c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    const int k = split ? 16 : 32;
    for (int set = 0; set < 2; set++) {
        c.rows[3 * set] = AMX_ROWS, c.colsb[3 * set] = (uint16_t)k;
        c.rows[3 * set + 1] = (uint8_t)(k / 4), c.colsb[3 * set + 1] = 64;
        c.rows[3 * set + 2] = AMX_ROWS, c.colsb[3 * set + 2] = 64;
    }
    _tile_loadconfig(&c);
}

/* The activations' scales as the float steps read them: per chunk of 16 rows and block,
 * 16 floats (one per row; rows past m 0, their activations being zero-padded): da, and
 * for types with a min da * isum (da_sum; types with a min per 16 weights: da_lo, da_hi
 * of each half's sum), the very products gemm_i8_block forms. Made once per product
 * call, for every tile of every part. */
typedef struct { float *da, *da_sum, *da_lo, *da_hi; } amx_tables;

static int amx_tables_make(const i8_part *parts, int n_parts, const i8_acts *s, int n_threads, amx_tables *t) {
    int mins = 0, split_mins = 0;
    for (int k = 0; k < n_parts; k++)
        if (I8_HAS_MIN[parts[k].kind]) *(I8_SPLIT[parts[k].kind] ? &split_mins : &mins) = 1;
    const int64_t n_blocks = s->n_in / 32, chunks = (s->m + AMX_ROWS - 1) / AMX_ROWS, size = chunks * n_blocks * 16;
    float *buf = (float *)aligned_alloc(64, sizeof(float) * (size_t)(size * (1 + mins + 2 * split_mins)));
    if (!buf) return -1;
    t->da = buf, t->da_sum = mins ? buf + size : NULL;
    t->da_lo = split_mins ? buf + size * (1 + mins) : NULL, t->da_hi = split_mins ? t->da_lo + size : NULL;
    #pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int64_t c = 0; c < chunks; c++)
        for (int64_t b = 0; b < n_blocks; b++)
            for (int r = 0; r < AMX_ROWS; r++) {
                const int64_t row = c * AMX_ROWS + r, at = row * n_blocks + b, i = (c * n_blocks + b) * 16 + r;
                const int valid = row < s->m;
                const float da = valid ? s->da[at] : 0.0f;
                const int32_t sum = valid ? s->isum[at] : 0, lo = valid ? s->isum_lo[at] : 0;
                t->da[i] = da;
                if (mins) t->da_sum[i] = da * (float)sum;
                if (split_mins) t->da_lo[i] = da * (float)lo, t->da_hi[i] = da * (float)(sum - lo);
            }
    return 0;
}

/* c (16 x 16 int32) = a (16 rows, n_in apart) . b (spelled weights, signed or unsigned
 * bytes), in tile registers 0-2 or 3-5. GCC's tile intrinsics do not tell it that they
 * read and write memory: the barriers keep the stores that fill a and b before the tile
 * loads, and the loads of c after the tile store (and earlier loads of c before it). */
#define AMX_PRODUCT(A, B, C, a, n_in, b, signed_w, c) \
    do {                                              \
        __asm__ volatile("" ::: "memory");            \
        _tile_loadd(A, a, n_in);                      \
        _tile_loadd(B, b, 64);                        \
        _tile_zero(C);                                \
        if (signed_w) _tile_dpbssd(C, A, B);          \
        else _tile_dpbsud(C, A, B);                   \
        _tile_stored(C, c, 64);                       \
        __asm__ volatile("" ::: "memory");            \
    } while (0)

/* Product i of a tile's stream (block i / per, half i % per) into c + 256 * (i & 1). */
static inline __attribute__((always_inline)) void amx_issue(int64_t i, int per, const int8_t *a, int64_t n_in,
                                                             const uint8_t *w, int signed_w, int32_t *c) {
    const int64_t b = i / per, half = i % per;
    const int8_t *ai = a + 32 * b + 16 * half;
    const uint8_t *wi = w + b * I8_BLOCK_BYTES + 4 * I8_GROUP_BYTES * half;
    if (i & 1) AMX_PRODUCT(3, 4, 5, ai, n_in, wi, signed_w, c + 256);
    else AMX_PRODUCT(0, 1, 2, ai, n_in, wi, signed_w, c);
}

/* y[r][0..cols-1] for `rows` (<= 16) activation rows against one spelled tile `w` (a:
 * the chunk's 16 rows, zero-padded past `rows`). The flags are the type's, as constants.
 * c: 2 x 256 int32 of scratch. Each product is issued before the previous one's float
 * step, so that the tile unit and the vector units work side by side. */
static inline __attribute__((always_inline)) void amx_tile_rows(
    const uint8_t *w, const uint8_t *dm, int64_t n_blocks, const int8_t *a, int64_t n_in, const amx_tables *k,
    int rows, float *y, int64_t y_stride, int cols, int signed_w, int32_t *c, const int split, const int has_min,
    const int sform) {
    __m512 acc[AMX_ROWS];
    #pragma GCC unroll 16
    for (int r = 0; r < AMX_ROWS; r++) acc[r] = _mm512_setzero_ps();
    const int per = 1 + split; /* products a block: one, or one per 16-weight half */
    const int64_t n_prod = n_blocks * per;
    amx_issue(0, per, a, n_in, w, signed_w, c);
    for (int64_t i = 0; i < n_prod; i++) {
        if (i + 1 < n_prod) amx_issue(i + 1, per, a, n_in, w, signed_w, c);
        const int64_t b = i / per;
        const int half = (int)(i % per);
        const int32_t *ci = c + 256 * (i & 1);
        const float *da = k->da + 16 * b;
        const __m512 d = tile_scales(dm, n_blocks, b, half, sform, has_min, split);
        #pragma GCC unroll 16
        for (int r = 0; r < AMX_ROWS; r++) /* gemm_i8_block's step: int sum -> float, times d * da */
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(ci + 16 * r)),
                                     _mm512_mul_ps(d, _mm512_set1_ps(da[r])), acc[r]);
        if (!has_min || half != per - 1) continue;
        #pragma GCC unroll 2
        for (int mh = 0; mh < 1 + split; mh++) { /* then the block's mins */
            const __m512 m = tile_scales(dm, n_blocks, b, 1 + split + mh, sform, 1, split);
            const float *ds = (!split ? k->da_sum : mh ? k->da_hi : k->da_lo) + 16 * b;
            #pragma GCC unroll 16
            for (int r = 0; r < AMX_ROWS; r++) acc[r] = _mm512_fmadd_ps(m, _mm512_set1_ps(ds[r]), acc[r]);
        }
    }
    const __mmask16 keep = (__mmask16)((1u << cols) - 1);
    #pragma GCC unroll 16
    for (int r = 0; r < AMX_ROWS; r++) /* constant indices: acc stays in registers */
        if (r < rows) _mm512_mask_storeu_ps(y + r * y_stride, keep, acc[r]);
}

/* amx_tile_rows with the type's flags as constants (each combination its own loop). */
static void amx_tile_rows_of(int kind, int sform, const uint8_t *w, const uint8_t *dm, int64_t n_blocks,
                             const int8_t *a, int64_t n_in, const amx_tables *k, int rows, float *y,
                             int64_t y_stride, int cols, int32_t *c) {
#define AMX_CALL(SPLIT, MIN, SF) \
    amx_tile_rows(w, dm, n_blocks, a, n_in, k, rows, y, y_stride, cols, signed_w, c, SPLIT, MIN, SF)
#define AMX_FORMS(SPLIT, MIN)                                     \
    do {                                                          \
        if (sform == SF_K) AMX_CALL(SPLIT, MIN, SF_K);            \
        else if (sform == SF_HALF) AMX_CALL(SPLIT, MIN, SF_HALF); \
        else AMX_CALL(SPLIT, MIN, SF_FLOAT);                      \
    } while (0)
    const int split = I8_SPLIT[kind], has_min = I8_HAS_MIN[kind], signed_w = i8_offset(kind) != 0;
    if (split && has_min) AMX_FORMS(1, 1);
    else if (split) AMX_FORMS(1, 0);
    else if (has_min) AMX_FORMS(0, 1);
    else AMX_FORMS(0, 0);
#undef AMX_FORMS
#undef AMX_CALL
}

/* Columns of tile pair p of one weight, for all m >= AMX_ROWS rows: both tiles spelled as
 * bytes once, then each chunk of 16 rows (in L1 for both tiles) against them; the last,
 * ragged chunk from a zero-padded copy. t: amx_tables_make's. */
static void gemm_amx_pair(const i8_part *w, const i8_acts *s, const amx_tables *t, int64_t p, int64_t y_stride) {
    const int64_t n_in = s->n_in, m = s->m, n_blocks = n_in / 32, tiles = (w->n_out + I8_TILE - 1) / I8_TILE;
    const int kind = w->kind;
    const int64_t tile_dm = i8_tile_scale_bytes(kind, w->sform, n_blocks), tile_q = n_blocks * i8_block_bytes(w->form);
    const int64_t t0 = 2 * p, n_tiles = t0 + 1 < tiles ? 2 : 1, spelled_bytes = n_blocks * I8_BLOCK_BYTES;
    /* scratch: the spelled tiles, the padded last chunk, C twice */
    const int64_t pad_at = 2 * spelled_bytes, c_at = pad_at + AMX_ROWS * n_in;
    uint8_t *scratch = thread_scratch((size_t)(c_at + 2 * 1024));
    if (!scratch) { /* out of memory: the VNNI path needs no scratch for byte tiles */
        gemm_i8_pair(w, s, p, y_stride);
        return;
    }
    int8_t *padded = (int8_t *)(scratch + pad_at);
    int32_t *c = (int32_t *)(scratch + c_at);
    for (int64_t i = 0; i < n_tiles; i++) /* + the offset: signed where it has one, else unsigned */
        spell_tile(w->q + (t0 + i) * tile_q, w->form, n_blocks, i8_offset(kind), scratch + i * spelled_bytes);
    amx_configure(I8_SPLIT[kind]);
    for (int64_t r0 = 0; r0 < m; r0 += AMX_ROWS) {
        const int rows = m - r0 < AMX_ROWS ? (int)(m - r0) : AMX_ROWS;
        const int8_t *a = s->a + r0 * n_in;
        if (rows < AMX_ROWS) { /* a tile load reads 16 rows */
            memset(padded, 0, (size_t)(AMX_ROWS * n_in));
            memcpy(padded, a, (size_t)(rows * n_in));
            a = padded;
        }
        const int64_t at = r0 * n_blocks; /* this chunk's tables: (r0 / 16) * n_blocks * 16 */
        const amx_tables k = {t->da + at, t->da_sum ? t->da_sum + at : NULL, t->da_lo ? t->da_lo + at : NULL,
                              t->da_hi ? t->da_hi + at : NULL};
        for (int64_t i = 0; i < n_tiles; i++) {
            const int64_t col = (t0 + i) * I8_TILE, left = w->n_out - col;
            amx_tile_rows_of(kind, w->sform, scratch + i * spelled_bytes, w->dm + (t0 + i) * tile_dm, n_blocks, a,
                             n_in, &k, rows, w->y + r0 * y_stride + col, y_stride, left < I8_TILE ? (int)left : I8_TILE,
                             c);
        }
    }
    _tile_release();
}
#else
int giraffe_amx(int want) { (void)want; return 0; }
#endif
