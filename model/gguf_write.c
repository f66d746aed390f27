/* gguf_write.c — writing GGUF files: synthetic models of any shape and weight type, and
 * conversions of a loaded GGUF model to another weight type.
 *
 * Both build one plan (each tensor's name, shape, type and where its floats come from), lay the
 * tensors out at offsets that are multiples of 32 (GGUF's default alignment), then stream the
 * file: header, metadata, tensor descriptions, padding, and each tensor row by row, quantized as
 * it is written (model/quant.c), so a stories110M-sized file never sits in memory as floats.
 * Files are written beside the target and renamed, so a reader never sees half a file.
 *
 * Synthetic weights are drawn as model_synth_write() draws them (uniform, scaled by fan-in and
 * depth, norms all ones), from splitmix64, row after row in the file's tensor order; qwen2's
 * biases are small uniform values.
 */
#include "gguf.h"
#include "model.h"
#include "quant.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define ALIGN 32

__attribute__((format(printf, 4, 5))) static int fail(char *msg, size_t msglen, int code,
                                                      const char *fmt, ...)
{
    if (msg && msglen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, msglen, fmt, ap);
        va_end(ap);
    }
    return code;
}

int model_type_parse(const char *name, int *type)
{
    static const struct {
        const char *name;
        int type;
    } names[] = {
        {"f32", MODEL_TYPE_F32},   {"f16", MODEL_TYPE_F16},   {"bf16", MODEL_TYPE_BF16},
        {"q8_0", MODEL_TYPE_Q8_0}, {"q4_0", MODEL_TYPE_Q4_0}, {"q4_1", MODEL_TYPE_Q4_1},
        {"q5_0", MODEL_TYPE_Q5_0}, {"q5_1", MODEL_TYPE_Q5_1}, {"q4_k", MODEL_TYPE_Q4_K},
        {"q5_k", MODEL_TYPE_Q5_K}, {"q6_k", MODEL_TYPE_Q6_K}, {"q4_k_m", MODEL_TYPE_MIX_Q4_K_M},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcasecmp(name, names[i].name) == 0) {
            *type = names[i].type;
            return 0;
        }
    return MODEL_EINVAL;
}

int model__gguf_fallback_type(int type, int cols)
{
    if (model__quant_row_bytes(type, cols) > 0)
        return type;
    if (model__quant_row_bytes(MODEL_TYPE_Q8_0, cols) > 0)
        return MODEL_TYPE_Q8_0;
    return MODEL_TYPE_F32;
}

/* ---- The plan ------------------------------------------------------------------------------- */

enum src_kind { SRC_RANDOM, SRC_FILL, SRC_TENSOR, SRC_ROPE };

typedef struct wtensor {
    char name[64];
    int rows, cols; /* rows 0: a vector of cols */
    int type;
    enum src_kind src;
    float scale;            /* SRC_RANDOM: uniform in [-scale, scale]; SRC_FILL: the value */
    const model_tensor *in; /* SRC_TENSOR */
    const model_config *c;  /* SRC_ROPE: Llama 3.1's factors for this shape */
    uint64_t offset, bytes;
} wtensor;

typedef struct plan {
    wtensor *t;
    int n, cap;
} plan;

static wtensor *plan_add(plan *p, const char *name, int rows, int cols, int type)
{
    if (p->n == p->cap) {
        int cap = p->cap ? 2 * p->cap : 64;
        wtensor *t = realloc(p->t, (size_t)cap * sizeof *t);
        if (!t)
            return NULL;
        p->t = t;
        p->cap = cap;
    }
    wtensor *t = &p->t[p->n++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->rows = rows;
    t->cols = cols;
    t->type = rows ? model__gguf_fallback_type(type, cols) : MODEL_TYPE_F32;
    return t;
}

/* llama.cpp's rule for the layers whose attn_v and ffn_down get more bits in Q4_K_M. */
static int more_bits(int l, int n)
{
    return l < n / 8 || l >= 7 * n / 8 || (l - n / 8) % 3 == 2;
}

/* The type of a matrix named suffix ("attn_v.weight", "output.weight") in layer l of n. */
static int matrix_type(int type, const char *suffix, int l, int n)
{
    if (type != MODEL_TYPE_MIX_Q4_K_M)
        return type;
    if (strcmp(suffix, "output.weight") == 0)
        return MODEL_TYPE_Q6_K;
    if ((strcmp(suffix, "attn_v.weight") == 0 || strcmp(suffix, "ffn_down.weight") == 0) &&
        more_bits(l, n))
        return MODEL_TYPE_Q6_K;
    return MODEL_TYPE_Q4_K;
}

/* Llama 3.1's rotary factor of pair i, by llama.cpp's converter's formula (factor 8, low and high
 * frequency factors 1 and 4), with c->seq_len as the original context: pairs whose wavelength
 * is under a quarter of it keep their frequency, those over all of it are slowed 8 times, and
 * those between are smoothed. */
static float llama3_factor(const model_config *c, int i)
{
    const double factor = 8.0, lo = 1.0, hi = 4.0, ctx = c->seq_len, pi = 3.14159265358979323846;
    double freq = 1.0 / pow(c->rope_theta, (double)(2 * i) / c->head_size);
    double wavelen = 2.0 * pi / freq;
    if (wavelen < ctx / hi)
        return 1.0f;
    if (wavelen > ctx / lo)
        return (float)factor;
    double smooth = (ctx / wavelen - lo) / (hi - lo);
    return (float)(1.0 / ((1.0 - smooth) / factor + smooth));
}

/* The tensors of a model of config c in file order; w (may be NULL) gives their sources;
 * rope_freqs (synthetic models only) adds Llama 3.1's rotary factors. */
static int plan_model(plan *p, const model_config *c, const model_weights *w, int type,
                      int rope_freqs)
{
    int d = c->dim, kv = c->kv_dim, h = c->hidden_dim, L = c->n_layers;
    float a_d = sqrtf(3.0f / (float)d), a_h = sqrtf(3.0f / (float)h);
    float res = 1.0f / sqrtf(2.0f * (float)L);
    char n[64];
    wtensor *t;
    /* A tied embedding is the classifier too: it gets the classifier's type. */
    int emb_type = matrix_type(type, c->shared_class ? "output.weight" : "token_embd.weight", 0, L);
    if (!(t = plan_add(p, "token_embd.weight", c->vocab_size, d, emb_type)))
        return -1;
    t->scale = 1.0f;
    t->in = w ? &w->token_embedding : NULL;
    for (int l = 0; l < L; l++) {
        const model_layer *y = w ? &w->layers[l] : NULL;
        struct {
            const char *suffix;
            int rows, cols;
            float scale;
            int fill;
            const model_tensor *in;
        } spec[] = {
            {"attn_norm.weight", 0, d, 1.0f, 1, y ? &y->rms_att : NULL},
            {"attn_q.weight", d, d, a_d, 0, y ? &y->wq : NULL},
            {"attn_k.weight", kv, d, a_d, 0, y ? &y->wk : NULL},
            {"attn_v.weight", kv, d, a_d, 0, y ? &y->wv : NULL},
            {"attn_q.bias", 0, d, 0.1f, 0, y ? &y->bq : NULL},
            {"attn_k.bias", 0, kv, 0.1f, 0, y ? &y->bk : NULL},
            {"attn_v.bias", 0, kv, 0.1f, 0, y ? &y->bv : NULL},
            {"attn_output.weight", d, d, a_d * res, 0, y ? &y->wo : NULL},
            {"ffn_norm.weight", 0, d, 1.0f, 1, y ? &y->rms_ffn : NULL},
            {"ffn_gate.weight", h, d, a_d, 0, y ? &y->w1 : NULL},
            {"ffn_down.weight", d, h, a_h * res, 0, y ? &y->w2 : NULL},
            {"ffn_up.weight", h, d, a_d, 0, y ? &y->w3 : NULL},
        };
        for (size_t i = 0; i < sizeof spec / sizeof spec[0]; i++) {
            if (strstr(spec[i].suffix, ".bias") && !c->qkv_bias)
                continue;
            snprintf(n, sizeof n, "blk.%d.%s", l, spec[i].suffix);
            if (!(t = plan_add(p, n, spec[i].rows, spec[i].cols,
                               matrix_type(type, spec[i].suffix, l, L))))
                return -1;
            t->scale = spec[i].scale;
            t->src = spec[i].fill ? SRC_FILL : SRC_RANDOM;
            t->in = spec[i].in;
        }
    }
    if (!(t = plan_add(p, "output_norm.weight", 0, d, MODEL_TYPE_F32)))
        return -1;
    t->scale = 1.0f;
    t->src = SRC_FILL;
    t->in = w ? &w->rms_final : NULL;
    if (!c->shared_class) {
        if (!(t = plan_add(p, "output.weight", c->vocab_size, d,
                           matrix_type(type, "output.weight", 0, L))))
            return -1;
        t->scale = a_d;
        t->in = w ? &w->wcls : NULL;
    }
    if (rope_freqs || (w && w->rope_freqs.data)) {
        if (!(t = plan_add(p, "rope_freqs.weight", 0, c->head_size / 2, MODEL_TYPE_F32)))
            return -1;
        t->src = SRC_ROPE;
        t->c = c;
        t->in = w ? &w->rope_freqs : NULL;
    }
    uint64_t off = 0;
    for (int i = 0; i < p->n; i++) {
        t = &p->t[i];
        if (w)
            t->src = SRC_TENSOR;
        t->offset = off;
        t->bytes = (uint64_t)(t->rows ? t->rows : 1) * model__quant_row_bytes(t->type, t->cols);
        off += (t->bytes + ALIGN - 1) / ALIGN * ALIGN;
    }
    return 0;
}

/* ---- Writing -------------------------------------------------------------------------------- */

typedef struct out {
    FILE *f;
    int bad;
} out;

static void put(out *o, const void *p, size_t n)
{
    if (!o->bad && n && fwrite(p, 1, n, o->f) != n)
        o->bad = 1;
}

static void put_u32(out *o, uint32_t v)
{
    put(o, &v, 4);
}

static void put_u64(out *o, uint64_t v)
{
    put(o, &v, 8);
}

static void put_str(out *o, const char *s)
{
    put_u64(o, strlen(s));
    put(o, s, strlen(s));
}

static void kv_str(out *o, const char *key, const char *v)
{
    put_str(o, key);
    put_u32(o, MODEL__GGUF_STRING);
    put_str(o, v);
}

static void kv_u32(out *o, const char *arch, const char *key, uint32_t v)
{
    char k[128];
    snprintf(k, sizeof k, "%s.%s", arch, key);
    put_str(o, k);
    put_u32(o, MODEL__GGUF_UINT32);
    put_u32(o, v);
}

static void kv_f32(out *o, const char *arch, const char *key, float v)
{
    char k[128];
    snprintf(k, sizeof k, "%s.%s", arch, key);
    put_str(o, k);
    put_u32(o, MODEL__GGUF_FLOAT32);
    put(o, &v, 4);
}

/* Piece id of the byte-level vocabulary model_tokenizer_synth_write() writes, as SentencePiece
 * spells it in GGUF (U+2581 for a space): <unk>, <s>, </s>, the 256 byte pieces, then fillers
 * scored so that the llama2.c tokenizer the loader makes of it is that file's. */
static float vocab_piece(int id, char *piece, size_t len)
{
    static const char letters[] = "etaoinshrdlucmfwypvbgkjqxz";
    if (id < 3) {
        snprintf(piece, len, "%s", id == 0 ? "<unk>" : id == 1 ? "<s>" : "</s>");
        return 0.0f;
    }
    if (id < 259) {
        snprintf(piece, len, "<0x%02X>", id - 3);
        return 0.0f;
    }
    int k = id - 259, a = k % 26, b = (k / 26) % 26, c = k / 676;
    if (c == 0)
        snprintf(piece, len, "\xe2\x96\x81%c%c", letters[a], letters[b]);
    else
        snprintf(piece, len, "\xe2\x96\x81%c%c%c%d", letters[a], letters[b], letters[(c - 1) % 26],
                 (c - 1) / 26);
    return -(float)k;
}

/* The vocabulary's three keys (tokenizer.ggml.model, .tokens, .scores). */
static void put_vocab(out *o, int vocab)
{
    char piece[32];
    kv_str(o, "tokenizer.ggml.model", "llama");
    put_str(o, "tokenizer.ggml.tokens");
    put_u32(o, MODEL__GGUF_ARRAY);
    put_u32(o, MODEL__GGUF_STRING);
    put_u64(o, (uint64_t)vocab);
    for (int i = 0; i < vocab; i++) {
        vocab_piece(i, piece, sizeof piece);
        put_str(o, piece);
    }
    put_str(o, "tokenizer.ggml.scores");
    put_u32(o, MODEL__GGUF_ARRAY);
    put_u32(o, MODEL__GGUF_FLOAT32);
    put_u64(o, (uint64_t)vocab);
    for (int i = 0; i < vocab; i++) {
        float sc = vocab_piece(i, piece, sizeof piece);
        put(o, &sc, 4);
    }
}

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* The tensor descriptions and the data, after the metadata. */
static int write_tensors(out *o, const plan *p, uint64_t *rng, char *msg, size_t msglen)
{
    for (int i = 0; i < p->n; i++) {
        const wtensor *t = &p->t[i];
        put_str(o, t->name);
        put_u32(o, t->rows ? 2 : 1);
        put_u64(o, (uint64_t)t->cols);
        if (t->rows)
            put_u64(o, (uint64_t)t->rows);
        put_u32(o, (uint32_t)t->type);
        put_u64(o, t->offset);
    }
    static const uint8_t zeros[ALIGN];
    long pos = ftell(o->f);
    if (pos < 0)
        return -1;
    put(o, zeros, (ALIGN - (size_t)pos % ALIGN) % ALIGN);
    int maxc = 0;
    for (int i = 0; i < p->n; i++)
        maxc = p->t[i].cols > maxc ? p->t[i].cols : maxc;
    float *row = malloc((size_t)maxc * sizeof(float));
    void *enc = malloc((size_t)maxc * sizeof(float));
    if (!row || !enc) {
        free(row);
        free(enc);
        return fail(msg, msglen, MODEL_ENOMEM, "out of memory");
    }
    for (int i = 0; i < p->n && !o->bad; i++) {
        const wtensor *t = &p->t[i];
        size_t rb = model__quant_row_bytes(t->type, t->cols);
        for (int r = 0; r < (t->rows ? t->rows : 1); r++) {
            if (t->src == SRC_TENSOR) {
                const model_tensor *in = t->in;
                size_t ib = model__quant_row_bytes(in->type, in->cols);
                model__dequant_row(in->type, (const uint8_t *)in->data + (size_t)r * ib, row,
                                   t->cols);
            } else if (t->src == SRC_ROPE) {
                for (int k = 0; k < t->cols; k++)
                    row[k] = llama3_factor(t->c, k);
            } else {
                for (int k = 0; k < t->cols; k++) {
                    double u = (double)(splitmix(rng) >> 11) * (1.0 / 9007199254740992.0);
                    row[k] = t->src == SRC_FILL ? t->scale : (float)((2.0 * u - 1.0) * t->scale);
                }
            }
            model__quant_row(t->type, row, enc, t->cols);
            put(o, enc, rb);
        }
        put(o, zeros, (ALIGN - t->bytes % ALIGN) % ALIGN);
    }
    free(row);
    free(enc);
    return 0;
}

/* Opens path's temporary sibling; finish() closes and renames it (or removes it on failure). */
static int start(const char *path, out *o, char **tmp, char *msg, size_t msglen)
{
    size_t n = strlen(path) + 32;
    *tmp = malloc(n);
    if (!*tmp)
        return fail(msg, msglen, MODEL_ENOMEM, "out of memory");
    snprintf(*tmp, n, "%s.tmp%d", path, (int)getpid());
    o->bad = 0;
    o->f = fopen(*tmp, "wb");
    if (!o->f) {
        int rc = fail(msg, msglen, MODEL_EIO, "cannot write '%s': %s", *tmp, strerror(errno));
        free(*tmp);
        return rc;
    }
    return 0;
}

static int finish(const char *path, out *o, char *tmp, int rc, char *msg, size_t msglen)
{
    if (fclose(o->f) != 0)
        o->bad = 1;
    if (!rc && (o->bad || rename(tmp, path) != 0))
        rc = fail(msg, msglen, MODEL_EIO, "cannot write '%s': %s", path, strerror(errno));
    if (rc)
        unlink(tmp);
    free(tmp);
    return rc;
}

static int type_ok(int type)
{
    return type == MODEL_TYPE_MIX_Q4_K_M || model__quant_supported(type);
}

int model_synth_write_gguf(const char *path, const model_config *cfg, const char *arch, int type,
                           uint64_t seed, char *msg, size_t msglen)
{
    return model_synth_write_gguf_rope(path, cfg, arch, type, seed, 0, msg, msglen);
}

int model_synth_write_gguf_rope(const char *path, const model_config *cfg, const char *arch,
                                int type, uint64_t seed, int rope_freqs, char *msg, size_t msglen)
{
    model_config c = *cfg;
    char why[200];
    int rc = model__config_check(&c, why, sizeof why);
    if (rc)
        return fail(msg, msglen, rc, "synthetic model: %s", why);
    model__config_derive(&c);
    int qwen = strcmp(arch, "qwen2") == 0;
    if (!qwen && strcmp(arch, "llama") != 0)
        return fail(msg, msglen, MODEL_EINVAL,
                    "synthetic model: architecture '%s' (only llama and qwen2)", arch);
    if (!type_ok(type))
        return fail(msg, msglen, MODEL_EINVAL, "synthetic model: weight type %d not supported",
                    type);
    c.qkv_bias = qwen;
    plan p = {0};
    if (plan_model(&p, &c, NULL, type, rope_freqs) != 0) {
        free(p.t);
        return fail(msg, msglen, MODEL_ENOMEM, "out of memory");
    }
    out o;
    char *tmp;
    if ((rc = start(path, &o, &tmp, msg, msglen)) != 0) {
        free(p.t);
        return rc;
    }
    put(&o, "GGUF", 4);
    put_u32(&o, 3);
    put_u64(&o, (uint64_t)p.n);
    int vocab = c.vocab_size >= 259; /* room for the byte pieces */
    int linear = c.rope_factor != 1.0f;
    put_u64(&o, (uint64_t)(10 + 3 * vocab + 2 * linear));
    kv_str(&o, "general.architecture", arch);
    kv_str(&o, "general.name", "prefixd synth");
    kv_u32(&o, arch, "context_length", (uint32_t)c.seq_len);
    kv_u32(&o, arch, "embedding_length", (uint32_t)c.dim);
    kv_u32(&o, arch, "block_count", (uint32_t)c.n_layers);
    kv_u32(&o, arch, "feed_forward_length", (uint32_t)c.hidden_dim);
    kv_u32(&o, arch, "attention.head_count", (uint32_t)c.n_heads);
    kv_u32(&o, arch, "attention.head_count_kv", (uint32_t)c.n_kv_heads);
    kv_f32(&o, arch, "rope.freq_base", c.rope_theta);
    kv_f32(&o, arch, "attention.layer_norm_rms_epsilon", c.norm_eps);
    if (linear) {
        char k[128];
        snprintf(k, sizeof k, "%s.rope.scaling.type", arch);
        kv_str(&o, k, "linear");
        kv_f32(&o, arch, "rope.scaling.factor", c.rope_factor);
    }
    if (vocab)
        put_vocab(&o, c.vocab_size);
    uint64_t rng = seed ^ 0x5eed5eed5eed5eedull;
    rc = write_tensors(&o, &p, &rng, msg, msglen);
    free(p.t);
    return finish(path, &o, tmp, rc, msg, msglen);
}

int model_convert_gguf(const model *m, const char *path, int type, char *msg, size_t msglen)
{
    const model__gguf *g = model__get_gguf(m);
    if (!g)
        return fail(msg, msglen, MODEL_EINVAL,
                    "model file '%s': not a GGUF file (only GGUF models are converted)",
                    model__get_path(m));
    if (!type_ok(type))
        return fail(msg, msglen, MODEL_EINVAL, "convert: weight type %d not supported", type);
    plan p = {0};
    if (plan_model(&p, model_get_config(m), model_get_weights(m), type, 0) != 0) {
        free(p.t);
        return fail(msg, msglen, MODEL_ENOMEM, "out of memory");
    }
    out o;
    char *tmp;
    int rc = start(path, &o, &tmp, msg, msglen);
    if (rc) {
        free(p.t);
        return rc;
    }
    /* The header with the new tensor count, then the metadata's bytes as they are. */
    put(&o, "GGUF", 4);
    put_u32(&o, 3);
    put_u64(&o, (uint64_t)p.n);
    put_u64(&o, g->n_kv);
    const uint8_t *base =
        (const uint8_t *)g->tensors[0].data - g->data_offset - g->tensors[0].offset;
    put(&o, base + 24, (size_t)(g->kv_end - 24));
    if (g->alignment != ALIGN)
        rc = fail(msg, msglen, MODEL_EINVAL,
                  "model file '%s': alignment %u (only files of the default 32 are converted)",
                  model__get_path(m), g->alignment);
    if (!rc)
        rc = write_tensors(&o, &p, NULL, msg, msglen);
    free(p.t);
    return finish(path, &o, tmp, rc, msg, msglen);
}
