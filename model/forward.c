/* forward.c — the Llama 2 forward pass over a block table: prefill and batched decode.
 *
 * Prefill computes n tokens of one sequence at once and decode one token for each of b
 * sequences; both run the same layer code and the same kernels (kernels.c): every projection is
 * one product over all rows against weights packed at model_state_new() (Q|K|V fused into one
 * product, W1|W3 into another); attention runs per head on tiles of up to 16 consecutive queries.
 * Every step is cut into many small tasks (row chunks x weight panels, heads x query tiles, row
 * ranges) that the pool's threads claim as they come free (pool.h), and a step too small to pay
 * for a hand-off runs on the calling thread alone. Each kernel computes an output with operations
 * that depend on that output's own inputs only, so a row's K/V and logits are bitwise the same
 * whether a prompt is prefilled whole or split anywhere, and a sequence's decode logits are
 * bitwise the same whatever else runs in its batch.
 *
 * K/V live only in the caller's blocks (model.h gives the layout); the state holds activations
 * and packed weights sized at creation, and the forward pass never allocates, locks or does I/O.
 * An all-F32 model is packed (and the mapped pages it was packed from dropped, so the copy
 * replaces them in memory); a model with any other weight type is read in place, in its stored
 * type, by the products of qkernels.c, which dequantize a tile at a time.
 * OpenBLAS is not used here any more: its sgemm (Haswell kernels on this machine) runs at half
 * the AVX-512 FMA rate our packed kernel reaches, and its rounding depends on the row count.
 */
#include "base.h"
#include "kernels.h"
#include "model.h"
#include "pool.h"
#include "qkernels.h"
#include "quant.h"

#include "base.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* Provided by OpenBLAS; the model sets it to 1 so that nothing else linked in oversubscribes the
 * cores (the daemon links OpenBLAS through this library). */
void openblas_set_num_threads(int num_threads);

/* The K/V layout of a block (model.h): per layer, K then V, runs of B rows, one run per group of
 * `group` consecutive kv heads, each row the group's elements in the K/V type. The group is one
 * head except for q8_0 when head_size is not a multiple of 32: then the fewest heads whose row
 * makes whole groups of 32 (stories260K: head_size 8, four heads to a row of 32). */
typedef struct kv_layout {
    int type;      /* MODEL_TYPE_F32, _F16 or _Q8_0 */
    int group;     /* kv heads per row */
    int runs;      /* runs per (layer, K|V): n_kv_heads / group */
    int row_elems; /* group x head_size */
    size_t rb;     /* bytes per row */
    size_t stride; /* bytes per run: B x rb */
    size_t block;  /* bytes per block: n_layers x 2 x runs x stride */
} kv_layout;

/* Fills *l for c, B and type. Returns 0, or MODEL_EINVAL for a type that K/V cannot take or a
 * q8_0 whose kv rows cannot be cut in groups of 32. */
static int kv_layout_of(const model_config *c, int B, int type, kv_layout *l)
{
    memset(l, 0, sizeof *l);
    l->type = type;
    l->group = 1;
    if (type == MODEL_TYPE_Q8_0) {
        while (l->group <= c->n_kv_heads &&
               (c->n_kv_heads % l->group != 0 || (l->group * c->head_size) % 32 != 0))
            l->group++;
        if (l->group > c->n_kv_heads)
            return MODEL_EINVAL;
    } else if (type != MODEL_TYPE_F32 && type != MODEL_TYPE_F16) {
        return MODEL_EINVAL;
    }
    l->runs = c->n_kv_heads / l->group;
    l->row_elems = l->group * c->head_size;
    l->rb = model__quant_row_bytes(type, l->row_elems);
    l->stride = (size_t)B * l->rb;
    l->block = (size_t)c->n_layers * 2 * l->runs * l->stride;
    return 0;
}

int model_kv_type_parse(const char *name, int *type)
{
    int t;
    if (model_type_parse(name, &t) != 0 ||
        (t != MODEL_TYPE_F32 && t != MODEL_TYPE_F16 && t != MODEL_TYPE_Q8_0))
        return MODEL_EINVAL;
    *type = t;
    return 0;
}

int model_kv_type_check(const model_config *c, int type, char *msg, size_t msglen)
{
    kv_layout l;
    if (kv_layout_of(c, 1, type, &l) == 0)
        return 0;
    if (type == MODEL_TYPE_Q8_0)
        snprintf(msg, msglen,
                 "K/V type q8_0 quantizes K/V rows in groups of 32 elements, and this model's "
                 "kv rows (%d kv heads of head_size %d) cannot be cut so; use f16 or f32",
                 c->n_kv_heads, c->head_size);
    else
        snprintf(msg, msglen, "K/V type %s: K/V is stored only as f32, f16 or q8_0",
                 model_type_name(type));
    return MODEL_EINVAL;
}

size_t model_kv_block_bytes(const model_config *c, int block_tokens, int kv_type)
{
    kv_layout l;
    return kv_layout_of(c, block_tokens, kv_type, &l) == 0 ? l.block : 0;
}

uint64_t model_kv_bytes_per_token(const model_config *c, int kv_type)
{
    return model_kv_block_bytes(c, 1, kv_type);
}

struct model_state {
    const model *m;
    model_config c;
    model_weights w;
    model_state_opts o;
    model__pool *pool;
    int rows;    /* activation rows: max(max_prefill, max_batch) */
    int qkv_dim; /* dim + 2 kv_dim */
    float *wqkv; /* per layer: (qkv_dim, dim) wq | wk | wv, packed (kernels.h) */
    float *wo;   /* per layer: (dim, dim), packed */
    float *w13;  /* per layer: (2 hidden, dim) w1 | w3, packed */
    float *w2;   /* per layer: (dim, hidden), packed */
    float *wcls; /* (vocab, dim), packed */
    /* Weights of other types (any matrix not F32) are read in place from the mapping through
     * these (qkernels.h), and the packed copies above are not made. */
    int quant;
    model__qmat *qqkv, *qwo, *qw13, *qw2; /* (n_layers) each */
    model__qmat qcls;
    float *qscratch; /* (threads, qscratch_n) */
    size_t qscratch_n;
    /* The integer products (qkernels.h) for every matrix of the types they take, where the build
     * has them, unless PREFIXD_QKERNELS=float asks for the float ones (for comparisons): chosen
     * once, so a process never mixes the two for one matrix. */
    int qi8;
    uint8_t *qx; /* (rows, model__qx_row_bytes(max(dim, hidden))) quantized activations */
    size_t wqkv_n, wo_n, w13_n, w2_n; /* floats per layer of each packed matrix */
    float *x;                         /* (rows, dim) residual stream */
    float *xb;                        /* (rows, dim) */
    float *att;                       /* (rows, dim) attention output */
    float *qkv;                       /* (rows, qkv_dim) */
    float *h13;                       /* (rows, 2 hidden) */
    float *hb;                        /* (rows, hidden) */
    float *rope_cos;                  /* (seq_len, head_size / 2) */
    float *rope_sin;                  /* (seq_len, head_size / 2) */
    float *scratch;                   /* (threads, att_scratch) attention scratch */
    size_t att_scratch;
    kv_layout kv; /* how K/V rows lie in a block (kv_layout_of()) */
};

/* Rotates the pairs of one head's vector v (head_size) for position pos: (2j, 2j+1) as Llama,
 * or (j, j + head_size/2) as NeoX and qwen2, both with the angle pos / theta^(2j / head_size). */
static void rope(const model_state *s, float *v, int pos)
{
    int half = s->c.head_size / 2;
    const float *cs = s->rope_cos + (size_t)pos * half, *sn = s->rope_sin + (size_t)pos * half;
    if (s->c.rope_neox) {
        for (int j = 0; j < half; j++) {
            float a = v[j], b = v[j + half];
            v[j] = a * cs[j] - b * sn[j];
            v[j + half] = a * sn[j] + b * cs[j];
        }
        return;
    }
    for (int j = 0; j < half; j++) {
        float a = v[2 * j], b = v[2 * j + 1];
        v[2 * j] = a * cs[j] - b * sn[j];
        v[2 * j + 1] = a * sn[j] + b * cs[j];
    }
}

/* The byte offset, inside a block, of the run holding kv head `head`'s rows of (layer, kv). */
static inline size_t kv_run(const kv_layout *l, int layer, int kv, int head)
{
    return ((size_t)(layer * 2 + kv) * l->runs + (size_t)(head / l->group)) * l->stride;
}

/* The address of position row `row` of the run of (layer, kv, head group) inside one block. */
static inline uint8_t *kv_row(const model_state *s, float *block, int layer, int kv, int head,
                              int row)
{
    return (uint8_t *)block + kv_run(&s->kv, layer, kv, head) + (size_t)row * s->kv.rb;
}

void model_kv_copy_rows(const model_config *c, int block_tokens, int kv_type, float *dst,
                        const float *src, int rows)
{
    /* A block is (layer, K|V, head group) runs of block_tokens rows (kv_layout). */
    kv_layout l;
    if (kv_layout_of(c, block_tokens, kv_type, &l) != 0)
        return;
    size_t runs = (size_t)c->n_layers * 2 * l.runs;
    for (size_t i = 0; i < runs; i++)
        memcpy((uint8_t *)dst + i * l.stride, (const uint8_t *)src + i * l.stride,
               (size_t)rows * l.rb);
}

/* ---- Products: X (rows, n) @ W (d, n)^T -> Y (rows, d), in tasks of row chunks x panels -- */

/* Most rows per product task: 8 tiles of 12 rows, enough to reuse each weight panel while it
 * sits in L1, few enough that a prefill of 512 rows makes several row chunks. */
#define GEMM_ROWS 96
/* Tasks per thread a job aims at: small enough that a descheduled thread holds up little. */
#define TASKS_PER_THREAD 8

typedef struct gemm_job {
    float *y;
    const float *x, *wp;
    int rows, n, d, panels;
    int row_chunks, per_panels, panel_chunks;
} gemm_job;

static void gemm_task(void *arg, int task, int worker)
{
    (void)worker;
    const gemm_job *j = arg;
    int rc = task / j->panel_chunks, pc = task % j->panel_chunks;
    /* Row chunks of near-equal height; a row's outputs do not depend on its chunk (kernels.h). */
    int base = j->rows / j->row_chunks, extra = j->rows % j->row_chunks;
    int r0 = rc * base + (rc < extra ? rc : extra), m = base + (rc < extra);
    int p0 = pc * j->per_panels,
        p1 = p0 + j->per_panels < j->panels ? p0 + j->per_panels : j->panels;
    model__gemm(j->y + (size_t)r0 * j->d, (size_t)j->d, j->x + (size_t)r0 * j->n, (size_t)j->n,
                j->wp, m, j->n, j->d, p0, p1);
}

static void gemm(model_state *s, float *y, const float *x, const float *wp, int rows, int n, int d)
{
    gemm_job j = {y, x, wp, rows, n, d, (d + MODEL__NR - 1) / MODEL__NR, 0, 0, 0};
    j.row_chunks = (rows + GEMM_ROWS - 1) / GEMM_ROWS;
    int want = model__pool_threads(s->pool) * TASKS_PER_THREAD;
    int pchunks = (want + j.row_chunks - 1) / j.row_chunks;
    if (pchunks > j.panels)
        pchunks = j.panels;
    j.per_panels = (j.panels + pchunks - 1) / pchunks;
    j.panel_chunks = (j.panels + j.per_panels - 1) / j.per_panels;
    model__pool_run(s->pool, gemm_task, &j, j.row_chunks * j.panel_chunks,
                    2.0 * rows * (double)n * d);
}

/* The same over weights in their stored type: prefill rows through 32-column panels, decode
 * rows (and every classifier row) through 8-row dot-product groups (qkernels.h). */
typedef struct qgemm_job {
    model_state *s;
    float *y;
    const float *x;
    const model__qmat *w;
    int rows, per_task, units, decode;
} qgemm_job;

static void qgemm_task(void *arg, int task, int worker)
{
    const qgemm_job *j = arg;
    int u0 = task * j->per_task, u1 = u0 + j->per_task < j->units ? u0 + j->per_task : j->units;
    float *scratch = j->s->qscratch + (size_t)worker * j->s->qscratch_n;
    if (j->decode)
        model__qgemm_rows(j->y, (size_t)j->w->d, j->x, (size_t)j->w->n, j->w, j->rows, u0, u1,
                          scratch);
    else
        model__qgemm_prefill(j->y, (size_t)j->w->d, j->x, (size_t)j->w->n, j->w, j->rows, u0, u1,
                             scratch);
}

/* The integer product: the rows of x quantized on this thread (the activations' blocks, m x n
 * work against the product's m x n x d), then 8-row weight groups over the pool. */
typedef struct qi8_job {
    model_state *s;
    float *y;
    const model__qmat *w;
    int rows, per_task, units;
} qi8_job;

static void qi8_task(void *arg, int task, int worker)
{
    const qi8_job *j = arg;
    int u0 = task * j->per_task, u1 = u0 + j->per_task < j->units ? u0 + j->per_task : j->units;
    model__qgemm_i8(j->y, (size_t)j->w->d, j->s->qx, j->w, j->rows, u0, u1,
                    j->s->qscratch + (size_t)worker * j->s->qscratch_n);
}

static void qgemm_i8(model_state *s, float *y, const float *x, const model__qmat *w, int rows)
{
    size_t xs = model__qx_row_bytes(w->n);
    unsigned need = model__qx_need(w);
    for (int r = 0; r < rows; r++)
        model__quantize_x(s->qx + (size_t)r * xs, x + (size_t)r * w->n, w->n, need);
    int units = (w->d + MODEL__QNR - 1) / MODEL__QNR;
    int tasks = model__pool_threads(s->pool) * 4;
    if (tasks > units)
        tasks = units;
    int per = (units + tasks - 1) / tasks;
    qi8_job j = {s, y, w, rows, per, units};
    model__pool_run(s->pool, qi8_task, &j, (units + per - 1) / per,
                    2.0 * rows * (double)w->n * w->d);
}

static void qgemm(model_state *s, float *y, const float *x, const model__qmat *w, int rows,
                  int decode)
{
    if (s->qi8 && model__qi8_takes(w)) {
        qgemm_i8(s, y, x, w, rows);
        return;
    }
    int width = decode ? MODEL__QNR : MODEL__NR;
    int units = (w->d + width - 1) / width;
    int tasks = model__pool_threads(s->pool) * 4;
    if (tasks > units)
        tasks = units;
    int per = (units + tasks - 1) / tasks;
    qgemm_job j = {s, y, x, w, rows, per, units, decode};
    model__pool_run(s->pool, qgemm_task, &j, (units + per - 1) / per,
                    2.0 * rows * (double)w->n * w->d);
}

enum mat { MAT_QKV, MAT_WO, MAT_W13, MAT_W2 };

/* Y (rows, d) = X (rows, n) @ W^T for layer l's matrix `which`, in whichever form it is held. */
static void project(model_state *s, enum mat which, int l, float *y, const float *x, int rows,
                    int decode)
{
    int dim = s->c.dim, hid = s->c.hidden_dim;
    if (s->quant) {
        const model__qmat *q = which == MAT_QKV   ? s->qqkv
                               : which == MAT_WO  ? s->qwo
                               : which == MAT_W13 ? s->qw13
                                                  : s->qw2;
        qgemm(s, y, x, &q[l], rows, decode);
        return;
    }
    switch (which) {
    case MAT_QKV:
        gemm(s, y, x, s->wqkv + (size_t)l * s->wqkv_n, rows, dim, s->qkv_dim);
        break;
    case MAT_WO:
        gemm(s, y, x, s->wo + (size_t)l * s->wo_n, rows, dim, dim);
        break;
    case MAT_W13:
        gemm(s, y, x, s->w13 + (size_t)l * s->w13_n, rows, dim, 2 * hid);
        break;
    case MAT_W2:
        gemm(s, y, x, s->w2 + (size_t)l * s->w2_n, rows, hid, dim);
        break;
    }
}

/* ---- Row-wise steps, split by rows across the pool ------------------------------------------ */

enum row_step {
    STEP_NORM_ATT,  /* xb = rmsnorm(x) * rms_att[l] */
    STEP_ROPE,      /* RoPE on q and k, then k and v into the row's block */
    STEP_RESID_FFN, /* x += xb; xb = rmsnorm(x) * rms_ffn[l] */
    STEP_SILU,      /* hb = silu(h1) * h3 */
    STEP_RESID_ATT, /* x += xb; xb = rmsnorm(x) * rms_att[l] */
    STEP_RESID,     /* x += xb */
};

typedef struct rows_job {
    model_state *s;
    enum row_step step;
    int rows, per_task, layer;
    const model_kv *kv; /* one per row (decode) or one for all rows (prefill) */
    int kv_per_row;
    const int *pos; /* per row, or NULL with pos0 */
    int pos0;
} rows_job;

/* Writes one position's keys and values (kv_dim floats each, RoPE applied) into row `row` of
 * its block, rounded to the K/V type there (model__quant_row: f16 to nearest even, q8_0 with a
 * scale per 32): attention reads them back from the block only, so every reader, now or from
 * the cache later, sees the same bits. */
static void store_kv(const model_state *s, float *block, int layer, int row, const float *kk,
                     const float *vv)
{
    const kv_layout *l = &s->kv;
    for (int h = 0; h < s->c.n_kv_heads; h += l->group) {
        const float *src[2] = {kk + (size_t)h * s->c.head_size, vv + (size_t)h * s->c.head_size};
        for (int kv = 0; kv < 2; kv++) {
            uint8_t *dst = kv_row(s, block, layer, kv, h, row);
            if (l->type == MODEL_TYPE_F32)
                memcpy(dst, src[kv], (size_t)l->row_elems * sizeof(float));
            else
                model__quant_row(l->type, src[kv], dst, l->row_elems);
        }
    }
}

static void rope_and_store(const rows_job *j, int r)
{
    model_state *s = j->s;
    const model_config *c = &s->c;
    int hs = c->head_size, B = s->o.block_tokens;
    int p = j->pos ? j->pos[r] : j->pos0 + r;
    const model_kv *k = j->kv_per_row ? &j->kv[r] : j->kv;
    float *q = s->qkv + (size_t)r * s->qkv_dim;
    float *kk = q + c->dim, *vv = kk + c->kv_dim;
    if (c->qkv_bias) {
        const model_layer *y = &s->w.layers[j->layer];
        const float *bq = model_tensor_f32(&y->bq), *bk = model_tensor_f32(&y->bk);
        const float *bv = model_tensor_f32(&y->bv);
        for (int i = 0; i < c->dim; i++)
            q[i] += bq[i];
        for (int i = 0; i < c->kv_dim; i++) {
            kk[i] += bk[i];
            vv[i] += bv[i];
        }
    }
    for (int h = 0; h < c->n_heads; h++)
        rope(s, q + (size_t)h * hs, p);
    for (int h = 0; h < c->n_kv_heads; h++)
        rope(s, kk + (size_t)h * hs, p);
    store_kv(s, k->blocks[p / B], j->layer, p % B, kk, vv);
}

static void rows_task(void *arg, int task, int worker)
{
    (void)worker;
    const rows_job *j = arg;
    model_state *s = j->s;
    int dim = s->c.dim, hid = s->c.hidden_dim, l = j->layer;
    int r0 = task * j->per_task, r1 = r0 + j->per_task < j->rows ? r0 + j->per_task : j->rows;
    for (int r = r0; r < r1; r++) {
        float *x = s->x + (size_t)r * dim, *xb = s->xb + (size_t)r * dim;
        switch (j->step) {
        case STEP_NORM_ATT:
            model__rmsnorm(xb, x, model_tensor_f32(&s->w.layers[l].rms_att), dim, s->c.norm_eps);
            break;
        case STEP_ROPE:
            rope_and_store(j, r);
            break;
        case STEP_RESID_FFN:
            for (int i = 0; i < dim; i++)
                x[i] += xb[i];
            model__rmsnorm(xb, x, model_tensor_f32(&s->w.layers[l].rms_ffn), dim, s->c.norm_eps);
            break;
        case STEP_SILU: {
            const float *a = s->h13 + (size_t)r * 2 * hid;
            model__silu_mul(s->hb + (size_t)r * hid, a, a + hid, hid);
            break;
        }
        case STEP_RESID_ATT:
            for (int i = 0; i < dim; i++)
                x[i] += xb[i];
            model__rmsnorm(xb, x, model_tensor_f32(&s->w.layers[l].rms_att), dim, s->c.norm_eps);
            break;
        case STEP_RESID:
            for (int i = 0; i < dim; i++)
                x[i] += xb[i];
            break;
        }
    }
}

/* Runs a row step; small ones (a decode batch's few rows) stay on the caller by the pool's
 * cost rule. FLOPs per row, roughly: a norm ~4 per element, RoPE ~6 per rotated pair, SiLU ~25
 * per hidden element (its exponential). */
static void rows_run(model_state *s, rows_job *j, enum row_step step)
{
    const model_config *c = &s->c;
    double per_row = step == STEP_SILU   ? 25.0 * c->hidden_dim
                     : step == STEP_ROPE ? 3.0 * (c->dim + c->kv_dim) + 2.0 * c->kv_dim
                                         : 5.0 * c->dim;
    j->step = step;
    int tasks = model__pool_threads(s->pool) * TASKS_PER_THREAD;
    if (tasks > j->rows)
        tasks = j->rows;
    j->per_task = (j->rows + tasks - 1) / tasks;
    model__pool_run(s->pool, rows_task, j, (j->rows + j->per_task - 1) / j->per_task,
                    per_row * j->rows);
}

/* ---- Attention ------------------------------------------------------------------------------ */

typedef struct att_job {
    model_state *s;
    const rows_job *rj;
    int tiles; /* prefill: query tiles of near-equal height; decode: one per row */
} att_job;

static void att_task(void *arg, int task, int worker)
{
    const att_job *j = arg;
    const rows_job *rj = j->rj;
    model_state *s = j->s;
    const model_config *c = &s->c;
    int heads = c->n_heads, hs = c->head_size;
    /* Later tiles attend over more keys: hand them out first. */
    int h = task % heads, tile = j->tiles - 1 - task / heads;
    int r0, nq;
    if (rj->kv_per_row) {
        r0 = tile;
        nq = 1;
    } else {
        int base = rj->rows / j->tiles, extra = rj->rows % j->tiles;
        r0 = tile * base + (tile < extra ? tile : extra);
        nq = base + (tile < extra);
    }
    const model_kv *kv = rj->kv_per_row ? &rj->kv[r0] : rj->kv;
    int pos0 = rj->pos ? rj->pos[r0] : rj->pos0 + r0;
    int kvh = h / (heads / c->n_kv_heads);
    const kv_layout *l = &s->kv;
    size_t koff = kv_run(l, rj->layer, 0, kvh), voff = kv_run(l, rj->layer, 1, kvh);
    int hoff = (kvh % l->group) * hs; /* the head's first element in its rows */
    float *out = s->att + (size_t)r0 * c->dim + (size_t)h * hs;
    const float *q = s->qkv + (size_t)r0 * s->qkv_dim + (size_t)h * hs;
    float scale = 1.0f / sqrtf((float)hs), *scratch = s->scratch + (size_t)worker * s->att_scratch;
    if (rj->kv_per_row && hs <= 256)
        model__attend1(out, q, pos0, kv->blocks, koff, voff, l->rb, hoff, s->o.block_tokens, hs,
                       l->type, scale, scratch);
    else
        model__attend(out, (size_t)c->dim, q, (size_t)s->qkv_dim, nq, pos0, kv->blocks, koff, voff,
                      l->rb, hoff, s->o.block_tokens, hs, l->type, scale, scratch);
}

/* ---- The layers ----------------------------------------------------------------------------- */

/* The whole stack over `rows` rows already embedded in s->x: prefill rows are consecutive
 * positions pos0.. of one sequence (kv_per_row 0); decode rows are one position each of their
 * own sequence (kv[r], pos[r]). */
static void layers(model_state *s, int rows, const model_kv *kv, int kv_per_row, const int *pos,
                   int pos0)
{
    const model_config *c = &s->c;
    rows_job rj = {s, STEP_NORM_ATT, rows, 0, 0, kv, kv_per_row, pos, pos0};
    att_job aj = {s, &rj, kv_per_row ? rows : (rows + MODEL__QT - 1) / MODEL__QT};
    /* Attention's work: 4 FLOPs per (query, key, dimension) for the scores and the values. */
    double keys = 0;
    for (int r = 0; r < rows; r++)
        keys += (pos ? pos[r] : pos0 + r) + 1;
    double att_flops = 4.0 * keys * c->head_size * c->n_heads;
    for (int l = 0; l < c->n_layers; l++) {
        rj.layer = l;
        /* Attention block: xb = rmsnorm(x); q|k|v = Wqkv xb; RoPE; store k, v; attend;
         * x += Wo att. (Layer 0's norm; the others' is fused with the residual below.) */
        if (l == 0)
            rows_run(s, &rj, STEP_NORM_ATT);
        project(s, MAT_QKV, l, s->qkv, s->xb, rows, kv_per_row);
        rows_run(s, &rj, STEP_ROPE);
        model__pool_run(s->pool, att_task, &aj, aj.tiles * c->n_heads, att_flops);
        project(s, MAT_WO, l, s->xb, s->att, rows, kv_per_row);
        /* FFN: x += xb; xb = rmsnorm(x); h = silu(W1 xb) * (W3 xb); x += W2 h. */
        rows_run(s, &rj, STEP_RESID_FFN);
        project(s, MAT_W13, l, s->h13, s->xb, rows, kv_per_row);
        rows_run(s, &rj, STEP_SILU);
        project(s, MAT_W2, l, s->xb, s->hb, rows, kv_per_row);
        if (l + 1 < c->n_layers) {
            rj.layer = l + 1; /* x += xb, then the next layer's attention norm, in one pass */
            rows_run(s, &rj, STEP_RESID_ATT);
        } else {
            rows_run(s, &rj, STEP_RESID);
        }
    }
}

static void embed(model_state *s, int row, int32_t tok)
{
    const model_tensor *e = &s->w.token_embedding;
    size_t rb = model__quant_row_bytes(e->type, e->cols);
    model__dequant_row(e->type, (const uint8_t *)e->data + (size_t)tok * rb,
                       s->x + (size_t)row * s->c.dim, s->c.dim);
}

/* ---- Public --------------------------------------------------------------------------------- */

/* Whether every matrix is F32 (the packed path), and whether every type is one the kernels
 * take (the loader refuses others; a caller-made model_weights could still hold one). */
static int weights_types(const model_config *c, const model_weights *w, int *all_f32)
{
    const model_tensor *top[] = {&w->token_embedding, &w->wcls};
    int ok = w->rms_final.type == MODEL_TYPE_F32, f32 = 1;
    for (size_t i = 0; i < 2; i++) {
        ok = ok && model__quant_supported(top[i]->type);
        f32 = f32 && top[i]->type == MODEL_TYPE_F32;
    }
    for (int l = 0; l < c->n_layers; l++) {
        const model_layer *y = &w->layers[l];
        const model_tensor *t[] = {&y->wq, &y->wk, &y->wv, &y->wo, &y->w1, &y->w2, &y->w3};
        for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
            ok = ok && model__quant_supported(t[i]->type);
            f32 = f32 && t[i]->type == MODEL_TYPE_F32;
        }
        ok = ok && y->rms_att.type == MODEL_TYPE_F32 && y->rms_ffn.type == MODEL_TYPE_F32;
    }
    *all_f32 = f32;
    return ok;
}

/* Measures what the split threshold needs (pool.h): the caller's own rate on one row of a
 * product (decode's shape: as small as the work that could stay on one thread), the best of a
 * few tries, and the pool's hand-off; then logs the kernels and the threshold. */
static void calibrate(model_state *s)
{
    const model_config *c = &s->c;
    double best = 1e18;
    memset(s->xb, 0, (size_t)c->dim * sizeof(float));
    for (int i = 0; i < 5; i++) {
        double t = base_now_ms();
        if (s->quant) /* one decode row through the stored-type kernel, all on this thread */
            model__qgemm_rows(s->h13, (size_t)2 * c->hidden_dim, s->xb, (size_t)c->dim, &s->qw13[0],
                              1, 0, (2 * c->hidden_dim + MODEL__QNR - 1) / MODEL__QNR, s->qscratch);
        else
            model__gemm(s->h13, (size_t)2 * c->hidden_dim, s->xb, (size_t)c->dim, s->w13, 1, c->dim,
                        2 * c->hidden_dim, 0, (2 * c->hidden_dim + MODEL__NR - 1) / MODEL__NR);
        t = base_now_ms() - t;
        best = t < best ? t : best;
    }
    double rate = 2.0 * c->dim * 2 * c->hidden_dim / (best * 1e6 > 1 ? best * 1e6 : 1);
    double handoff = model__pool_calibrate(s->pool, rate);
    /* PREFIXD_SPLIT_FLOPS=N overrides the measured threshold (0: split every step; tests). */
    const char *env = getenv("PREFIXD_SPLIT_FLOPS");
    char *end;
    double v = env && *env ? strtod(env, &end) : -1;
    if (env && *env && (*end || !(v >= 0)))
        base_log(BASE_LOG_WARN, "PREFIXD_SPLIT_FLOPS='%s': not a number >= 0, ignored", env);
    else if (v >= 0)
        model__pool_set_min_flops(s->pool, v);
    base_log(BASE_LOG_INFO,
             "model: %s kernels, %d compute threads; hand-off %.1f us, so work under %.0f kFLOP "
             "(%.1f GFLOP/s alone) stays on one thread%s",
             model__kernels_name(), s->o.threads, handoff / 1e3,
             model__pool_min_flops(s->pool) / 1e3, rate,
             handoff > 10e3 && !(v >= 0) ? " (a slow moment? it is measured again in 1 s)" : "");
}

/* Drops the mapped pages of a tensor that the state holds a packed copy of: the copy replaces
 * them in resident memory rather than sitting beside them. The mapping is private and never
 * written, so a page read again later (the reference tests, an embedding row) comes back from
 * the file unchanged. */
static void drop_pages(const model_tensor *t)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    uintptr_t a = (uintptr_t)t->data, e = a + (size_t)t->rows * t->cols * sizeof(float);
    a &= ~(uintptr_t)(page - 1);
    madvise((void *)a, e - a, MADV_DONTNEED);
}

/* Packed copies (kernels.h), with the products that share an input fused: rows [wq; wk; wv] and
 * [w1; w3] of each layer are one matrix each, assembled in a temporary first. */
static int pack_f32(model_state *s)
{
    const model_config *c = &s->c;
    int dim = c->dim, hid = c->hidden_dim, kvd = c->kv_dim;
    size_t L = (size_t)c->n_layers;
    s->wqkv_n = model__pack_floats(s->qkv_dim, dim);
    s->wo_n = model__pack_floats(dim, dim);
    s->w13_n = model__pack_floats(2 * hid, dim);
    s->w2_n = model__pack_floats(dim, hid);
    s->wqkv = base_huge_alloc(L * s->wqkv_n * sizeof(float), 0);
    s->wo = base_huge_alloc(L * s->wo_n * sizeof(float), 0);
    s->w13 = base_huge_alloc(L * s->w13_n * sizeof(float), 0);
    s->w2 = base_huge_alloc(L * s->w2_n * sizeof(float), 0);
    s->wcls = base_huge_alloc(model__pack_floats(c->vocab_size, dim) * sizeof(float), 0);
    size_t tmp_n = (size_t)s->qkv_dim * dim > 2 * (size_t)hid * dim ? (size_t)s->qkv_dim * dim
                                                                    : 2 * (size_t)hid * dim;
    float *tmp = malloc(tmp_n * sizeof(float));
    if (!s->wqkv || !s->wo || !s->w13 || !s->w2 || !s->wcls || !tmp) {
        free(tmp);
        return MODEL_ENOMEM;
    }
    const model_weights *w = &s->w;
    size_t dd = (size_t)dim * dim, kd = (size_t)kvd * dim, hd = (size_t)hid * dim;
    for (size_t l = 0; l < L; l++) {
        const model_layer *y = &w->layers[l];
        memcpy(tmp, model_tensor_f32(&y->wq), dd * sizeof(float));
        memcpy(tmp + dd, model_tensor_f32(&y->wk), kd * sizeof(float));
        memcpy(tmp + dd + kd, model_tensor_f32(&y->wv), kd * sizeof(float));
        model__pack(s->wqkv + l * s->wqkv_n, tmp, s->qkv_dim, dim);
        model__pack(s->wo + l * s->wo_n, model_tensor_f32(&y->wo), dim, dim);
        memcpy(tmp, model_tensor_f32(&y->w1), hd * sizeof(float));
        memcpy(tmp + hd, model_tensor_f32(&y->w3), hd * sizeof(float));
        model__pack(s->w13 + l * s->w13_n, tmp, 2 * hid, dim);
        model__pack(s->w2 + l * s->w2_n, model_tensor_f32(&y->w2), dim, hid);
        const model_tensor *t[] = {&y->wq, &y->wk, &y->wv, &y->wo, &y->w1, &y->w2, &y->w3};
        for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
            drop_pages(t[i]);
    }
    free(tmp);
    model__pack(s->wcls, model_tensor_f32(&w->wcls), c->vocab_size, dim);
    drop_pages(&w->wcls);
    return 0;
}

static model__qseg qseg(const model_tensor *t)
{
    model__qseg g = {t->data, t->type, t->rows, model__quant_row_bytes(t->type, t->cols)};
    return g;
}

/* The in-place views of the weights for the stored-type kernels (qkernels.h). */
static int map_quant(model_state *s)
{
    const model_config *c = &s->c;
    size_t L = (size_t)c->n_layers;
    int dim = c->dim, hid = c->hidden_dim, n = dim > hid ? dim : hid;
    s->qqkv = calloc(L, sizeof *s->qqkv);
    s->qwo = calloc(L, sizeof *s->qwo);
    s->qw13 = calloc(L, sizeof *s->qw13);
    s->qw2 = calloc(L, sizeof *s->qw2);
    s->qscratch_n = model__qgemm_scratch(n);
    const char *kq = getenv("PREFIXD_QKERNELS");
    s->qi8 = model__qi8_available() && !(kq && strcmp(kq, "float") == 0);
    if (s->qi8) {
        size_t need = (model__qi8_scratch_bytes(n) + sizeof(float) - 1) / sizeof(float);
        s->qscratch_n = s->qscratch_n > need ? s->qscratch_n : need;
        /* A row's parts depend on whether n is a multiple of 256: the larger of the two. */
        size_t xb = model__qx_row_bytes(dim), xh = model__qx_row_bytes(hid);
        s->qx = aligned_alloc(64, (size_t)s->rows * (xb > xh ? xb : xh)); /* whole lines */
        if (!s->qx)
            return MODEL_ENOMEM;
    }
    s->qscratch = base_huge_alloc((size_t)s->o.threads * s->qscratch_n * sizeof(float), 0);
    if (!s->qqkv || !s->qwo || !s->qw13 || !s->qw2 || !s->qscratch)
        return MODEL_ENOMEM;
    for (size_t l = 0; l < L; l++) {
        const model_layer *y = &s->w.layers[l];
        s->qqkv[l] = (model__qmat){{qseg(&y->wq), qseg(&y->wk), qseg(&y->wv)}, 3, s->qkv_dim, dim};
        s->qwo[l] = (model__qmat){{qseg(&y->wo)}, 1, dim, dim};
        s->qw13[l] = (model__qmat){{qseg(&y->w1), qseg(&y->w3)}, 2, 2 * hid, dim};
        s->qw2[l] = (model__qmat){{qseg(&y->w2)}, 1, dim, hid};
    }
    s->qcls = (model__qmat){{qseg(&s->w.wcls)}, 1, c->vocab_size, dim};
    return 0;
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
    int all_f32;
    kv_layout kvl;
    if (kv_layout_of(model_get_config(m), o.block_tokens, o.kv_type, &kvl) != 0)
        return MODEL_EINVAL;
    if (!weights_types(model_get_config(m), model_get_weights(m), &all_f32))
        return MODEL_ENOTSUP;
    model_state *s = calloc(1, sizeof *s);
    if (!s)
        return MODEL_ENOMEM;
    s->m = m;
    s->c = *model_get_config(m);
    s->w = *model_get_weights(m);
    s->o = o;
    s->quant = !all_f32;
    const model_config *c = &s->c;
    int dim = c->dim, hid = c->hidden_dim;
    s->rows = o.max_prefill > o.max_batch ? o.max_prefill : o.max_batch;
    s->qkv_dim = dim + 2 * c->kv_dim;
    s->kv = kvl;
    size_t R = (size_t)s->rows, half = (size_t)c->head_size / 2;
    s->x = malloc(R * (size_t)dim * sizeof(float));
    s->xb = malloc(R * (size_t)dim * sizeof(float));
    s->att = malloc(R * (size_t)dim * sizeof(float));
    s->qkv = malloc(R * (size_t)s->qkv_dim * sizeof(float));
    s->h13 = malloc(R * 2 * (size_t)hid * sizeof(float));
    s->hb = malloc(R * (size_t)hid * sizeof(float));
    s->rope_cos = malloc((size_t)c->seq_len * half * sizeof(float));
    s->rope_sin = malloc((size_t)c->seq_len * half * sizeof(float));
    s->att_scratch = model__attend_scratch(c->head_size, c->seq_len);
    s->scratch = malloc((size_t)o.threads * s->att_scratch * sizeof(float));
    s->pool = model__pool_new(o.threads);
    if (!s->x || !s->xb || !s->att || !s->qkv || !s->h13 || !s->hb || !s->rope_cos ||
        !s->rope_sin || !s->scratch || !s->pool || (s->quant ? map_quant(s) : pack_f32(s)) != 0) {
        model_state_free(s);
        return MODEL_ENOMEM;
    }
    /* RoPE: angle = pos / theta^(i / head_size) for even i, computed once as llama2.c does
     * (theta 10000 for Llama 2); with rotary scaling, pair j's frequency is divided by its
     * rope_freqs factor (Llama 3.1) and by the linear factor, as llama.cpp divides them. */
    const float *ff = s->w.rope_freqs.data ? model_tensor_f32(&s->w.rope_freqs) : NULL;
    for (int p = 0; p < c->seq_len; p++)
        for (size_t j = 0; j < half; j++) {
            float freq = 1.0f / powf(c->rope_theta, (float)(2 * j) / (float)c->head_size);
            if (ff)
                freq /= ff[j];
            if (c->rope_factor != 1.0f)
                freq /= c->rope_factor;
            float val = (float)p * freq;
            s->rope_cos[(size_t)p * half + j] = cosf(val);
            s->rope_sin[(size_t)p * half + j] = sinf(val);
        }
    openblas_set_num_threads(1);
    calibrate(s);
    *out = s;
    return 0;
}

void model_state_free(model_state *s)
{
    if (!s)
        return;
    model__pool_free(s->pool);
    base_huge_free(s->wqkv);
    base_huge_free(s->wo);
    base_huge_free(s->w13);
    base_huge_free(s->w2);
    base_huge_free(s->wcls);
    free(s->qqkv);
    free(s->qwo);
    free(s->qw13);
    free(s->qw2);
    base_huge_free(s->qscratch);
    free(s->qx);
    free(s->x);
    free(s->xb);
    free(s->att);
    free(s->qkv);
    free(s->h13);
    free(s->hb);
    free(s->rope_cos);
    free(s->rope_sin);
    free(s->scratch);
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

/* Logits of rows [0, rows) of x: final norm, then the classifier. */
static void classify(model_state *s, float *logits, int rows)
{
    const model_config *c = &s->c;
    for (int r = 0; r < rows; r++)
        model__rmsnorm(s->xb + (size_t)r * c->dim, s->x + (size_t)r * c->dim,
                       model_tensor_f32(&s->w.rms_final), c->dim, c->norm_eps);
    if (s->quant)
        qgemm(s, logits, s->xb, &s->qcls, rows, 1);
    else
        gemm(s, logits, s->xb, s->wcls, rows, c->dim, c->vocab_size);
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
    layers(s, n, kv, 0, NULL, pos);
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
    layers(s, b, kv, 1, pos, 0);
    classify(s, logits, b);
    return 0;
}
