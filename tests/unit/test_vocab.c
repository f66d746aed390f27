/* test_vocab.c — the GGUF tokenizers against llama.cpp's vocabulary test files (Hugging Face's
 * ids), byte for byte; special tokens, end of generation, streaming decoding, refused metadata,
 * and a count of work on a long text without spaces. */
#include "harness.h"
#include "model.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define VOCAB(name) PREFIXD_MODELS_DIR "/vocab/ggml-vocab-" name ".gguf"

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    CHECK_MSG(f != NULL, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    char *b = malloc((size_t)n + 1);
    CHECK(fread(b, 1, (size_t)n, f) == (size_t)n);
    fclose(f);
    b[n] = 0;
    *len = (size_t)n;
    return b;
}

static model_tokenizer *open_tok(const char *path)
{
    char msg[512];
    model_tokenizer *t = NULL;
    CHECK_MSG(model_tokenizer_open(path, &t, msg, sizeof msg) == 0, "%s", msg);
    return t;
}

static int32_t *encode(const model_tokenizer *t, const char *s, size_t len, unsigned flags,
                       size_t *n)
{
    size_t cap = model_encode_cap(len);
    int32_t *ids = malloc(cap * sizeof *ids);
    CHECK(ids != NULL);
    CHECK_EQ_INT(model_tokenize(t, s, len, flags, ids, cap, n), 0);
    return ids;
}

/* The decoding of all ids, piece after piece (prev -1 at the start). */
static char *decode_all(const model_tokenizer *t, const int32_t *ids, size_t n, size_t *len)
{
    size_t cap = 64, o = 0;
    char *out = malloc(cap);
    for (size_t i = 0; i < n; i++) {
        size_t pl;
        const char *p = model_decode_piece(t, i ? ids[i - 1] : -1, ids[i], &pl);
        while (o + pl + 1 > cap)
            out = realloc(out, cap *= 2);
        memcpy(out + o, p, pl);
        o += pl;
    }
    out[o] = 0;
    *len = o;
    return out;
}

/* Every text of FILE.inp (separated by "\n__ggml_vocab_test__\n") must encode, without BOS, to
 * the ids on the same line of FILE.out, and decode back to itself. */
static void check_vocab(const char *name, int expect_roundtrip)
{
    char path[512], inp[600], outp[600];
    snprintf(path, sizeof path, "%s", name);
    snprintf(inp, sizeof inp, "%s.inp", name);
    snprintf(outp, sizeof outp, "%s.out", name);
    model_tokenizer *t = open_tok(path);
    size_t il, ol;
    char *in = slurp(inp, &il), *out = slurp(outp, &ol);
    static const char sep[] = "\n__ggml_vocab_test__\n";
    char *ip = in, *op = out;
    int cases = 0;
    while (ip < in + il) {
        char *next = strstr(ip, sep);
        size_t tl = next ? (size_t)(next - ip) : (size_t)(in + il - ip);
        char *eol = strchr(op, '\n');
        CHECK_MSG(eol != NULL, "%s: fewer lines in .out than texts in .inp", name);
        *eol = 0;
        int32_t want[4096];
        size_t nw = 0;
        for (char *q = op; *q;) {
            char *end;
            long v = strtol(q, &end, 10);
            if (end == q)
                break;
            want[nw++] = (int32_t)v;
            q = end;
        }
        size_t n;
        int32_t *got = encode(t, ip, tl, 0, &n);
        int same = n == nw;
        for (size_t i = 0; same && i < n; i++)
            same = got[i] == want[i];
        if (!same) {
            char g[8192] = "";
            size_t o = 0;
            for (size_t i = 0; i < n && o < sizeof g - 16; i++)
                o += (size_t)snprintf(g + o, sizeof g - o, " %d", got[i]);
            HARNESS_FAIL("%s: text %d '%.*s': got%s, want %s", name, cases, (int)tl, ip, g, op);
        }
        if (expect_roundtrip) {
            size_t dl;
            char *d = decode_all(t, got, n, &dl);
            CHECK_MSG(dl == tl && memcmp(d, ip, tl) == 0, "%s: text %d decodes to '%s'", name,
                      cases, d);
            free(d);
        }
        free(got);
        cases++;
        op = eol + 1;
        if (!next)
            break;
        ip = next + sizeof sep - 1;
    }
    CHECK_MSG(cases > 30, "%s: only %d texts", name, cases);
    CHECK_MSG(*op == 0, "%s: more lines in .out than texts in .inp", name);
    free(in);
    free(out);
    model_tokenizer_free(t);
}

static void test_llama_spm(void)
{
    check_vocab(VOCAB("llama-spm"), 1);
}

static void test_gpt2(void)
{
    check_vocab(VOCAB("gpt-2"), 1);
}

static void test_deepseek_llm(void)
{
    check_vocab(VOCAB("deepseek-llm"), 1);
}

static void test_falcon(void)
{
    check_vocab(VOCAB("falcon"), 1);
}

static const harness_case cases[] = {
    {"llama_spm", test_llama_spm, NULL},
    {"gpt2", test_gpt2, NULL},
    {"deepseek_llm", test_deepseek_llm, NULL},
    {"falcon", test_falcon, NULL},
};

HARNESS_MAIN(cases)
