/* bench_kv.c — what each K/V type (f32, f16, q8_0) costs and buys, in one run:
 *
 *   bench_kv [--model PATH] [--small PATH] [--threads 2] [--runs 5] [--ctx 1500] [--positions 1000]
 *            [--skip-speed] [--skip-quality]
 *
 * Capacity: K/V bytes per token and tokens held per GiB, for the stories110M shape and for
 * stories260K. Quality: over --positions positions of text sampled from the model itself (F32
 * K/V, temperature 1), the next-token distribution with K/V stored in each type against F32 K/V:
 * the mean KL divergence KL(P_f32 || P_type) and how often the greedy choice agrees; on the
 * stories260K checkpoint (--small, default tests/data/stories260K.bin; its context of 512 takes
 * the positions in sequences of 500) and on a synthetic GGUF model (dim 256, 4 layers, 4 heads
 * of 64 with 2 kv heads, vocabulary 2048; written to /tmp). Speed: on the stories110M-shaped
 * model (--model, default bench_util.h's), one decode step with --ctx cached tokens at batch 1
 * and batch 8 (eight requests sharing the cached prefix, as a shared system prompt), and the same
 * step at 16 cached tokens: the difference is what attention over the context costs. Medians of
 * --runs runs, the types interleaved within each run so that a noisy neighbour hits them alike;
 * the load average is printed before and after.
 */
#include "base.h"
#include "bench_util.h"
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N_TYPES 3
static const int types[N_TYPES] = {MODEL_TYPE_F32, MODEL_TYPE_F16, MODEL_TYPE_Q8_0};

static void loadavg(const char *when)
{
    char buf[128] = "?";
    FILE *f = fopen("/proc/loadavg", "r");
    if (f) {
        if (!fgets(buf, sizeof buf, f))
            buf[0] = 0;
        fclose(f);
    }
    buf[strcspn(buf, "\n")] = 0;
    printf("load average %s: %s\n", when, buf);
}

static void *xalloc(size_t n)
{
    void *p = calloc(1, n);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    return p;
}

/* A block table of n blocks of kv_type over one zeroed arena. */
typedef struct table {
    float **blocks;
    float *arena;
    model_kv kv;
} table;

static table table_new(const model_config *c, int n, int kv_type)
{
    table t;
    size_t words = model_kv_block_bytes(c, 16, kv_type) / sizeof(float);
    t.blocks = xalloc((size_t)n * sizeof *t.blocks);
    t.arena = base_huge_alloc((size_t)n * words * sizeof(float), 1);
    if (!t.arena) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    for (int i = 0; i < n; i++)
        t.blocks[i] = t.arena + (size_t)i * words;
    t.kv = (model_kv){t.blocks, n};
    return t;
}

static void table_free(table *t)
{
    base_huge_free(t->arena);
    free(t->blocks);
}

static model_state *state_new(const model *m, int threads, int kv_type)
{
    model_state *st;
    model_state_opts o = {16, 512, 8, threads, kv_type};
    if (model_state_new(m, &o, &st) != 0) {
        fprintf(stderr, "cannot make a model state for %s K/V\n", model_type_name(kv_type));
        exit(1);
    }
    return st;
}

/* ---- Capacity ------------------------------------------------------------------------------- */

static void capacity(const model_config *c, const char *name)
{
    printf("\n%s: K/V per token and tokens per GiB\n\n| K/V type | bytes per token | tokens "
           "per GiB | vs f32 |\n|---|---|---|---|\n",
           name);
    double f32 = (double)model_kv_bytes_per_token(c, MODEL_TYPE_F32);
    for (int i = 0; i < N_TYPES; i++) {
        double b = (double)model_kv_bytes_per_token(c, types[i]);
        if (b == 0) {
            printf("| %s | (not for this shape) | | |\n", model_type_name(types[i]));
            continue;
        }
        printf("| %s | %.0f | %.0f | %.2fx |\n", model_type_name(types[i]), b,
               (double)(1u << 30) / b, f32 / b);
    }
}

/* ---- Quality -------------------------------------------------------------------------------- */

/* Samples n tokens after BOS from m with F32 K/V at temperature 1 (seed), into tok[0..n] (tok[0]
 * is BOS). */
static void sample_text(const model *m, int threads, int32_t *tok, int n, uint64_t seed)
{
    const model_config *c = model_get_config(m);
    model_state *st = state_new(m, threads, MODEL_TYPE_F32);
    table t = table_new(c, (c->seq_len + 15) / 16, MODEL_TYPE_F32);
    model_sampler *sm = model_sampler_new(c->vocab_size);
    float *lg = xalloc((size_t)c->vocab_size * sizeof(float));
    uint64_t rng = model_rng_seed(seed);
    tok[0] = MODEL_TOK_BOS;
    for (int p = 0; p < n; p++) {
        model_decode(st, &t.kv, &p, &tok[p], 1, lg);
        int32_t next = model_sample(sm, lg, 1.0f, 1.0f, &rng);
        tok[p + 1] = next;
    }
    free(lg);
    model_sampler_free(sm);
    table_free(&t);
    model_state_free(st);
}

/* The logits at every position of tok[0..n) fed one by one with K/V in kv_type, into out
 * (n x vocab). */
static void forced_logits(const model *m, int threads, int kv_type, const int32_t *tok, int n,
                          float *out)
{
    const model_config *c = model_get_config(m);
    model_state *st = state_new(m, threads, kv_type);
    table t = table_new(c, (c->seq_len + 15) / 16, kv_type);
    for (int p = 0; p < n; p++)
        model_decode(st, &t.kv, &p, &tok[p], 1, out + (size_t)p * c->vocab_size);
    table_free(&t);
    model_state_free(st);
}

static int argmax(const float *v, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++)
        b = v[i] > v[b] ? i : b;
    return b;
}

/* KL(softmax(a) || softmax(b)) in double precision. */
static double kl(const float *a, const float *b, int n)
{
    double ma = a[argmax(a, n)], mb = b[argmax(b, n)], sa = 0, sb = 0;
    for (int i = 0; i < n; i++) {
        sa += exp((double)a[i] - ma);
        sb += exp((double)b[i] - mb);
    }
    double la = log(sa), lb = log(sb), d = 0;
    for (int i = 0; i < n; i++) {
        double lpa = (double)a[i] - ma - la, lpb = (double)b[i] - mb - lb;
        d += exp(lpa) * (lpa - lpb);
    }
    return d;
}

/* positions positions of m's own text, in sequences of at most seq_len - 12. */
static void quality(const model *m, const char *name, int threads, int positions)
{
    const model_config *c = model_get_config(m);
    int per = c->seq_len - 12 < positions ? c->seq_len - 12 : positions;
    int seqs = (positions + per - 1) / per;
    size_t V = (size_t)c->vocab_size;
    float *ref = xalloc((size_t)per * V * sizeof(float)), *got = xalloc((size_t)per * V * 4);
    int32_t *tok = xalloc(((size_t)per + 1) * sizeof(int32_t));
    double kls[N_TYPES] = {0}, maxkl[N_TYPES] = {0};
    int agree[N_TYPES] = {0}, first[N_TYPES], done = 0;
    for (int i = 0; i < N_TYPES; i++)
        first[i] = -1;
    for (int s = 0; s < seqs; s++) {
        int n = positions - done < per ? positions - done : per;
        sample_text(m, threads, tok, n, 1000 + (uint64_t)s);
        forced_logits(m, threads, MODEL_TYPE_F32, tok, n, ref);
        for (int i = 1; i < N_TYPES; i++) {
            if (model_kv_type_check(c, types[i], NULL, 0) != 0)
                continue;
            forced_logits(m, threads, types[i], tok, n, got);
            for (int p = 0; p < n; p++) {
                const float *a = ref + (size_t)p * V, *b = got + (size_t)p * V;
                double k = kl(a, b, c->vocab_size);
                kls[i] += k;
                maxkl[i] = k > maxkl[i] ? k : maxkl[i];
                if (argmax(a, c->vocab_size) == argmax(b, c->vocab_size))
                    agree[i]++;
                else if (first[i] < 0)
                    first[i] = done + p;
            }
        }
        done += n;
    }
    printf("\n%s: next-token distribution against f32 K/V over %d positions (%d sequence%s of "
           "the model's own text)\n\n| K/V type | mean KL (nats) | max KL | greedy agreement | "
           "first disagreement |\n|---|---|---|---|---|\n",
           name, done, seqs, seqs > 1 ? "s" : "");
    printf("| f32 | 0 | 0 | 100%% | - |\n");
    for (int i = 1; i < N_TYPES; i++) {
        if (model_kv_type_check(c, types[i], NULL, 0) != 0) {
            printf("| %s | (not for this shape) | | | |\n", model_type_name(types[i]));
            continue;
        }
        char at[32] = "-";
        if (first[i] >= 0)
            snprintf(at, sizeof at, "position %d", first[i]);
        printf("| %s | %.2e | %.2e | %.1f%% (%d of %d) | %s |\n", model_type_name(types[i]),
               kls[i] / done, maxkl[i], 100.0 * agree[i] / done, agree[i], done, at);
    }
    free(ref);
    free(got);
    free(tok);
}

/* ---- Speed ---------------------------------------------------------------------------------- */

/* Per type: the cached prefix (ctx tokens, shared by the batch), a private copy of its last
 * block for each of the 8 requests, and small tables for the short context. */
typedef struct speed_set {
    model_state *st;
    table prefix, last[8], small[8];
    model_kv kv[8], kv_small[8];
    float **tables[8];
} speed_set;

static void speed_set_new(speed_set *s, const model *m, int threads, int kv_type,
                          const int32_t *tok, int ctx)
{
    const model_config *c = model_get_config(m);
    int nb = (ctx + 1 + 15) / 16;
    s->st = state_new(m, threads, kv_type);
    s->prefix = table_new(c, nb, kv_type);
    for (int p = 0; p < ctx; p += 500) {
        int n = ctx - p < 500 ? ctx - p : 500;
        model_prefill(s->st, &s->prefix.kv, p, tok + p, n, NULL);
    }
    size_t bytes = model_kv_block_bytes(c, 16, kv_type);
    for (int i = 0; i < 8; i++) {
        s->last[i] = table_new(c, 1, kv_type);
        memcpy(s->last[i].blocks[0], s->prefix.blocks[nb - 1], bytes);
        s->tables[i] = xalloc((size_t)nb * sizeof(float *));
        memcpy(s->tables[i], s->prefix.blocks, (size_t)nb * sizeof(float *));
        s->tables[i][nb - 1] = s->last[i].blocks[0];
        s->kv[i] = (model_kv){s->tables[i], nb};
        s->small[i] = table_new(c, 2, kv_type);
        model_prefill(s->st, &s->small[i].kv, 0, tok, 16, NULL);
        s->kv_small[i] = s->small[i].kv;
    }
}

static void speed_set_free(speed_set *s)
{
    for (int i = 0; i < 8; i++) {
        table_free(&s->last[i]);
        table_free(&s->small[i]);
        free(s->tables[i]);
    }
    table_free(&s->prefix);
    model_state_free(s->st);
}

/* Milliseconds per decode step of b requests at position pos (the median of `steps` steps is
 * not needed: the caller takes medians over runs; this is the mean of steps). */
static double step_ms(speed_set *s, const model_kv *kv, int pos, int b, const int32_t *tok,
                      float *logits, int steps)
{
    int ps[8];
    for (int i = 0; i < b; i++)
        ps[i] = pos;
    double t0 = base_now_ms();
    for (int k = 0; k < steps; k++)
        model_decode(s->st, kv, ps, tok + k, b, logits);
    return (base_now_ms() - t0) / steps;
}

static void speed(const model *m, const char *path, int threads, int runs, int ctx)
{
    const model_config *c = model_get_config(m);
    if (ctx + 1 > c->seq_len) {
        fprintf(stderr, "--ctx %d: the model's context is %d\n", ctx, c->seq_len);
        exit(2);
    }
    int32_t *tok = xalloc((size_t)c->seq_len * sizeof(int32_t));
    uint64_t rng = 7;
    tok[0] = MODEL_TOK_BOS;
    for (int i = 1; i < c->seq_len; i++)
        tok[i] = bench_rand_tok(&rng, c->vocab_size);
    float *logits = xalloc(8 * (size_t)c->vocab_size * sizeof(float));
    speed_set set[N_TYPES];
    fprintf(stderr, "prefilling %d tokens for each K/V type...\n", ctx);
    for (int i = 0; i < N_TYPES; i++)
        speed_set_new(&set[i], m, threads, types[i], tok, ctx);
    enum { LONG1, LONG8, SHORT1, SHORT8, N_MEAS };
    double v[N_TYPES][N_MEAS][16];
    for (int r = 0; r < runs; r++)
        for (int i = 0; i < N_TYPES; i++) {
            speed_set *s = &set[i];
            v[i][LONG1][r] = step_ms(s, s->kv, ctx, 1, tok, logits, 8);
            v[i][LONG8][r] = step_ms(s, s->kv, ctx, 8, tok, logits, 4);
            v[i][SHORT1][r] = step_ms(s, s->kv_small, 16, 1, tok, logits, 8);
            v[i][SHORT8][r] = step_ms(s, s->kv_small, 16, 8, tok, logits, 4);
        }
    double med[N_TYPES][N_MEAS];
    for (int i = 0; i < N_TYPES; i++)
        for (int k = 0; k < N_MEAS; k++)
            med[i][k] = bench_median(v[i][k], runs);
    printf(
        "\n%s: one decode step with %d cached tokens (batch 8: eight requests sharing them), "
        "and its attention (the step minus the same step at 16 cached tokens); %d threads, "
        "medians of %d runs\n\n| K/V type | step, batch 1 | attention, batch 1 | step, batch 8 | "
        "attention, batch 8 | attention vs f32 (1 / 8) |\n|---|---|---|---|---|---|\n",
        path, ctx, threads, runs);
    double a1f = med[0][LONG1] - med[0][SHORT1], a8f = med[0][LONG8] - med[0][SHORT8];
    for (int i = 0; i < N_TYPES; i++) {
        double a1 = med[i][LONG1] - med[i][SHORT1], a8 = med[i][LONG8] - med[i][SHORT8];
        printf("| %s | %.2f ms | %.2f ms | %.2f ms | %.2f ms | %.2fx / %.2fx |\n",
               model_type_name(types[i]), med[i][LONG1], a1, med[i][LONG8], a8, a1f / a1, a8f / a8);
    }
    for (int i = 0; i < N_TYPES; i++)
        speed_set_free(&set[i]);
    free(logits);
    free(tok);
}

int main(int argc, char **argv)
{
    const char *path = NULL, *small = "tests/data/stories260K.bin";
    int threads = 2, runs = 5, ctx = 1500, positions = 1000, do_speed = 1, do_quality = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--skip-speed"))
            do_speed = 0;
        else if (!strcmp(a, "--skip-quality"))
            do_quality = 0;
        else if (v && !strcmp(a, "--model"))
            path = v, i++;
        else if (v && !strcmp(a, "--small"))
            small = v, i++;
        else if (v && !strcmp(a, "--threads"))
            threads = atoi(v), i++;
        else if (v && !strcmp(a, "--runs"))
            runs = atoi(v), i++;
        else if (v && !strcmp(a, "--ctx"))
            ctx = atoi(v), i++;
        else if (v && !strcmp(a, "--positions"))
            positions = atoi(v), i++;
        else {
            fprintf(stderr,
                    "bench_kv: unknown or incomplete option '%s' (see the file's "
                    "opening comment)\n",
                    a);
            return 2;
        }
    }
    runs = runs < 1 ? 1 : runs > 16 ? 16 : runs;
    if (threads < 1 || ctx < 16 || positions < 1) {
        fprintf(stderr, "bench_kv: --threads, --ctx (>= 16) and --positions must be positive\n");
        return 2;
    }
    loadavg("at start");
    char msg[512];
    model_config shape;
    model_shape_parse("stories110M", &shape, msg, sizeof msg);
    capacity(&shape, "stories110M shape");
    if (do_quality) {
        model *m;
        if (model_load(small, &m, msg, sizeof msg) != 0) {
            fprintf(stderr, "%s (--small PATH names stories260K.bin)\n", msg);
            return 1;
        }
        capacity(model_get_config(m), "stories260K");
        quality(m, "stories260K", threads, positions);
        model_free(m);
        const char *gg = "/tmp/prefixd-bench-kv-synth.gguf";
        model_config c;
        model_shape_parse("256,768,4,4,2,2048,1024", &c, msg, sizeof msg);
        if (model_synth_write_gguf(gg, &c, "llama", MODEL_TYPE_F32, 5, msg, sizeof msg) != 0 ||
            model_load(gg, &m, msg, sizeof msg) != 0) {
            fprintf(stderr, "%s\n", msg);
            return 1;
        }
        quality(m, "synthetic GGUF (256,768,4,4,2,2048,1024)", threads, positions);
        model_free(m);
    }
    if (do_speed) {
        if (!(path = bench_model_path(path)))
            return 1;
        model *m;
        if (model_load(path, &m, msg, sizeof msg) != 0) {
            fprintf(stderr, "%s\n", msg);
            return 1;
        }
        speed(m, path, threads, runs, ctx);
        model_free(m);
    }
    loadavg("at the end");
    return 0;
}
