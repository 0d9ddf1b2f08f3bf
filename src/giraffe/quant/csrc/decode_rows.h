/* A few decode rows through every layer inside one OpenMP parallel region. Included by
 * qmatmul.c after decode_layer, whose block it runs with the same numbers (bit for bit:
 * every product column, norm, RoPE row and attention head is computed by the same code;
 * only which thread computes it changes).
 *
 * Why: decode_layer opens a parallel region per product and per attention (5 a layer,
 * ~150 a SmolLM2-135M token) and runs the norms, the rounding of activations and the
 * residuals on the calling thread while the others wait. Its products are small (0.2-1 MB),
 * so each fork, join and serial stretch is a gap in the weight stream that bounds a decode
 * step. Here the threads stay together for the whole token: each keeps its own copy of the
 * rows (x), their norms and their int8 activations (recomputing them is cheaper than a
 * barrier), writes only the product columns of its own tile pairs, and meets the others at
 * a barrier only where a result of theirs is needed: after q|k|v, after RoPE and the cache
 * write, after attention, after o, after gate|up, after down (and, past TEAM_SPLIT_KEYS
 * keys, where attention splits a row's keys between the threads, before merging them).
 *
 * What it does not take (decode_layer runs those): prompts (they take the flash kernel),
 * more than DECODE_ROWS_MAX rows, and products the int8 GEMM does not run while the rows
 * ask for it (see rows_team_ok).
 */
#pragma once
#ifdef HAVE_GEMM_I8
#include <omp.h>

enum { DECODE_ROWS_MAX = 16 };
/* Keys from which a decode row's attention splits its keys between the threads rather than
 * its heads (team_attend_split). */
enum { TEAM_SPLIT_KEYS = 512 };

/* One thread's own buffers: its copy of the rows and everything derived from them. */
typedef struct {
    float *x, *h, *branch, *act, *lora_t;
    float *part; /* per (row, head): m, l and D sums of this thread's keys (team_attend_split) */
    i8_acts acts;
} team_own;

/* Share [lo, hi) of `count` items for thread tid of nth (contiguous, as schedule(static)). */
static inline void share(int64_t count, int tid, int nth, int64_t *lo, int64_t *hi) {
    *lo = count * tid / nth, *hi = count * (tid + 1) / nth;
}

static int team_own_make(team_own *t, int64_t n, int64_t width, int64_t hidden, int64_t lora_r) {
    t->x = (float *)malloc(sizeof(float) * (size_t)(n * width * 3 + n * hidden + n * (lora_r + 1)));
    t->acts.a = (int8_t *)malloc((size_t)(n * width));
    t->acts.da = (float *)malloc(sizeof(float) * (size_t)(n * width / 32 + 1));
    t->acts.isum = (int32_t *)malloc(sizeof(int32_t) * (size_t)(2 * n * width / 32 + 2));
    t->part = (float *)malloc(sizeof(float) * (size_t)(n * (width + width / 8 + 2))); /* heads >= 16 wide */
    if (!t->x || !t->acts.a || !t->acts.da || !t->acts.isum || !t->part) return -1;
    t->h = t->x + n * width, t->branch = t->h + n * width, t->act = t->branch + n * width;
    t->lora_t = t->act + n * hidden;
    return 0;
}

static void team_own_free(team_own *t) {
    free(t->x), free(t->acts.a), free(t->acts.da), free(t->acts.isum), free(t->part);
}

/* This thread's int8 activations of x (n rows of n_in), as i8_acts_make rounds them. */
static void team_round(team_own *t, const float *x, int64_t n, int64_t n_in) {
    t->acts.m = n, t->acts.n_in = n_in, t->acts.isum_lo = t->acts.isum + n * (n_in / 32);
    quantize_rows(x, n, n_in, t->acts.a, t->acts.da, t->acts.isum, t->acts.isum_lo);
}

static void team_norm(const float *x, int64_t n, int64_t dim, int layer_norm, const float *w, const float *b,
                      float offset, float eps, float *out) {
    for (int64_t r = 0; r < n; r++) {
        if (layer_norm) layernorm(x + r * dim, w, b, eps, dim, out + r * dim);
        else rmsnorm(x + r * dim, w, offset, eps, dim, out + r * dim);
    }
}

/* This thread's columns of y (n rows, total_out(m) apart) = x @ W^T + bias, with the LoRA
 * delta, each term added in matmul_rows' order. The int8 parts take t->acts (x rounded);
 * the float kernel's parts take x. */
static void team_product(const packed_matrix *m, const float *x, int64_t n, float *y, team_own *t, int tid,
                         int nth) {
    const int64_t stride = total_out(m);
    for (int p = 0, col = 0; p < m->n_parts; col += (int)m->n_out[p], p++) {
        int64_t c0, c1;
        if (m->use_i8 && m->q8[p]) {
            const i8_part w = {m->q8[p], m->dm8[p], m->kind[p], (int)m->nib8[p], (int)m->sform8[p], m->n_out[p],
                               y + col};
            int64_t lo, hi;
            share(i8_pairs(&w), tid, nth, &lo, &hi);
            for (int64_t pair = lo; pair < hi; pair++) gemm_i8_pair(&w, &t->acts, pair, stride);
            c0 = 2 * I8_TILE * lo, c1 = 2 * I8_TILE * hi < m->n_out[p] ? 2 * I8_TILE * hi : m->n_out[p];
        } else { /* pairs of weight rows, as qmatmul_rows walks them */
            share((m->n_out[p] + 1) / 2, tid, nth, &c0, &c1);
            c0 *= 2, c1 = 2 * c1 < m->n_out[p] ? 2 * c1 : m->n_out[p];
            if (c1 > c0)
                qmatmul_strided(m->w[p] + c0 * row_bytes_of(m->kind[p], m->n_in), m->kind[p], c1 - c0, m->n_in, x,
                                n, y + col + c0, stride, 1);
        }
        const int64_t r = m->lora_r[p];
        if (r > 0 && c1 > c0) {
            for (int64_t j = 0; j < n * r; j++) t->lora_t[j] = dot(m->lora_a[p] + (j % r) * m->n_in, x + (j / r) * m->n_in, (int)m->n_in);
            for (int64_t o = c0; o < c1; o++)
                for (int64_t i = 0; i < n; i++)
                    y[i * stride + col + o] += m->lora_scale[p] * dot(m->lora_b[p] + o * r, t->lora_t + i * r, (int)r);
        }
        if (m->bias)
            for (int64_t i = 0; i < n; i++)
                for (int64_t o = c0; o < c1; o++) y[i * stride + col + o] += m->bias[col + o];
    }
}

/* Attention of every (row, head), the (row, head)s shared out between the threads. */
static void team_attend_heads(const layer_step *s, const float *proj, float *att, float *scores, int tid, int nth,
                              float scale) {
    int64_t lo, hi;
    share(s->n * s->n_heads, tid, nth, &lo, &hi);
    for (int64_t job = lo; job < hi; job++) attend_job(s, proj, att, scores, job, scale);
}

/* Keys a decode row's attention spans, longest over the rows: first..slot (a window). */
static int64_t longest_span(const layer_step *s) {
    int64_t most = 0;
    for (int64_t r = 0; r < s->n; r++) {
        const int64_t span = s->slots[r] - first_key(s->slots[r], s->window) + 1;
        most = span > most ? span : most;
    }
    return most;
}

/* Attention of every (row, head) with the keys split between the threads (flash-decoding):
 * each thread takes its share of every row's keys for all heads, the heads of a kv group
 * one after another while its keys are in cache, and writes m, l and the D sums; after a
 * barrier each thread merges its share of (row, head)s. Why: split by heads, a thread's
 * heads straddle kv groups (SmolLM2: 9 heads, 3 groups, 2 threads), so a group's keys and
 * values were read from memory twice, and an odd head count leaves one thread a head more;
 * past a few hundred keys that is most of a layer. Heads of 16k <= 256 dims, no soft-cap. */
static void team_attend_split(const layer_step *s, const float *proj, float *att, float *scores, team_own *own,
                              int tid, int nth, float scale) {
    const int64_t n = s->n, max_len = s->max_len, row_stride = s->row_stride, per = s->head_dim + 2;
    const int head_dim = s->head_dim, n_heads = s->n_heads, group = n_heads / s->kv_heads;
    const int64_t q_size = (int64_t)n_heads * head_dim, proj_size = q_size + 2 * (int64_t)s->kv_heads * head_dim;
    float *mine = own[tid].part;
    for (int64_t job = 0; job < n * n_heads; job++) {
        const int64_t r = job / n_heads, hd = job % n_heads, slot = s->slots[r], first = first_key(slot, s->window);
        const int64_t span = slot - first + 1, lo = first + span * tid / nth, hi = first + span * (tid + 1) / nth - 1;
        float *pt = mine + job * per;
        if (hi < lo) { pt[0] = -INFINITY, pt[1] = 0.0f; continue; }
        const float *kc = s->k_cache + r * row_stride + (hd / group) * max_len * head_dim;
        const float *vc = s->v_cache + r * row_stride + (hd / group) * max_len * head_dim;
        attend_part(proj + r * proj_size + hd * head_dim, kc, vc, lo, hi, head_dim / 16, scale, scores + job * max_len,
                    pt + 2, pt, pt + 1);
    }
    #pragma omp barrier
    int64_t lo, hi;
    share(n * n_heads, tid, nth, &lo, &hi);
    for (int64_t job = lo; job < hi; job++) {
        float top = -INFINITY, total = 0.0f, *out = att + (job / n_heads) * q_size + (job % n_heads) * head_dim;
        for (int u = 0; u < nth; u++) top = own[u].part[job * per] > top ? own[u].part[job * per] : top;
        for (int i = 0; i < head_dim; i++) out[i] = 0.0f;
        for (int u = 0; u < nth; u++) {
            const float *pt = own[u].part + job * per;
            if (pt[0] == -INFINITY) continue; /* no keys in this thread's share */
            const float w = expf(pt[0] - top);
            total += w * pt[1];
            for (int i = 0; i < head_dim; i++) out[i] += w * pt[2 + i];
        }
        for (int i = 0; i < head_dim; i++) out[i] /= total;
    }
}

/* Whether the rows of this call can run as a team: the products the rows will take are
 * there (int8 tiles where use_i8, else ggml blocks). */
static int rows_team_ok(const layer_step *steps, int n_layers) {
    for (int i = 0; i < n_layers; i++) {
        const packed_matrix *ms[4] = {steps[i].qkv, steps[i].o, steps[i].gate_up, steps[i].down};
        for (int k = 0; k < 4; k++)
            for (int p = 0; p < ms[k]->n_parts; p++)
                if (!(ms[k]->use_i8 && ms[k]->q8[p]) && !ms[k]->w[p]) return 0;
    }
    return 1;
}

/* One layer for this thread (its input checked by layer_refuses); s->x is not touched
 * (the rows live in t->x); s->scratch shared, laid out as decode_layer's. */
static void team_layer(const layer_step *s, team_own *own, int tid, int nth) {
    team_own *t = own + tid;
    const int64_t n = s->n, dim = s->dim;
    const int head_dim = s->head_dim, n_heads = s->n_heads, kv_heads = s->kv_heads, ln = s->layer_norm;
    const float off = s->norm_offset, eps = s->eps;
    const int64_t q_size = (int64_t)n_heads * head_dim;
    const int64_t hidden = total_out(s->gate_up) / (s->plain_mlp ? 1 : 2);
    const scratch_layout at = layout_of(s, n, 0); /* decode_layer's, n <= DECODE_ROWS_MAX < MLP_ROWS */
    float *o_out = s->scratch + at.h, *proj = s->scratch + at.proj, *att = s->scratch + at.att;
    float *scores = s->scratch + at.scores, *mlp = s->scratch + at.mlp, *down_out = s->scratch + at.h2;
    int64_t lo, hi;

    team_norm(t->x, n, dim, ln, s->attn_norm, s->attn_norm_bias, off, eps, t->h);
    team_round(t, t->h, n, dim);
    team_product(s->qkv, t->h, n, proj, t, tid, nth);
    #pragma omp barrier
    share(n * kv_heads, tid, nth, &lo, &hi); /* a kv head's keys and values, and its queries */
    for (int64_t job = lo; job < hi; job++) prep_kv_head(s, proj, job / kv_heads, (int)(job % kv_heads));
    #pragma omp barrier
    const float scale = s->query_scale > 0.0f ? s->query_scale : 1.0f / sqrtf((float)head_dim);
    if (nth > 1 && head_dim % 16 == 0 && head_dim <= 256 && s->attn_softcap <= 0.0f &&
        longest_span(s) >= TEAM_SPLIT_KEYS)
        team_attend_split(s, proj, att, scores, own, tid, nth, scale);
    else
        team_attend_heads(s, proj, att, scores, tid, nth, scale);
    #pragma omp barrier
    team_round(t, att, n, q_size);
    team_product(s->o, att, n, o_out, t, tid, nth);
    #pragma omp barrier
    /* t->branch: the attention branch (post-normed), kept for a parallel residual */
    if (s->attn_post_norm) team_norm(o_out, n, dim, 0, s->attn_post_norm, NULL, off, eps, t->branch);
    else memcpy(t->branch, o_out, sizeof(float) * (size_t)(n * dim));
    if (!s->parallel)
        for (int64_t i = 0; i < n * dim; i++) t->x[i] += t->branch[i];
    team_norm(t->x, n, dim, ln, s->mlp_norm, s->mlp_norm_bias, off, eps, t->h);
    team_round(t, t->h, n, dim);
    team_product(s->gate_up, t->h, n, mlp, t, tid, nth);
    #pragma omp barrier
    for (int64_t r = 0; r < n; r++) {
        if (s->plain_mlp) act_plain(mlp + r * hidden, hidden, s->activation, t->act + r * hidden);
        else act_times_up(mlp + r * 2 * hidden, hidden, s->activation, t->act + r * hidden);
    }
    team_round(t, t->act, n, hidden);
    team_product(s->down, t->act, n, down_out, t, tid, nth);
    #pragma omp barrier
    float *m_out = t->h; /* the MLP branch, post-normed where the block says */
    if (s->mlp_post_norm) team_norm(down_out, n, dim, 0, s->mlp_post_norm, NULL, off, eps, m_out);
    else memcpy(m_out, down_out, sizeof(float) * (size_t)(n * dim));
    if (s->parallel)
        for (int64_t i = 0; i < n * dim; i++) t->x[i] = (t->x[i] + t->branch[i]) + m_out[i];
    else
        for (int64_t i = 0; i < n * dim; i++) t->x[i] += m_out[i];
}

/* Every layer (steps filled in and checked by the caller) and the final norm for c->n
 * decode rows, in one parallel region. Returns 0, or -1 when the threads' own buffers could
 * not be allocated (nothing written: the caller runs decode_layer instead). */
static int decode_rows_team(const decode_call *c, const layer_step *steps, int n_layers) {
    const int64_t n = c->n, dim = steps[0].dim;
    int64_t width = dim, hidden = 0, lora_r = 0;
    for (int i = 0; i < n_layers; i++) {
        const layer_step *s = steps + i;
        const int64_t q_size = (int64_t)s->n_heads * s->head_dim, h = total_out(s->gate_up) / (s->plain_mlp ? 1 : 2);
        width = q_size > width ? q_size : width, width = h > width ? h : width, hidden = h > hidden ? h : hidden;
        const packed_matrix *ms[4] = {s->qkv, s->o, s->gate_up, s->down};
        for (int k = 0; k < 4; k++)
            for (int p = 0; p < ms[k]->n_parts; p++) lora_r = ms[k]->lora_r[p] > lora_r ? ms[k]->lora_r[p] : lora_r;
    }
    const int threads = c->n_threads > 0 ? c->n_threads : 1;
    team_own *own = (team_own *)calloc((size_t)threads, sizeof(team_own));
    int made = own != NULL;
    for (int i = 0; made && i < threads; i++) made = team_own_make(own + i, n, width, hidden, lora_r) == 0;
    if (made) {
        #pragma omp parallel num_threads(threads)
        {
            const int tid = omp_get_thread_num(), nth = omp_get_num_threads();
            team_own *t = own + tid;
            memcpy(t->x, c->x, sizeof(float) * (size_t)(n * dim));
            for (int i = 0; i < n_layers; i++) team_layer(steps + i, own, tid, nth);
            if (tid == 0 && c->final_norm)
                team_norm(t->x, n, dim, steps[0].layer_norm, c->final_norm, c->final_norm_bias, steps[0].norm_offset,
                          steps[0].eps, c->x);
            else if (tid == 0)
                memcpy(c->x, t->x, sizeof(float) * (size_t)(n * dim));
        }
    }
    for (int i = 0; own && i < threads; i++) team_own_free(own + i);
    free(own);
    return made ? 0 : -1;
}
#endif
