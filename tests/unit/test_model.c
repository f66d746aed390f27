/* test_model.c — the loader's validation, the forward pass against a naive reference, and each
 * compute kernel (model/kernels.h) against a plain loop. */
#include "../../model/kernels.h"
#include "../../model/pool.h"
#include "../../model/qkernels.h"
#include "../../model/quant.h"
#include "harness.h"
#include "model.h"
#include "ref_forward.h"

#include <fcntl.h>
#include <signal.h>
#include <time.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define MODEL_260K PREFIXD_MODELS_DIR "/stories260K.bin"

/* A file in the case's scratch directory (harness.h: removed when the case ends). */
static const char *tmp_path(const char *name)
{
    static char buf[PATH_MAX + 64];
    snprintf(buf, sizeof buf, "%s/%s", harness_tmpdir(), name);
    return buf;
}

/* A block table of contiguous private blocks covering the whole context. */
typedef struct kvbuf {
    float **blocks;
    int n;
    model_kv kv;
} kvbuf;

static kvbuf kv_new_t(const model_config *c, int B, int kv_type)
{
    kvbuf k;
    k.n = (c->seq_len + B - 1) / B;
    k.blocks = calloc((size_t)k.n, sizeof(float *));
    size_t bytes = model_kv_block_bytes(c, B, kv_type);
    CHECK(bytes > 0 && bytes % 4 == 0);
    for (int i = 0; i < k.n; i++)
        k.blocks[i] = calloc(bytes / 4, sizeof(float));
    k.kv.blocks = k.blocks;
    k.kv.n_blocks = k.n;
    return k;
}

static kvbuf kv_new(const model_config *c, int B)
{
    return kv_new_t(c, B, MODEL_TYPE_F32);
}

/* The K/V types, and the ones a test runs for. */
static const int kv_types[] = {MODEL_TYPE_F32, MODEL_TYPE_F16, MODEL_TYPE_Q8_0};
#define N_KV_TYPES (sizeof kv_types / sizeof kv_types[0])

static void kv_free(kvbuf *k)
{
    for (int i = 0; i < k->n; i++)
        free(k->blocks[i]);
    free(k->blocks);
}

static model *load_ok(const char *path)
{
    char msg[512];
    model *m = NULL;
    int rc = model_load(path, &m, msg, sizeof msg);
    CHECK_MSG(rc == 0, "load %s: %s", path, msg);
    return m;
}

static model *synth(const char *name, const char *shape)
{
    char msg[512];
    model_config c;
    CHECK_MSG(model_shape_parse(shape, &c, msg, sizeof msg) == 0, "%s", msg);
    const char *p = tmp_path(name);
    CHECK_MSG(model_synth_write(p, &c, 7, msg, sizeof msg) == 0, "%s", msg);
    return load_ok(p);
}

/* Names the variant a loop of checks is on, so a failure's line can be placed. */
#define note(...)                                                                                  \
    (void)(fprintf(stderr, "  [") + fprintf(stderr, __VA_ARGS__) + fprintf(stderr, "]\n"))

/* A synthetic GGUF model of shape, architecture and weight type (model.h's names). */
static model *synth_gguf(const char *shape, const char *arch, const char *type)
{
    char msg[512], name[64];
    model_config c;
    int t;
    CHECK_MSG(model_shape_parse(shape, &c, msg, sizeof msg) == 0, "%s", msg);
    CHECK(model_type_parse(type, &t) == 0);
    snprintf(name, sizeof name, "%s-%s.gguf", arch, type);
    const char *p = tmp_path(name);
    CHECK_MSG(model_synth_write_gguf(p, &c, arch, t, 7, msg, sizeof msg) == 0, "%s", msg);
    return load_ok(p);
}

/* Every type the kernels take, and llama.cpp's Q4_K_M mix. */
static const char *const all_types[] = {"f32",  "f16",  "bf16", "q8_0", "q4_0", "q4_1",
                                        "q5_0", "q5_1", "q4_k", "q5_k", "q6_k", "q4_k_m"};
#define N_TYPES (sizeof all_types / sizeof all_types[0])

/* A shape whose every matrix takes every type (rows of 256 and 512), head size 64, GQA. */
#define QSHAPE "256,512,2,4,2,300,160"

static float max_abs_diff(const float *a, const float *b, int n)
{
    float d = 0;
    for (int i = 0; i < n; i++) {
        float x = fabsf(a[i] - b[i]);
        if (x > d || isnan(x))
            d = isnan(x) ? INFINITY : x;
    }
    return d;
}

static void tokens_for(int32_t *t, int n, int vocab, unsigned seed)
{
    t[0] = MODEL_TOK_BOS;
    for (int i = 1; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        t[i] = 3 + (int32_t)((seed >> 8) % (unsigned)(vocab - 3));
    }
}

/* The largest |logit| of a row. */
static float max_abs(const float *a, int n)
{
    float m = 0;
    for (int i = 0; i < n; i++)
        m = fabsf(a[i]) > m ? fabsf(a[i]) : m;
    return m;
}

/* Prefill of all n tokens, single-token decode and batched decode agree with the naive
 * reference within tol + rel x (the reference row's largest |logit|) at every position checked. */
static void check_against_reference_rel(model *m, int n, int B, float tol0, float rel)
{
    const model_config *c = model_get_config(m);
    int32_t *t = malloc((size_t)n * sizeof(int32_t));
    tokens_for(t, n, c->vocab_size, 11);
    ref_state *r = ref_new(m);
    float *ref = malloc((size_t)n * c->vocab_size * sizeof(float));
    for (int p = 0; p < n; p++)
        memcpy(ref + (size_t)p * c->vocab_size, ref_step(r, t[p], p),
               (size_t)c->vocab_size * sizeof(float));
    model_state *s;
    model_state_opts o = {B, 512, 8, 2, MODEL_TYPE_F32};
    CHECK(model_state_new(m, &o, &s) == 0);
    float *lg = malloc(8 * (size_t)c->vocab_size * sizeof(float));
    /* Prefill of all n at once: logits of the last position. */
    kvbuf k = kv_new(c, B);
    CHECK(model_prefill(s, &k.kv, 0, t, n, lg) == 0);
#define TOL_AT(p) (tol0 + rel * max_abs(ref + (size_t)(p)*c->vocab_size, c->vocab_size))
    CHECK_NEAR(max_abs_diff(lg, ref + (size_t)(n - 1) * c->vocab_size, c->vocab_size), 0,
               TOL_AT(n - 1));
    /* Single-token decode at every position. */
    kvbuf k1 = kv_new(c, B);
    float worst = 0; /* the largest diff relative to the row's largest |logit| */
    for (int p = 0; p < n; p++) {
        CHECK(model_decode(s, &k1.kv, &p, &t[p], 1, lg) == 0);
        float d = max_abs_diff(lg, ref + (size_t)p * c->vocab_size, c->vocab_size);
        CHECK_MSG(d <= TOL_AT(p), "decode pos %d: max diff %g", p, d);
        float a = max_abs(ref + (size_t)p * c->vocab_size, c->vocab_size);
        worst = a > 0 && d / a > worst ? d / a : worst;
    }
    if (rel > 0)
        note("decode: worst diff %.2f%% of the largest |logit|", 100.0 * worst);
    /* Batched decode: 4 copies of the sequence, at staggered positions, in one batch. */
    kvbuf kb[4];
    for (int i = 0; i < 4; i++)
        kb[i] = kv_new(c, B);
    for (int step = 0; step < n + 3; step++) {
        model_kv kvs[4];
        int pos[4], nb = 0, who[4];
        int32_t toks[4];
        for (int i = 0; i < 4; i++) {
            int p = step - i;
            if (p < 0 || p >= n)
                continue;
            kvs[nb] = kb[i].kv;
            pos[nb] = p;
            toks[nb] = t[p];
            who[nb] = i;
            nb++;
        }
        CHECK(model_decode(s, kvs, pos, toks, nb, lg) == 0);
        for (int j = 0; j < nb; j++) {
            float d = max_abs_diff(lg + (size_t)j * c->vocab_size,
                                   ref + (size_t)pos[j] * c->vocab_size, c->vocab_size);
            CHECK_MSG(d <= TOL_AT(pos[j]), "batched decode seq %d pos %d: max diff %g", who[j],
                      pos[j], d);
        }
    }
    for (int i = 0; i < 4; i++)
        kv_free(&kb[i]);
    kv_free(&k);
    kv_free(&k1);
    free(lg);
    free(ref);
    free(t);
    ref_free(r);
    model_state_free(s);
#undef TOL_AT
}

static void check_against_reference_tol(model *m, int n, int B, float tol)
{
    check_against_reference_rel(m, n, B, tol, 0.0f);
}

static void check_against_reference_b(model *m, int n, int B)
{
    check_against_reference_tol(m, n, B, 1e-4f);
}

static void check_against_reference(model *m, int n)
{
    check_against_reference_b(m, n, 16);
}

static void test_reference_260k(void)
{
    model *m = load_ok(MODEL_260K);
    check_against_reference(m, 70);
    model_free(m);
}

static void test_reference_synth_gqa(void)
{
    model *m = synth("gqa.bin", "64,160,3,8,2,300,128");
    check_against_reference(m, 40);
    model_free(m);
}

static void test_reference_synth_mha(void)
{
    model *m = synth("mha.bin", "96,200,2,6,6,320,128");
    check_against_reference(m, 40);
    model_free(m);
}

/* head_size 64 (the real models' size, which the decode attention has a path of its own for),
 * with blocks of 16 and of 5 positions (so key groups break at block ends), and more than one
 * query tile in prefill. */
static void test_reference_synth_hs64(void)
{
    model *m = synth("hs64.bin", "128,256,2,2,2,300,160");
    check_against_reference_b(m, 45, 16);
    check_against_reference_b(m, 45, 5);
    model_free(m);
}

/* Every weight type, both architectures, against the float64 reference that dequantizes the same
 * weights (activations in float).
 *   - F32, F16, BF16: the F32 tolerance, 1e-4 on logits of magnitude up to ~100: the kernels
 *     multiply the weights exactly as stored, so only float32 rounding in the sums differs.
 *   - every quantized type and the Q4_K_M mix: 1% of the row's largest |logit|. These run the
 *     integer products (qkernels.h), whose activations are rounded to 8 bits, as llama.cpp's
 *     are: per block of 32 for the 32-block types, per 256 for the K-quants (llama.cpp's Q8_K).
 *     Each rounding error is uniform within half a step, so a product's relative error is about
 *     max|x| / (127 sqrt(12) rms(x)) over the block, ~0.4% for these activations with blocks of
 *     32 and a little more with 256 (a larger block has a larger max|x|); it compounds over the
 *     2 layers' products and the classifier. Measured (the note each case prints): 0.30-0.44% of
 *     the largest |logit| for the 32-block types, 0.47-0.58% for the K-quants and the mix, both
 *     architectures. The products themselves are exact up to float rounding (kernel_qi8), so a
 *     wrong code, scale or offset shows as errors of the size of the logits, far past 1%. */
static void test_reference_types(void)
{
    for (int a = 0; a < 2; a++)
        for (size_t i = 0; i < N_TYPES; i++) {
            const char *arch = a ? "qwen2" : "llama";
            note("%s %s", arch, all_types[i]);
            model *m = synth_gguf(QSHAPE, arch, all_types[i]);
            int qtype = i >= 3; /* all_types: f32, f16, bf16, then the quantized ones */
            check_against_reference_rel(m, 12, 16, 1e-4f, qtype ? 0.01f : 0.0f);
            model_free(m);
        }
}

/* Decodes tokens[0..n) one at a time (batch 1) and keeps each position's log-softmax in lp; with
 * greedy, tokens[1..n) are written first, each the previous position's most likely. */
static void log_softmax_steps(model *m, int32_t *tokens, int n, int greedy, double *lp)
{
    const model_config *c = model_get_config(m);
    model_state_opts o = {.block_tokens = 16, .threads = 1};
    model_state *s = NULL;
    CHECK(model_state_new(m, &o, &s) == 0);
    kvbuf k = kv_new(c, 16);
    float *lg = malloc((size_t)c->vocab_size * sizeof(float));
    CHECK(lg != NULL);
    for (int p = 0; p < n; p++) {
        CHECK(model_decode(s, &k.kv, &p, tokens + p, 1, lg) == 0);
        double mx = lg[0], sum = 0;
        for (int i = 1; i < c->vocab_size; i++)
            mx = lg[i] > mx ? lg[i] : mx;
        for (int i = 0; i < c->vocab_size; i++)
            sum += exp(lg[i] - mx);
        int best = 0;
        for (int i = 0; i < c->vocab_size; i++) {
            lp[(size_t)p * c->vocab_size + i] = lg[i] - mx - log(sum);
            best = lg[i] > lg[best] ? i : best;
        }
        if (greedy && p + 1 < n)
            tokens[p + 1] = best;
    }
    free(lg);
    kv_free(&k);
    model_state_free(s);
}

/* stories260K as llama.cpp's llama-quantize wrote it (tests/data/quantized): this model's rows
 * of 64 and 172 weights are no whole number of 256-weight blocks, so its Q4_K_M and Q5_K_M files
 * mix Q5_0 or Q5_1 with Q8_0, F16 and F32, as llama.cpp's files of real models of such widths do.
 * Each loads and matches the float64 reference on the same weights (the kernels), and on the
 * trained model's own greedy story it predicts as the F32 model does (the dequantizers read
 * llama.cpp's bytes as llama.cpp meant them): the same top token at >= 90% of 96 positions and a
 * mean KL divergence from the F32 distribution under 0.05 nats (measured: about 0.01). */
static void test_llama_quantized_files(void)
{
    static const char *const files[] = {"stories260K-Q4_K_M.gguf", "stories260K-Q5_K_M.gguf"};
    enum { N = 96 };
    model *f32 = load_ok(MODEL_260K);
    const model_config *c = model_get_config(f32);
    size_t V = (size_t)c->vocab_size;
    int32_t story[N];
    double *want = malloc(N * V * sizeof(double)), *got = malloc(N * V * sizeof(double));
    CHECK(want && got);
    /* The F32 model's greedy story from BOS, teacher-forced through both. */
    story[0] = MODEL_TOK_BOS;
    log_softmax_steps(f32, story, N, 1, want);
    model_free(f32);
    for (size_t f = 0; f < sizeof files / sizeof files[0]; f++) {
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/tests/data/quantized/%s", PREFIXD_SOURCE_DIR, files[f]);
        model *m = load_ok(path);
        /* Their Q8_0 matrices take the integer products (8-bit activations). A trained model's
         * activations have outliers that 8-bit blocks round more coarsely than the synthetic
         * models' (reference_types: 1% of the largest logit), so 3% here (measured: up to 1.5%);
         * the KL check below is the one that says the outputs are right. */
        check_against_reference_rel(m, 40, 16, 1e-4f, 0.03f);
        CHECK_EQ_INT(model_get_config(m)->vocab_size, (int)V);
        log_softmax_steps(m, story, N, 0, got);
        int agree = 0;
        double kl = 0;
        for (int p = 0; p < N; p++) {
            const double *a = want + (size_t)p * V, *b = got + (size_t)p * V;
            size_t ba = 0, bb = 0;
            for (size_t i = 0; i < V; i++) {
                ba = a[i] > a[ba] ? i : ba;
                bb = b[i] > b[bb] ? i : bb;
                kl += exp(a[i]) * (a[i] - b[i]);
            }
            agree += ba == bb;
        }
        kl /= N;
        note("%s: top token agrees at %d of %d positions, mean KL %.4f nats", files[f], agree, N,
             kl);
        CHECK_MSG(agree >= N * 9 / 10 && kl < 0.05, "%s: agree %d of %d, KL %g", files[f], agree, N,
                  kl);
        model_free(m);
    }
    free(want);
    free(got);
}

/* Rotary scaling: synthetic GGUF models with Llama 3.1's rope_freqs factors (the context of 160
 * as the original one, so pairs get factors 1, 8 and between) and with linear scaling by 4, both
 * architectures, against the reference forward computing the scaled angles in float64: the
 * F32 tolerance, since scaling changes only the rotary table. The same logits against the
 * reference without the scaling differ by far more, so the check sees the factors. */
static void test_reference_rope_scaling(void)
{
    for (int v = 0; v < 4; v++) {
        const char *arch = v % 2 ? "qwen2" : "llama";
        int freqs = v < 2;
        note("%s %s", arch, freqs ? "rope_freqs" : "linear 4");
        char msg[512], name[64];
        model_config c;
        CHECK(model_shape_parse(QSHAPE, &c, msg, sizeof msg) == 0);
        c.rope_factor = freqs ? 1.0f : 4.0f;
        snprintf(name, sizeof name, "rope-%d.gguf", v);
        const char *p = tmp_path(name);
        CHECK_MSG(model_synth_write_gguf_rope(p, &c, arch, MODEL_TYPE_F32, 7, freqs, msg,
                                              sizeof msg) == 0,
                  "%s", msg);
        model *m = load_ok(p);
        const model_config *mc = model_get_config(m);
        const model_tensor *ff = &model_get_weights(m)->rope_freqs;
        CHECK(freqs ? ff->data != NULL : ff->data == NULL);
        CHECK(mc->rope_factor == (freqs ? 1.0f : 4.0f));
        if (freqs) { /* pair 0 keeps its frequency, the last is slowed 8 times */
            CHECK_NEAR(model_tensor_f32(ff)[0], 1.0f, 0.0f);
            CHECK_NEAR(model_tensor_f32(ff)[mc->head_size / 2 - 1], 8.0f, 0.0f);
        }
        check_against_reference_tol(m, 12, 16, 1e-4f);
        if (freqs) { /* a conversion keeps the factors, bit for bit */
            const char *p2 = tmp_path("rope-converted.gguf");
            CHECK_MSG(model_convert_gguf(m, p2, MODEL_TYPE_F16, msg, sizeof msg) == 0, "%s", msg);
            model *m2 = load_ok(p2);
            const model_tensor *f2 = &model_get_weights(m2)->rope_freqs;
            CHECK(f2->data && memcmp(f2->data, ff->data, (size_t)mc->head_size / 2 * 4) == 0);
            model_free(m2);
        }
        /* Without the scaling the reference is another model. */
        int n = 12;
        int32_t t[12];
        tokens_for(t, n, mc->vocab_size, 11);
        ref_state *r = ref_new(m);
        r->rope_freqs = NULL;
        r->rope_factor = 1.0;
        const float *lr = NULL;
        for (int i = 0; i < n; i++)
            lr = ref_step(r, t[i], i);
        model_state *s;
        model_state_opts o = {16, 512, 8, 2};
        CHECK(model_state_new(m, &o, &s) == 0);
        float *lg = malloc((size_t)mc->vocab_size * sizeof(float));
        kvbuf k = kv_new(mc, 16);
        CHECK(model_prefill(s, &k.kv, 0, t, n, lg) == 0);
        float d = max_abs_diff(lg, lr, mc->vocab_size);
        CHECK_MSG(d > 1e-2f, "unscaled reference differs by only %g", d);
        kv_free(&k);
        free(lg);
        model_state_free(s);
        ref_free(r);
        model_free(m);
    }
}

/* Prefill of k tokens, then the rest reading the first k back from blocks, gives bitwise the
 * logits and K/V of one prefill of everything: every kernel computes a row's outputs the same
 * way whatever the row count and tiling. */
static void split_prefill_kv(model *m, const int *ks, size_t nks, int kv_type)
{
    const model_config *c = model_get_config(m);
    int B = 16, n = 150;
    int32_t t[150];
    tokens_for(t, n, c->vocab_size, 5);
    model_state *s;
    model_state_opts o = {B, 512, 4, 2, kv_type};
    CHECK(model_state_new(m, &o, &s) == 0);
    float *whole = malloc((size_t)c->vocab_size * sizeof(float));
    float *split = malloc((size_t)c->vocab_size * sizeof(float));
    size_t bytes = model_kv_block_bytes(c, B, kv_type);
    float *rw = calloc(bytes / 4, sizeof(float)), *rk = calloc(bytes / 4, sizeof(float));
    kvbuf kw = kv_new_t(c, B, kv_type);
    CHECK(model_prefill(s, &kw.kv, 0, t, n, whole) == 0);
    for (size_t i = 0; i < nks; i++) {
        int k = ks[i];
        kvbuf kk = kv_new_t(c, B, kv_type);
        CHECK(model_prefill(s, &kk.kv, 0, t, k, NULL) == 0);
        CHECK(model_prefill(s, &kk.kv, k, t + k, n - k, split) == 0);
        float d = max_abs_diff(whole, split, c->vocab_size);
        CHECK_MSG(memcmp(whole, split, (size_t)c->vocab_size * sizeof(float)) == 0,
                  "%s K/V, split at %d: logits differ (by up to %g)", model_type_name(kv_type), k,
                  d);
        for (int b = 0; b < (n + B - 1) / B; b++) {
            /* Only rows < n are defined in the last block: compare the copies of those. */
            int rows = b == n / B ? n % B : B;
            model_kv_copy_rows(c, B, kv_type, rw, kw.blocks[b], rows);
            model_kv_copy_rows(c, B, kv_type, rk, kk.blocks[b], rows);
            CHECK_MSG(memcmp(rw, rk, bytes) == 0, "%s K/V, split at %d: K/V block %d differs",
                      model_type_name(kv_type), k, b);
        }
        kv_free(&kk);
    }
    kv_free(&kw);
    free(rw);
    free(rk);
    free(whole);
    free(split);
    model_state_free(s);
}

static void split_prefill_on(model *m, const int *ks, size_t nks)
{
    split_prefill_kv(m, ks, nks, MODEL_TYPE_F32);
}

static void test_split_prefill(void)
{
    model *m = load_ok(MODEL_260K);
    int ks[] = {1, 7, 15, 16, 17, 31, 32, 33, 64, 100, 149};
    split_prefill_on(m, ks, sizeof ks / sizeof ks[0]);
    model_free(m);
}

/* The same for every weight type (the stored-type prefill kernel). */
static void test_split_prefill_types(void)
{
    int ks[] = {1, 16, 33, 149};
    for (size_t i = 0; i < N_TYPES; i++) {
        note("%s", all_types[i]);
        model *m = synth_gguf(QSHAPE, i % 2 ? "qwen2" : "llama", all_types[i]);
        split_prefill_on(m, ks, sizeof ks / sizeof ks[0]);
        model_free(m);
    }
}

/* A sequence's decode logits are bitwise the same alone and inside a batch of 8 (rows of a
 * batch land in tiles of 1, 2 or 3 rows: sequence 0 is checked at each tile position). */
static void decode_batch_kv(model *m, int n, int kv_type)
{
    const model_config *c = model_get_config(m);
    int B = 16;
    model_state *s;
    model_state_opts o = {B, 512, 8, 2, kv_type};
    CHECK(model_state_new(m, &o, &s) == 0);
    int32_t t[8][40];
    for (int i = 0; i < 8; i++)
        tokens_for(t[i], n, c->vocab_size, 100 + (unsigned)i);
    kvbuf alone = kv_new_t(c, B, kv_type);
    kvbuf kb[8];
    for (int i = 0; i < 8; i++)
        kb[i] = kv_new_t(c, B, kv_type);
    float *la = malloc((size_t)c->vocab_size * sizeof(float));
    float *lb = malloc(8 * (size_t)c->vocab_size * sizeof(float));
    for (int p = 0; p < n; p++) {
        CHECK(model_decode(s, &alone.kv, &p, &t[0][p], 1, la) == 0);
        model_kv kvs[8];
        int pos[8];
        int32_t toks[8];
        for (int i = 0; i < 8; i++) {
            kvs[i] = kb[i].kv;
            pos[i] = p;
            toks[i] = t[i][p];
        }
        CHECK(model_decode(s, kvs, pos, toks, 8, lb) == 0);
        CHECK_MSG(memcmp(la, lb, (size_t)c->vocab_size * sizeof(float)) == 0,
                  "%s K/V, pos %d: batch of 8 changed sequence 0's logits",
                  model_type_name(kv_type), p);
    }
    for (int i = 0; i < 8; i++)
        kv_free(&kb[i]);
    kv_free(&alone);
    free(la);
    free(lb);
    model_state_free(s);
}

static void decode_batch_on(model *m, int n)
{
    decode_batch_kv(m, n, MODEL_TYPE_F32);
}

/* Split prefill bitwise and decode batch-invariant with K/V stored in each type: stories260K
 * (head_size 8: q8_0 rows of four heads) and a synthetic model of head_size 64 (q8_0 rows of
 * one head), both with grouped-query attention. */
static void test_kv_types_determinism(void)
{
    model *ms[2] = {load_ok(MODEL_260K), synth("hs64.bin", "256,512,2,4,2,300,200")};
    int ks[] = {1, 16, 33, 149};
    for (int i = 0; i < 2; i++)
        for (size_t t = 0; t < N_KV_TYPES; t++) {
            note("model %d, %s K/V", i, model_type_name(kv_types[t]));
            split_prefill_kv(ms[i], ks, sizeof ks / sizeof ks[0], kv_types[t]);
            decode_batch_kv(ms[i], 30, kv_types[t]);
        }
    model_free(ms[0]);
    model_free(ms[1]);
}

/* Typed K/V stays close to the reference (which keeps K/V in double precision): f16 and q8_0
 * round each stored value, so the logits move a little, and no more. */
static void test_kv_types_reference(void)
{
    model *m = load_ok(MODEL_260K);
    const model_config *c = model_get_config(m);
    int n = 60;
    int32_t t[60];
    tokens_for(t, n, c->vocab_size, 11);
    ref_state *r = ref_new(m);
    float *ref = malloc((size_t)c->vocab_size * sizeof(float));
    for (int p = 0; p < n; p++)
        memcpy(ref, ref_step(r, t[p], p), (size_t)c->vocab_size * sizeof(float));
    float tol[] = {1e-4f, 2e-2f, 0.75f}, lg[512];
    for (size_t k = 0; k < N_KV_TYPES; k++) {
        model_state *s;
        model_state_opts o = {16, 512, 8, 2, kv_types[k]};
        CHECK(model_state_new(m, &o, &s) == 0);
        kvbuf kb = kv_new_t(c, 16, kv_types[k]);
        CHECK(model_prefill(s, &kb.kv, 0, t, n, lg) == 0);
        float d = max_abs_diff(lg, ref, c->vocab_size);
        note("%s K/V: max logit difference %g", model_type_name(kv_types[k]), d);
        CHECK_MSG(d <= tol[k], "%s K/V: logits differ from the reference by %g",
                  model_type_name(kv_types[k]), d);
        kv_free(&kb);
        model_state_free(s);
    }
    ref_free(r);
    free(ref);
    model_free(m);
}

/* Sizes per type, names, and q8_0 refused by name where kv rows cannot be cut in 32s. */
static void test_kv_types_sizes(void)
{
    char msg[256];
    model_config c;
    CHECK(model_shape_parse("stories110M", &c, msg, sizeof msg) == 0);
    CHECK_EQ_U64(model_kv_bytes_per_token(&c, MODEL_TYPE_F32), 2ull * 12 * 768 * 4);
    CHECK_EQ_U64(model_kv_bytes_per_token(&c, MODEL_TYPE_F16), 2ull * 12 * 768 * 2);
    CHECK_EQ_U64(model_kv_bytes_per_token(&c, MODEL_TYPE_Q8_0), 2ull * 12 * 768 / 32 * 34);
    CHECK_EQ_U64(model_kv_block_bytes(&c, 16, MODEL_TYPE_Q8_0), 16ull * 2 * 12 * 768 / 32 * 34);
    CHECK_EQ_U64(model_kv_block_bytes(&c, 16, MODEL_TYPE_F32), model_kv_block_floats(&c, 16) * 4);
    CHECK_EQ_INT(model_kv_type_check(&c, MODEL_TYPE_Q8_0, msg, sizeof msg), 0);
    CHECK_EQ_INT(model_kv_type_check(&c, MODEL_TYPE_BF16, msg, sizeof msg), MODEL_EINVAL);
    int t = -1;
    CHECK(model_kv_type_parse("Q8_0", &t) == 0 && t == MODEL_TYPE_Q8_0);
    CHECK(model_kv_type_parse("f16", &t) == 0 && t == MODEL_TYPE_F16);
    CHECK(model_kv_type_parse("q4_0", &t) == MODEL_EINVAL);
    CHECK(model_kv_type_parse("", &t) == MODEL_EINVAL);
    /* One kv head of 8: a kv row of 8 elements, not a group of 32. */
    model *m = synth("kv8.bin", "16,32,1,2,1,300,64");
    CHECK_EQ_INT(model_kv_type_check(model_get_config(m), MODEL_TYPE_Q8_0, msg, sizeof msg),
                 MODEL_EINVAL);
    CHECK_STR_CONTAINS(msg, "q8_0");
    CHECK_STR_CONTAINS(msg, "head_size 8");
    CHECK_EQ_U64(model_kv_block_bytes(model_get_config(m), 16, MODEL_TYPE_Q8_0), 0);
    model_state *s = NULL;
    model_state_opts o = {16, 64, 4, 1, MODEL_TYPE_Q8_0};
    CHECK_EQ_INT(model_state_new(m, &o, &s), MODEL_EINVAL);
    o.kv_type = MODEL_TYPE_F16;
    CHECK_EQ_INT(model_state_new(m, &o, &s), 0);
    model_state_free(s);
    model_free(m);
}

static void test_decode_batch_invariant(void)
{
    model *m = load_ok(MODEL_260K);
    decode_batch_on(m, 40);
    model_free(m);
}

static void test_decode_batch_invariant_types(void)
{
    for (size_t i = 0; i < N_TYPES; i++) {
        note("%s", all_types[i]);
        model *m = synth_gguf(QSHAPE, i % 2 ? "qwen2" : "llama", all_types[i]);
        decode_batch_on(m, 20);
        model_free(m);
    }
}

/* Logits of a prefill of n tokens followed by `steps` greedy decode steps, into out
 * ((steps + 1) x vocab floats): one run's every output, to compare between runs. */
static void run_greedy(model *m, int threads, int n, int steps, float *out)
{
    const model_config *c = model_get_config(m);
    int B = 16;
    int32_t t[64];
    tokens_for(t, n, c->vocab_size, 11);
    model_state *s;
    model_state_opts o = {B, 512, 4, threads, MODEL_TYPE_F32};
    CHECK(model_state_new(m, &o, &s) == 0);
    kvbuf k = kv_new(c, B);
    CHECK(model_prefill(s, &k.kv, 0, t, n, out) == 0);
    for (int i = 0; i < steps; i++) {
        const float *l = out + (size_t)i * c->vocab_size;
        int32_t best = 0;
        for (int v = 1; v < c->vocab_size; v++)
            best = l[v] > l[best] ? v : best;
        int pos = n + i;
        CHECK(model_decode(s, &k.kv, &pos, &best, 1, out + (size_t)(i + 1) * c->vocab_size) == 0);
    }
    kv_free(&k);
    model_state_free(s);
}

/* The determinism checks with every step split across the pool (PREFIXD_SPLIT_FLOPS=0), on
 * stories260K and on a synthetic model wide enough for many tasks per step, each against a run
 * on one thread: a task's outputs do not depend on which thread claims it. With hog, a
 * busy-loop child process runs beside them, so threads are descheduled mid-job. */
static void check_determinism_split(int hog)
{
    pid_t child = -1;
    if (hog) {
        child = fork();
        CHECK(child >= 0);
        if (child == 0) {
            alarm(300); /* bounded, should the parent die without killing it */
            for (volatile unsigned long i = 0;; i++)
                ;
        }
    }
    CHECK(setenv("PREFIXD_SPLIT_FLOPS", "0", 1) == 0);
    model *ms[2] = {load_ok(MODEL_260K), synth("wide.bin", "256,688,2,8,4,4096,256")};
    for (int i = 0; i < 2; i++) {
        model *m = ms[i];
        const model_config *c = model_get_config(m);
        int ks[] = {1, 16, 33};
        split_prefill_on(m, ks, sizeof ks / sizeof ks[0]);
        decode_batch_on(m, 40);
        int n = 45, steps = 20;
        size_t nl = (size_t)(steps + 1) * c->vocab_size;
        float *one = malloc(nl * sizeof(float)), *two = malloc(nl * sizeof(float));
        run_greedy(m, 1, n, steps, one);
        for (int r = 0; r < 3; r++) {
            run_greedy(m, 2, n, steps, two);
            CHECK_MSG(memcmp(one, two, nl * sizeof(float)) == 0,
                      "model %d, run %d: 2 threads' logits differ from 1 thread's", i, r);
        }
        free(one);
        free(two);
        model_free(m);
    }
    unsetenv("PREFIXD_SPLIT_FLOPS");
    if (child > 0) {
        kill(child, SIGKILL);
        waitpid(child, NULL, 0);
    }
}

static void test_determinism_split(void)
{
    check_determinism_split(0);
}

static void test_determinism_with_hog(void)
{
    check_determinism_split(1);
}

static void test_range_errors(void)
{
    model *m = load_ok(MODEL_260K);
    const model_config *c = model_get_config(m);
    model_state *s;
    model_state_opts o = {16, 64, 2, 1, MODEL_TYPE_F32};
    CHECK(model_state_new(m, &o, &s) == 0);
    kvbuf k = kv_new(c, 16);
    float *lg = malloc((size_t)c->vocab_size * sizeof(float));
    int32_t bad = c->vocab_size, neg = -1, ok = 5;
    CHECK_EQ_INT(model_prefill(s, &k.kv, 0, &bad, 1, lg), MODEL_ERANGE);
    CHECK_EQ_INT(model_prefill(s, &k.kv, 0, &neg, 1, lg), MODEL_ERANGE);
    CHECK_EQ_INT(model_prefill(s, &k.kv, c->seq_len, &ok, 1, lg), MODEL_ERANGE);
    CHECK_EQ_INT(model_prefill(s, &k.kv, 0, &ok, 0, lg), MODEL_ERANGE);
    int32_t many[65] = {0};
    CHECK_EQ_INT(model_prefill(s, &k.kv, 0, many, 65, lg), MODEL_ERANGE);
    int p = c->seq_len;
    CHECK_EQ_INT(model_decode(s, &k.kv, &p, &ok, 1, lg), MODEL_ERANGE);
    model_kv shortkv = {k.blocks, 1};
    p = 16;
    CHECK_EQ_INT(model_decode(s, &shortkv, &p, &ok, 1, lg), MODEL_ERANGE);
    p = 0;
    CHECK_EQ_INT(model_decode(s, &k.kv, &p, &ok, 3, lg), MODEL_ERANGE); /* b > max_batch */
    kv_free(&k);
    free(lg);
    model_state_free(s);
    model_free(m);
}

/* ---- Kernels against plain loops ------------------------------------------------------------ */

static unsigned krand_state = 12345;
static float krand(void)
{
    krand_state = krand_state * 1103515245u + 12345u;
    return (float)((krand_state >> 8) & 0xffff) / 32768.0f - 1.0f;
}

static float *rand_floats(size_t n)
{
    float *p = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        p[i] = krand();
    return p;
}

/* model__gemm is, output by output, the plain chain acc = fmaf(x[i][k], w[j][k], acc) over k in
 * order from 0: bitwise, for every row count, inner size and column edge tried, whatever panel
 * range a call covers (the columns split across threads). */
static void test_kernel_gemm(void)
{
    int ms[] = {1, 2, 5, 8, 12, 13, 25, 52};
    int ns[] = {1, 7, 64, 300};
    int ds[] = {1, 31, 32, 33, 70};
    for (size_t a = 0; a < sizeof ms / sizeof ms[0]; a++)
        for (size_t b = 0; b < sizeof ns / sizeof ns[0]; b++)
            for (size_t e = 0; e < sizeof ds / sizeof ds[0]; e++) {
                int m = ms[a], n = ns[b], d = ds[e];
                float *x = rand_floats((size_t)m * n), *w = rand_floats((size_t)d * n);
                float *wp = malloc(model__pack_floats(d, n) * sizeof(float));
                float *y = malloc((size_t)m * d * sizeof(float));
                model__pack(wp, w, d, n);
                int panels = (d + MODEL__NR - 1) / MODEL__NR;
                /* Two calls, as two threads would make them. */
                model__gemm(y, (size_t)d, x, (size_t)n, wp, m, n, d, 0, panels / 2);
                model__gemm(y, (size_t)d, x, (size_t)n, wp, m, n, d, panels / 2, panels);
                for (int i = 0; i < m; i++)
                    for (int j = 0; j < d; j++) {
                        float acc = 0.0f;
                        for (int k = 0; k < n; k++)
                            acc = fmaf(x[(size_t)i * n + k], w[(size_t)j * n + k], acc);
                        CHECK_MSG(memcmp(&acc, &y[(size_t)i * d + j], sizeof acc) == 0,
                                  "gemm m %d n %d d %d: y[%d][%d] = %.9g, chain %.9g", m, n, d, i,
                                  j, y[(size_t)i * d + j], acc);
                    }
                free(x);
                free(w);
                free(wp);
                free(y);
            }
}

/* Plain causal attention of one query at position p over keys/values read from blocks (double
 * precision). */
static void ref_attend(float *out, const float *q, int p, float *const *blocks, size_t koff,
                       size_t voff, int B, int hs)
{
    double *sc = malloc((size_t)(p + 1) * sizeof(double)), mx = -INFINITY, sum = 0;
    for (int t = 0; t <= p; t++) {
        const float *k = blocks[t / B] + koff + (size_t)(t % B) * hs;
        double s = 0;
        for (int d = 0; d < hs; d++)
            s += (double)q[d] * k[d];
        sc[t] = s / sqrt((double)hs);
        mx = sc[t] > mx ? sc[t] : mx;
    }
    for (int t = 0; t <= p; t++)
        sum += sc[t] = exp(sc[t] - mx);
    for (int d = 0; d < hs; d++) {
        double o = 0;
        for (int t = 0; t <= p; t++)
            o += sc[t] / sum * blocks[t / B][voff + (size_t)(t % B) * hs + d];
        out[d] = (float)o;
    }
    free(sc);
}

/* model__attend agrees with the plain loop, and a query's output is bitwise the same in every
 * tile that holds it (tile heights 1..16, any start); model__attend1 agrees with the plain loop
 * too. Blocks of 16 and of 7 positions; head sizes 8, 24, 64. */
static void test_kernel_attend(void)
{
    int hss[] = {8, 24, 64}, Bs[] = {16, 7};
    for (size_t a = 0; a < 3; a++)
        for (size_t b = 0; b < 2; b++) {
            int hs = hss[a], B = Bs[b], T = 70, nb = (T + B - 1) / B;
            /* Each block holds keys then values, B rows each. */
            float **blocks = malloc((size_t)nb * sizeof *blocks);
            for (int i = 0; i < nb; i++)
                blocks[i] = rand_floats((size_t)2 * B * hs);
            size_t koff = 0, voff = (size_t)B * hs, rb = (size_t)hs * 4;
            float *q = rand_floats((size_t)T * hs);
            float scale = 1.0f / sqrtf((float)hs);
            float *scratch = malloc(model__attend_scratch(hs, T) * sizeof(float));
            float *whole = malloc((size_t)T * hs * sizeof(float));
            float *part = malloc((size_t)T * hs * sizeof(float));
            float *ref = malloc((size_t)hs * sizeof(float));
            /* All T queries in tiles of 16 from position 0. */
            for (int p0 = 0; p0 < T; p0 += 16) {
                int nq = T - p0 < 16 ? T - p0 : 16;
                model__attend(whole + (size_t)p0 * hs, (size_t)hs, q + (size_t)p0 * hs, (size_t)hs,
                              nq, p0, blocks, koff * 4, voff * 4, rb, 0, B, hs, MODEL_TYPE_F32,
                              scale, scratch);
            }
            for (int p = 0; p < T; p++) {
                ref_attend(ref, q + (size_t)p * hs, p, blocks, koff, voff, B, hs);
                float d = max_abs_diff(ref, whole + (size_t)p * hs, hs);
                CHECK_MSG(d <= 1e-5f, "attend hs %d B %d pos %d: differs from the loop by %g", hs,
                          B, p, d);
                float one[64];
                model__attend1(one, q + (size_t)p * hs, p, blocks, koff * 4, voff * 4, rb, 0, B, hs,
                               MODEL_TYPE_F32, scale, scratch);
                d = max_abs_diff(ref, one, hs);
                CHECK_MSG(d <= 1e-5f, "attend1 hs %d B %d pos %d: differs from the loop by %g", hs,
                          B, p, d);
            }
            /* Other tilings: heights 1..16 from odd starts give bitwise the same rows. */
            for (int h = 1; h <= 16; h += 3)
                for (int p0 = 3; p0 < T; p0 += h) {
                    int nq = T - p0 < h ? T - p0 : h;
                    model__attend(part + (size_t)p0 * hs, (size_t)hs, q + (size_t)p0 * hs,
                                  (size_t)hs, nq, p0, blocks, koff * 4, voff * 4, rb, 0, B, hs,
                                  MODEL_TYPE_F32, scale, scratch);
                    CHECK_MSG(memcmp(part + (size_t)p0 * hs, whole + (size_t)p0 * hs,
                                     (size_t)nq * hs * sizeof(float)) == 0,
                              "attend hs %d B %d: tile of %d at %d differs from tiles of 16", hs, B,
                              nq, p0);
                }
            for (int i = 0; i < nb; i++)
                free(blocks[i]);
            free(blocks);
            free(q);
            free(scratch);
            free(whole);
            free(part);
            free(ref);
        }
}

/* model__attend1 gives bitwise the same output whatever the block size: a full run of 16 keys
 * takes the transposing shuffle tree and a short one hsum16 per key, and the two must add in
 * the same order (the block size decides which keys take which path). Head sizes 24 and 64
 * (64 has its own paths), blocks of 16, 7, 32 and 5 positions, the same keys and values laid
 * out in each. */
static void test_kernel_attend1_blocks(void)
{
    int hss[] = {24, 64}, Bs[] = {16, 7, 32, 5}, T = 150;
    for (size_t a = 0; a < 2; a++) {
        int hs = hss[a];
        float *k = rand_floats((size_t)T * hs), *v = rand_floats((size_t)T * hs);
        float *q = rand_floats((size_t)hs);
        float *scratch = malloc(((size_t)T + 16) * sizeof(float));
        float *first = malloc((size_t)T * hs * sizeof(float));
        for (size_t b = 0; b < 4; b++) {
            int B = Bs[b], nb = (T + B - 1) / B;
            float **blocks = malloc((size_t)nb * sizeof *blocks);
            for (int i = 0; i < nb; i++) {
                blocks[i] = calloc((size_t)2 * B * hs, sizeof(float));
                for (int r = 0; r < B && i * B + r < T; r++) {
                    memcpy(blocks[i] + (size_t)r * hs, k + (size_t)(i * B + r) * hs,
                           (size_t)hs * sizeof(float));
                    memcpy(blocks[i] + (size_t)(B + r) * hs, v + (size_t)(i * B + r) * hs,
                           (size_t)hs * sizeof(float));
                }
            }
            for (int p = 0; p < T; p++) {
                float out[64];
                model__attend1(out, q, p, blocks, 0, (size_t)B * hs * 4, (size_t)hs * 4, 0, B, hs,
                               MODEL_TYPE_F32, 1.0f / sqrtf((float)hs), scratch);
                if (b == 0)
                    memcpy(first + (size_t)p * hs, out, (size_t)hs * sizeof(float));
                else
                    CHECK_MSG(memcmp(out, first + (size_t)p * hs, (size_t)hs * sizeof(float)) == 0,
                              "attend1 hs %d pos %d: blocks of %d differ from blocks of 16", hs, p,
                              B);
            }
            for (int i = 0; i < nb; i++)
                free(blocks[i]);
            free(blocks);
        }
        free(k);
        free(v);
        free(q);
        free(scratch);
        free(first);
    }
}

/* The attention kernels over typed K/V compute bitwise what they compute over the F32 rows the
 * type's dequantizer gives (the conversion in the kernels is exact): f16 rows of head sizes 8,
 * 24 and 64, q8_0 rows of one head (64) and q8_0 rows of four heads of 8 (each head at its
 * offset in the row); blocks of 16 and 7 positions. */
static void test_kernel_attend_kv_types(void)
{
    struct {
        int type, hs, heads; /* heads per row */
    } cases[] = {{MODEL_TYPE_F16, 8, 1},   {MODEL_TYPE_F16, 24, 1},  {MODEL_TYPE_F16, 64, 1},
                 {MODEL_TYPE_Q8_0, 64, 1}, {MODEL_TYPE_Q8_0, 32, 2}, {MODEL_TYPE_Q8_0, 8, 4}};
    int Bs[] = {16, 7}, T = 60;
    for (size_t a = 0; a < sizeof cases / sizeof cases[0]; a++)
        for (size_t b = 0; b < 2; b++) {
            int type = cases[a].type, hs = cases[a].hs, g = cases[a].heads, B = Bs[b];
            int re = g * hs, nb = (T + B - 1) / B;
            size_t rb = model__quant_row_bytes(type, re);
            note("%s hs %d, %d heads a row, B %d", model_type_name(type), hs, g, B);
            /* Each block: B key rows, then B value rows; typed, and the same dequantized. */
            float **tb = malloc((size_t)nb * sizeof *tb), **fb = malloc((size_t)nb * sizeof *fb);
            for (int i = 0; i < nb; i++) {
                float *x = rand_floats((size_t)2 * B * re);
                tb[i] = calloc((2 * B * rb + 3) / 4, sizeof(float));
                fb[i] = malloc((size_t)2 * B * re * sizeof(float));
                for (int r = 0; r < 2 * B; r++) {
                    uint8_t *row = (uint8_t *)tb[i] + (size_t)r * rb;
                    model__quant_row(type, x + (size_t)r * re, row, re);
                    model__dequant_row(type, row, fb[i] + (size_t)r * re, re);
                }
                free(x);
            }
            float *q = rand_floats((size_t)T * hs), scale = 1.0f / sqrtf((float)hs);
            float *scratch = malloc(model__attend_scratch(hs, T) * sizeof(float));
            float *o1 = malloc((size_t)T * hs * sizeof(float)), *o2 = malloc((size_t)T * hs * 4);
            for (int h = 0; h < g; h++) {
                int hoff = h * hs;
                for (int p0 = 0; p0 < T; p0 += 16) {
                    int nq = T - p0 < 16 ? T - p0 : 16;
                    model__attend(o1 + (size_t)p0 * hs, (size_t)hs, q + (size_t)p0 * hs, (size_t)hs,
                                  nq, p0, tb, 0, (size_t)B * rb, rb, hoff, B, hs, type, scale,
                                  scratch);
                    model__attend(o2 + (size_t)p0 * hs, (size_t)hs, q + (size_t)p0 * hs, (size_t)hs,
                                  nq, p0, fb, 0, (size_t)B * re * 4, (size_t)re * 4, hoff, B, hs,
                                  MODEL_TYPE_F32, scale, scratch);
                }
                CHECK_MSG(memcmp(o1, o2, (size_t)T * hs * sizeof(float)) == 0,
                          "attend: head %d of typed rows differs from its dequantized rows", h);
                for (int p = 0; p < T; p++) {
                    model__attend1(o1, q + (size_t)p * hs, p, tb, 0, (size_t)B * rb, rb, hoff, B,
                                   hs, type, scale, scratch);
                    model__attend1(o2, q + (size_t)p * hs, p, fb, 0, (size_t)B * re * 4,
                                   (size_t)re * 4, hoff, B, hs, MODEL_TYPE_F32, scale, scratch);
                    CHECK_MSG(memcmp(o1, o2, (size_t)hs * sizeof(float)) == 0,
                              "attend1: head %d pos %d of typed rows differs from its dequantized "
                              "rows",
                              h, p);
                }
            }
            for (int i = 0; i < nb; i++) {
                free(tb[i]);
                free(fb[i]);
            }
            free(tb);
            free(fb);
            free(q);
            free(scratch);
            free(o1);
            free(o2);
        }
}

/* rmsnorm, SiLU x gate and exp against libm, at lengths with and without a partial vector. */
static void test_kernel_elementwise(void)
{
    int ns[] = {1, 15, 16, 17, 64, 172, 768};
    for (size_t a = 0; a < sizeof ns / sizeof ns[0]; a++) {
        int n = ns[a];
        float *x = rand_floats((size_t)n), *w = rand_floats((size_t)n), *g = rand_floats((size_t)n);
        float *o = malloc((size_t)n * sizeof(float)), *r = malloc((size_t)n * sizeof(float));
        for (int i = 0; i < n; i++)
            x[i] *= 8.0f; /* silu over [-8, 8] */
        model__rmsnorm(o, x, w, n, 1e-5f);
        ref_rmsnorm(r, x, w, n, 1e-5);
        CHECK_MSG(max_abs_diff(o, r, n) <= 1e-5f, "rmsnorm n %d: %g", n, max_abs_diff(o, r, n));
        model__silu_mul(o, x, g, n);
        for (int i = 0; i < n; i++)
            r[i] = (float)((double)x[i] / (1.0 + exp(-(double)x[i])) * g[i]);
        CHECK_MSG(max_abs_diff(o, r, n) <= 1e-5f, "silu_mul n %d: %g", n, max_abs_diff(o, r, n));
        free(x);
        free(w);
        free(g);
        free(o);
        free(r);
    }
    /* exp: relative error over the softmax's range and beyond, and no inf or NaN. */
    int n = 4001;
    float *x = malloc((size_t)n * sizeof(float)), *o = malloc((size_t)n * sizeof(float));
    for (int i = 0; i < n; i++)
        x[i] = -100.0f + 0.05f * (float)i; /* -100 .. 100 */
    model__exp(o, x, n);
    for (int i = 0; i < n; i++) {
        double e = exp((double)x[i]);
        CHECK_MSG(isfinite(o[i]), "exp(%g) = %g", x[i], o[i]);
        if (x[i] > -87.0f && x[i] < 88.0f)
            CHECK_MSG(fabs(o[i] - e) <= 3e-7 * e, "exp(%g) = %.9g, libm %.9g", x[i], o[i], e);
    }
    free(x);
    free(o);
}

/* ---- Bad files ------------------------------------------------------------------------------ */

static void write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    CHECK(fwrite(data, 1, n, f) == n || n == 0);
    fclose(f);
}

static void expect_load_error(const char *path, int code, const char *needle)
{
    char msg[512] = "";
    model *m = NULL;
    int rc = model_load(path, &m, msg, sizeof msg);
    CHECK_MSG(rc == code, "load %s: rc %d, expected %d (%s)", path, rc, code, msg);
    CHECK(m == NULL);
    CHECK_STR_CONTAINS(msg, path);
    CHECK_STR_CONTAINS(msg, needle);
}

static void header_file(const char *name, const int32_t h[7], size_t extra_floats)
{
    const char *p = tmp_path(name);
    size_t n = 28 + extra_floats * 4;
    char *buf = calloc(1, n);
    memcpy(buf, h, 28);
    write_file(p, buf, n);
    free(buf);
}

static void test_bad_files(void)
{
    expect_load_error(tmp_path("missing.bin"), MODEL_EIO, "No such file");
    expect_load_error(harness_tmpdir(), MODEL_EIO, "directory");
    write_file(tmp_path("empty.bin"), "", 0);
    expect_load_error(tmp_path("empty.bin"), MODEL_ETRUNC, "empty");
    write_file(tmp_path("short.bin"), "abc", 3);
    expect_load_error(tmp_path("short.bin"), MODEL_ETRUNC, "truncated");
    write_file(tmp_path("gguf.bin"), "GGUF\3\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0", 28);
    expect_load_error(tmp_path("gguf.bin"), MODEL_EFORMAT, "'general.architecture' is missing");

    int32_t zero_layers[7] = {64, 172, 0, 8, 4, 512, 512};
    header_file("zero_layers.bin", zero_layers, 100);
    expect_load_error(tmp_path("zero_layers.bin"), MODEL_ESHAPE, "positive");
    int32_t neg[7] = {64, -172, 5, 8, 4, 512, 512};
    header_file("neg.bin", neg, 100);
    expect_load_error(tmp_path("neg.bin"), MODEL_ESHAPE, "positive");
    int32_t indiv[7] = {64, 172, 5, 7, 7, 512, 512};
    header_file("indiv.bin", indiv, 100);
    expect_load_error(tmp_path("indiv.bin"), MODEL_ESHAPE, "not divisible");
    int32_t gqa[7] = {64, 172, 5, 8, 3, 512, 512};
    header_file("gqa.bin", gqa, 100);
    expect_load_error(tmp_path("gqa.bin"), MODEL_ESHAPE, "multiple");
    int32_t huge[7] = {65536, 262144, 1024, 8, 8, 4194304, 1048576};
    header_file("huge.bin", huge, 10);
    expect_load_error(tmp_path("huge.bin"), MODEL_ESHAPE, "too large");

    /* The real model cut short, and with bytes added. */
    FILE *f = fopen(MODEL_260K, "rb");
    CHECK(f != NULL);
    static char buf[1 << 21];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    write_file(tmp_path("cut.bin"), buf, n - 1000);
    expect_load_error(tmp_path("cut.bin"), MODEL_ETRUNC, "truncated");
    write_file(tmp_path("long.bin"), buf, n + 12);
    expect_load_error(tmp_path("long.bin"), MODEL_EFORMAT, "not a llama2.c");
}

static void test_shapes_and_sizes(void)
{
    char msg[256];
    model_config c;
    CHECK(model_shape_parse("stories110M", &c, msg, sizeof msg) == 0);
    CHECK_EQ_INT(c.dim, 768);
    CHECK_EQ_INT(c.head_size, 64);
    CHECK_EQ_INT(model_param_count(&c), 109529856 - 0 * 1); /* llama2.c's 110M, shared cls */
    CHECK_EQ_U64(model_kv_bytes_per_token(&c, MODEL_TYPE_F32), 2ull * 12 * 768 * 4);
    CHECK(model_shape_parse("1,2,3", &c, msg, sizeof msg) == MODEL_EINVAL);
    CHECK_STR_CONTAINS(msg, "1,2,3");
    CHECK(model_shape_parse("64,172,5,8,3,512,512", &c, msg, sizeof msg) == MODEL_ESHAPE);
    model *m = load_ok(MODEL_260K);
    const model_config *mc = model_get_config(m);
    CHECK_EQ_INT(mc->n_kv_heads, 4);
    CHECK_EQ_INT(mc->vocab_size, 512);
    CHECK(mc->shared_class);
    CHECK_EQ_U64(model_kv_bytes_per_token(mc, MODEL_TYPE_F32), 1280);
    CHECK_EQ_U64(model_kv_block_floats(mc, 16), 5 * 2 * 16 * 32);
    /* The fingerprint is a hash of the file: stable, and different for another file. */
    uint8_t fp[16];
    memcpy(fp, model_fingerprint(m), 16);
    model *m2 = load_ok(MODEL_260K);
    CHECK(memcmp(fp, model_fingerprint(m2), 16) == 0);
    model *s = synth("fp.bin", "64,172,5,8,4,512,512");
    CHECK(memcmp(fp, model_fingerprint(s), 16) != 0);
    model_free(s);
    model_free(m2);
    model_free(m);
}

/* ---- Weight encodings (model/quant.c) ---------------------------------------------------- */

static float h2f(const uint8_t *p)
{
    return model__f16_to_f32((uint16_t)(p[0] | p[1] << 8));
}

/* Weight i of one block, from ggml's block layouts as quant.h describes them, element by
 * element: an independent reading of the same bytes. */
static float block_weight(int type, const uint8_t *b, int i)
{
    switch (type) {
    case MODEL_TYPE_Q8_0:
        return h2f(b) * (float)(int8_t)b[2 + i];
    case MODEL_TYPE_Q4_0:
        return h2f(b) * (float)((i < 16 ? b[2 + i] & 15 : b[2 + i - 16] >> 4) - 8);
    case MODEL_TYPE_Q4_1:
        return h2f(b) * (float)(i < 16 ? b[4 + i] & 15 : b[4 + i - 16] >> 4) + h2f(b + 2);
    case MODEL_TYPE_Q5_0:
    case MODEL_TYPE_Q5_1: {
        int one = type == MODEL_TYPE_Q5_1; /* Q5_1 has m after d */
        const uint8_t *qh = b + 2 + 2 * one, *qs = qh + 4;
        int v = (i < 16 ? qs[i] & 15 : qs[i - 16] >> 4) | ((qh[i / 8] >> (i % 8)) & 1) << 4;
        return one ? h2f(b) * (float)v + h2f(b + 2) : h2f(b) * (float)(v - 16);
    }
    case MODEL_TYPE_Q4_K:
    case MODEL_TYPE_Q5_K: {
        int s = i / 32, c = i / 64, l = i % 32, sc, m;
        const uint8_t *q = b + 4;
        if (s < 4) {
            sc = q[s] & 63;
            m = q[s + 4] & 63;
        } else {
            sc = (q[s + 4] & 15) | ((q[s - 4] >> 6) << 4);
            m = (q[s + 4] >> 4) | ((q[s] >> 6) << 4);
        }
        const uint8_t *qs = b + (type == MODEL_TYPE_Q4_K ? 16 : 48) + 32 * c;
        int v = s % 2 ? qs[l] >> 4 : qs[l] & 15;
        if (type == MODEL_TYPE_Q5_K)
            v |= ((b[16 + l] >> s) & 1) << 4;
        return h2f(b) * (float)sc * (float)v - h2f(b + 2) * (float)m;
    }
    case MODEL_TYPE_Q6_K: {
        int h = i / 128, j = i % 128, quarter = j / 32, l = j % 32;
        const uint8_t *ql = b + 64 * h, *qh = b + 128 + 32 * h;
        int lo = quarter % 2 ? ql[l + 32] : ql[l];
        lo = quarter < 2 ? lo & 15 : lo >> 4;
        int hi = (qh[l] >> (2 * quarter)) & 3;
        int sc = (int8_t)b[192 + 8 * h + l / 16 + 2 * quarter];
        return h2f(b + 208) * (float)sc * (float)((lo | hi << 4) - 32);
    }
    }
    return NAN;
}

/* The dequantizer reads each block as ggml lays it out (random bytes with sane scales, against
 * the element-wise reading above), and quantizing then dequantizing random weights stays within
 * each type's step: half a code step of the block's range (F16/BF16: their rounding). */
static void test_quant_formats(void)
{
    static const struct {
        int type, block, bytes;
        float tol; /* max |w - deq(q(w))| for w uniform in [-1, 1] */
    } ty[] = {
        {MODEL_TYPE_Q8_0, 32, 34, 1.0f / 127},  {MODEL_TYPE_Q4_0, 32, 18, 1.0f / 8},
        {MODEL_TYPE_Q4_1, 32, 20, 2.0f / 15},   {MODEL_TYPE_Q5_0, 32, 22, 1.0f / 16},
        {MODEL_TYPE_Q5_1, 32, 24, 2.0f / 31},   {MODEL_TYPE_Q4_K, 256, 144, 2.0f / 15},
        {MODEL_TYPE_Q5_K, 256, 176, 2.0f / 31}, {MODEL_TYPE_Q6_K, 256, 210, 1.0f / 31},
        {MODEL_TYPE_F16, 1, 2, 1.0f / 2048},    {MODEL_TYPE_BF16, 1, 2, 1.0f / 256},
    };
    uint8_t blk[1024];
    float y[512], x[512];
    for (size_t t = 0; t < sizeof ty / sizeof ty[0]; t++) {
        int n = ty[t].block >= 256 ? 512 : 64, nb = n / ty[t].block;
        CHECK_EQ_U64(model__quant_row_bytes(ty[t].type, n), (uint64_t)nb * ty[t].bytes);
        CHECK_EQ_U64(model__quant_row_bytes(ty[t].type, n + (ty[t].block > 1)),
                     ty[t].block > 1 ? 0 : (uint64_t)n * 2);
        if (ty[t].block > 1) {
            for (size_t i = 0; i < sizeof blk; i++)
                blk[i] = (uint8_t)(krand() * 127.0f + 128.0f);
            /* Half-precision scales of moderate size (0x3c00 is 1.0), in each block. */
            for (int b = 0; b < nb; b++) {
                uint8_t *p = blk + b * ty[t].bytes;
                int at = ty[t].type == MODEL_TYPE_Q6_K ? 208 : 0;
                p[at] = 0x00;
                p[at + 1] = 0x3c;
                if (ty[t].type == MODEL_TYPE_Q4_K || ty[t].type == MODEL_TYPE_Q5_K ||
                    ty[t].type == MODEL_TYPE_Q4_1 || ty[t].type == MODEL_TYPE_Q5_1) {
                    p[2] = 0x00;
                    p[3] = 0x38; /* dmin or m 0.5 */
                }
            }
            model__dequant_row(ty[t].type, blk, y, n);
            for (int i = 0; i < n; i++) {
                int b = i / ty[t].block;
                float want = block_weight(ty[t].type, blk + b * ty[t].bytes, i % ty[t].block);
                CHECK_MSG(y[i] == want, "type %s weight %d: %g, expected %g",
                          model_type_name(ty[t].type), i, y[i], want);
            }
        }
        for (int i = 0; i < n; i++)
            x[i] = krand();
        model__quant_row(ty[t].type, x, blk, n);
        model__dequant_row(ty[t].type, blk, y, n);
        float err = max_abs_diff(x, y, n);
        CHECK_MSG(err <= ty[t].tol, "type %s: round trip error %g > %g",
                  model_type_name(ty[t].type), err, ty[t].tol);
    }
    /* Half precision: exact round trips and rounding to nearest even. */
    CHECK(model__f16_to_f32(model__f32_to_f16(1.0f + 1.0f / 2048)) == 1.0f);
    CHECK(model__f16_to_f32(model__f32_to_f16(1.0f + 3.0f / 2048)) == 1.0f + 2.0f / 1024);
    CHECK(model__bf16_to_f32(model__f32_to_bf16(1.0f + 1.0f / 256)) == 1.0f);
    CHECK(model__bf16_to_f32(model__f32_to_bf16(-2.5f)) == -2.5f);
    CHECK(isnan(model__bf16_to_f32(model__f32_to_bf16(NAN))));
}

/* The integer products against a plain loop over the same numbers: each weight dequantized,
 * each activation its 8-bit code times its block's scale (per 32 for the 32-block types, per 256
 * for the K-quants), summed in float64. What differs is the float32 rounding of the per-chunk
 * products and sums (relative ~1e-6 of the sum of |terms|). Every type, row counts 1 to 9 (the
 * decode path up to 3 rows, every tile shape past it), a 32-weight tail (n = 288, the 32-block
 * types), a matrix of two segments of different kinds (a 32-block type above Q6_K, on n = 512),
 * outputs past a whole group, and the activation rows' parts. */
/* The sum of k activation codes. */
static int code_sum(const int8_t *q, int k)
{
    int t = 0;
    for (int i = 0; i < k; i++)
        t += q[i];
    return t;
}

static void test_kernel_qi8(void)
{
    if (!model__qi8_available()) { /* every matrix then takes the float products */
        note("this build has no integer products");
        model__qmat w = {{{NULL, MODEL_TYPE_Q8_0, 8, 34}}, 1, 8, 32};
        CHECK(!model__qi8_takes(&w));
        return;
    }
    static const int types[] = {MODEL_TYPE_Q8_0, MODEL_TYPE_Q4_0, MODEL_TYPE_Q4_1, MODEL_TYPE_Q5_0,
                                MODEL_TYPE_Q5_1, MODEL_TYPE_Q4_K, MODEL_TYPE_Q5_K, MODEL_TYPE_Q6_K};
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++)
        for (int shape = 0; shape < 3; shape++) {
            int type = types[ti], k_type = type >= MODEL_TYPE_Q4_K && type <= MODEL_TYPE_Q6_K;
            if (k_type && shape == 1)
                continue; /* no tail: K-quant rows are whole super-blocks */
            int n = shape == 1 ? 288 : 512, type2 = shape == 2 ? MODEL_TYPE_Q6_K : type;
            int d1 = 21, d2 = shape == 2 ? 30 : 0, d = d1 + d2, m = 9;
            note("%s n %d, %d + %d rows of %s", model_type_name(type), n, d1, d2,
                 model_type_name(type2));
            size_t rb1 = model__quant_row_bytes(type, n), rb2 = model__quant_row_bytes(type2, n);
            uint8_t *w1 = malloc(rb1 * d1), *w2 = malloc(rb2 * (d2 ? d2 : 1));
            float *row = malloc((size_t)n * sizeof(float)), *wf = malloc((size_t)d * n * 4);
            unsigned seed = 99 + (unsigned)ti;
            for (int r = 0; r < d; r++) {
                for (int k = 0; k < n; k++) {
                    seed = seed * 1103515245u + 12345u;
                    row[k] = (float)((int)(seed >> 9) % 2001 - 1000) / 1000.0f;
                }
                int t = r < d1 ? type : type2;
                uint8_t *dst = r < d1 ? w1 + rb1 * r : w2 + rb2 * (r - d1);
                model__quant_row(t, row, dst, n);
                model__dequant_row(t, dst, wf + (size_t)r * n, n);
            }
            model__qmat w = {{{w1, type, d1, rb1}, {w2, type2, d2, rb2}}, d2 ? 2 : 1, d, n};
            CHECK(model__qi8_takes(&w));
            unsigned need = model__qx_need(&w);
            CHECK(need == ((k_type || d2 ? MODEL__QX_K : 0) | (!k_type ? MODEL__QX_32 : 0)));
            model__qx_layout l = model__qx_lay(n);
            CHECK(l.has_k == (n % 256 == 0));
            size_t xs = model__qx_row_bytes(n);
            CHECK(xs == l.bytes);
            uint8_t *xq = malloc(xs * m);
            float *x = malloc((size_t)m * n * 4), *y = malloc((size_t)m * d * 4);
            for (int i = 0; i < m * n; i++) {
                seed = seed * 1103515245u + 12345u;
                x[i] = (float)((int)(seed >> 9) % 2001 - 1000) / 100.0f;
            }
            x[7] = 300.0f; /* an outlier in the first row's first block */
            void *scr = malloc(model__qi8_scratch_bytes(n));
            float *y9 = malloc((size_t)m * d * 4);
            for (int mm = m; mm >= 1; mm--) {
                for (int i = 0; i < mm; i++)
                    model__quantize_x(xq + xs * i, x + (size_t)i * n, n, need);
                model__qgemm_i8(y, (size_t)d, xq, &w, mm, 0, (d + MODEL__QNR - 1) / MODEL__QNR,
                                scr);
                if (mm == m)
                    memcpy(y9, y, (size_t)m * d * 4);
                /* Bitwise the same whatever the row count (decode's direct path up to 3 rows,
                 * prefill's decoded tiles past). */
                CHECK(memcmp(y, y9, (size_t)mm * d * 4) == 0);
                for (int i = 0; i < mm; i++) {
                    const uint8_t *xr = xq + xs * i;
                    const int8_t *q32 = (const int8_t *)(xr + l.q32),
                                 *qk = (const int8_t *)(xr + l.qk);
                    const float *dl = (const float *)(xr + l.dl), *dk = (const float *)(xr + l.dk);
                    for (int r = 0; r < d; r++) {
                        int kk = (r < d1 ? type : type2) >= MODEL_TYPE_Q4_K;
                        double ref = 0, mag = 0;
                        for (int k = 0; k < n; k++) {
                            double xv =
                                kk ? (double)dk[k / 256] * qk[k] : (double)dl[k / 32] * q32[k];
                            double t = (double)wf[(size_t)r * n + k] * xv;
                            ref += t;
                            mag += fabs(t);
                        }
                        double e = fabs(y[(size_t)i * d + r] - ref);
                        CHECK_MSG(e <= 1e-5 * mag + 1e-6, "m %d row %d out %d: %g vs %g", mm, i, r,
                                  (double)y[(size_t)i * d + r], ref);
                    }
                    if (mm != m)
                        continue;
                    /* The parts: codes within half a step of x, the sums beside them. */
                    const float *xi = x + (size_t)i * n;
                    if (need & MODEL__QX_32) {
                        const float *sl = (const float *)(xr + l.sl);
                        for (int k = 0; k < n; k++)
                            CHECK(fabsf(dl[k / 32] * q32[k] - xi[k]) <=
                                  0.5001f * dl[k / 32] + 1e-6f);
                        for (int b = 0; b < n / 32; b++)
                            CHECK(sl[b] == dl[b] * (float)code_sum(q32 + 32 * b, 32));
                        for (int k = n; k < (n + 63) / 64 * 64; k++)
                            CHECK(q32[k] == 0 && dl[k / 32] == 0.0f && sl[k / 32] == 0.0f);
                    }
                    if (need & MODEL__QX_K) {
                        const float *b16 = (const float *)(xr + l.bk16),
                                    *b32 = (const float *)(xr + l.bk32);
                        for (int k = 0; k < n; k++)
                            CHECK(fabsf(dk[k / 256] * qk[k] - xi[k]) <=
                                  0.5001f * dk[k / 256] + 1e-6f);
                        for (int g = 0; g < n / 16; g++)
                            CHECK(b16[g] == dk[g / 16] * (float)code_sum(qk + 16 * g, 16));
                        for (int g = 0; g < n / 32; g++)
                            CHECK(b32[g] == dk[g / 8] * (float)code_sum(qk + 32 * g, 32));
                    }
                }
            }
            free(scr);
            free(y9);
            free(w1);
            free(w2);
            free(row);
            free(wf);
            free(xq);
            free(x);
            free(y);
        }
}

/* A slow first hand-off (as at a start beside a busy process) is measured again a second later,
 * between two jobs, and the threshold follows the new measurement; an overridden threshold is
 * left alone. */
static void count_task(void *arg, int task, int worker)
{
    (void)task, (void)worker;
    atomic_fetch_add((atomic_int *)arg, 1);
}

static void test_pool_remeasure(void)
{
    model__pool *p = model__pool_new(2);
    CHECK(p != NULL);
    if (!p)
        return;
    model__pool_assume_handoff(p, 100e3, 10.0); /* 100 us: the cap, 4 hand-offs at 10 FLOP/ns */
    CHECK(model__pool_min_flops(p) == 4.0 * 100e3 * 10.0);
    atomic_int n = 0;
    model__pool_run(p, count_task, &n, 8, 1e9);
    CHECK(model__pool_remeasures(p) == 0); /* not yet: a second after */
    struct timespec ts = {1, 50000000};
    nanosleep(&ts, NULL);
    model__pool_run(p, count_task, &n, 8, 1e9);
    CHECK(atomic_load(&n) == 16);
    CHECK(model__pool_remeasures(p) == 1);
    /* Whatever the machine's load now, the threshold is the new measurement's (capped). */
    CHECK(model__pool_min_flops(p) <= 4.0 * 100e3 * 10.0);
    note("threshold after the new measurement: %.0f FLOP", model__pool_min_flops(p));
    /* A threshold set by the caller stands: nothing is measured again. */
    model__pool_assume_handoff(p, 100e3, 10.0);
    model__pool_set_min_flops(p, 0);
    nanosleep(&ts, NULL);
    model__pool_run(p, count_task, &n, 8, 1e9);
    CHECK(model__pool_remeasures(p) == 1 && model__pool_min_flops(p) == 0);
    model__pool_free(p);
}

/* The half-precision conversions by their bits (what a compiler without _Float16 builds) against
 * the type's own: every half to float, and to half every half's value, its neighbours, the
 * midpoints between consecutive halves (ties to even), the overflow edge and a million random
 * floats; NaNs compared as NaNs with the same quiet payload. */
static int same_f32(float a, float b)
{
    uint32_t x, y;
    memcpy(&x, &a, 4);
    memcpy(&y, &b, 4);
    return x == y;
}

static void test_quant_f16_bits(void)
{
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float a = model__f16_to_f32((uint16_t)h), b = model__f16_to_f32_bits((uint16_t)h);
        bad += !same_f32(a, b);
        float probes[4] = {a, nextafterf(a, INFINITY), nextafterf(a, -INFINITY), 0};
        /* the midpoint to the next half up (exact in float) */
        float up = model__f16_to_f32_bits((uint16_t)(h + 1 < 65536 ? h + 1 : h));
        probes[3] = (h & 0x7C00) != 0x7C00 && (h & 0x7FFF) != 0x7BFF ? a + (up - a) / 2 : a;
        for (int k = 0; k < 4; k++)
            bad += model__f32_to_f16(probes[k]) != model__f32_to_f16_bits(probes[k]);
    }
    static const float edge[] = {65504.0f,       65519.0f,      65519.996f,    65520.0f,
                                 65536.0f,       1e10f,         5.9604645e-8f, 2.9802322e-8f,
                                 2.98023259e-8f, 6.1035156e-5f, 6.1035152e-5f, 0.0f,
                                 -0.0f,          INFINITY,      -INFINITY,     NAN};
    for (size_t k = 0; k < sizeof edge / sizeof edge[0]; k++) {
        bad += model__f32_to_f16(edge[k]) != model__f32_to_f16_bits(edge[k]);
        bad += model__f32_to_f16(-edge[k]) != model__f32_to_f16_bits(-edge[k]);
    }
    uint32_t seed = 12345;
    for (int k = 0; k < 1000000; k++) {
        seed = seed * 1664525u + 1013904223u;
        float f;
        memcpy(&f, &seed, 4);
        bad += model__f32_to_f16(f) != model__f32_to_f16_bits(f);
    }
    CHECK_MSG(bad == 0, "%d conversions differ", bad);
    /* and a few by value */
    CHECK(model__f32_to_f16_bits(1.0f) == 0x3C00 && model__f32_to_f16_bits(-2.0f) == 0xC000);
    CHECK(model__f32_to_f16_bits(65520.0f) == 0x7C00 && model__f32_to_f16_bits(65519.0f) == 0x7BFF);
    CHECK(model__f32_to_f16_bits(2.9802322e-8f) == 0x0000); /* half the least subnormal: even */
    CHECK(model__f16_to_f32_bits(0x0001) == 0x1p-24f && model__f16_to_f32_bits(0x7BFF) == 65504.0f);
}

static const harness_case cases[] = {
    {"pool_remeasure", test_pool_remeasure},
    {"quant_f16_bits", test_quant_f16_bits},
    {"reference_260k", test_reference_260k},
    {"reference_synth_gqa", test_reference_synth_gqa},
    {"reference_synth_mha", test_reference_synth_mha},
    {"reference_synth_hs64", test_reference_synth_hs64},
    {"split_prefill", test_split_prefill},
    {"decode_batch_invariant", test_decode_batch_invariant},
    {"determinism_split", test_determinism_split},
    {"determinism_with_hog", test_determinism_with_hog},
    {"reference_types", test_reference_types},
    {"llama_quantized_files", test_llama_quantized_files},
    {"reference_rope_scaling", test_reference_rope_scaling},
    {"split_prefill_types", test_split_prefill_types},
    {"decode_batch_invariant_types", test_decode_batch_invariant_types},
    {"range_errors", test_range_errors},
    {"bad_files", test_bad_files},
    {"shapes_and_sizes", test_shapes_and_sizes},
    {"kernel_gemm", test_kernel_gemm},
    {"kernel_attend", test_kernel_attend},
    {"kernel_attend1_blocks", test_kernel_attend1_blocks},
    {"kernel_attend_kv_types", test_kernel_attend_kv_types},
    {"kv_types_determinism", test_kv_types_determinism},
    {"kv_types_reference", test_kv_types_reference},
    {"kv_types_sizes", test_kv_types_sizes},
    {"kernel_elementwise", test_kernel_elementwise},
    {"kernel_qi8", test_kernel_qi8},
    {"quant_formats", test_quant_formats},
};

HARNESS_MAIN(cases)
