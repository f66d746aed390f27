/* ref_forward.h — a naive reference forward pass for the tests: plain loops, one token at a time,
 * contiguous K/V, written straight from the description in shared/models/README.md. Slow and
 * obviously right; the real kernels are checked against it. Weights of any stored type are
 * dequantized once (model/quant.c's dequantizer, checked on its own in test_model) into float
 * copies, so the reference computes in float64 from exactly the weights the kernels read.
 * Handles qwen2's Q/K/V biases, NeoX rotary pairs and rotary scaling (rope_freqs factors and a
 * linear factor). */
#ifndef PREFIXD_REF_FORWARD_H
#define PREFIXD_REF_FORWARD_H

#include "../../model/quant.h"
#include "model.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct ref_state {
    const model_config *c;
    const model_weights *w;
    model_weights fw;       /* float copies of every tensor */
    model_layer *flayers;   /* what fw.layers points to */
    float *kcache, *vcache; /* (layer, seq_len, kv_dim) */
    float *x, *xb, *xb2, *q, *k, *v, *att, *hb, *hb2, *logits;
    const float *rope_freqs; /* the model's rotary factors (NULL: none); a test may clear it */
    double rope_factor;      /* the model's linear rotary factor; a test may change it */
} ref_state;

static void ref_matvec(float *y, const float *w, const float *x, int n, int d)
{
    for (int i = 0; i < d; i++) {
        double s = 0;
        for (int j = 0; j < n; j++)
            s += (double)w[(size_t)i * n + j] * x[j];
        y[i] = (float)s;
    }
}

static void ref_rmsnorm(float *o, const float *x, const float *w, int n, double eps)
{
    double ss = 0;
    for (int i = 0; i < n; i++)
        ss += (double)x[i] * x[i];
    float r = (float)(1.0 / sqrt(ss / n + eps));
    for (int i = 0; i < n; i++)
        o[i] = w[i] * (r * x[i]);
}

/* A float copy of tensor t (an absent one stays absent). */
static model_tensor ref_float(const model_tensor *t)
{
    model_tensor f = *t;
    if (!t->data)
        return f;
    size_t rb = model__quant_row_bytes(t->type, t->cols);
    float *d = malloc((size_t)t->rows * t->cols * sizeof(float));
    for (int i = 0; i < t->rows; i++)
        model__dequant_row(t->type, (const char *)t->data + (size_t)i * rb, d + (size_t)i * t->cols,
                           t->cols);
    f.data = d;
    f.type = MODEL_TYPE_F32;
    return f;
}

static void ref_float_free(model_tensor *t)
{
    free((void *)t->data);
}

static ref_state *ref_new(const model *m)
{
    ref_state *r = calloc(1, sizeof *r);
    r->c = model_get_config(m);
    const model_weights *mw = model_get_weights(m);
    r->flayers = calloc((size_t)r->c->n_layers, sizeof *r->flayers);
    r->fw.token_embedding = ref_float(&mw->token_embedding);
    r->fw.rms_final = ref_float(&mw->rms_final);
    r->fw.wcls = ref_float(&mw->wcls);
    for (int l = 0; l < r->c->n_layers; l++) {
        const model_layer *y = &mw->layers[l];
        model_layer *f = &r->flayers[l];
        f->rms_att = ref_float(&y->rms_att);
        f->wq = ref_float(&y->wq);
        f->wk = ref_float(&y->wk);
        f->wv = ref_float(&y->wv);
        f->wo = ref_float(&y->wo);
        f->rms_ffn = ref_float(&y->rms_ffn);
        f->w1 = ref_float(&y->w1);
        f->w2 = ref_float(&y->w2);
        f->w3 = ref_float(&y->w3);
        f->bq = ref_float(&y->bq);
        f->bk = ref_float(&y->bk);
        f->bv = ref_float(&y->bv);
    }
    r->fw.layers = r->flayers;
    r->rope_freqs = mw->rope_freqs.data ? model_tensor_f32(&mw->rope_freqs) : NULL;
    r->rope_factor = r->c->rope_factor;
    r->w = &r->fw;
    const model_config *c = r->c;
    size_t kvn = (size_t)c->n_layers * c->seq_len * c->kv_dim;
    r->kcache = calloc(kvn, sizeof(float));
    r->vcache = calloc(kvn, sizeof(float));
    r->x = calloc((size_t)c->dim, sizeof(float));
    r->xb = calloc((size_t)c->dim, sizeof(float));
    r->xb2 = calloc((size_t)c->dim, sizeof(float));
    r->q = calloc((size_t)c->dim, sizeof(float));
    r->k = calloc((size_t)c->kv_dim, sizeof(float));
    r->v = calloc((size_t)c->kv_dim, sizeof(float));
    r->att = calloc((size_t)c->seq_len, sizeof(float));
    r->hb = calloc((size_t)c->hidden_dim, sizeof(float));
    r->hb2 = calloc((size_t)c->hidden_dim, sizeof(float));
    r->logits = calloc((size_t)c->vocab_size, sizeof(float));
    return r;
}

static void ref_free(ref_state *r)
{
    if (!r)
        return;
    ref_float_free(&r->fw.token_embedding);
    ref_float_free(&r->fw.rms_final);
    ref_float_free(&r->fw.wcls);
    for (int l = 0; l < r->c->n_layers; l++) {
        model_layer *f = &r->flayers[l];
        model_tensor *t[] = {&f->rms_att, &f->wq, &f->wk, &f->wv, &f->wo, &f->rms_ffn,
                             &f->w1,      &f->w2, &f->w3, &f->bq, &f->bk, &f->bv};
        for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
            ref_float_free(t[i]);
    }
    free(r->flayers);
    free(r->kcache);
    free(r->vcache);
    free(r->x);
    free(r->xb);
    free(r->xb2);
    free(r->q);
    free(r->k);
    free(r->v);
    free(r->att);
    free(r->hb);
    free(r->hb2);
    free(r->logits);
    free(r);
}

/* Pair i's angle at pos: pos / theta^(2i / head_size), divided by its rope_freqs factor (ff,
 * NULL: 1) and the linear factor. */
static double ref_angle(int pos, int i, int head_size, double theta, const float *ff, double factor)
{
    double ang = pos / pow(theta, (double)(2 * i) / head_size) / factor;
    return ff ? ang / ff[i] : ang;
}

static void ref_rope(float *v, int n, int head_size, int pos, double theta, int neox,
                     const float *ff, double factor)
{
    if (neox) { /* pairs (i, i + head_size / 2) within each head */
        int half = head_size / 2;
        for (int h = 0; h < n; h += head_size)
            for (int i = 0; i < half; i++) {
                double ang = ref_angle(pos, i, head_size, theta, ff, factor);
                float c = (float)cos(ang), s = (float)sin(ang);
                float a = v[h + i], b = v[h + i + half];
                v[h + i] = a * c - b * s;
                v[h + i + half] = a * s + b * c;
            }
        return;
    }
    for (int i = 0; i < n; i += 2) {
        int hi = i % head_size;
        double ang = ref_angle(pos, hi / 2, head_size, theta, ff, factor);
        float c = (float)cos(ang), s = (float)sin(ang);
        float a = v[i], b = v[i + 1];
        v[i] = a * c - b * s;
        v[i + 1] = a * s + b * c;
    }
}

/* Feeds token at pos; returns the logits (valid until the next call). */
static const float *ref_step(ref_state *r, int token, int pos)
{
    const model_config *c = r->c;
    const model_weights *w = r->w;
    int dim = c->dim, kvd = c->kv_dim, hs = c->head_size, hid = c->hidden_dim;
    memcpy(r->x, model_tensor_f32(&w->token_embedding) + (size_t)token * dim,
           (size_t)dim * sizeof(float));
    double eps = c->norm_eps, theta = c->rope_theta;
    for (int l = 0; l < c->n_layers; l++) {
        const model_layer *y = &w->layers[l];
        ref_rmsnorm(r->xb, r->x, model_tensor_f32(&y->rms_att), dim, eps);
        ref_matvec(r->q, model_tensor_f32(&y->wq), r->xb, dim, dim);
        ref_matvec(r->k, model_tensor_f32(&y->wk), r->xb, dim, kvd);
        ref_matvec(r->v, model_tensor_f32(&y->wv), r->xb, dim, kvd);
        if (c->qkv_bias) {
            for (int i = 0; i < dim; i++)
                r->q[i] += model_tensor_f32(&y->bq)[i];
            for (int i = 0; i < kvd; i++) {
                r->k[i] += model_tensor_f32(&y->bk)[i];
                r->v[i] += model_tensor_f32(&y->bv)[i];
            }
        }
        const float *ff = r->rope_freqs;
        ref_rope(r->q, dim, hs, pos, theta, c->rope_neox, ff, r->rope_factor);
        ref_rope(r->k, kvd, hs, pos, theta, c->rope_neox, ff, r->rope_factor);
        float *kc = r->kcache + ((size_t)l * c->seq_len) * kvd;
        float *vc = r->vcache + ((size_t)l * c->seq_len) * kvd;
        memcpy(kc + (size_t)pos * kvd, r->k, (size_t)kvd * sizeof(float));
        memcpy(vc + (size_t)pos * kvd, r->v, (size_t)kvd * sizeof(float));
        for (int h = 0; h < c->n_heads; h++) {
            int kh = h / (c->n_heads / c->n_kv_heads);
            const float *q = r->q + (size_t)h * hs;
            double mx = -1e30;
            for (int t = 0; t <= pos; t++) {
                double s = 0;
                for (int i = 0; i < hs; i++)
                    s += (double)q[i] * kc[(size_t)t * kvd + (size_t)kh * hs + i];
                r->att[t] = (float)(s / sqrt((double)hs));
                if (r->att[t] > mx)
                    mx = r->att[t];
            }
            double sum = 0;
            for (int t = 0; t <= pos; t++) {
                r->att[t] = (float)exp(r->att[t] - mx);
                sum += r->att[t];
            }
            for (int i = 0; i < hs; i++) {
                double o = 0;
                for (int t = 0; t <= pos; t++)
                    o += r->att[t] / sum * vc[(size_t)t * kvd + (size_t)kh * hs + i];
                r->xb[h * hs + i] = (float)o;
            }
        }
        ref_matvec(r->xb2, model_tensor_f32(&y->wo), r->xb, dim, dim);
        for (int i = 0; i < dim; i++)
            r->x[i] += r->xb2[i];
        ref_rmsnorm(r->xb, r->x, model_tensor_f32(&y->rms_ffn), dim, eps);
        ref_matvec(r->hb, model_tensor_f32(&y->w1), r->xb, dim, hid);
        ref_matvec(r->hb2, model_tensor_f32(&y->w3), r->xb, dim, hid);
        for (int i = 0; i < hid; i++) {
            float a = r->hb[i];
            r->hb[i] = (float)(a / (1.0 + exp(-a))) * r->hb2[i];
        }
        ref_matvec(r->xb2, model_tensor_f32(&y->w2), r->hb, hid, dim);
        for (int i = 0; i < dim; i++)
            r->x[i] += r->xb2[i];
    }
    ref_rmsnorm(r->xb, r->x, model_tensor_f32(&w->rms_final), dim, eps);
    ref_matvec(r->logits, model_tensor_f32(&w->wcls), r->xb, dim, c->vocab_size);
    return r->logits;
}

#endif
