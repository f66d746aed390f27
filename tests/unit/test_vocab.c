/* test_vocab.c — the GGUF tokenizers against llama.cpp's vocabulary test files (Hugging Face's
 * ids), byte for byte; special tokens, end of generation, streaming decoding, refused metadata,
 * and a count of work on a long text without spaces. */
#include "harness.h"
#include "model.h"
#include "../../model/gguf.h"
#include "../../model/vocab.h"

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

/* A user's text that spells a control token stays text unless MODEL_ENC_SPECIAL is given. */
static void test_special_tokens(void)
{
    model_tokenizer *t = open_tok(VOCAB("llama-spm"));
    size_t n;
    int32_t *ids = encode(t, "a</s>b", 6, 0, &n);
    for (size_t i = 0; i < n; i++)
        CHECK(ids[i] != model_token_eos(t));
    free(ids);
    ids = encode(t, "a</s>b", 6, MODEL_ENC_SPECIAL | MODEL_ENC_ADD_SPECIAL, &n);
    CHECK_EQ_INT(ids[0], model_token_bos(t)); /* add_bos_token */
    int found = 0;
    for (size_t i = 0; i < n; i++)
        found += ids[i] == model_token_eos(t);
    CHECK_EQ_INT(found, 1);
    free(ids);
    model_tokenizer_free(t);

    t = open_tok(VOCAB("gpt-2"));
    const char *s = "x<|endoftext|>y";
    ids = encode(t, s, strlen(s), 0, &n);
    CHECK(n > 3);
    for (size_t i = 0; i < n; i++)
        CHECK(ids[i] != 50256);
    free(ids);
    ids = encode(t, s, strlen(s), MODEL_ENC_SPECIAL | MODEL_ENC_ADD_SPECIAL, &n);
    CHECK_EQ_INT(n, 3); /* no add_bos_token in this file: x, <|endoftext|>, y */
    CHECK_EQ_INT(ids[1], 50256);
    free(ids);
    /* <|endoftext|> ends generation; an ordinary token does not. */
    CHECK(model_token_is_eog(t, 50256));
    CHECK(!model_token_is_eog(t, 15496));
    model_tokenizer_free(t);
}

/* Streaming: every chunk is whole UTF-8, and the chunks add up to the full decoding. */
static void test_stream_detok(void)
{
    static const char *const files[] = {VOCAB("llama-spm"), VOCAB("gpt-2"), VOCAB("deepseek-llm")};
    /* A stray byte goes last: inside the text SentencePiece would read it with what follows
     * (llama.cpp does the same), at the end it falls back to its byte token. */
    // clang-format off
    const char *text = "Grüße 🙂 — 日本語のテキスト, emoji 👩‍👩‍👧, a stray byte last: \xC3";
    // clang-format on
    for (size_t f = 0; f < 3; f++) {
        model_tokenizer *t = open_tok(files[f]);
        size_t n;
        int32_t *ids = encode(t, text, strlen(text), 0, &n);
        size_t all_len;
        char *all = decode_all(t, ids, n, &all_len);
        CHECK_MSG(strcmp(all, text) == 0, "%s: decodes to '%s'", files[f], all);
        model_detok d;
        CHECK_EQ_INT(model_detok_init(&d, t, -1), 0);
        char got[512];
        size_t o = 0;
        for (size_t i = 0; i < n; i++) {
            size_t l;
            const char *p = model_detok_push(t, &d, ids[i], 0, &l);
            /* Whole characters: a chunk never ends inside a sequence that could continue. */
            if (l > 0 && i + 1 < n) {
                unsigned char last = (unsigned char)p[l - 1];
                CHECK_MSG(last < 0xC0, "%s: chunk ends in a lead byte", files[f]);
            }
            memcpy(got + o, p, l);
            o += l;
        }
        size_t l;
        const char *p = model_detok_flush(&d, &l);
        memcpy(got + o, p, l);
        o += l;
        CHECK_MSG(o == all_len && memcmp(got, all, o) == 0, "%s: streamed '%.*s'", files[f], (int)o,
                  got);
        model_detok_free(&d);
        free(all);
        free(ids);
        model_tokenizer_free(t);
    }
}

/* Writes the gpt-2 vocabulary with the bytes after the first occurrence of key replaced. */
static const char *patched_raw(const char *key, size_t kl, const void *with, size_t n, long skip)
{
    static char path[600];
    size_t len;
    char *b = slurp(VOCAB("gpt-2"), &len);
    char *at = memmem(b, len, key, kl);
    CHECK(at != NULL);
    memcpy(at + (long)kl + skip, with, n);
    snprintf(path, sizeof path, "%s/patched.gguf", harness_tmpdir());
    FILE *f = fopen(path, "wb");
    CHECK(f && fwrite(b, 1, len, f) == len);
    fclose(f);
    free(b);
    return path;
}

static const char *patched(const char *key, const void *with, size_t n, long skip)
{
    return patched_raw(key, strlen(key), with, n, skip);
}

/* Metadata that cannot be right is refused by name. */
static void test_refused(void)
{
    char msg[512];
    model_tokenizer *t = NULL;
    /* tokenizer.ggml.pre "gpt-2" becomes "gpt-X": after the key, type (4) and length (8). */
    const char *p = patched("tokenizer.ggml.pre", "gpt-X", 5, 12);
    CHECK_EQ_INT(model_tokenizer_open(p, &t, msg, sizeof msg), MODEL_ENOTSUP);
    CHECK_STR_CONTAINS(msg, "pre-tokenizer 'gpt-X' (tokenizer.ggml.pre) is unknown");
    /* bos_token_id past the vocabulary: after the key, type (4). */
    uint32_t big = 70000;
    p = patched("tokenizer.ggml.bos_token_id", &big, 4, 4);
    CHECK_EQ_INT(model_tokenizer_open(p, &t, msg, sizeof msg), MODEL_EVOCAB);
    CHECK_STR_CONTAINS(msg, "tokenizer.ggml.bos_token_id' is 70000");
    /* tokenizer.ggml.model "gpt2" becomes "gpt3". */
    p = patched("tokenizer.ggml.model", "gpt3", 4, 12);
    CHECK_EQ_INT(model_tokenizer_open(p, &t, msg, sizeof msg), MODEL_ENOTSUP);
    CHECK_STR_CONTAINS(msg, "vocabulary kind 'gpt3'");
    /* A token repeating another's text. */
    p = patched_raw("\x01\x00\x00\x00\x00\x00\x00\x00\"", 9, "!", 1, -1);
    CHECK_EQ_INT(model_tokenizer_open(p, &t, msg, sizeof msg), MODEL_EVOCAB);
    CHECK_STR_CONTAINS(msg, "repeats the text of token 0");
}

/* A megabyte without a space (one word for every pre-tokenizer) encodes and decodes back:
 * a merge loop quadratic in the word would not finish within the test's timeout. */
static void test_long_word(void)
{
    size_t len = 1 << 20;
    char *s = malloc(len + 1);
    for (size_t i = 0; i < len; i++)
        s[i] = "abcdefghij"[(i * 7 + i / 13) % 10];
    s[len] = 0;
    static const char *const files[] = {VOCAB("llama-spm"), VOCAB("gpt-2")};
    for (size_t f = 0; f < 2; f++) {
        model_tokenizer *t = open_tok(files[f]);
        size_t n, dl;
        int32_t *ids = encode(t, s, len, 0, &n);
        CHECK(n > 1000 && n < len);
        char *d = decode_all(t, ids, n, &dl);
        CHECK(dl == len && memcmp(d, s, len) == 0);
        free(d);
        free(ids);
        model_tokenizer_free(t);
    }
    free(s);
}

/* Long words merge bucket by bucket (vocab.c's model__merge_buckets); they must give exactly
 * the ids of the plain scan short words use, on words built to have many equal and overlapping
 * pairs, for byte-level BPE and SentencePiece. */
static void test_long_word_order(void)
{
    static const char *const files[] = {VOCAB("gpt-2"), VOCAB("deepseek-llm"), VOCAB("falcon"),
                                        VOCAB("llama-spm")};
    static const char *const alpha[] = {"ab", "abc", "aeinst", "abcdefghijklmnopqrstuvwxyz"};
    uint64_t seed = 42;
    for (size_t f = 0; f < 4; f++) {
        FILE *fp = fopen(files[f], "rb");
        CHECK(fp != NULL);
        fseek(fp, 0, SEEK_END);
        long fl = ftell(fp);
        rewind(fp);
        char *buf = malloc((size_t)fl);
        CHECK(fread(buf, 1, (size_t)fl, fp) == (size_t)fl);
        fclose(fp);
        char msg[512];
        model__gguf g;
        CHECK_MSG(model__gguf_parse(buf, (size_t)fl, files[f], &g, msg, sizeof msg) == 0, "%s",
                  msg);
        model__vocab *v = NULL;
        CHECK_MSG(model__vocab_load(&g, files[f], 0, &v, msg, sizeof msg) == 0, "%s", msg);
        size_t cap = 5000;
        char *s = malloc(cap);
        int32_t *a = malloc(model_encode_cap(cap) * sizeof *a),
                *b = malloc(model_encode_cap(cap) * sizeof *b);
        for (int trial = 0; trial < 200; trial++) {
            const char *al = alpha[trial % 4];
            size_t nal = strlen(al), len = 25 + (size_t)(trial * 37 % 4000);
            for (size_t i = 0; i < len; i++) {
                seed = seed * 6364136223846793005ull + 1442695040888963407ull;
                /* runs of one letter now and then: "aaaa" overlaps itself */
                s[i] = i > 0 && (seed >> 60) < 5 ? s[i - 1] : al[(seed >> 33) % nal];
            }
            int spm = v->kind == MODEL__VOCAB_SPM;
            long na = spm ? model__spm_encode(v, s, len, 1, a) : model__bpe_encode(v, s, len, a),
                 nb = spm ? model__spm_encode_naive(v, s, len, 1, b)
                          : model__bpe_encode_naive(v, s, len, b);
            CHECK(na > 0 && na == nb);
            CHECK_MSG(memcmp(a, b, (size_t)na * sizeof *a) == 0, "%s: trial %d differs", files[f],
                      trial);
        }
        free(s);
        free(a);
        free(b);
        model__vocab_free(v);
        model__gguf_free(&g);
        free(buf);
    }
}

/* The llama2.c tokenizer (tokenizer32k.bin, merged word by word since no piece spans a space
 * after a character) and the GGUF SentencePiece path (llama-spm, the same Llama 2 vocabulary)
 * are separate code with the same rules: they must agree on any text, including long words
 * (merged from buckets), runs of spaces and characters without a token (byte fallback). */
static void test_llama2c_vs_spm(void)
{
    model_tokenizer *a = open_tok(PREFIXD_MODELS_DIR "/tokenizer32k.bin"),
                    *b = open_tok(VOCAB("llama-spm"));
    static const char *const parts[] = {"the",   " ",    "  ", "quick",    "brown",  ",",
                                        ".",     "\n",   "\t", "Ça",       "🙂",   "日本語",
                                        "don't", "1234", "x",  "aaaaaaaa", "<0x41>", "   "};
    uint64_t seed = 7;
    char *s = malloc(70000);
    for (int trial = 0; trial < 120; trial++) {
        size_t len = 0, want = 1 + (size_t)(trial * 97 % 600);
        if (trial % 10 == 9)
            want = 60000; /* a long text */
        while (len < want) {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            const char *p = parts[(seed >> 33) % (sizeof parts / sizeof parts[0])];
            size_t pl = strlen(p);
            if ((seed >> 20) % 5 == 0 && trial % 3 == 0) { /* long runs without spaces */
                p = "abcabcabdabcab";
                pl = 14;
            }
            memcpy(s + len, p, pl);
            len += pl;
        }
        size_t na, nb;
        int32_t *ia = encode(a, s, len, 0, &na), *ib = encode(b, s, len, 0, &nb);
        CHECK_MSG(na == nb && memcmp(ia, ib, na * sizeof *ia) == 0,
                  "trial %d (%zu bytes): %zu ids against %zu", trial, len, na, nb);
        free(ia);
        free(ib);
    }
    free(s);
    model_tokenizer_free(a);
    model_tokenizer_free(b);
}

static const harness_case cases[] = {
    {"llama_spm", test_llama_spm, NULL},
    {"gpt2", test_gpt2, NULL},
    {"deepseek_llm", test_deepseek_llm, NULL},
    {"falcon", test_falcon, NULL},
    {"special_tokens", test_special_tokens, NULL},
    {"stream_detok", test_stream_detok, NULL},
    {"refused", test_refused, NULL},
    {"long_word", test_long_word, NULL},
    {"long_word_order", test_long_word_order, NULL},
    {"llama2c_vs_spm", test_llama2c_vs_spm, NULL},
};

HARNESS_MAIN(cases)
