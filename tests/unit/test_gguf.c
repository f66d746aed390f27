/* test_gguf.c — the GGUF reader and the llama GGUF loader: a valid file parses with the right
 * metadata; malformed files made here (cut at every byte, huge counts, strings and tensors past
 * the end, misaligned offsets, unknown types, overflowing dimensions, duplicates, wrong
 * architecture or types) are each refused with the expected message; the stories260K GGUF gives
 * the golden text and bitwise the logits of the llama2.c checkpoint. */
#include "../../model/gguf.h"
#include "harness.h"
#include "model.h"

#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#define GGUF_260K PREFIXD_MODELS_DIR "/stories260K-f32.gguf"
#define BIN_260K PREFIXD_MODELS_DIR "/stories260K.bin"
#define TOK_260K PREFIXD_MODELS_DIR "/tok512.bin"
#define GOLDEN PREFIXD_MODELS_DIR "/golden/stories260K-greedy-bos.txt"

/* ---- A GGUF writer ------------------------------------------------------------------------ */

typedef struct gb {
    unsigned char *b;
    size_t n, cap;
} gb;

static void put(gb *g, const void *p, size_t n)
{
    if (g->n + n > g->cap) {
        g->cap = (g->n + n) * 2 + 64;
        g->b = realloc(g->b, g->cap);
    }
    memcpy(g->b + g->n, p, n);
    g->n += n;
}
static void u32(gb *g, uint32_t v)
{
    put(g, &v, 4);
}
static void u64(gb *g, uint64_t v)
{
    put(g, &v, 8);
}
static void str(gb *g, const char *s)
{
    u64(g, strlen(s));
    put(g, s, strlen(s));
}
static void kv_u32(gb *g, const char *k, uint32_t v)
{
    str(g, k);
    u32(g, MODEL__GGUF_UINT32);
    u32(g, v);
}
static void kv_f32(gb *g, const char *k, float v)
{
    str(g, k);
    u32(g, MODEL__GGUF_FLOAT32);
    put(g, &v, 4);
}
static void kv_str(gb *g, const char *k, const char *v)
{
    str(g, k);
    u32(g, MODEL__GGUF_STRING);
    str(g, v);
}

/* A tiny llama model, with knobs for the malformed variants. */
typedef struct spec {
    const char *arch;
    int dim, hidden, layers, heads, kv_heads, vocab, ctx;
    int rope_dim;      /* 0: leave the key out */
    const char *drop;  /* a tensor left out */
    const char *extra; /* an extra tensor (dim floats, or extra_cols) */
    int extra_cols;
    const char *scaling;   /* llama.rope.scaling.type, if any */
    const char *bad_shape; /* a tensor whose first dimension is one larger */
    const char *retype;    /* a tensor stored with type `type` */
    uint32_t type;
    int tied;       /* no output.weight */
    int n_dup;      /* write token_embd.weight twice */
    int misalign;   /* output_norm's offset + 4 */
    int past_end;   /* the last tensor's offset pushed past the end */
    int with_vocab; /* write a byte-level SentencePiece vocabulary */
} spec;

static const spec tiny = {.arch = "llama",
                          .dim = 32,
                          .hidden = 48,
                          .layers = 2,
                          .heads = 4,
                          .kv_heads = 2,
                          .vocab = 300,
                          .ctx = 64};

typedef struct tdesc {
    char name[64];
    uint64_t ne[2];
    int nd;
    uint32_t type;
} tdesc;

static size_t tensor_bytes(const tdesc *t)
{
    uint32_t block, bytes;
    model__ggml_type_size(t->type, &block, &bytes);
    return (size_t)(t->ne[0] / block * bytes) * (t->nd == 2 ? t->ne[1] : 1);
}

static int tensors_of(const spec *s, tdesc *t)
{
    int n = 0, kvd = s->dim / s->heads * s->kv_heads;
#define ADD(nm, c, r)                                                                              \
    do {                                                                                           \
        snprintf(t[n].name, sizeof t[n].name, "%s", nm);                                           \
        t[n].ne[0] = (uint64_t)(c);                                                                \
        t[n].ne[1] = (uint64_t)(r);                                                                \
        t[n].nd = (r) ? 2 : 1;                                                                     \
        t[n].type = MODEL_TYPE_F32;                                                                \
        if (!s->drop || strcmp(s->drop, nm) != 0)                                                  \
            n++;                                                                                   \
    } while (0)
    char nm[64];
    ADD("token_embd.weight", s->dim, s->vocab);
    if (s->n_dup)
        ADD("token_embd.weight", s->dim, s->vocab);
    ADD("output_norm.weight", s->dim, 0);
    if (!s->tied)
        ADD("output.weight", s->dim, s->vocab);
    static const struct {
        const char *sfx;
        int c, r; /* 0 dim, 1 kv_dim, 2 hidden; r -1: a vector */
    } per[] = {{"attn_norm", 0, -1}, {"attn_q", 0, 0},      {"attn_k", 0, 1},
               {"attn_v", 0, 1},     {"attn_output", 0, 0}, {"ffn_norm", 0, -1},
               {"ffn_gate", 0, 2},   {"ffn_down", 2, 0},    {"ffn_up", 0, 2}};
    for (int l = 0; l < s->layers; l++)
        for (size_t i = 0; i < sizeof per / sizeof per[0]; i++) {
            int sz[3] = {s->dim, kvd, s->hidden};
            snprintf(nm, sizeof nm, "blk.%d.%s.weight", l, per[i].sfx);
            ADD(nm, sz[per[i].c], per[i].r < 0 ? 0 : sz[per[i].r]);
        }
    if (s->extra)
        ADD(s->extra, s->extra_cols ? s->extra_cols : s->dim, 0);
#undef ADD
    for (int i = 0; i < n; i++) {
        if (s->bad_shape && strcmp(t[i].name, s->bad_shape) == 0)
            t[i].ne[t[i].nd - 1]++;
        if (s->retype && strcmp(t[i].name, s->retype) == 0)
            t[i].type = s->type;
    }
    return n;
}

/* Writes the model of spec s into g (a valid file for the spec `tiny`). */
static void build(gb *g, const spec *s)
{
    tdesc t[64];
    int nt = tensors_of(s, t);
    int nkv = 10 + (s->rope_dim ? 1 : 0) + (s->with_vocab ? 3 : 0) + (s->scaling ? 1 : 0);
    put(g, "GGUF", 4);
    u32(g, 3);
    u64(g, (uint64_t)nt);
    u64(g, (uint64_t)nkv);
    kv_str(g, "general.architecture", s->arch);
    kv_str(g, "general.name", "tiny");
    kv_u32(g, "llama.context_length", (uint32_t)s->ctx);
    kv_u32(g, "llama.embedding_length", (uint32_t)s->dim);
    kv_u32(g, "llama.feed_forward_length", (uint32_t)s->hidden);
    kv_u32(g, "llama.block_count", (uint32_t)s->layers);
    kv_u32(g, "llama.attention.head_count", (uint32_t)s->heads);
    kv_u32(g, "llama.attention.head_count_kv", (uint32_t)s->kv_heads);
    kv_f32(g, "llama.attention.layer_norm_rms_epsilon", 1e-5f);
    kv_f32(g, "llama.rope.freq_base", 10000.0f);
    if (s->rope_dim)
        kv_u32(g, "llama.rope.dimension_count", (uint32_t)s->rope_dim);
    if (s->scaling)
        kv_str(g, "llama.rope.scaling.type", s->scaling);
    if (s->with_vocab) {
        kv_str(g, "tokenizer.ggml.model", "llama");
        str(g, "tokenizer.ggml.tokens");
        u32(g, MODEL__GGUF_ARRAY);
        u32(g, MODEL__GGUF_STRING);
        u64(g, (uint64_t)s->vocab);
        for (int i = 0; i < s->vocab; i++) {
            char p[16];
            if (i < 3)
                snprintf(p, sizeof p, "%s", i == 0 ? "<unk>" : i == 1 ? "<s>" : "</s>");
            else if (i < 259)
                snprintf(p, sizeof p, "<0x%02X>", i - 3);
            else
                snprintf(p, sizeof p, "\xe2\x96\x81w%d", i);
            str(g, p);
        }
        str(g, "tokenizer.ggml.scores");
        u32(g, MODEL__GGUF_ARRAY);
        u32(g, MODEL__GGUF_FLOAT32);
        u64(g, (uint64_t)s->vocab);
        for (int i = 0; i < s->vocab; i++) {
            float f = (float)-i;
            put(g, &f, 4);
        }
    }
    uint64_t off = 0;
    for (int i = 0; i < nt; i++) {
        str(g, t[i].name);
        u32(g, (uint32_t)t[i].nd);
        for (int d = 0; d < t[i].nd; d++)
            u64(g, t[i].ne[d]);
        u32(g, t[i].type);
        uint64_t o = off;
        if (s->misalign && strcmp(t[i].name, "output_norm.weight") == 0)
            o += 4;
        if (s->past_end && i == nt - 1)
            o += 1u << 20;
        u64(g, o);
        off += (tensor_bytes(&t[i]) + 31) / 32 * 32;
    }
    while (g->n % 32)
        put(g, "", 1);
    uint64_t rng = 12345;
    for (int i = 0; i < nt; i++) {
        size_t nb = (tensor_bytes(&t[i]) + 31) / 32 * 32;
        for (size_t k = 0; k < nb; k += 4) {
            rng = rng * 6364136223846793005ull + 1442695040888963407ull;
            float f = (float)((double)(rng >> 40) / (double)(1 << 24) - 0.5);
            put(g, &f, 4);
        }
    }
}

/* ---- Helpers ------------------------------------------------------------------------------ */

/* A file in the case's scratch directory (harness.h: removed when the case ends). */
static const char *tmp_path(const char *name)
{
    static char buf[512];
    snprintf(buf, sizeof buf, "%s/%s", harness_tmpdir(), name);
    return buf;
}

static void write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    CHECK(fwrite(data, 1, n, f) == n);
    fclose(f);
}

/* Parses n bytes of b; expects code and a message holding needle (and the file's name). */
static void expect_parse(const void *b, size_t n, int code, const char *needle)
{
    char msg[512] = "";
    model__gguf g;
    int rc = model__gguf_parse(b, n, "x.gguf", &g, msg, sizeof msg);
    CHECK_MSG(rc == code, "expected %d (%s), got %d: %s", code, needle, rc, msg);
    CHECK_STR_CONTAINS(msg, needle);
    CHECK_STR_CONTAINS(msg, "model file 'x.gguf': ");
}

/* Writes spec s to a file and loads it as a model; expects code and needle. */
static void expect_load(const spec *s, int code, const char *needle)
{
    gb g = {0};
    build(&g, s);
    write_file(tmp_path("m.gguf"), g.b, g.n);
    free(g.b);
    char msg[512] = "";
    model *m = NULL;
    int rc = model_load(tmp_path("m.gguf"), &m, msg, sizeof msg);
    model_free(m);
    CHECK_MSG(rc == code, "expected %d (%s), got %d: %s", code, needle, rc, msg);
    CHECK_STR_CONTAINS(msg, needle);
    CHECK_STR_CONTAINS(msg, "m.gguf");
}

static unsigned char *read_all(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    CHECK_MSG(f != NULL, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    rewind(f);
    unsigned char *b = malloc(*n + 1);
    CHECK(fread(b, 1, *n, f) == *n);
    fclose(f);
    b[*n] = 0;
    return b;
}

/* ---- Cases -------------------------------------------------------------------------------- */

static void test_parse_valid(void)
{
    gb g = {0};
    spec s = tiny;
    s.with_vocab = 1;
    build(&g, &s);
    char msg[512] = "";
    model__gguf f;
    CHECK_MSG(model__gguf_parse(g.b, g.n, "t.gguf", &f, msg, sizeof msg) == 0, "%s", msg);
    CHECK_EQ_INT(f.version, 3);
    CHECK_EQ_INT(f.alignment, 32);
    CHECK_EQ_INT(f.n_kv, 13);
    CHECK_EQ_INT(f.n_tensors, 3 + 9 * 2);
    CHECK_EQ_INT(f.data_offset % 32, 0);
    const model__gguf_kv *kv = model__gguf_find(&f, "general.architecture");
    CHECK(kv && kv->type == MODEL__GGUF_STRING && kv->v.s.len == 5);
    CHECK(memcmp(kv->v.s.p, "llama", 5) == 0);
    int64_t v;
    CHECK(model__gguf_int(model__gguf_find(&f, "llama.embedding_length"), 0, 100, &v) == 0);
    CHECK_EQ_INT(v, 32);
    CHECK(model__gguf_int(model__gguf_find(&f, "llama.embedding_length"), 0, 31, &v) == -1);
    double d;
    CHECK(model__gguf_float(model__gguf_find(&f, "llama.rope.freq_base"), &d) == 0);
    CHECK_NEAR(d, 10000.0, 0);
    CHECK(model__gguf_find(&f, "llama.nope") == NULL);
    kv = model__gguf_find(&f, "tokenizer.ggml.tokens");
    CHECK(kv && kv->arr_type == MODEL__GGUF_STRING && kv->arr_n == 300);
    uint64_t pos = 0;
    model__gguf_str p0 = model__gguf_arr_str(kv, &pos);
    CHECK(p0.len == 5 && memcmp(p0.p, "<unk>", 5) == 0);
    const model__gguf_tensor *t = model__gguf_tensor_find(&f, "blk.1.attn_k.weight");
    CHECK(t != NULL);
    CHECK_EQ_INT(t->n_dims, 2);
    CHECK_EQ_U64(t->ne[0], 32);
    CHECK_EQ_U64(t->ne[1], 16);
    CHECK_EQ_U64(t->n_bytes, 32 * 16 * 4);
    CHECK((const unsigned char *)t->data == g.b + f.data_offset + t->offset);
    CHECK_STR_EQ(model__ggml_type_name(12), "q4_K");
    CHECK(model__ggml_type_name(4) == NULL);
    model__gguf_free(&f);

    /* And as a model: hyper-parameters from the metadata, weights pointing into the file. */
    write_file(tmp_path("ok.gguf"), g.b, g.n);
    model *m = NULL;
    CHECK_MSG(model_load(tmp_path("ok.gguf"), &m, msg, sizeof msg) == 0, "%s", msg);
    const model_config *c = model_get_config(m);
    CHECK_EQ_INT(c->dim, 32);
    CHECK_EQ_INT(c->hidden_dim, 48);
    CHECK_EQ_INT(c->n_layers, 2);
    CHECK_EQ_INT(c->n_heads, 4);
    CHECK_EQ_INT(c->n_kv_heads, 2);
    CHECK_EQ_INT(c->vocab_size, 300);
    CHECK_EQ_INT(c->seq_len, 64);
    CHECK_EQ_INT(c->shared_class, 0);
    CHECK_EQ_INT(model_set_context(m, 0), MODEL_EINVAL);
    CHECK_EQ_INT(model_set_context(m, 200), 0);
    CHECK_EQ_INT(c->seq_len, 200);
    const model_weights *w = model_get_weights(m);
    CHECK_EQ_INT(w->layers[1].w2.rows, 32);
    CHECK_EQ_INT(w->layers[1].w2.cols, 48);
    model_tokenizer *tok = NULL;
    CHECK_MSG(model_tokenizer_from_model(m, &tok, msg, sizeof msg) == 0, "%s", msg);
    size_t len;
    const char *piece = model_decode_piece(tok, 5, 299, &len);
    CHECK(len == 5 && memcmp(piece, " w299", 5) == 0);
    model_tokenizer_free(tok);
    model_free(m);
    free(g.b);
}

static void test_truncated_everywhere(void)
{
    gb g = {0};
    spec s = tiny;
    s.with_vocab = 1;
    build(&g, &s);
    model__gguf f;
    char msg[512];
    CHECK(model__gguf_parse(g.b, g.n, "x.gguf", &f, msg, sizeof msg) == 0);
    size_t hdr = (size_t)f.data_offset;
    model__gguf_free(&f);
    /* Every cut inside the header is refused as truncated; so is every cut in the data (then
     * the last tensor's data no longer fits), tried every 61 bytes there. */
    for (size_t k = 0; k < g.n; k += k < hdr ? 1 : 61) {
        unsigned char *cut = malloc(k ? k : 1);
        memcpy(cut, g.b, k);
        expect_parse(cut, k, MODEL_ETRUNC,
                     k < hdr ? (k < 24 ? "header" : "") : "data extends past the end of the file");
        free(cut);
    }
    expect_parse(g.b, 3, MODEL_ETRUNC, "header: the magic runs past the end of the file");
    expect_parse(g.b, 6, MODEL_ETRUNC, "header: the version runs past the end");
    expect_parse(g.b, 12, MODEL_ETRUNC, "header: the tensor count runs past the end");
    expect_parse(g.b, 20, MODEL_ETRUNC, "header: the metadata count runs past the end");
    expect_parse(g.b, 30, MODEL_ETRUNC, "cannot fit");
    expect_parse(g.b, 3500, MODEL_ETRUNC, "metadata key 'tokenizer.ggml.tokens': string #");
    expect_parse(g.b, hdr - 40, MODEL_ETRUNC,
                 "tensor 'blk.1.ffn_up.weight': a dimension runs past the end");
    free(g.b);
}

static void test_malformed_headers(void)
{
    gb g = {0};
    /* Not GGUF, version 1 and 4. */
    put(&g, "GGUX\3\0\0\0", 8);
    expect_parse(g.b, g.n, MODEL_EFORMAT, "not a GGUF file");
    g.n = 0;
    put(&g, "GGUF", 4);
    u32(&g, 1);
    u64(&g, 0);
    u64(&g, 0);
    expect_parse(g.b, g.n, MODEL_EFORMAT, "GGUF version 1 is not supported");
    /* Huge counts. */
    g.n = 0;
    put(&g, "GGUF", 4);
    u32(&g, 3);
    u64(&g, 1ull << 62);
    u64(&g, 0);
    expect_parse(g.b, g.n, MODEL_ETRUNC, "tensor count 4611686018427387904 cannot fit");
    g.n = 0;
    put(&g, "GGUF", 4);
    u32(&g, 3);
    u64(&g, 0);
    u64(&g, UINT64_MAX);
    expect_parse(g.b, g.n, MODEL_ETRUNC, "metadata count 18446744073709551615 cannot fit");
    /* A key whose length runs past the end. */
    g.n = 0;
    put(&g, "GGUF", 4);
    u32(&g, 3);
    u64(&g, 0);
    u64(&g, 1);
    u64(&g, 1000);
    put(&g, "abcdefgh", 8);
    expect_parse(g.b, g.n, MODEL_ETRUNC,
                 "metadata key #0: the key of 1000 bytes runs past the end of the file (offset "
                 "32 + 1000 > 40)");
    /* A string value past the end, then a huge array, a nested array, an unknown value type,
     * a bad alignment, duplicate keys. */
    struct {
        uint32_t type, arr_type;
        uint64_t n;
        const char *needle;
        int code;
    } bad[] = {
        {MODEL__GGUF_STRING, 0, 99, "metadata key 'k': the string value of 99 bytes runs past",
         MODEL_ETRUNC},
        {MODEL__GGUF_ARRAY, MODEL__GGUF_UINT64, 1ull << 61,
         "metadata key 'k': array of 2305843009213693952 elements cannot fit", MODEL_ETRUNC},
        {MODEL__GGUF_ARRAY, MODEL__GGUF_STRING, 3, "metadata key 'k': string #0 of", MODEL_ETRUNC},
        {MODEL__GGUF_ARRAY, MODEL__GGUF_ARRAY, 1, "nested arrays are not supported", MODEL_EFORMAT},
        {MODEL__GGUF_ARRAY, 13, 1, "unknown array element type 13", MODEL_EFORMAT},
        {13, 0, 0, "metadata key 'k': unknown value type 13", MODEL_EFORMAT},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        g.n = 0;
        put(&g, "GGUF", 4);
        u32(&g, 3);
        u64(&g, 0);
        u64(&g, 1);
        str(&g, "k");
        u32(&g, bad[i].type);
        if (bad[i].type == MODEL__GGUF_ARRAY)
            u32(&g, bad[i].arr_type);
        u64(&g, bad[i].n);
        u64(&g, 1000); /* a first string's length, past the end */
        put(&g, "0123456789abcdef", 16);
        expect_parse(g.b, g.n, bad[i].code, bad[i].needle);
    }
    uint32_t aligns[] = {0, 3, 48, 1u << 21};
    for (size_t i = 0; i < 4; i++) {
        g.n = 0;
        put(&g, "GGUF", 4);
        u32(&g, 2);
        u64(&g, 0);
        u64(&g, 1);
        kv_u32(&g, "general.alignment", aligns[i]);
        expect_parse(g.b, g.n, MODEL_EFORMAT, "'general.alignment': ");
    }
    g.n = 0;
    put(&g, "GGUF", 4);
    u32(&g, 3);
    u64(&g, 0);
    u64(&g, 2);
    kv_u32(&g, "a.b", 1);
    kv_str(&g, "a.b", "x");
    expect_parse(g.b, g.n, MODEL_EFORMAT, "metadata key 'a.b' appears twice");
    /* A name's control bytes do not reach the message. */
    g.n = 0;
    put(&g, "GGUF", 4);
    u32(&g, 3);
    u64(&g, 0);
    u64(&g, 2);
    kv_u32(&g, "a\x1b[2Jb", 1);
    kv_u32(&g, "a\x1b[2Jb", 1);
    expect_parse(g.b, g.n, MODEL_EFORMAT, "metadata key 'a?[2Jb' appears twice");
    /* Tensors: too many dimensions, overflowing dimensions, unknown types, a row length that is
     * not a whole number of blocks. */
    struct {
        uint32_t nd, type;
        uint64_t ne[4];
        const char *needle;
        int code;
    } tb[] = {
        {5, 0, {1, 1, 1, 1}, "tensor 't': 5 dimensions", MODEL_EFORMAT},
        {0, 0, {1, 1, 1, 1}, "tensor 't': 0 dimensions", MODEL_EFORMAT},
        {3,
         0,
         {1ull << 32, 1ull << 32, 1ull << 32, 1},
         "tensor 't': dimensions overflow",
         MODEL_ERANGE},
        {1, 0, {1ull << 63, 1, 1, 1}, "tensor 't': dimensions overflow", MODEL_ERANGE},
        {2, 4, {32, 1, 1, 1}, "tensor 't': unknown tensor type 4", MODEL_EFORMAT},
        {2, 99, {32, 1, 1, 1}, "tensor 't': unknown tensor type 99", MODEL_EFORMAT},
        {2,
         12,
         {32, 1, 1, 1},
         "row length 32 is not a multiple of the q4_K block size 256",
         MODEL_EFORMAT},
    };
    for (size_t i = 0; i < sizeof tb / sizeof tb[0]; i++) {
        g.n = 0;
        put(&g, "GGUF", 4);
        u32(&g, 3);
        u64(&g, 1);
        u64(&g, 0);
        str(&g, "t");
        u32(&g, tb[i].nd);
        for (uint32_t d = 0; d < tb[i].nd && d < 4; d++)
            u64(&g, tb[i].ne[d]);
        u32(&g, tb[i].type);
        u64(&g, 0);
        put(&g, "0123456789abcdef0123456789abcdef0123456789abcdef", 48);
        expect_parse(g.b, g.n, tb[i].code, tb[i].needle);
    }
    free(g.b);
}

static void test_malformed_tensors(void)
{
    gb g = {0};
    spec s = tiny;
    s.past_end = 1;
    build(&g, &s);
    expect_parse(g.b, g.n, MODEL_ETRUNC,
                 "tensor 'blk.1.ffn_up.weight': data extends past the end of the file (offset ");
    free(g.b);
    g = (gb){0};
    s = tiny;
    s.misalign = 1;
    build(&g, &s);
    expect_parse(g.b, g.n, MODEL_EFORMAT,
                 "tensor 'output_norm.weight': data offset 38404 is not a multiple of the "
                 "alignment 32");
    free(g.b);
    g = (gb){0};
    s = tiny;
    s.n_dup = 1;
    build(&g, &s);
    expect_parse(g.b, g.n, MODEL_EFORMAT, "tensor 'token_embd.weight' appears twice");
    free(g.b);
    /* A quantized tensor cut short by the end of the file. */
    g = (gb){0};
    s = tiny;
    s.retype = "blk.1.ffn_up.weight";
    s.type = MODEL_TYPE_Q8_0;
    s.past_end = 1;
    build(&g, &s);
    expect_parse(g.b, g.n, MODEL_ETRUNC,
                 "tensor 'blk.1.ffn_up.weight': data extends past the end of the file (offset ");
    free(g.b);
}

static void test_llama_refusals(void)
{
    spec s = tiny;
    s.arch = "gpt2";
    expect_load(&s, MODEL_ENOTSUP, "architecture 'gpt2' is not supported (only llama and qwen2)");
    s = tiny;
    s.drop = "blk.1.attn_v.weight";
    expect_load(&s, MODEL_EFORMAT, "tensor 'blk.1.attn_v.weight' is missing");
    s = tiny;
    s.bad_shape = "blk.0.attn_k.weight";
    expect_load(&s, MODEL_ESHAPE,
                "tensor 'blk.0.attn_k.weight' has shape [32 x 17], expected [32 x 16]");
    s = tiny;
    s.bad_shape = "blk.0.ffn_norm.weight";
    expect_load(&s, MODEL_ESHAPE, "tensor 'blk.0.ffn_norm.weight' has shape [33], expected [32]");
    s = tiny;
    s.extra = "blk.0.attn_q.bias";
    expect_load(&s, MODEL_EFORMAT, "tensor 'blk.0.attn_q.bias' is not part of a llama model");
    /* Rotary scaling: Llama 3's factors are one per pair (head size 8: 4), each positive (the
     * builder's values are uniform in [-0.5, 0.5)); YaRN is refused by name. */
    s = tiny;
    s.extra = "rope_freqs.weight";
    expect_load(&s, MODEL_ESHAPE, "tensor 'rope_freqs.weight' has shape [32], expected [4]");
    s.extra_cols = 4;
    expect_load(&s, MODEL_ERANGE, "tensor 'rope_freqs.weight': factor 0 is -0.04");
    s = tiny;
    s.scaling = "yarn";
    expect_load(&s, MODEL_ENOTSUP,
                "rotary scaling type 'yarn' (llama.rope.scaling.type) is not supported (only "
                "linear, and Llama 3's rope_freqs factors)");
    s.scaling = "none";
    gb gn = {0};
    build(&gn, &s);
    write_file(tmp_path("none.gguf"), gn.b, gn.n);
    free(gn.b);
    {
        char m2[512];
        model *mn = NULL;
        CHECK_MSG(model_load(tmp_path("none.gguf"), &mn, m2, sizeof m2) == 0, "%s", m2);
        CHECK(model_get_config(mn)->rope_factor == 1.0f);
        CHECK(model_get_weights(mn)->rope_freqs.data == NULL);
        model_free(mn);
    }
    s = tiny;
    s.rope_dim = 4;
    expect_load(&s, MODEL_ENOTSUP, "partial rotary embedding is not supported yet");
    s = tiny;
    s.heads = 3;
    expect_load(&s, MODEL_ESHAPE, "dim 32 is not divisible by n_heads 3");
    s = tiny;
    s.retype = "blk.0.attn_q.weight";
    s.type = 20; /* iq4_nl: a type ggml has and the kernels do not take */
    expect_load(&s, MODEL_ENOTSUP,
                "tensor 'blk.0.attn_q.weight' has type iq4_nl, not supported yet");
    /* Norms (vectors) must be F32 even where the matrices are quantized. */
    s = tiny;
    s.retype = "blk.0.attn_norm.weight";
    s.type = MODEL_TYPE_F16;
    expect_load(&s, MODEL_ENOTSUP,
                "'blk.0.attn_norm.weight' has type f16: vectors (norms, biases)");
    /* q4_K needs rows of 256: the reader refuses a row that is not a whole number of blocks. */
    s = tiny;
    s.retype = "blk.0.attn_q.weight";
    s.type = MODEL_TYPE_Q4_K;
    expect_load(
        &s, MODEL_EFORMAT,
        "tensor 'blk.0.attn_q.weight': row length 32 is not a multiple of the q4_K block size 256");
    /* The valid one loads, tied or not, and without a vocabulary has no tokenizer. */
    s = tiny;
    s.tied = 1;
    gb g = {0};
    build(&g, &s);
    write_file(tmp_path("tied.gguf"), g.b, g.n);
    free(g.b);
    char msg[512];
    model *m = NULL;
    CHECK_MSG(model_load(tmp_path("tied.gguf"), &m, msg, sizeof msg) == 0, "%s", msg);
    CHECK_EQ_INT(model_get_config(m)->shared_class, 1);
    CHECK(model_get_weights(m)->wcls.data == model_get_weights(m)->token_embedding.data);
    model_tokenizer *tok = NULL;
    CHECK_EQ_INT(model_tokenizer_from_model(m, &tok, msg, sizeof msg), MODEL_EFORMAT);
    CHECK_STR_CONTAINS(msg, "no vocabulary");
    model_free(m);
}

/* A GGUF vocabulary may lack the byte tokens that llama2.c's encoder assumes at ids 3..258:
 * byte fallback then gives <unk>, never an id past the vocabulary (found by fuzz_gguf). The
 * SentencePiece encoder always adds the prefix "▁" (three bytes to fall back on here), as
 * llama.cpp does. */
static void test_small_vocab_encode(void)
{
    spec s = tiny;
    s.vocab = 8;
    s.with_vocab = 1;
    gb g = {0};
    build(&g, &s);
    write_file(tmp_path("small.gguf"), g.b, g.n);
    free(g.b);
    char msg[512];
    model *m = NULL;
    CHECK_MSG(model_load(tmp_path("small.gguf"), &m, msg, sizeof msg) == 0, "%s", msg);
    model_tokenizer *tok = NULL;
    CHECK_MSG(model_tokenizer_from_model(m, &tok, msg, sizeof msg) == 0, "%s", msg);
    int32_t ids[64];
    size_t n;
    CHECK(model_encode(tok, "Once \x01", 6, 1, ids, 64, &n) == 0);
    CHECK_EQ_INT(n, 12); /* BOS, "▁" as 3 bytes, "Once", "▁" as 3 bytes, \x01 */
    CHECK_EQ_INT(ids[0], MODEL_TOK_BOS);
    for (size_t i = 1; i < n; i++)
        CHECK_EQ_INT(ids[i], i == n - 1 ? 4 : MODEL_TOK_UNK); /* <0x01> is id 4 here */
    model_tokenizer_free(tok);
    model_free(m);
}

/* The real vocabulary-only GGUF files of llama.cpp's tests parse (32000 to 100000 tokens, BPE
 * merges), and are refused as models by name. */
static void test_real_vocab_files(void)
{
    static const char *names[] = {"llama-spm", "gpt-2", "deepseek-llm", "falcon"};
    for (size_t i = 0; i < 4; i++) {
        char path[512];
        snprintf(path, sizeof path, "%s/vocab/ggml-vocab-%s.gguf", PREFIXD_MODELS_DIR, names[i]);
        size_t n;
        unsigned char *b = read_all(path, &n);
        model__gguf f;
        char msg[512];
        CHECK_MSG(model__gguf_parse(b, n, path, &f, msg, sizeof msg) == 0, "%s", msg);
        const model__gguf_kv *kv = model__gguf_find(&f, "tokenizer.ggml.tokens");
        CHECK(kv && kv->arr_n >= 32000);
        model__gguf_free(&f);
        free(b);
        model *m = NULL;
        int rc = model_load(path, &m, msg, sizeof msg);
        CHECK(rc == MODEL_ENOTSUP || rc == MODEL_EFORMAT);
        CHECK_STR_CONTAINS(msg, path);
    }
}

/* Greedy generation of n tokens after BOS with K/V stored in kv_type; returns the decoded text
 * (malloc'd). */
static char *greedy_text_kv(model *m, model_tokenizer *tok, int n, int kv_type)
{
    const model_config *c = model_get_config(m);
    model_state *st = NULL;
    model_state_opts o = {0};
    o.threads = 1;
    o.kv_type = kv_type;
    CHECK(model_state_new(m, &o, &st) == 0);
    int B = 16, nb = (c->seq_len + B - 1) / B;
    float **blocks = calloc((size_t)nb, sizeof *blocks);
    for (int i = 0; i < nb; i++)
        blocks[i] = calloc(model_kv_block_bytes(c, B, kv_type) / 4, sizeof(float));
    model_kv kv = {blocks, nb};
    float *logits = malloc((size_t)c->vocab_size * sizeof(float));
    model_sampler *sm = model_sampler_new(c->vocab_size);
    char *text = calloc(1, 65536);
    size_t tl = 0;
    int32_t tokv = MODEL_TOK_BOS;
    uint64_t rng = model_rng_seed(1);
    for (int pos = 0; pos < n; pos++) {
        CHECK(model_prefill(st, &kv, pos, &tokv, 1, logits) == 0);
        int32_t next = model_sample(sm, logits, 0.0f, 0.9f, &rng);
        if (next == MODEL_TOK_BOS)
            break;
        size_t len;
        const char *p = model_decode_piece(tok, tokv, next, &len);
        if (tl + len < 65535) {
            memcpy(text + tl, p, len);
            tl += len;
        }
        tokv = next;
    }
    for (int i = 0; i < nb; i++)
        free(blocks[i]);
    free(blocks);
    free(logits);
    model_sampler_free(sm);
    model_state_free(st);
    return text;
}

static char *greedy_text(model *m, model_tokenizer *tok, int n)
{
    return greedy_text_kv(m, tok, n, MODEL_TYPE_F32);
}

/* Greedy ids after BOS (n of them) with K/V in kv_type, and each step's margin: the logit of
 * the chosen id minus the next best. */
static void greedy_ids_kv(model *m, int n, int kv_type, int32_t *ids, float *margin)
{
    const model_config *c = model_get_config(m);
    model_state *st = NULL;
    model_state_opts o = {0};
    o.threads = 1;
    o.kv_type = kv_type;
    CHECK(model_state_new(m, &o, &st) == 0);
    int B = 16, nb = (c->seq_len + B - 1) / B;
    float **blocks = calloc((size_t)nb, sizeof *blocks);
    for (int i = 0; i < nb; i++)
        blocks[i] = calloc(model_kv_block_bytes(c, B, kv_type) / 4, sizeof(float));
    model_kv kv = {blocks, nb};
    float *lg = malloc((size_t)c->vocab_size * sizeof(float));
    int32_t t = MODEL_TOK_BOS;
    for (int pos = 0; pos < n; pos++) {
        CHECK(model_prefill(st, &kv, pos, &t, 1, lg) == 0);
        int best = 0, second = 1;
        for (int v = 1; v < c->vocab_size; v++) {
            if (lg[v] > lg[best]) {
                second = best;
                best = v;
            } else if (v != best && lg[v] > lg[second]) {
                second = v;
            }
        }
        ids[pos] = t = best;
        margin[pos] = lg[best] - lg[second];
    }
    for (int i = 0; i < nb; i++)
        free(blocks[i]);
    free(blocks);
    free(lg);
    model_state_free(st);
}

/* The golden text with K/V stored as f16 agrees with the reference (F32 K/V) over its whole
 * length. With q8_0 K/V, stories260K's greedy ids follow F32's for the first 114 of the golden
 * text's 255 steps (295 of its 423 bytes): there F32's top two logits are only 0.04 apart, and
 * q8_0's rounding (a scale per 32 elements, which on this model's head_size 8 is a row of four
 * heads, each scaled by the largest) moves logits by up to ~0.5, so the second wins. The test
 * holds q8_0 to that: the same ids up to there, and a divergence only where F32's margin is
 * below the logit error the reference test bounds. */
static void test_golden_260k_kv_types(void)
{
    char msg[512];
    model *m = NULL;
    CHECK_MSG(model_load(GGUF_260K, &m, msg, sizeof msg) == 0, "%s", msg);
    CHECK_EQ_INT(model_set_context(m, 512), 0);
    model_tokenizer *tok = NULL;
    CHECK_MSG(model_tokenizer_from_model(m, &tok, msg, sizeof msg) == 0, "%s", msg);
    size_t gn;
    char *golden = (char *)read_all(GOLDEN, &gn);
    CHECK(gn > 100 && golden[gn - 1] == '\n');
    golden[gn - 1] = 0;
    char *text = greedy_text_kv(m, tok, 255, MODEL_TYPE_F16);
    text[strlen(text) < gn - 1 ? strlen(text) : gn - 1] = 0;
    CHECK_STR_EQ(text, golden);
    free(text);
    enum { N = 255 };
    int32_t f[N], q[N];
    float fm[N], qm[N];
    greedy_ids_kv(m, N, MODEL_TYPE_F32, f, fm);
    greedy_ids_kv(m, N, MODEL_TYPE_Q8_0, q, qm);
    int same = 0;
    while (same < N && f[same] == q[same])
        same++;
    fprintf(stderr, "  [q8_0 K/V: greedy ids agree with f32 for %d of %d steps", same, N);
    if (same < N)
        fprintf(stderr, "; at step %d f32's margin is %g", same, fm[same]);
    fprintf(stderr, "]\n");
    CHECK_MSG(same >= 114, "q8_0 K/V: greedy ids leave f32's at step %d, before step 114", same);
    CHECK_MSG(same == N || fm[same] < 0.5f,
              "q8_0 K/V: diverges at step %d where f32's margin is %g (not a near tie)", same,
              fm[same]);
    free(golden);
    model_tokenizer_free(tok);
    model_free(m);
}

static void test_golden_260k(void)
{
    char msg[512];
    model *m = NULL;
    CHECK_MSG(model_load(GGUF_260K, &m, msg, sizeof msg) == 0, "%s", msg);
    CHECK_EQ_INT(model_get_config(m)->seq_len, 128); /* the converter's quirk */
    CHECK_EQ_INT(model_set_context(m, 512), 0);
    model_tokenizer *tok = NULL;
    CHECK_MSG(model_tokenizer_from_model(m, &tok, msg, sizeof msg) == 0, "%s", msg);
    char *text = greedy_text(m, tok, 255);
    size_t gn;
    char *golden = (char *)read_all(GOLDEN, &gn);
    /* The golden text is the reference's, up to where it stops, plus a newline. */
    CHECK(gn > 100 && golden[gn - 1] == '\n');
    golden[gn - 1] = 0;
    CHECK(strlen(text) >= gn - 1);
    text[gn - 1] = 0;
    CHECK_STR_EQ(text, golden);
    free(text);
    free(golden);
    model_tokenizer_free(tok);
    model_free(m);
}

/* F16 and BF16 copies of the stories260K GGUF, written by model_convert_gguf() (what `prefixd
 * synth --from F --type T` runs), give the F32 file's greedy text: F16 holds these weights
 * closely enough for the whole golden text, BF16 (8 bits of mantissa) for its first 100 tokens
 * at least. The copies keep the vocabulary. */
static void test_converted_golden(void)
{
    char msg[512];
    model *m = NULL;
    CHECK_MSG(model_load(GGUF_260K, &m, msg, sizeof msg) == 0, "%s", msg);
    CHECK_EQ_INT(model_set_context(m, 512), 0);
    model_tokenizer *tok = NULL;
    CHECK_MSG(model_tokenizer_from_model(m, &tok, msg, sizeof msg) == 0, "%s", msg);
    static const struct {
        const char *type;
        int tokens;
    } conv[] = {{"f16", 255}, {"bf16", 100}, {"q8_0", 100}};
    for (size_t i = 0; i < sizeof conv / sizeof conv[0]; i++) {
        int type;
        CHECK(model_type_parse(conv[i].type, &type) == 0);
        char *want = greedy_text(m, tok, conv[i].tokens);
        const char *p = tmp_path(conv[i].type);
        CHECK_MSG(model_convert_gguf(m, p, type, msg, sizeof msg) == 0, "%s", msg);
        model *c = NULL;
        CHECK_MSG(model_load(p, &c, msg, sizeof msg) == 0, "%s", msg);
        CHECK_EQ_INT(model_get_weights(c)->layers[0].wq.type, type);
        CHECK_EQ_INT(model_set_context(c, 512), 0);
        model_tokenizer *ct = NULL;
        CHECK_MSG(model_tokenizer_from_model(c, &ct, msg, sizeof msg) == 0, "%s", msg);
        char *got = greedy_text(c, ct, conv[i].tokens);
        CHECK_MSG(strcmp(got, want) == 0, "%s: greedy text differs:\n%s\nexpected:\n%s",
                  conv[i].type, got, want);
        /* A different file: a different fingerprint, so their caches never mix. */
        CHECK(memcmp(model_fingerprint(c), model_fingerprint(m), 16) != 0);
        free(got);
        free(want);
        model_tokenizer_free(ct);
        model_free(c);
    }
    /* A llama2.c checkpoint has no GGUF metadata to carry over. */
    model *bin = NULL;
    CHECK_MSG(model_load(PREFIXD_MODELS_DIR "/stories260K.bin", &bin, msg, sizeof msg) == 0, "%s",
              msg);
    CHECK_EQ_INT(model_convert_gguf(bin, tmp_path("x"), MODEL_TYPE_F16, msg, sizeof msg),
                 MODEL_EINVAL);
    CHECK_STR_CONTAINS(msg, "not a GGUF file");
    model_free(bin);
    model_tokenizer_free(tok);
    model_free(m);
}

/* A synthetic GGUF carries the byte-level vocabulary that `prefixd synth` also writes as a
 * llama2.c file beside it: the same ids for the same text, the same pieces back. */
static void test_synth_vocab(void)
{
    char msg[512];
    model_config c;
    CHECK_MSG(model_shape_parse("64,172,2,8,4,1000,64", &c, msg, sizeof msg) == 0, "%s", msg);
    char gp[PATH_MAX];
    snprintf(gp, sizeof gp, "%s", tmp_path("s.gguf"));
    CHECK_MSG(model_synth_write_gguf(gp, &c, "llama", MODEL_TYPE_Q8_0, 1, msg, sizeof msg) == 0,
              "%s", msg);
    char tp[PATH_MAX];
    snprintf(tp, sizeof tp, "%s", tmp_path("s.tok"));
    CHECK_MSG(model_tokenizer_synth_write(tp, 1000, msg, sizeof msg) == 0, "%s", msg);
    model *m = NULL;
    CHECK_MSG(model_load(gp, &m, msg, sizeof msg) == 0, "%s", msg);
    model_tokenizer *a = NULL, *b = NULL;
    CHECK_MSG(model_tokenizer_from_model(m, &a, msg, sizeof msg) == 0, "%s", msg);
    CHECK_MSG(model_tokenizer_load(tp, 1000, &b, msg, sizeof msg) == 0, "%s", msg);
    static const char text[] = "Once upon a time, the ethos of its heroes: \xc3\xa9t\xc3\xa9!";
    int32_t ia[128], ib[128];
    size_t na, nb;
    /* The two encoders differ by design (the file's goes through the SentencePiece rules of
     * GGUF vocabularies, the .tok through llama2.c's), and so do their renderings of byte tokens
     * ("<0xHH>" is a byte only in a decoder's state): what must agree is the vocabulary, every
     * other piece, and that both encode the text. */
    CHECK(model_encode(a, text, strlen(text), 1, ia, 128, &na) == 0 && na > 1);
    CHECK(model_encode(b, text, strlen(text), 1, ib, 128, &nb) == 0 && nb > 1);
    for (int32_t id = 0; id < 1000; id++) {
        if (id < 259)
            continue; /* control tokens and the byte tokens <0x00>..<0xFF>, rendered apart */
        size_t la, lb;
        const char *pa = model_decode_piece(a, 5, id, &la), *pb = model_decode_piece(b, 5, id, &lb);
        CHECK_MSG(la == lb && memcmp(pa, pb, la) == 0, "piece %d differs", id);
    }
    model_tokenizer_free(a);
    model_tokenizer_free(b);
    model_free(m);
}

/* The GGUF and the llama2.c checkpoint of stories260K: the same logits, bit for bit, and the
 * GGUF's vocabulary is tok512.bin. */
static void test_same_as_bin(void)
{
    char msg[512];
    model *mg = NULL, *mb = NULL;
    CHECK_MSG(model_load(GGUF_260K, &mg, msg, sizeof msg) == 0, "%s", msg);
    CHECK_MSG(model_load(BIN_260K, &mb, msg, sizeof msg) == 0, "%s", msg);
    model_set_context(mg, 512);
    CHECK(memcmp(model_fingerprint(mg), model_fingerprint(mb), 16) != 0);
    model_tokenizer *tg = NULL, *tb = NULL;
    CHECK_MSG(model_tokenizer_from_model(mg, &tg, msg, sizeof msg) == 0, "%s", msg);
    CHECK_EQ_INT(model_tokenizer_from_model(mb, &tb, msg, sizeof msg), MODEL_EINVAL);
    CHECK_STR_CONTAINS(msg, "holds no vocabulary");
    CHECK(model_tokenizer_load(TOK_260K, 512, &tb, msg, sizeof msg) == 0);
    for (int32_t id = 0; id < 512; id++) {
        size_t lg, lb;
        if (id == MODEL_TOK_UNK) { /* an unknown token is no text in a GGUF vocabulary */
            CHECK(model_decode_piece(tg, 5, id, &lg) && lg == 0);
            continue;
        }
        const char *pg = model_decode_piece(tg, 5, id, &lg),
                   *pb = model_decode_piece(tb, 5, id, &lb);
        CHECK_MSG(lg == lb && memcmp(pg, pb, lg) == 0, "piece %d differs", id);
    }
    static const char *prompts[] = {"Once upon a time, Lily", "The cat sat on the mat.",
                                    "Tom and Sue went to the park to play with a big red ball.",
                                    ""};
    const model_config *c = model_get_config(mb);
    model_state *sg = NULL, *sb = NULL;
    CHECK(model_state_new(mg, NULL, &sg) == 0);
    CHECK(model_state_new(mb, NULL, &sb) == 0);
    int B = 16, nb = 512 / B;
    size_t bf = model_kv_block_floats(c, B);
    float **kg = calloc((size_t)nb, sizeof *kg), **kb = calloc((size_t)nb, sizeof *kb);
    for (int i = 0; i < nb; i++) {
        kg[i] = calloc(bf, sizeof(float));
        kb[i] = calloc(bf, sizeof(float));
    }
    model_kv kvg = {kg, nb}, kvb = {kb, nb};
    float *lg = malloc(512 * sizeof(float)), *lb = malloc(512 * sizeof(float));
    for (size_t p = 0; p < sizeof prompts / sizeof prompts[0]; p++) {
        int32_t ig[256], ib[256];
        size_t ng, nbt;
        size_t len = strlen(prompts[p]);
        CHECK(model_encode(tg, prompts[p], len, 1, ig, 256, &ng) == 0);
        CHECK(model_encode(tb, prompts[p], len, 1, ib, 256, &nbt) == 0);
        CHECK_EQ_INT(ng, nbt);
        CHECK(memcmp(ig, ib, ng * sizeof(int32_t)) == 0);
        CHECK(model_prefill(sg, &kvg, 0, ig, (int)ng, lg) == 0);
        CHECK(model_prefill(sb, &kvb, 0, ib, (int)nbt, lb) == 0);
        CHECK_MSG(memcmp(lg, lb, 512 * sizeof(float)) == 0, "prompt %zu: logits differ", p);
        /* And a few decode steps. */
        int32_t t = 7;
        for (int pos = (int)ng; pos < (int)ng + 4; pos++) {
            CHECK(model_decode(sg, &kvg, &pos, &t, 1, lg) == 0);
            CHECK(model_decode(sb, &kvb, &pos, &t, 1, lb) == 0);
            CHECK_MSG(memcmp(lg, lb, 512 * sizeof(float)) == 0, "decode at %d differs", pos);
        }
    }
    for (int i = 0; i < nb; i++) {
        free(kg[i]);
        free(kb[i]);
    }
    free(kg);
    free(kb);
    free(lg);
    free(lb);
    model_state_free(sg);
    model_state_free(sb);
    model_tokenizer_free(tg);
    model_tokenizer_free(tb);
    model_free(mg);
    model_free(mb);
}

static const harness_case cases[] = {
    {"parse_valid", test_parse_valid},
    {"truncated_everywhere", test_truncated_everywhere},
    {"malformed_headers", test_malformed_headers},
    {"malformed_tensors", test_malformed_tensors},
    {"llama_refusals", test_llama_refusals},
    {"real_vocab_files", test_real_vocab_files},
    {"small_vocab_encode", test_small_vocab_encode},
    {"golden_260k", test_golden_260k},
    {"golden_260k_kv_types", test_golden_260k_kv_types},
    {"same_as_bin", test_same_as_bin},
    {"converted_golden", test_converted_golden},
    {"synth_vocab", test_synth_vocab},
};

HARNESS_MAIN(cases)
