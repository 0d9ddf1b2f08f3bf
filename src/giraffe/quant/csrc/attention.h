/* Causal attention of a whole prompt in one call (prefill), float32, with grouped-query
 * heads and an optional sliding window. Included by qmatmul.c.
 *
 * Why: torch's fused CPU attention runs at ~75 GFLOP/s on SmolLM2's 64-wide heads,
 * which made attention a third of a 512-token prefill once the projections went int8.
 * This is the flash-attention recipe (Dao et al. 2022) sized for AVX-512: 4 queries at a
 * time walk the keys 64 at a time with a running max and sum (online softmax), so the
 * T x S score matrix never exists and blocks above the diagonal are never touched.
 * Keys are transposed once per call so 16 scores come out of plain FMAs, no horizontal sums.
 * Measured (2 threads, 512-token prompt): 64 keys a step instead of 16 took SmolLM2's heads
 * (9 x 64 dims) from ~92 to ~120 GFLOP/s and Gemma 3's (4 x 256) from ~72 to ~120.
 *
 * Query i sits at slot S - T + i and sees keys at slots <= its own (and > slot - window
 * when window > 0). Accumulation is float32 in another order than softmax(QK^T)V, and
 * exp is a degree-6 polynomial (relative error ~1e-7): equal to the reference to rounding.
 */
#pragma once
#ifdef __AVX512F__
#include <immintrin.h>

/* e^x on 16 lanes via e^x = 2^n e^r, |r| <= ln2/2. Lanes below -87 come out ~0. */
static inline __m512 exp512(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x); /* ln2 split in two */
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
    __m512 p = _mm512_set1_ps(1.0f / 720.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

typedef struct {
    const float *kt;  /* (D, s_pad) transposed keys of this head's kv group */
    const float *v;   /* value of slot s at v + s * v_ss */
    int64_t v_ss, s_pad, window;
    float scale;
} attn_keys;

#define AQ 4  /* queries per pass */
#define AK 64 /* keys per softmax step: 4 chunks of 16 */

/* Up to AQ consecutive queries (slots pos0..pos0+rows-1) of one head; nd = D / 16.
 * Per block of AK keys: the AQ x AK scores (16 registers), one running-max update and one
 * rescale per query (not one per 16 keys: that bookkeeping, horizontal max and sum, cost a
 * third of the time), then P V into accumulators kept in L1. Chunks of 16 keys wholly
 * outside every query's view (past the diagonal, before the window) are skipped. */
static inline __attribute__((always_inline)) void attend_queries(const float *q, int64_t q_st, int rows,
                                                                 int64_t pos0, const attn_keys *kv, int nd,
                                                                 float *out, int64_t out_st) {
    const int D = 16 * nd;
    float qs[AQ][256], m[AQ], l[AQ];
    float acc[AQ][256] __attribute__((aligned(64))), pbuf[AQ][AK] __attribute__((aligned(64)));
    for (int r = 0; r < AQ; r++) {
        m[r] = -INFINITY, l[r] = 0.0f;
        for (int d = 0; d < D; d++) qs[r][d] = r < rows ? q[r * q_st + d] * kv->scale : 0.0f, acc[r][d] = 0.0f;
        for (int j = 0; j < AK; j++) pbuf[r][j] = 0.0f; /* rows >= `rows` stay zero */
    }
    const int64_t last = pos0 + rows - 1;
    int64_t first = kv->window > 0 ? pos0 - kv->window + 1 : 0;
    if (first < 0) first = 0;
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (int64_t j0 = first & ~(int64_t)(AK - 1); j0 <= last; j0 += AK) {
        /* chunks c0..nc-1 hold a key some query sees */
        const int c0 = j0 < (first & ~(int64_t)15) ? (int)(((first & ~(int64_t)15) - j0) / 16) : 0;
        const int nc = last - j0 >= AK - 1 ? AK / 16 : (int)((last - j0) / 16) + 1;
        /* every key of those chunks seen by every query: no masks */
        const int whole = j0 + 16 * nc - 1 <= pos0 && (kv->window <= 0 || j0 + 16 * c0 > last - kv->window);
        __m512 s[AQ][AK / 16];
        for (int r = 0; r < AQ; r++)
            for (int c = 0; c < AK / 16; c++) s[r][c] = _mm512_setzero_ps();
        const float *kt = kv->kt + j0;
        for (int d = 0; d < D; d++) {
            #pragma GCC unroll 4
            for (int c = 0; c < AK / 16; c++) {
                if (c < c0 || c >= nc) continue;
                const __m512 k = _mm512_loadu_ps(kt + d * kv->s_pad + 16 * c);
                #pragma GCC unroll 4
                for (int r = 0; r < AQ; r++) s[r][c] = _mm512_fmadd_ps(_mm512_set1_ps(qs[r][d]), k, s[r][c]);
            }
        }
        for (int r = 0; r < rows; r++) {
            const int64_t pos = pos0 + r;
            __mmask16 valid[AK / 16];
            __m512 best = _mm512_set1_ps(-INFINITY);
            int any = 0;
            #pragma GCC unroll 4
            for (int c = 0; c < AK / 16; c++) {
                valid[c] = c < c0 || c >= nc ? 0 : 0xFFFF;
                if (valid[c] && !whole) {
                    const __m512i lanes = _mm512_add_epi32(_mm512_set1_epi32((int)(j0 + 16 * c)), iota);
                    valid[c] = _mm512_cmple_epi32_mask(lanes, _mm512_set1_epi32((int)pos));
                    if (kv->window > 0)
                        valid[c] &= _mm512_cmpgt_epi32_mask(lanes, _mm512_set1_epi32((int)(pos - kv->window)));
                }
                best = _mm512_mask_max_ps(best, valid[c], best, s[r][c]);
                any |= valid[c];
            }
            if (!any) {
                for (int c = 0; c < AK / 16; c++) _mm512_store_ps(pbuf[r] + 16 * c, _mm512_setzero_ps());
                continue;
            }
            const float top = _mm512_reduce_max_ps(best), m_new = top > m[r] ? top : m[r];
            const float shrink = expf(m[r] - m_new); /* 0 on the first block (m = -inf) */
            __m512 sum = _mm512_setzero_ps();
            #pragma GCC unroll 4
            for (int c = 0; c < AK / 16; c++) {
                const __m512 p = _mm512_maskz_mov_ps(valid[c], exp512(_mm512_sub_ps(s[r][c], _mm512_set1_ps(m_new))));
                sum = _mm512_add_ps(sum, p);
                _mm512_store_ps(pbuf[r] + 16 * c, p);
            }
            l[r] = l[r] * shrink + _mm512_reduce_add_ps(sum);
            m[r] = m_new;
            if (shrink != 1.0f)
                for (int t = 0; t < nd; t++)
                    _mm512_store_ps(acc[r] + 16 * t, _mm512_mul_ps(_mm512_load_ps(acc[r] + 16 * t), _mm512_set1_ps(shrink)));
        }
        /* P V, 64 dims at a time: 16 accumulators, each key's 4 probabilities broadcast once */
        const int64_t k_end = last - j0 + 1 < AK ? last - j0 + 1 : AK;
        for (int t0 = 0; t0 < nd; t0 += 4) {
            const int nt = nd - t0 < 4 ? nd - t0 : 4;
            __m512 a[AQ][4];
            #pragma GCC unroll 4
            for (int t = 0; t < 4; t++)
                for (int r = 0; r < AQ; r++) a[r][t] = t < nt ? _mm512_load_ps(acc[r] + 16 * (t0 + t)) : _mm512_setzero_ps();
            for (int64_t jj = 16 * c0; jj < k_end; jj++) {
                const float *v = kv->v + (j0 + jj) * kv->v_ss + 16 * t0;
                __m512 pr[AQ];
                for (int r = 0; r < AQ; r++) pr[r] = _mm512_set1_ps(pbuf[r][jj]);
                #pragma GCC unroll 4
                for (int t = 0; t < 4; t++) {
                    if (t >= nt) break;
                    const __m512 vv = _mm512_loadu_ps(v + 16 * t);
                    #pragma GCC unroll 4
                    for (int r = 0; r < AQ; r++) a[r][t] = _mm512_fmadd_ps(pr[r], vv, a[r][t]);
                }
            }
            #pragma GCC unroll 4
            for (int t = 0; t < 4; t++)
                for (int r = 0; r < AQ; r++)
                    if (t < nt) _mm512_store_ps(acc[r] + 16 * (t0 + t), a[r][t]);
        }
    }
    for (int r = 0; r < rows; r++) {
        const __m512 inv = _mm512_set1_ps(1.0f / l[r]);
        for (int t = 0; t < nd; t++) _mm512_storeu_ps(out + r * out_st + 16 * t, _mm512_mul_ps(_mm512_load_ps(acc[r] + 16 * t), inv));
    }
}

/* q: query i of head h at q + h*q_sh + i*q_st (T queries); k, v: slot s of kv head g at
 * k + g*kv_sh + s*kv_ss (S slots, the last T are the queries'); out like q with o_sh/o_st.
 * Needs D % 16 == 0 and D <= 256. Returns 0, or -1 on input it does not take. */
int giraffe_attention_causal(const float *q, int64_t q_sh, int64_t q_st, const float *k, const float *v,
                             int64_t kv_sh, int64_t kv_ss, int n_heads, int kv_heads, int64_t T, int64_t S,
                             int D, float scale, int64_t window, float *out, int64_t o_sh, int64_t o_st,
                             int n_threads) {
    if (D % 16 || D > 256 || T < 1 || S < T || kv_heads < 1 || n_heads % kv_heads) return -1;
    const int64_t s_pad = (S + 15) & ~(int64_t)15;
    float *kt = (float *)calloc((size_t)(kv_heads * D * s_pad), sizeof(float));
    if (!kt) return -1;
    #pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int g = 0; g < kv_heads; g++)
        for (int64_t s = 0; s < S; s++)
            for (int d = 0; d < D; d++) kt[((int64_t)g * D + d) * s_pad + s] = k[g * kv_sh + s * kv_ss + d];
    const int64_t blocks = (T + AQ - 1) / AQ, group = n_heads / kv_heads;
    /* later queries see more keys: hand out work from the end, in small pieces */
    #pragma omp parallel for num_threads(n_threads) schedule(dynamic, 2)
    for (int64_t job = n_heads * blocks - 1; job >= 0; job--) {
        const int h = (int)(job % n_heads);
        const int64_t i0 = (job / n_heads) * AQ;
        const int rows = T - i0 < AQ ? (int)(T - i0) : AQ;
        const attn_keys kv = {kt + (h / group) * D * s_pad, v + (h / group) * kv_sh, kv_ss, s_pad, window, scale};
        const float *qh = q + h * q_sh + i0 * q_st;
        float *oh = out + h * o_sh + i0 * o_st;
        if (D == 64) attend_queries(qh, q_st, rows, S - T + i0, &kv, 4, oh, o_st);
        else attend_queries(qh, q_st, rows, S - T + i0, &kv, D / 16, oh, o_st);
    }
    free(kt);
    return 0;
}
#endif
