/* test_tokenizer.c — the tokenizer against the reference's golden ids, round trips, bad files,
 * and the sampler. */
#include "harness.h"
#include "model.h"

#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TOK512 PREFIXD_MODELS_DIR "/tok512.bin"
#define TOK32K PREFIXD_MODELS_DIR "/tokenizer32k.bin"

static model_tokenizer *load(const char *path, int vocab)
{
    char msg[512];
    model_tokenizer *t = NULL;
    int rc = model_tokenizer_load(path, vocab, &t, msg, sizeof msg);
    CHECK_MSG(rc == 0, "%s", msg);
    return t;
}

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

/* Every line of a golden file: {"text": ..., "ids": [...]}. */
static void check_golden(const char *tokpath, int vocab, const char *golden)
{
    model_tokenizer *t = load(tokpath, vocab);
    size_t len;
    char *all = slurp(golden, &len);
    int lines = 0;
    for (char *line = strtok(all, "\n"); line; line = strtok(NULL, "\n")) {
        cJSON *j = cJSON_Parse(line);
        CHECK(j != NULL);
        const cJSON *text = cJSON_GetObjectItem(j, "text");
        const cJSON *ids = cJSON_GetObjectItem(j, "ids");
        CHECK(cJSON_IsString(text) && cJSON_IsArray(ids));
        const char *s = text->valuestring;
        size_t n = strlen(s), got = 0;
        int32_t *out = malloc((n + 2) * sizeof(int32_t));
        CHECK(model_encode(t, s, n, 1, out, n + 2, &got) == 0);
        CHECK_MSG((int)got == cJSON_GetArraySize(ids), "'%s': %zu ids, golden %d", s, got,
                  cJSON_GetArraySize(ids));
        for (size_t i = 0; i < got; i++)
            CHECK_MSG(out[i] == cJSON_GetArrayItem(ids, (int)i)->valueint,
                      "'%s': id %zu is %d, golden %d", s, i, out[i],
                      cJSON_GetArrayItem(ids, (int)i)->valueint);
        free(out);
        cJSON_Delete(j);
        lines++;
    }
    CHECK(lines >= 14);
    free(all);
    model_tokenizer_free(t);
}

static void test_golden_tok512(void)
{
    check_golden(TOK512, 512, PREFIXD_MODELS_DIR "/golden/tok512-encode.jsonl");
}

static void test_golden_tok32k(void)
{
    check_golden(TOK32K, 32000, PREFIXD_MODELS_DIR "/golden/tokenizer32k-encode.jsonl");
}

/* decode(encode(x)) == x for text, UTF-8, emoji and byte fallback. */
static void roundtrip(model_tokenizer *t, const char *s, size_t n)
{
    int32_t *ids = malloc((n + 2) * sizeof(int32_t));
    size_t k;
    CHECK(model_encode(t, s, n, 1, ids, n + 2, &k) == 0);
    char *back = malloc(n * 8 + 16);
    size_t m = 0;
    for (size_t i = 1; i < k; i++) {
        size_t len;
        const char *p = model_decode_piece(t, ids[i - 1], ids[i], &len);
        memcpy(back + m, p, len);
        m += len;
    }
    CHECK_MSG(m == n && memcmp(back, s, n) == 0, "round trip of %zu bytes gave %zu", n, m);
    free(back);
    free(ids);
}

static void test_roundtrip(void)
{
    model_tokenizer *t = load(TOK512, 512);
    model_tokenizer *t32 = load(TOK32K, 32000);
    const char *texts[] = {"Once upon a time, there was a dog.", "héllo wörld ☃ 😀 中文",
                           "tabs\tand\nnewlines\n", "x", "   spaces   "};
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        roundtrip(t, texts[i], strlen(texts[i]));
        roundtrip(t32, texts[i], strlen(texts[i]));
    }
    /* Invalid UTF-8 goes through byte fallback and still round-trips byte for byte. */
    const char bad[] = "a\xff\xfe b\xc3 c\x80\x80 \xe2\x82 \xf0\x9f\x98";
    roundtrip(t, bad, sizeof bad - 1);
    roundtrip(t32, bad, sizeof bad - 1);
    /* A piece right after BOS loses its leading space; byte pieces decode to the byte. */
    size_t len;
    int32_t ids[8];
    size_t k;
    CHECK(model_encode(t32, "Hi", 2, 1, ids, 8, &k) == 0);
    const char *p = model_decode_piece(t32, MODEL_TOK_BOS, ids[1], &len);
    CHECK(len > 0 && p[0] != ' ');
    p = model_decode_piece(t, 0, 3 + 0x41, &len);
    CHECK(len == 1 && p[0] == 'A');
    p = model_decode_piece(t, 0, 100000, &len);
    CHECK(len == 0);
    model_tokenizer_free(t);
    model_tokenizer_free(t32);
}

/* A 100 KB prompt encodes (in milliseconds: see bench_tokenizer), round-trips, and merges. */
static void test_long_prompt(void)
{
    model_tokenizer *t = load(TOK32K, 32000);
    const char *unit = "The quick brown fox jumps over the lazy dog. ";
    size_t ul = strlen(unit), n = 0, cap = 100 * 1024;
    char *s = malloc(cap + 1);
    while (n + ul <= cap) {
        memcpy(s + n, unit, ul);
        n += ul;
    }
    roundtrip(t, s, n);
    int32_t *ids = malloc((n + 2) * sizeof(int32_t));
    size_t k;
    CHECK(model_encode(t, s, n, 1, ids, n + 2, &k) == 0);
    CHECK(k < n / 3); /* merges happened */
    /* Too small an output buffer is an error, not an overflow. */
    CHECK_EQ_INT(model_encode(t, s, n, 1, ids, 10, &k), MODEL_ERANGE);
    free(ids);
    free(s);
    model_tokenizer_free(t);
}

static void write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    if (n)
        CHECK(fwrite(data, 1, n, f) == n);
    fclose(f);
}

static void expect_error(const char *path, int vocab, int code, const char *needle)
{
    char msg[512] = "";
    model_tokenizer *t = NULL;
    int rc = model_tokenizer_load(path, vocab, &t, msg, sizeof msg);
    CHECK_MSG(rc == code, "%s: rc %d, expected %d (%s)", path, rc, code, msg);
    CHECK(t == NULL);
    CHECK_STR_CONTAINS(msg, path);
    CHECK_STR_CONTAINS(msg, needle);
}

static void test_bad_files(void)
{
    const char *dir = harness_tmpdir();
    char p[PATH_MAX + 64];
    snprintf(p, sizeof p, "%s/missing.bin", dir);
    expect_error(p, 0, MODEL_EIO, "No such file");
    expect_error(TOK512, 32000, MODEL_EVOCAB, "32000");
    size_t len;
    char *good = slurp(TOK512, &len);
    snprintf(p, sizeof p, "%s/cut.bin", dir);
    write_file(p, good, len - 3);
    expect_error(p, 512, MODEL_ETRUNC, "truncated");
    snprintf(p, sizeof p, "%s/tiny.bin", dir);
    write_file(p, good, 2);
    expect_error(p, 0, MODEL_ETRUNC, "truncated");
    /* A negative length in the first token's header. */
    char *bad = malloc(len);
    memcpy(bad, good, len);
    int32_t neg = -5;
    memcpy(bad + 8, &neg, 4);
    snprintf(p, sizeof p, "%s/neg.bin", dir);
    write_file(p, bad, len);
    expect_error(p, 512, MODEL_EFORMAT, "length -5");
    int32_t zero = 0;
    memcpy(bad, good, len);
    memcpy(bad, &zero, 4);
    snprintf(p, sizeof p, "%s/maxlen.bin", dir);
    write_file(p, bad, len);
    expect_error(p, 512, MODEL_EFORMAT, "max_token_length");
    free(bad);
    free(good);
    /* The synthetic tokenizer loads and round-trips. */
    char msg[256];
    snprintf(p, sizeof p, "%s/synth.tok", dir);
    CHECK(model_tokenizer_synth_write(p, 1000, msg, sizeof msg) == 0);
    model_tokenizer *t = load(p, 1000);
    roundtrip(t, "hello, synthetic world\n", 23);
    model_tokenizer_free(t);
    CHECK(model_tokenizer_synth_write(p, 100, msg, sizeof msg) == MODEL_EINVAL);
}

static void test_sampler(void)
{
    int V = 6;
    model_sampler *s = model_sampler_new(V);
    CHECK(s != NULL);
    uint64_t rng = model_rng_seed(42);
    float l[6] = {1, 3, 3, 0, -1, 2};
    CHECK_EQ_INT(model_sample(s, l, 0.0f, 0.9f, &rng), 1); /* greedy: lowest id on ties */
    /* Same seed, same draws. */
    int a[50], b[50];
    uint64_t r1 = model_rng_seed(7), r2 = model_rng_seed(7);
    for (int i = 0; i < 50; i++) {
        float x[6] = {1, 2, 3, 0, 1, 2}, y[6] = {1, 2, 3, 0, 1, 2};
        a[i] = model_sample(s, x, 1.0f, 0.0f, &r1);
        b[i] = model_sample(s, y, 1.0f, 0.0f, &r2);
        CHECK_EQ_INT(a[i], b[i]);
    }
    /* Temperature sampling follows the softmax: with a fixed seed, frequencies within a few
     * percent of the probabilities over 20000 draws. */
    int count[6] = {0};
    rng = model_rng_seed(3);
    for (int i = 0; i < 20000; i++) {
        float x[6] = {0, 1, 2, 0, 1, 2};
        count[model_sample(s, x, 1.0f, 0.0f, &rng)]++;
    }
    double z = 2 * (1 + exp(1) + exp(2));
    CHECK_NEAR(count[2] / 20000.0, exp(2) / z, 0.02);
    CHECK_NEAR(count[0] / 20000.0, 1 / z, 0.02);
    /* Top-p 0.5 keeps only the nucleus: here the two most likely ids. */
    rng = model_rng_seed(9);
    for (int i = 0; i < 2000; i++) {
        float x[6] = {0, 5, 5.1f, 0, 1, 2};
        int id = model_sample(s, x, 1.0f, 0.5f, &rng);
        CHECK_MSG(id == 1 || id == 2, "top-p drew %d", id);
    }
    model_sampler_free(s);
}

static const harness_case cases[] = {
    {"golden_tok512", test_golden_tok512}, {"golden_tok32k", test_golden_tok32k},
    {"roundtrip", test_roundtrip},         {"long_prompt", test_long_prompt},
    {"bad_files", test_bad_files},         {"sampler", test_sampler},
};

HARNESS_MAIN(cases)
