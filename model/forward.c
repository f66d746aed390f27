/* forward.c — the Llama 2 forward pass over a block table: prefill and batched decode.
 *
 * Prefill computes n tokens of one sequence at once: every projection is one cblas_sgemm over
 * all n rows (Q|K|V fused into one product, W1|W3 into another), whose per-row arithmetic does
 * not depend on n, so a prompt split anywhere gives bitwise the same K/V and logits. Decode runs
 * one token for each of b sequences with a matmul kernel of our own that streams each weight row
 * once for all b inputs and computes every output with a fixed summation order, so a sequence's
 * result does not depend on the batch it runs in. Attention is one kernel for both: a query
 * attends over the K/V blocks of its sequence with a fixed order, whatever the split.
 *
 * K/V live only in the caller's blocks (model.h gives the layout); the state holds activations
 * sized at creation, and the forward pass never allocates.
 */
#include "model.h"
#include "pool.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* Provided by OpenBLAS (declared in its cblas.h as well, but not in every BLAS's). */
void openblas_set_num_threads(int num_threads);

typedef float v8f __attribute__((vector_size(32), aligned(4)));

/* a * b + c per lane, fused where the CPU has FMA. Every kernel here spells out its fused
 * operations with these (the file is compiled with -ffp-contract=off), so the compiler never
 * decides differently in two places and an output's arithmetic is the same on every path. */
#ifdef __FMA__
#include <immintrin.h>
static inline v8f fma8(v8f a, v8f b, v8f c)
{
    return (v8f)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
}
static inline float fma1(float a, float b, float c)
{
    return __builtin_fmaf(a, b, c);
}
#else
static inline v8f fma8(v8f a, v8f b, v8f c)
{
    return a * b + c;
}
static inline float fma1(float a, float b, float c)
{
    return a * b + c;
}
#endif

struct model_state {
    const model *m;
    model_config c;
    model_weights w;
    model_state_opts o;
    model__pool *pool;
    int rows;         /* activation rows: max(max_prefill, max_batch) */
    int qkv_dim;      /* dim + 2 kv_dim */
    float *wqkv;      /* (layer, qkv_dim, dim): wq | wk | wv */
    float *w13;       /* (layer, 2 hidden, dim): w1 | w3 */
    float *x;         /* (rows, dim) residual stream */
    float *xb;        /* (rows, dim) */
    float *att;       /* (rows, dim) attention output */
    float *qkv;       /* (rows, qkv_dim) */
    float *h13;       /* (rows, 2 hidden) */
    float *hb;        /* (rows, hidden) */
    float *rope_cos;  /* (seq_len, head_size / 2) */
    float *rope_sin;  /* (seq_len, head_size / 2) */
    float *scores;    /* (threads, ATT_TILE, seq_len) attention scratch */
    size_t kv_stride; /* floats between one (layer, kv, head) and the next inside a block */
};

/* ---- Small kernels ------------------------------------------------------------------------ */

/* x (n) . y (n): a fixed summation order (eight lanes, pairwise reduction), vectorised. */
static float dot(const float *x, const float *y, int n)
{
    v8f acc0 = {0}, acc1 = {0};
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        v8f a0, b0, a1, b1;
        memcpy(&a0, x + i, 32);
        memcpy(&b0, y + i, 32);
        memcpy(&a1, x + i + 8, 32);
        memcpy(&b1, y + i + 8, 32);
        acc0 = fma8(a0, b0, acc0);
        acc1 = fma8(a1, b1, acc1);
    }
    for (; i + 8 <= n; i += 8) {
        v8f a0, b0;
        memcpy(&a0, x + i, 32);
        memcpy(&b0, y + i, 32);
        acc0 = fma8(a0, b0, acc0);
    }
    v8f acc = acc0 + acc1;
    float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (; i < n; i++)
        s = fma1(x[i], y[i], s);
    return s;
}

/* y (n) += a * x (n) */
static void axpy(float *y, float a, const float *x, int n)
{
    int i = 0;
    v8f av = {a, a, a, a, a, a, a, a};
    for (; i + 8 <= n; i += 8) {
        v8f xv, yv;
        memcpy(&xv, x + i, 32);
        memcpy(&yv, y + i, 32);
        yv = fma8(av, xv, yv);
        memcpy(y + i, &yv, 32);
    }
    for (; i < n; i++)
        y[i] = fma1(a, x[i], y[i]);
}

/* out (hs) += sum over t < n of p[t] * v[t] (v: n rows of hs floats), in t order for each
 * element, exactly as n calls of axpy would, but with out held in registers 64 floats at a time
 * instead of loaded and stored for every key. */
static void av_accumulate(float *out, const float *p, const float *v, int n, int hs)
{
    int i0 = 0;
    for (; i0 + 64 <= hs; i0 += 64) {
        v8f o[8];
        memcpy(o, out + i0, sizeof o);
        for (int t = 0; t < n; t++) {
            v8f pv = {p[t], p[t], p[t], p[t], p[t], p[t], p[t], p[t]};
            const float *vr = v + (size_t)t * hs + i0;
            for (int k = 0; k < 8; k++) {
                v8f x;
                memcpy(&x, vr + 8 * k, 32);
                o[k] = fma8(pv, x, o[k]);
            }
        }
        memcpy(out + i0, o, sizeof o);
    }
    if (i0 < hs)
        for (int t = 0; t < n; t++)
            axpy(out + i0, p[t], v + (size_t)t * hs + i0, hs - i0);
}

/* o (n) = rmsnorm(x (n)) * w (n) */
static void rmsnorm(float *o, const float *x, const float *w, int n)
{
    float ss = 0.0f;
    for (int i = 0; i < n; i++)
        ss += x[i] * x[i];
    ss /= (float)n;
    ss += 1e-5f;
    ss = 1.0f / sqrtf(ss);
    for (int i = 0; i < n; i++)
        o[i] = w[i] * (ss * x[i]);
}

/* Rotates the pairs of one head's vector v (head_size) for position pos. */
static void rope(const model_state *s, float *v, int pos)
{
    int half = s->c.head_size / 2;
    const float *cs = s->rope_cos + (size_t)pos * half, *sn = s->rope_sin + (size_t)pos * half;
    for (int j = 0; j < half; j++) {
        float a = v[2 * j], b = v[2 * j + 1];
        v[2 * j] = a * cs[j] - b * sn[j];
        v[2 * j + 1] = a * sn[j] + b * cs[j];
    }
}

/* The address of position row `row` of (layer, kv, head) inside one block. */
static inline float *kv_row(const model_state *s, float *block, int layer, int kv, int head,
                            int row)
{
    return block + ((size_t)(layer * 2 + kv) * s->c.n_kv_heads + head) * s->kv_stride +
           (size_t)row * s->c.head_size;
}

/* ---- Decode matmul: W (d, n) @ X (b, n)^T -> Y (b, d), rows split across the pool ---------- */

typedef struct matmul_job {
    const float *w;
    const float *x;
    float *y;
    int n, d, b;
    int rows_per_task;
} matmul_job;

static inline float reduce8(v8f a)
{
    return ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
}

static inline v8f load8(const float *p)
{
    v8f v;
    memcpy(&v, p, 32);
    return v;
}

/* One output: w (n) . x (n) as every decode product computes it: eight lanes accumulated over
 * the 8-float chunks in order, a fixed pairwise reduction, then the tail in order. The tiled
 * kernel below computes each of its outputs with exactly this sequence. */
static float dot_decode(const float *w, const float *x, int n)
{
    v8f a = {0};
    int k = 0;
    for (; k + 8 <= n; k += 8)
        a = fma8(load8(w + k), load8(x + k), a);
    float s = reduce8(a);
    for (; k < n; k++)
        s = fma1(w[k], x[k], s);
    return s;
}

/* Four weight rows against two inputs at once: each weight chunk is loaded once for both
 * inputs and each input chunk once for four rows. */
static void dot_4x2(const float *w, size_t ws, const float *x, size_t xs, int n, float out[4][2])
{
    v8f a[4][2] = {{{0}}};
    int k = 0;
    for (; k + 8 <= n; k += 8) {
        v8f x0 = load8(x + k), x1 = load8(x + xs + k);
        for (int r = 0; r < 4; r++) {
            v8f wr = load8(w + (size_t)r * ws + k);
            a[r][0] = fma8(wr, x0, a[r][0]);
            a[r][1] = fma8(wr, x1, a[r][1]);
        }
    }
    for (int r = 0; r < 4; r++)
        for (int i = 0; i < 2; i++) {
            float s = reduce8(a[r][i]);
            for (int t = k; t < n; t++)
                s = fma1(w[(size_t)r * ws + t], x[(size_t)i * xs + t], s);
            out[r][i] = s;
        }
}

static void matmul_task(void *arg, int task, int worker)
{
    (void)worker;
    const matmul_job *j = arg;
    int lo = task * j->rows_per_task;
    int hi = lo + j->rows_per_task < j->d ? lo + j->rows_per_task : j->d;
    size_t n = (size_t)j->n;
    int o = lo;
    for (; o + 4 <= hi; o += 4) {
        const float *wr = j->w + (size_t)o * n;
        int i = 0;
        for (; i + 2 <= j->b; i += 2) {
            float out[4][2];
            dot_4x2(wr, n, j->x + (size_t)i * n, n, j->n, out);
            for (int r = 0; r < 4; r++) {
                j->y[(size_t)i * j->d + o + r] = out[r][0];
                j->y[(size_t)(i + 1) * j->d + o + r] = out[r][1];
            }
        }
        for (; i < j->b; i++)
            for (int r = 0; r < 4; r++)
                j->y[(size_t)i * j->d + o + r] =
                    dot_decode(wr + (size_t)r * n, j->x + (size_t)i * n, j->n);
    }
    for (; o < hi; o++)
        for (int i = 0; i < j->b; i++)
            j->y[(size_t)i * j->d + o] =
                dot_decode(j->w + (size_t)o * n, j->x + (size_t)i * n, j->n);
}

static void matmul(model_state *s, float *y, const float *x, const float *w, int b, int n, int d)
{
    matmul_job j = {w, x, y, n, d, b, 0};
    int tasks = model__pool_threads(s->pool) * 8;
    if (tasks > d)
        tasks = d;
    j.rows_per_task = ((d + tasks - 1) / tasks + 3) / 4 * 4;
    tasks = (d + j.rows_per_task - 1) / j.rows_per_task;
    model__pool_run(s->pool, matmul_task, &j, tasks);
}

/* Prefill products: X (T, n) @ W (d, n)^T -> Y (T, d) with OpenBLAS, the d output columns split
 * across the pool, each slice one single-threaded cblas_sgemm. OpenBLAS's own threads stay off:
 * after each call they spin (with sched_yield) for a while, and on two cores they then fight
 * the attention workers that run right after; one pool for everything avoids that. */
typedef struct gemm_job {
    float *y;
    const float *x, *w;
    int t, n, d, slice;
} gemm_job;

static void gemm_task(void *arg, int task, int worker)
{
    (void)worker;
    const gemm_job *j = arg;
    int lo = task * j->slice, cols = j->d - lo < j->slice ? j->d - lo : j->slice;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, j->t, cols, j->n, 1.0f, j->x, j->n,
                j->w + (size_t)lo * j->n, j->n, 0.0f, j->y + lo, j->d);
}

static void gemm(model_state *s, float *y, const float *x, const float *w, int t, int n, int d)
{
    int threads = model__pool_threads(s->pool);
    /* Slices of whole 64-column panels, one per thread. */
    int slice = ((d + threads - 1) / threads + 63) / 64 * 64;
    int tasks = (d + slice - 1) / slice;
    gemm_job j = {y, x, w, t, n, d, slice};
    model__pool_run(s->pool, gemm_task, &j, tasks);
}

/* ---- Attention ------------------------------------------------------------------------------ */

typedef struct att_job {
    model_state *s;
    const model_kv *kv; /* one per row (decode) or one for all rows (prefill) */
    int kv_per_row;
    const int *pos; /* per row, or NULL with pos0 */
    int pos0;
    int layer;
    int rows;
} att_job;

/* Rows attended together in prefill: their keys and values are read once per tile from the
 * blocks (L1-resident), instead of once per row. */
#define ATT_TILE 16

/* One query head of rows [r0, r1) (one sequence; rows at consecutive positions in prefill, a
 * single row in decode) attends over positions 0..p of each row. Every score is dot(q, k) and
 * every output the sum of p_t * v_t in position order, whatever the tiling: a row's result does
 * not depend on which rows share its tile. */
static void att_rows(const att_job *j, int h, int r0, int r1, int worker)
{
    model_state *s = j->s;
    const model_config *c = &s->c;
    const model_kv *kv = j->kv_per_row ? &j->kv[r0] : j->kv;
    int hs = c->head_size, B = s->o.block_tokens, seq = c->seq_len;
    int kvh = h / (c->n_heads / c->n_kv_heads);
    float scale = 1.0f / sqrtf((float)hs);
    float *sc = s->scores + (size_t)worker * ATT_TILE * seq;
    int pmax = j->pos ? j->pos[r0] : j->pos0 + r1 - 1;
    /* Scores, block by block of keys. */
    for (int b0 = 0; b0 <= pmax; b0 += B) {
        int b1 = b0 + B - 1 < pmax ? b0 + B - 1 : pmax;
        float *block = kv->blocks[b0 / B];
        for (int r = r0; r < r1; r++) {
            int p = j->pos ? j->pos[r] : j->pos0 + r;
            const float *q = s->qkv + (size_t)r * s->qkv_dim + (size_t)h * hs;
            float *row = sc + (size_t)(r - r0) * seq;
            int end = b1 < p ? b1 : p;
            for (int t = b0; t <= end; t++)
                row[t] = dot(q, kv_row(s, block, j->layer, 0, kvh, t - b0), hs) * scale;
        }
    }
    /* Softmax per row, in place. */
    for (int r = r0; r < r1; r++) {
        int p = j->pos ? j->pos[r] : j->pos0 + r;
        float *row = sc + (size_t)(r - r0) * seq;
        float mx = -INFINITY;
        for (int t = 0; t <= p; t++)
            if (row[t] > mx)
                mx = row[t];
        float sum = 0.0f;
        for (int t = 0; t <= p; t++) {
            row[t] = expf(row[t] - mx);
            sum += row[t];
        }
        float inv = 1.0f / sum;
        for (int t = 0; t <= p; t++)
            row[t] *= inv;
        memset(s->att + (size_t)r * c->dim + (size_t)h * hs, 0, (size_t)hs * sizeof(float));
    }
    /* Weighted values, block by block. */
    for (int b0 = 0; b0 <= pmax; b0 += B) {
        int b1 = b0 + B - 1 < pmax ? b0 + B - 1 : pmax;
        float *block = kv->blocks[b0 / B];
        for (int r = r0; r < r1; r++) {
            int p = j->pos ? j->pos[r] : j->pos0 + r;
            const float *row = sc + (size_t)(r - r0) * seq;
            float *out = s->att + (size_t)r * c->dim + (size_t)h * hs;
            int end = b1 < p ? b1 : p;
            if (end >= b0)
                av_accumulate(out, row + b0, kv_row(s, block, j->layer, 1, kvh, 0), end - b0 + 1,
                              hs);
        }
    }
}

static void att_task(void *arg, int task, int worker)
{
    const att_job *j = arg;
    int heads = j->s->c.n_heads;
    int h = task % heads, tile = task / heads;
    if (j->kv_per_row) {
        att_rows(j, h, tile, tile + 1, worker); /* decode: one row per sequence */
        return;
    }
    int r0 = tile * ATT_TILE, r1 = r0 + ATT_TILE < j->rows ? r0 + ATT_TILE : j->rows;
    att_rows(j, h, r0, r1, worker);
}

/* ---- Shared layer steps --------------------------------------------------------------------- */

/* RoPE on q and k of each row, then k and v into the row's block. */
static void rope_and_store(model_state *s, int rows, const model_kv *kv, int kv_per_row,
                           const int *pos, int pos0, int layer)
{
    const model_config *c = &s->c;
    int hs = c->head_size, B = s->o.block_tokens;
    for (int r = 0; r < rows; r++) {
        int p = pos ? pos[r] : pos0 + r;
        const model_kv *k = kv_per_row ? &kv[r] : kv;
        float *q = s->qkv + (size_t)r * s->qkv_dim;
        float *kk = q + c->dim, *vv = kk + c->kv_dim;
        for (int h = 0; h < c->n_heads; h++)
            rope(s, q + (size_t)h * hs, p);
        for (int h = 0; h < c->n_kv_heads; h++) {
            rope(s, kk + (size_t)h * hs, p);
            float *block = k->blocks[p / B];
            memcpy(kv_row(s, block, layer, 0, h, p % B), kk + (size_t)h * hs,
                   (size_t)hs * sizeof(float));
            memcpy(kv_row(s, block, layer, 1, h, p % B), vv + (size_t)h * hs,
                   (size_t)hs * sizeof(float));
        }
    }
}

static float silu(float v)
{
    return v / (1.0f + expf(-v));
}

/* The whole stack over `rows` rows already embedded in s->x. Products go through sgemm
 * (prefill, use_blas) or the batch-invariant kernel (decode). */
static void layers(model_state *s, int rows, const model_kv *kv, int kv_per_row, const int *pos,
                   int pos0, int use_blas)
{
    const model_config *c = &s->c;
    const model_weights *w = &s->w;
    int dim = c->dim, hid = c->hidden_dim;
    for (int l = 0; l < c->n_layers; l++) {
        /* Attention block: xb = rmsnorm(x); q|k|v = Wqkv xb; RoPE; store k, v; attend. */
        for (int r = 0; r < rows; r++)
            rmsnorm(s->xb + (size_t)r * dim, s->x + (size_t)r * dim, w->rms_att + (size_t)l * dim,
                    dim);
        const float *wqkv = s->wqkv + (size_t)l * s->qkv_dim * dim;
        if (use_blas)
            gemm(s, s->qkv, s->xb, wqkv, rows, dim, s->qkv_dim);
        else
            matmul(s, s->qkv, s->xb, wqkv, rows, dim, s->qkv_dim);
        rope_and_store(s, rows, kv, kv_per_row, pos, pos0, l);
        att_job aj = {s, kv, kv_per_row, pos, pos0, l, rows};
        int tiles = kv_per_row ? rows : (rows + ATT_TILE - 1) / ATT_TILE;
        model__pool_run(s->pool, att_task, &aj, tiles * c->n_heads);
        /* x += Wo att */
        const float *wo = w->wo + (size_t)l * dim * dim;
        if (use_blas)
            gemm(s, s->xb, s->att, wo, rows, dim, dim);
        else
            matmul(s, s->xb, s->att, wo, rows, dim, dim);
        for (size_t i = 0; i < (size_t)rows * dim; i++)
            s->x[i] += s->xb[i];
        /* FFN: xb = rmsnorm(x); h = silu(W1 xb) * (W3 xb); x += W2 h. */
        for (int r = 0; r < rows; r++)
            rmsnorm(s->xb + (size_t)r * dim, s->x + (size_t)r * dim, w->rms_ffn + (size_t)l * dim,
                    dim);
        const float *w13 = s->w13 + (size_t)l * 2 * hid * dim;
        if (use_blas)
            gemm(s, s->h13, s->xb, w13, rows, dim, 2 * hid);
        else
            matmul(s, s->h13, s->xb, w13, rows, dim, 2 * hid);
        for (int r = 0; r < rows; r++) {
            const float *a = s->h13 + (size_t)r * 2 * hid;
            float *o = s->hb + (size_t)r * hid;
            for (int i = 0; i < hid; i++)
                o[i] = silu(a[i]) * a[hid + i];
        }
        const float *w2 = w->w2 + (size_t)l * dim * hid;
        if (use_blas)
            gemm(s, s->xb, s->hb, w2, rows, hid, dim);
        else
            matmul(s, s->xb, s->hb, w2, rows, hid, dim);
        for (size_t i = 0; i < (size_t)rows * dim; i++)
            s->x[i] += s->xb[i];
    }
}

static void embed(model_state *s, int row, int32_t tok)
{
    memcpy(s->x + (size_t)row * s->c.dim, s->w.token_embedding + (size_t)tok * s->c.dim,
           (size_t)s->c.dim * sizeof(float));
}

/* ---- Public --------------------------------------------------------------------------------- */

/* Large buffers in 2 MiB pages where the kernel allows: the decode kernel streams the fused
 * weights, and 4 KiB pages would cost a TLB miss every 4 KiB. */
static void *big_alloc(size_t bytes)
{
    size_t huge = (size_t)2 << 20, n = (bytes + huge - 1) & ~(huge - 1);
    void *p = aligned_alloc(huge, n);
    if (p)
        madvise(p, n, MADV_HUGEPAGE);
    return p;
}

int model_state_new(const model *m, const model_state_opts *opts, model_state **out)
{
    *out = NULL;
    model_state_opts o = opts ? *opts : (model_state_opts){0};
    if (o.block_tokens == 0)
        o.block_tokens = 16;
    if (o.max_prefill == 0)
        o.max_prefill = 512;
    if (o.max_batch == 0)
        o.max_batch = 32;
    if (o.threads == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        o.threads = n > 0 ? (int)n : 1;
    }
    if (o.block_tokens < 1 || o.block_tokens > 4096 || o.max_prefill < 1 || o.max_batch < 1 ||
        o.threads < 1 || o.threads > 256)
        return MODEL_EINVAL;
    model_state *s = calloc(1, sizeof *s);
    if (!s)
        return MODEL_ENOMEM;
    s->m = m;
    s->c = *model_get_config(m);
    s->w = *model_get_weights(m);
    s->o = o;
    const model_config *c = &s->c;
    size_t dim = (size_t)c->dim, hid = (size_t)c->hidden_dim, L = (size_t)c->n_layers;
    size_t kvd = (size_t)c->kv_dim;
    s->rows = o.max_prefill > o.max_batch ? o.max_prefill : o.max_batch;
    s->qkv_dim = c->dim + 2 * c->kv_dim;
    s->kv_stride = (size_t)o.block_tokens * c->head_size;
    size_t R = (size_t)s->rows, half = (size_t)c->head_size / 2;
    s->wqkv = big_alloc(L * (size_t)s->qkv_dim * dim * sizeof(float));
    s->w13 = big_alloc(L * 2 * hid * dim * sizeof(float));
    s->x = malloc(R * dim * sizeof(float));
    s->xb = malloc(R * dim * sizeof(float));
    s->att = malloc(R * dim * sizeof(float));
    s->qkv = malloc(R * (size_t)s->qkv_dim * sizeof(float));
    s->h13 = malloc(R * 2 * hid * sizeof(float));
    s->hb = malloc(R * hid * sizeof(float));
    s->rope_cos = malloc((size_t)c->seq_len * half * sizeof(float));
    s->rope_sin = malloc((size_t)c->seq_len * half * sizeof(float));
    s->scores = malloc((size_t)o.threads * ATT_TILE * (size_t)c->seq_len * sizeof(float));
    s->pool = model__pool_new(o.threads);
    if (!s->wqkv || !s->w13 || !s->x || !s->xb || !s->att || !s->qkv || !s->h13 || !s->hb ||
        !s->rope_cos || !s->rope_sin || !s->scores || !s->pool) {
        model_state_free(s);
        return MODEL_ENOMEM;
    }
    /* Fused copies: rows [wq; wk; wv] and [w1; w3] of each layer, so the products that share
     * an input are one matrix product each. */
    for (size_t l = 0; l < L; l++) {
        float *q = s->wqkv + l * (size_t)s->qkv_dim * dim;
        memcpy(q, s->w.wq + l * dim * dim, dim * dim * sizeof(float));
        memcpy(q + dim * dim, s->w.wk + l * kvd * dim, kvd * dim * sizeof(float));
        memcpy(q + dim * dim + kvd * dim, s->w.wv + l * kvd * dim, kvd * dim * sizeof(float));
        float *f = s->w13 + l * 2 * hid * dim;
        memcpy(f, s->w.w1 + l * hid * dim, hid * dim * sizeof(float));
        memcpy(f + hid * dim, s->w.w3 + l * hid * dim, hid * dim * sizeof(float));
    }
    /* RoPE: angle = pos / 10000^(i / head_size) for even i, computed once as llama2.c does. */
    for (int p = 0; p < c->seq_len; p++)
        for (size_t j = 0; j < half; j++) {
            float freq = 1.0f / powf(10000.0f, (float)(2 * j) / (float)c->head_size);
            float val = (float)p * freq;
            s->rope_cos[(size_t)p * half + j] = cosf(val);
            s->rope_sin[(size_t)p * half + j] = sinf(val);
        }
    openblas_set_num_threads(1);
    *out = s;
    return 0;
}

void model_state_free(model_state *s)
{
    if (!s)
        return;
    model__pool_free(s->pool);
    free(s->wqkv);
    free(s->w13);
    free(s->x);
    free(s->xb);
    free(s->att);
    free(s->qkv);
    free(s->h13);
    free(s->hb);
    free(s->rope_cos);
    free(s->rope_sin);
    free(s->scores);
    free(s);
}

const model_state_opts *model_state_get_opts(const model_state *s)
{
    return &s->o;
}

static int check_seq(const model_state *s, const model_kv *kv, int pos, int n)
{
    if (!kv || pos < 0 || n < 1 || pos + n > s->c.seq_len ||
        (int64_t)kv->n_blocks * s->o.block_tokens < (int64_t)pos + n)
        return MODEL_ERANGE;
    for (int i = 0; i < (pos + n + s->o.block_tokens - 1) / s->o.block_tokens; i++)
        if (!kv->blocks[i])
            return MODEL_ERANGE;
    return 0;
}

static void classify(model_state *s, float *logits, int rows)
{
    const model_config *c = &s->c;
    for (int r = 0; r < rows; r++)
        rmsnorm(s->xb + (size_t)r * c->dim, s->x + (size_t)r * c->dim, s->w.rms_final, c->dim);
    matmul(s, logits, s->xb, s->w.wcls, rows, c->dim, c->vocab_size);
}

int model_prefill(model_state *s, const model_kv *kv, int pos, const int32_t *tokens, int n,
                  float *logits)
{
    if (n < 1 || n > s->o.max_prefill || check_seq(s, kv, pos, n))
        return MODEL_ERANGE;
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= s->c.vocab_size)
            return MODEL_ERANGE;
    for (int i = 0; i < n; i++)
        embed(s, i, tokens[i]);
    layers(s, n, kv, 0, NULL, pos, 1);
    if (logits) {
        /* Only the last position's logits: move its row to row 0 and classify that one. */
        if (n > 1)
            memcpy(s->x, s->x + (size_t)(n - 1) * s->c.dim, (size_t)s->c.dim * sizeof(float));
        classify(s, logits, 1);
    }
    return 0;
}

int model_decode(model_state *s, const model_kv *kv, const int *pos, const int32_t *tokens, int b,
                 float *logits)
{
    if (b < 1 || b > s->o.max_batch)
        return MODEL_ERANGE;
    for (int i = 0; i < b; i++)
        if (check_seq(s, &kv[i], pos[i], 1) || tokens[i] < 0 || tokens[i] >= s->c.vocab_size)
            return MODEL_ERANGE;
    for (int i = 0; i < b; i++)
        embed(s, i, tokens[i]);
    layers(s, b, kv, 1, pos, 0, 0);
    classify(s, logits, b);
    return 0;
}
