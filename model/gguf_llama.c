/* gguf_llama.c — a parsed GGUF file of architecture `llama` or `qwen2` mapped onto the model.
 *
 * Every hyper-parameter comes from the metadata (`llama.embedding_length`, `llama.block_count`,
 * ...), the vocabulary size from the token embedding's shape, and every tensor is found by name,
 * checked for its type and for the shape those hyper-parameters imply, and used in place (the
 * weights stay in the mapping, in their stored type). A file that asks for something the forward
 * pass does not do (partial rotary, YaRN or other rotary scaling than linear and Llama 3.1's
 * rope_freqs factors, experts, extra tensors such as biases) is refused with its name rather
 * than run wrong.
 *
 * Rotary layout: llama.cpp's converter stores a `llama` model's Q and K rows so that ggml's
 * "normal" rope mode, which rotates adjacent pairs (2i, 2i+1), is right for them. That is the
 * pairing of llama2.c and of forward.c, so the rows are used as stored (for stories260K the GGUF's
 * attn_q and attn_k bytes equal the llama2.c checkpoint's wq and wk). `qwen2` files are converted
 * without that permutation and rotate with ggml's NeoX pairing (i, i + head_size/2), which the
 * config's rope_neox tells forward.c; they also carry Q, K and V biases (attn_q.bias, ...).
 *
 * Matrices may have any type the kernels take (model/quant.h); norms and biases must be F32, as
 * llama.cpp's converter and quantizer always leave them.
 *
 * Tensor shapes in GGUF list the innermost dimension first: a (rows, cols) row-major matrix is
 * ne = [cols, rows], so `blk.N.attn_k.weight` of a (kv_dim, dim) projection is [dim, kv_dim].
 */
#include "gguf.h"
#include "model.h"
#include "quant.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct loader {
    const model__gguf *g;
    const char *path;
    char *msg;
    size_t msglen;
    unsigned char *used; /* (n_tensors) 1 once a tensor is mapped */
    const char *arch;    /* "llama" or "qwen2": the metadata keys' prefix */
} loader;

__attribute__((format(printf, 3, 4))) static int fail(loader *ld, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    model__gguf_vfail(ld->msg, ld->msglen, ld->path, code, fmt, ap);
    va_end(ap);
    return code;
}

/* The metadata key "ARCH.name" of the file's architecture (in a static buffer, valid until the
 * next call). */
static const char *akey(loader *ld, const char *name)
{
    static _Thread_local char k[128];
    snprintf(k, sizeof k, "%s.%s", ld->arch, name);
    return k;
}

/* An integer hyper-parameter in [lo, hi]; def < lo means the key is required. */
static int get_int(loader *ld, const char *key, int64_t lo, int64_t hi, int64_t def, int *out)
{
    const model__gguf_kv *kv = model__gguf_find(ld->g, key);
    if (!kv) {
        if (def < lo)
            return fail(ld, MODEL_EFORMAT, "metadata key '%s' is missing", key);
        *out = (int)def;
        return 0;
    }
    int64_t v;
    if (model__gguf_int(kv, lo, hi, &v) != 0) {
        if (kv->type == MODEL__GGUF_STRING || kv->type == MODEL__GGUF_ARRAY ||
            kv->type == MODEL__GGUF_FLOAT32 || kv->type == MODEL__GGUF_FLOAT64)
            return fail(ld, MODEL_EFORMAT, "metadata key '%s': expected an integer, found type %u",
                        key, kv->type);
        return fail(ld, MODEL_ERANGE, "metadata key '%s': %lld is out of range [%lld, %lld]", key,
                    kv->type == MODEL__GGUF_INT8 || kv->type == MODEL__GGUF_INT16 ||
                            kv->type == MODEL__GGUF_INT32 || kv->type == MODEL__GGUF_INT64
                        ? (long long)kv->v.i
                        : (long long)kv->v.u,
                    (long long)lo, (long long)hi);
    }
    *out = (int)v;
    return 0;
}

/* A float hyper-parameter; def < 0 means the key is required. */
static int get_float(loader *ld, const char *key, double def, float *out)
{
    const model__gguf_kv *kv = model__gguf_find(ld->g, key);
    if (!kv) {
        if (def < 0)
            return fail(ld, MODEL_EFORMAT, "metadata key '%s' is missing", key);
        *out = (float)def;
        return 0;
    }
    double v;
    if (model__gguf_float(kv, &v) != 0)
        return fail(ld, MODEL_EFORMAT, "metadata key '%s': expected a number, found type %u", key,
                    kv->type);
    *out = (float)v;
    return 0;
}

/* A string value equal to want (len, p) or not; -1 when the key is absent or not a string. */
static int str_is(const model__gguf_kv *kv, const char *want)
{
    if (!kv || kv->type != MODEL__GGUF_STRING)
        return -1;
    return kv->v.s.len == strlen(want) && memcmp(kv->v.s.p, want, strlen(want)) == 0;
}

/* Finds tensor name, checks its shape (rows, cols) (rows 0: a vector) and type (a vector F32, a
 * matrix any type the kernels take), marks it used. */
static int tensor(loader *ld, const char *name, int rows, int cols, int optional, model_tensor *out)
{
    const model__gguf_tensor *t = model__gguf_tensor_find(ld->g, name);
    if (!t) {
        if (optional) {
            out->data = NULL;
            return 0;
        }
        return fail(ld, MODEL_EFORMAT, "tensor '%s' is missing", name);
    }
    ld->used[t - ld->g->tensors] = 1;
    int want_dims = rows ? 2 : 1;
    if (t->n_dims != (uint32_t)want_dims || t->ne[0] != (uint64_t)cols ||
        (rows && t->ne[1] != (uint64_t)rows)) {
        char shape[96];
        int n = 0;
        for (uint32_t d = 0; d < t->n_dims && n < (int)sizeof shape - 24; d++)
            n += snprintf(shape + n, sizeof shape - (size_t)n, "%s%llu", d ? " x " : "",
                          (unsigned long long)t->ne[d]);
        if (rows)
            return fail(ld, MODEL_ESHAPE, "tensor '%s' has shape [%s], expected [%d x %d]", name,
                        shape, cols, rows);
        return fail(ld, MODEL_ESHAPE, "tensor '%s' has shape [%s], expected [%d]", name, shape,
                    cols);
    }
    if (!model__quant_supported((int)t->type))
        return fail(ld, MODEL_ENOTSUP, "tensor '%s' has type %s, not supported yet", name,
                    model_type_name((int)t->type));
    if (!rows && t->type != MODEL_TYPE_F32)
        return fail(ld, MODEL_ENOTSUP,
                    "tensor '%s' has type %s: vectors (norms, biases) must be f32", name,
                    model_type_name((int)t->type));
    /* The mapping is page-aligned; an alignment below 4 could still misplace a float. */
    if (t->type == MODEL_TYPE_F32 && (t->offset + ld->g->data_offset) % sizeof(float) != 0)
        return fail(ld, MODEL_EFORMAT, "tensor '%s': f32 data at offset %llu is not 4-byte aligned",
                    name, (unsigned long long)(t->offset + ld->g->data_offset));
    out->data = t->data;
    out->type = (int)t->type;
    out->rows = rows ? rows : 1;
    out->cols = cols;
    return 0;
}

/* Rotary scaling as llama.cpp reads it: `ARCH.rope.scaling.type` (linear when absent) and the
 * factor `ARCH.rope.scaling.factor` (or the older `ARCH.rope.scale_linear`; absent or 0: none).
 * Linear scaling divides every angle by the factor; type none ignores the factor, as llama.cpp
 * does. YaRN and the other types change the attention too and are refused by name. Llama 3.1's
 * scaling is not a type: its converter writes the per-pair factors as `rope_freqs.weight`. */
static int read_rope_scaling(loader *ld, model_config *c)
{
    const model__gguf_kv *type = model__gguf_find(ld->g, akey(ld, "rope.scaling.type"));
    float factor = 0.0f;
    int rc;
    if (type && type->type != MODEL__GGUF_STRING)
        return fail(ld, MODEL_EFORMAT, "metadata key '%s.rope.scaling.type' is not a string",
                    ld->arch);
    if (type && str_is(type, "none") != 1 && str_is(type, "linear") != 1)
        return fail(ld, MODEL_ENOTSUP,
                    "rotary scaling type '%.*s' (%s.rope.scaling.type) is not supported (only "
                    "linear, and Llama 3's rope_freqs factors)",
                    type->v.s.len > 32 ? 32 : (int)type->v.s.len, type->v.s.p, ld->arch);
    const char *key = akey(ld, "rope.scaling.factor");
    if (!model__gguf_find(ld->g, key))
        key = akey(ld, "rope.scale_linear");
    char k[128];
    snprintf(k, sizeof k, "%s", key);
    if ((rc = get_float(ld, k, 0.0, &factor)))
        return rc;
    if (!(factor >= 0.0f) || factor > 1e6f || (factor > 0.0f && factor < 1e-6f))
        return fail(ld, MODEL_ERANGE, "metadata key '%s': rotary scaling factor %g is out of range",
                    k, (double)factor);
    c->rope_factor = factor == 0.0f || str_is(type, "none") == 1 ? 1.0f : factor;
    return 0;
}

static int read_config(loader *ld, model_config *c)
{
    const model__gguf_kv *arch = model__gguf_find(ld->g, "general.architecture");
    if (!arch || arch->type != MODEL__GGUF_STRING)
        return fail(ld, MODEL_EFORMAT, "metadata key 'general.architecture' is %s",
                    arch ? "not a string" : "missing");
    int qwen = str_is(arch, "qwen2") == 1;
    if (str_is(arch, "llama") != 1 && !qwen)
        return fail(ld, MODEL_ENOTSUP,
                    "architecture '%.*s' is not supported (only llama and qwen2)",
                    arch->v.s.len > 64 ? 64 : (int)arch->v.s.len, arch->v.s.p);
    ld->arch = qwen ? "qwen2" : "llama";
    int rc, experts;
    memset(c, 0, sizeof *c);
    c->rope_neox = qwen; /* qwen2 rotates (i, i + head_size / 2): ggml's NeoX mode */
    c->qkv_bias = qwen;
    if ((rc = get_int(ld, akey(ld, "embedding_length"), 1, 65536, -1, &c->dim)) ||
        (rc = get_int(ld, akey(ld, "block_count"), 1, 1024, -1, &c->n_layers)) ||
        (rc = get_int(ld, akey(ld, "feed_forward_length"), 1, 262144, -1, &c->hidden_dim)) ||
        (rc = get_int(ld, akey(ld, "attention.head_count"), 1, 65536, -1, &c->n_heads)) ||
        (rc = get_int(ld, akey(ld, "attention.head_count_kv"), 1, 65536, c->n_heads,
                      &c->n_kv_heads)) ||
        (rc = get_int(ld, akey(ld, "context_length"), 1, 1048576, -1, &c->seq_len)) ||
        (rc = get_float(ld, akey(ld, "rope.freq_base"), 10000.0, &c->rope_theta)) ||
        (rc = get_float(ld, akey(ld, "attention.layer_norm_rms_epsilon"), -1, &c->norm_eps)) ||
        (rc = get_int(ld, akey(ld, "expert_count"), 0, 1 << 20, 0, &experts)))
        return rc;
    if (experts > 0)
        return fail(ld, MODEL_ENOTSUP,
                    "mixture of experts (%s.expert_count %d) is not supported yet", ld->arch,
                    experts);
    if ((rc = read_rope_scaling(ld, c)))
        return rc;
    /* The vocabulary is the token embedding's row count. */
    const model__gguf_tensor *emb = model__gguf_tensor_find(ld->g, "token_embd.weight");
    if (!emb)
        return fail(ld, MODEL_EFORMAT, "tensor 'token_embd.weight' is missing");
    if (emb->n_dims != 2 || emb->ne[1] < 1 || emb->ne[1] > 4194304)
        return fail(ld, MODEL_ESHAPE,
                    "tensor 'token_embd.weight': %u dimensions, %llu rows: not "
                    "a (vocab, dim) matrix",
                    emb->n_dims, (unsigned long long)emb->ne[1]);
    c->vocab_size = (int)emb->ne[1];
    int vocab_key;
    if ((rc = get_int(ld, akey(ld, "vocab_size"), 1, 4194304, c->vocab_size, &vocab_key)))
        return rc;
    if (vocab_key != c->vocab_size)
        return fail(ld, MODEL_ESHAPE, "%s.vocab_size %d differs from token_embd.weight's %d rows",
                    ld->arch, vocab_key, c->vocab_size);
    c->shared_class = model__gguf_tensor_find(ld->g, "output.weight") == NULL;
    char why[200];
    if ((rc = model__config_check(c, why, sizeof why)))
        return fail(ld, rc, "impossible shape: %s", why);
    model__config_derive(c);
    int rope_dim;
    if ((rc = get_int(ld, akey(ld, "rope.dimension_count"), 0, 65536, c->head_size, &rope_dim)))
        return rc;
    if (rope_dim != c->head_size)
        return fail(ld, MODEL_ENOTSUP,
                    "%s.rope.dimension_count %d differs from the head size %d: partial rotary "
                    "embedding is not supported yet",
                    ld->arch, rope_dim, c->head_size);
    return 0;
}

static int map_layer(loader *ld, const model_config *c, int l, model_layer *y)
{
    int d = c->dim, kv = c->kv_dim, h = c->hidden_dim, rc;
    char n[96];
#define T(field, suffix, rows, cols)                                                               \
    snprintf(n, sizeof n, "blk.%d." suffix, l);                                                    \
    if ((rc = tensor(ld, n, rows, cols, 0, &y->field)) != 0)                                       \
        return rc;
    T(rms_att, "attn_norm.weight", 0, d)
    T(wq, "attn_q.weight", d, d)
    T(wk, "attn_k.weight", kv, d)
    T(wv, "attn_v.weight", kv, d)
    T(wo, "attn_output.weight", d, d)
    T(rms_ffn, "ffn_norm.weight", 0, d)
    T(w1, "ffn_gate.weight", h, d)
    T(w2, "ffn_down.weight", d, h)
    T(w3, "ffn_up.weight", h, d)
    if (c->qkv_bias) {
        T(bq, "attn_q.bias", 0, d)
        T(bk, "attn_k.bias", 0, kv)
        T(bv, "attn_v.bias", 0, kv)
    }
#undef T
    return 0;
}

/* Llama 3.1's rotary frequency divisors, when the file has them: one F32 per rotated pair, each
 * positive and finite (a zero would make every angle of its pair infinite). */
static int rope_freqs(loader *ld, const model_config *c, model_tensor *out)
{
    int rc = tensor(ld, "rope_freqs.weight", 0, c->head_size / 2, 1, out);
    if (rc || !out->data)
        return rc;
    const float *f = model_tensor_f32(out);
    for (int i = 0; i < c->head_size / 2; i++)
        if (!(f[i] > 0.0f) || !(f[i] < 1e30f))
            return fail(ld, MODEL_ERANGE,
                        "tensor 'rope_freqs.weight': factor %d is %g (each must be positive and "
                        "finite)",
                        i, (double)f[i]);
    return 0;
}

int model__gguf_llama(const model__gguf *g, const char *path, model_config *c, model_weights *w,
                      model_layer **layers, char *msg, size_t msglen)
{
    loader ld = {g, path, msg, msglen, NULL, "llama"};
    *layers = NULL;
    int rc = read_config(&ld, c);
    if (rc)
        return rc;
    ld.used = calloc(g->n_tensors ? g->n_tensors : 1, 1);
    model_layer *ly = calloc((size_t)c->n_layers, sizeof *ly);
    if (!ld.used || !ly) {
        rc = fail(&ld, MODEL_ENOMEM, "out of memory");
        goto out;
    }
    memset(w, 0, sizeof *w);
    if ((rc = tensor(&ld, "token_embd.weight", c->vocab_size, c->dim, 0, &w->token_embedding)))
        goto out;
    for (int l = 0; l < c->n_layers; l++)
        if ((rc = map_layer(&ld, c, l, &ly[l])))
            goto out;
    if ((rc = tensor(&ld, "output_norm.weight", 0, c->dim, 0, &w->rms_final)) ||
        (rc = tensor(&ld, "output.weight", c->vocab_size, c->dim, 1, &w->wcls)))
        goto out;
    if (!w->wcls.data)
        w->wcls = w->token_embedding;
    if ((rc = rope_freqs(&ld, c, &w->rope_freqs)))
        goto out;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        if (ld.used[i])
            continue;
        rc = fail(&ld, MODEL_EFORMAT,
                  "tensor '%s' is not part of a llama model this loader knows (biases or "
                  "another variant?)",
                  g->tensors[i].name);
        goto out;
    }
    w->layers = ly;
    *layers = ly;
    ly = NULL;
out:
    free(ld.used);
    free(ly);
    return rc;
}

/* ---- The vocabulary, as a llama2.c tokenizer image ------------------------------------------ */

/* Bytes of piece s as llama2.c's exporter writes it: each U+2581 (E2 96 81) becomes a space. */
static size_t piece_put(unsigned char *dst, const char *s, size_t n)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (i + 2 < n && (unsigned char)s[i] == 0xE2 && (unsigned char)s[i + 1] == 0x96 &&
            (unsigned char)s[i + 2] == 0x81) {
            if (dst)
                dst[o] = ' ';
            i += 2;
        } else if (dst) {
            dst[o] = (unsigned char)s[i];
        }
        o++;
    }
    return o;
}

static void put_i32(unsigned char *p, int32_t v)
{
    memcpy(p, &v, 4); /* little-endian hosts only, as the rest of the loader */
}

/* Checks that a special token id key, when present, holds the id the tokenizer assumes. */
static int special_id(loader *ld, const char *key, int want)
{
    const model__gguf_kv *kv = model__gguf_find(ld->g, key);
    int64_t v;
    if (!kv)
        return 0;
    if (model__gguf_int(kv, INT64_MIN, INT64_MAX, &v) != 0 || v != want)
        return fail(ld, MODEL_ENOTSUP,
                    "metadata key '%s' is not %d: other special token ids are not supported yet",
                    key, want);
    return 0;
}

int model__gguf_vocab_llama2c(const model__gguf *g, const char *path, int vocab,
                              unsigned char **buf, size_t *len, char *msg, size_t msglen)
{
    loader ld = {g, path, msg, msglen, NULL, "llama"};
    *buf = NULL;
    const model__gguf_kv *kind = model__gguf_find(g, "tokenizer.ggml.model");
    const model__gguf_kv *tok = model__gguf_find(g, "tokenizer.ggml.tokens");
    const model__gguf_kv *sc = model__gguf_find(g, "tokenizer.ggml.scores");
    if (!kind || !tok)
        return fail(&ld, MODEL_EFORMAT,
                    "no vocabulary (tokenizer.ggml.model and .tokens) in the "
                    "file: give a tokenizer");
    if (str_is(kind, "llama") != 1)
        return fail(
            &ld, MODEL_ENOTSUP,
            "vocabulary kind '%.*s' (tokenizer.ggml.model) is not "
            "supported yet (only llama, SentencePiece)",
            kind->type == MODEL__GGUF_STRING ? (int)(kind->v.s.len > 32 ? 32 : kind->v.s.len) : 1,
            kind->type == MODEL__GGUF_STRING ? kind->v.s.p : "?");
    if (tok->type != MODEL__GGUF_ARRAY || tok->arr_type != MODEL__GGUF_STRING)
        return fail(&ld, MODEL_EFORMAT, "tokenizer.ggml.tokens is not an array of strings");
    if (tok->arr_n != (uint64_t)vocab)
        return fail(&ld, MODEL_EVOCAB,
                    "tokenizer.ggml.tokens holds %llu tokens, the model has a "
                    "vocabulary of %d",
                    (unsigned long long)tok->arr_n, vocab);
    if (!sc || sc->type != MODEL__GGUF_ARRAY || sc->arr_type != MODEL__GGUF_FLOAT32 ||
        sc->arr_n != tok->arr_n)
        return fail(&ld, MODEL_EFORMAT, "tokenizer.ggml.scores is missing or not %d float32 values",
                    vocab);
    int rc;
    if ((rc = special_id(&ld, "tokenizer.ggml.unknown_token_id", MODEL_TOK_UNK)) ||
        (rc = special_id(&ld, "tokenizer.ggml.bos_token_id", MODEL_TOK_BOS)) ||
        (rc = special_id(&ld, "tokenizer.ggml.eos_token_id", MODEL_TOK_EOS)))
        return rc;
    static const char bos[] = "\n<s>\n", eos[] = "\n</s>\n";
    /* Sizes: every piece came from the file, so the image is at most 4 + 8 per token + the
     * array's bytes, which fit in memory already. */
    uint64_t pos = 0;
    size_t total = 4, max_len = 1;
    for (int i = 0; i < vocab; i++) {
        model__gguf_str s = model__gguf_arr_str(tok, &pos);
        size_t n = i == MODEL_TOK_BOS   ? sizeof bos - 1
                   : i == MODEL_TOK_EOS ? sizeof eos - 1
                                        : piece_put(NULL, s.p, (size_t)s.len);
        if (n > 65536)
            return fail(&ld, MODEL_EFORMAT, "token %d is %zu bytes long", i, n);
        max_len = n > max_len ? n : max_len;
        total += 8 + n;
    }
    unsigned char *b = malloc(total), *p = b + 4;
    if (!b)
        return fail(&ld, MODEL_ENOMEM, "out of memory");
    put_i32(b, (int32_t)max_len);
    pos = 0;
    for (int i = 0; i < vocab; i++) {
        model__gguf_str s = model__gguf_arr_str(tok, &pos);
        float score;
        memcpy(&score, sc->arr + (size_t)i * 4, 4);
        memcpy(p, &score, 4);
        size_t n;
        if (i == MODEL_TOK_BOS || i == MODEL_TOK_EOS) {
            const char *sp = i == MODEL_TOK_BOS ? bos : eos;
            n = strlen(sp);
            memcpy(p + 8, sp, n);
        } else {
            n = piece_put(p + 8, s.p, (size_t)s.len);
        }
        put_i32(p + 4, (int32_t)n);
        p += 8 + n;
    }
    *buf = b;
    *len = total;
    return 0;
}
