/* bench_engine.c — the forward pass against the machine's own limits, in one run.
 *
 *   bench_engine [--model PATH] [--threads 2] [--runs 5] [--decode-only 1|8] [--kv-type T]
 *   bench_engine --hog N [--model PATH] [--small PATH] [--runs 5]
 *
 * On a stories110M-shaped model (768, 2048, 12 layers, 12 heads, vocab 32000, seq_len 2048,
 * written to /tmp on first use): prefill tokens/s at 512 and 2048 tokens, decode tokens/s at
 * batch 1 and 8; beside them cblas_sgemm GFLOP/s at the prefill's shapes and memory bandwidth;
 * and 256 new tokens with the K/V cache against recomputing the whole sequence at every step.
 * The forward pass no longer calls sgemm: its own packed kernel (model/kernels.c) is measured at
 * the same shapes beside it, so the prefill's share can be read against both. Medians of --runs
 * runs. --decode-only 1 measures decode alone; 8, batch 8 alone (for a profiler). --kv-type
 * f32|f16|q8_0 stores K/V in that type (default f32; bench_kv.c compares the types).
 *
 * --hog N (issue 11: fast on a busy machine) measures, in the same run, each figure idle and
 * with N busy-loop child processes beside it, for 1 and 2 threads: prefill 512, decode batch 1
 * and 8 on the stories110M shape, and decode of stories260K (--small, default
 * tests/data/stories260K.bin) with the default threads (all cores) against 1 thread. Run by run
 * the order of idle and busy alternates, so a slow minute of a shared machine spreads over both.
 * The busy loops run only while their half of a run is measured; each is bounded in time (it
 * dies of SIGALRM after HOG_SECONDS, and with its parent: PR_SET_PDEATHSIG), and they are
 * killed and reaped on every way out of this program: the end of their half, exit() (atexit),
 * and SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGABRT, SIGSEGV (a handler that kills them and
 * re-raises). --hog 0 runs the idle half alone.
 */
#include "../model/kernels.h"
#include "base.h"
#include "bench_util.h"
#include "model.h"

#include <cblas.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

void openblas_set_num_threads(int num_threads);

typedef struct seqkv {
    float **blocks;
    float *arena;
    int n;
    model_kv kv;
} seqkv;

/* A sequence's blocks, carved from one 2 MiB-aligned arena in huge pages as the daemon's block
 * pool is (cache/cache.c): with a separate allocation per block, in 4 KiB pages, decode
 * attention would pay a TLB miss for every 4 KiB run of keys, which the daemon does not. */
static int kv_type = MODEL_TYPE_F32;

static seqkv seq_new(const model_config *c)
{
    seqkv s;
    s.n = (c->seq_len + 15) / 16;
    s.blocks = malloc((size_t)s.n * sizeof(float *));
    size_t bf = model_kv_block_bytes(c, 16, kv_type) / sizeof(float);
    s.arena = base_huge_alloc((size_t)s.n * bf * sizeof(float), 1);
    if (!s.blocks || !s.arena) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    for (int i = 0; i < s.n; i++)
        s.blocks[i] = s.arena + (size_t)i * bf;
    s.kv = (model_kv){s.blocks, s.n};
    return s;
}

static void seq_free(seqkv *s)
{
    base_huge_free(s->arena);
    free(s->blocks);
}

static double prefill_ms(model_state *st, seqkv *s, const int32_t *t, int n, float *logits)
{
    double t0 = base_now_ms();
    for (int done = 0; done < n; done += 512) {
        int k = n - done < 512 ? n - done : 512;
        model_prefill(st, &s->kv, done, t + done, k, done + k == n ? logits : NULL);
    }
    return base_now_ms() - t0;
}

/* sgemm GFLOP/s at X (m, k) @ W (n, k)^T, with OpenBLAS's own threads. */
static double sgemm_gflops(int threads, int m, int k, int n, int runs)
{
    openblas_set_num_threads(threads);
    float *x = malloc((size_t)m * k * sizeof(float)), *w = malloc((size_t)n * k * sizeof(float));
    float *y = malloc((size_t)m * n * sizeof(float));
    for (size_t i = 0; i < (size_t)m * k; i++)
        x[i] = (float)(i % 17) * 0.01f;
    for (size_t i = 0; i < (size_t)n * k; i++)
        w[i] = (float)(i % 13) * 0.01f;
    double best[16];
    for (int r = 0; r < runs && r < 16; r++) {
        double t0 = base_now_ms();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1, x, k, w, k, 0, y, n);
        best[r] = 2.0 * m * n * k / ((base_now_ms() - t0) / 1e3) / 1e9;
    }
    free(x);
    free(w);
    free(y);
    openblas_set_num_threads(1);
    return bench_median(best, runs < 16 ? runs : 16);
}

/* The forward pass's own product kernel at X (m, k) @ W (n, k)^T, the output panels split
 * between `threads` threads (as the model's pool splits them). */
#include <pthread.h>
typedef struct kgemm_arg {
    float *y;
    const float *x, *wp;
    int m, k, n, p0, p1;
} kgemm_arg;

static void *kgemm_thread(void *a)
{
    kgemm_arg *g = a;
    model__gemm(g->y, (size_t)g->n, g->x, (size_t)g->k, g->wp, g->m, g->k, g->n, g->p0, g->p1);
    return NULL;
}

static double kernel_gflops(int threads, int m, int k, int n, int runs)
{
    float *x = malloc((size_t)m * k * sizeof(float)), *w = malloc((size_t)n * k * sizeof(float));
    float *y = malloc((size_t)m * n * sizeof(float));
    float *wp = malloc(model__pack_floats(n, k) * sizeof(float));
    for (size_t i = 0; i < (size_t)m * k; i++)
        x[i] = (float)(i % 17) * 0.01f;
    for (size_t i = 0; i < (size_t)n * k; i++)
        w[i] = (float)(i % 13) * 0.01f;
    model__pack(wp, w, n, k);
    int panels = (n + MODEL__NR - 1) / MODEL__NR;
    if (threads > 16)
        threads = 16;
    double v[16];
    for (int r = 0; r < runs && r < 16; r++) {
        pthread_t t[16];
        kgemm_arg a[16];
        double t0 = base_now_ms();
        for (int i = 0; i < threads; i++) {
            a[i] = (kgemm_arg){y, x, wp, m, k, n, panels * i / threads, panels * (i + 1) / threads};
            pthread_create(&t[i], NULL, kgemm_thread, &a[i]);
        }
        for (int i = 0; i < threads; i++)
            pthread_join(t[i], NULL);
        v[r] = 2.0 * m * n * k / ((base_now_ms() - t0) / 1e3) / 1e9;
    }
    free(x);
    free(w);
    free(y);
    free(wp);
    return bench_median(v, runs < 16 ? runs : 16);
}

/* ---- --hog N: busy loops beside the measurement ------------------------------------------- */

#define HOG_MAX 16      /* most busy loops: more is no longer "a busy machine" but a queue */
#define HOG_SECONDS 600 /* a busy loop's life at most, should everything else fail */

static pid_t hog_pids[HOG_MAX];
static volatile sig_atomic_t hog_n; /* hog_pids[0..hog_n) are running */

/* Kills and reaps the busy loops. Async-signal-safe (kill and waitpid only), so the signal
 * handler calls it too. */
static void hog_stop(void)
{
    int n = hog_n;
    hog_n = 0;
    for (int i = 0; i < n; i++)
        kill(hog_pids[i], SIGKILL);
    for (int i = 0; i < n; i++)
        while (waitpid(hog_pids[i], NULL, 0) < 0 && errno == EINTR)
            ;
}

static void hog_signal_cb(int sig)
{
    hog_stop();
    signal(sig, SIG_DFL);
    raise(sig);
}

/* Starts n busy loops (n <= HOG_MAX). Returns 0, or -1 after printing why (none left running). */
static int hog_start(int n)
{
    pid_t parent = getpid();
    for (int i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid < 0) {
            fprintf(stderr, "bench_engine: --hog: fork: %s\n", strerror(errno));
            hog_stop();
            return -1;
        }
        if (pid == 0) {
            /* The child: dies with its parent, or after HOG_SECONDS, whichever comes first. */
            signal(SIGALRM, SIG_DFL);
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() != parent)
                _exit(0);
            alarm(HOG_SECONDS);
            volatile unsigned long spin = 0;
            for (;;)
                spin++;
        }
        hog_pids[i] = pid;
        hog_n = i + 1;
    }
    return 0;
}

static void hog_install(void)
{
    static const int sigs[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGABRT, SIGSEGV};
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = hog_signal_cb;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
        sigaction(sigs[i], &sa, NULL);
    atexit(hog_stop);
}

/* One run's figures for one model state: prefill 512, decode batch 1 and 8 (32 steps each at
 * position ~512, over sequences already prefilled to 512). */
typedef struct hog_fig {
    double p512, d1, d8;
} hog_fig;

static hog_fig hog_measure(model_state *st, seqkv *s, seqkv *sb, const int32_t *t, float *logits)
{
    hog_fig f;
    f.p512 = 512 / (prefill_ms(st, s, t, 512, logits) / 1e3);
    int steps = 32;
    double t0 = base_now_ms();
    for (int k = 0; k < steps; k++) {
        int pos = 512 + k;
        model_decode(st, &sb[0].kv, &pos, &t[k], 1, logits);
    }
    f.d1 = steps / ((base_now_ms() - t0) / 1e3);
    t0 = base_now_ms();
    for (int k = 0; k < steps; k++) {
        model_kv kv[8];
        int pos[8];
        int32_t tk[8];
        for (int i = 0; i < 8; i++) {
            kv[i] = sb[i].kv;
            pos[i] = 512 + k;
            tk[i] = t[k + i];
        }
        model_decode(st, kv, pos, tk, 8, logits);
    }
    f.d8 = 8 * steps / ((base_now_ms() - t0) / 1e3);
    return f;
}

/* stories260K decode tokens/s: 200 steps at batch 1 after a 16-token prompt. */
static double hog_small(model_state *st, seqkv *s, const int32_t *t, int vocab, float *logits)
{
    int32_t ids[216];
    for (int i = 0; i < 216; i++)
        ids[i] = 3 + t[i] % (vocab - 3);
    prefill_ms(st, s, ids, 16, logits);
    double t0 = base_now_ms();
    for (int k = 0; k < 200; k++) {
        int pos = 16 + k;
        model_decode(st, &s->kv, &pos, &ids[pos], 1, logits);
    }
    return 200 / ((base_now_ms() - t0) / 1e3);
}

static double hog_spread(const double *v, int n)
{
    double lo = v[0], hi = v[0];
    for (int i = 1; i < n; i++) {
        lo = v[i] < lo ? v[i] : lo;
        hi = v[i] > hi ? v[i] : hi;
    }
    return lo > 0 ? hi / lo : 0;
}

static void hog_row(const char *name, const char *unit, double v[2][2][16], int runs, int nhog)
{
    double m[2][2];
    for (int h = 0; h < 2; h++)
        for (int k = 0; k < 2; k++)
            m[h][k] = bench_median(v[h][k], runs);
    printf("| %s | %.1f %s | %.1f %s | %.2fx |", name, m[0][0], unit, m[0][1], unit,
           m[0][0] > 0 ? m[0][1] / m[0][0] : 0);
    if (nhog > 0)
        printf(" %.1f %s | %.1f %s | %.2fx |", m[1][0], unit, m[1][1], unit,
               m[1][0] > 0 ? m[1][1] / m[1][0] : 0);
    printf("\n");
}

/* The length of /proc/loadavg's first three fields (the 1, 5 and 15 minute averages) in line. */
static size_t loadavg_len(const char *line)
{
    size_t n = 0;
    for (int f = 0; f < 3; f++) {
        n += strspn(line + n, " ");
        n += strcspn(line + n, " \n");
    }
    return n;
}

static int hog_mode(const char *path, const char *small, int nhog, int runs)
{
    char msg[512], load0[64] = "?", load1[64] = "?";
    model *m, *ms;
    if (model_load(path, &m, msg, sizeof msg) != 0) {
        fprintf(stderr, "bench_engine: %s\n", msg);
        return 1;
    }
    if (model_load(small, &ms, msg, sizeof msg) != 0) {
        fprintf(stderr, "bench_engine: --small: %s (pass --small PATH to stories260K.bin)\n", msg);
        model_free(m);
        return 1;
    }
    /* The states (and so the measured split thresholds) are made idle, as a daemon started on a
     * quiet machine makes them. [k]: 0 is 1 thread; 1 is 2 threads (the big model) or the
     * default, all cores (stories260K). */
    model_state *st[2], *ss[2];
    model_state_opts o1 = {16, 512, 8, 1, kv_type}, o2 = {16, 512, 8, 2, kv_type},
                     od = {16, 512, 8, 0, kv_type};
    if (model_state_new(m, &o1, &st[0]) || model_state_new(m, &o2, &st[1]) ||
        model_state_new(ms, &o1, &ss[0]) || model_state_new(ms, &od, &ss[1])) {
        fprintf(stderr, "bench_engine: cannot make the model states\n");
        return 1;
    }
    const model_config *c = model_get_config(m), *cs = model_get_config(ms);
    int32_t *t = malloc(2048 * sizeof(int32_t));
    float *logits = malloc(8 * (size_t)c->vocab_size * sizeof(float));
    if (!t || !logits) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    srand(1);
    for (int i = 0; i < 2048; i++)
        t[i] = 3 + rand() % (c->vocab_size - 3);
    seqkv s = seq_new(c), sm = seq_new(cs), sb[8];
    for (int i = 0; i < 8; i++) {
        sb[i] = seq_new(c);
        prefill_ms(st[1], &sb[i], t, 512, NULL);
    }
    prefill_ms(st[0], &s, t, 64, logits); /* warm-up */
    hog_small(ss[0], &sm, t, cs->vocab_size, logits);

    hog_install();
    FILE *la = fopen("/proc/loadavg", "r");
    if (la && fgets(load0, sizeof load0, la))
        load0[loadavg_len(load0)] = 0;
    if (la)
        fclose(la);
    /* [hog][k][run] */
    static double p512[2][2][16], d1[2][2][16], d8[2][2][16], sd[2][2][16];
    for (int r = 0; r < runs; r++) {
        for (int i = 0; i < 2; i++) {
            int h = (r % 2) ? 1 - i : i; /* idle first in odd runs, busy first in even ones */
            if (h == 1 && nhog == 0)
                continue;
            fprintf(stderr, "run %d of %d: %s\n", r + 1, runs, h ? "busy" : "idle");
            if (h == 1 && hog_start(nhog) != 0)
                return 1;
            if (h == 1) {
                fprintf(stderr, "hog: %d busy loop%s, pids", nhog, nhog == 1 ? "" : "s");
                for (int k = 0; k < nhog; k++)
                    fprintf(stderr, " %d", (int)hog_pids[k]);
                fprintf(stderr, "\n");
                usleep(200 * 1000); /* let them take their share of the CPUs */
            }
            for (int k = 0; k < 2; k++) {
                hog_fig f = hog_measure(st[k], &s, sb, t, logits);
                p512[h][k][r] = f.p512;
                d1[h][k][r] = f.d1;
                d8[h][k][r] = f.d8;
                sd[h][k][r] = hog_small(ss[k], &sm, t, cs->vocab_size, logits);
            }
            hog_stop();
        }
    }
    la = fopen("/proc/loadavg", "r");
    if (la && fgets(load1, sizeof load1, la))
        load1[loadavg_len(load1)] = 0;
    if (la)
        fclose(la);

    printf("model %s (%.1fM params) and %s; %d CPUs; medians of %d runs; beside: idle, and %d "
           "busy loop%s; load average before: %s; after: %s\n",
           path, model_param_count(c) / 1e6, small, (int)sysconf(_SC_NPROCESSORS_ONLN), runs, nhog,
           nhog == 1 ? "" : "s", load0, load1);
    printf("| measure | idle, 1 thread | idle, 2 threads | 2 vs 1 |");
    if (nhog > 0)
        printf(" %d hog%s, 1 thread | %d hog%s, 2 threads | 2 vs 1 |", nhog, nhog == 1 ? "" : "s",
               nhog, nhog == 1 ? "" : "s");
    printf("\n|---|---|---|---|%s\n", nhog > 0 ? "---|---|---|" : "");
    const char *big = strcmp(path, BENCH_DEFAULT_MODEL) ? "--model" : "stories110M shape";
    char name[128];
    snprintf(name, sizeof name, "%s, prefill 512", big);
    hog_row(name, "tokens/s", p512, runs, nhog);
    snprintf(name, sizeof name, "%s, decode batch 1", big);
    hog_row(name, "tokens/s", d1, runs, nhog);
    snprintf(name, sizeof name, "%s, decode batch 8", big);
    hog_row(name, "tokens/s", d8, runs, nhog);
    snprintf(name, sizeof name, "stories260K decode (2 threads column: the default, %d threads)",
             model_state_get_opts(ss[1])->threads);
    hog_row(name, "tokens/s", sd, runs, nhog);
    printf("\nprefill 512 idle, run-to-run spread (max/min of %d runs): 1 thread %.2fx, 2 threads "
           "%.2fx\n",
           runs, hog_spread(p512[0][0], runs), hog_spread(p512[0][1], runs));

    for (int i = 0; i < 8; i++)
        seq_free(&sb[i]);
    seq_free(&s);
    seq_free(&sm);
    free(t);
    free(logits);
    for (int k = 0; k < 2; k++) {
        model_state_free(st[k]);
        model_state_free(ss[k]);
    }
    model_free(m);
    model_free(ms);
    return 0;
}

/* Parses a count in [lo, hi] for option opt; exits 2 with a message naming it otherwise. */
static int parse_count(const char *opt, const char *v, int lo, int hi)
{
    char *end;
    errno = 0;
    long x = v ? strtol(v, &end, 10) : 0;
    if (!v) {
        fprintf(stderr, "bench_engine: %s: missing its value (a count %d..%d)\n", opt, lo, hi);
        exit(2);
    }
    if (errno || end == v || *end || x < lo || x > hi) {
        fprintf(stderr, "bench_engine: %s '%s': expected a count %d..%d\n", opt, v ? v : "", lo,
                hi);
        exit(2);
    }
    return (int)x;
}

int main(int argc, char **argv)
{
    const char *path = NULL, *small = "tests/data/stories260K.bin";
    int threads = 2, runs = 5, decode_only = 0, nhog = -1;
    for (int i = 1; i < argc; i += 2) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(argv[i], "--model") && v)
            path = v;
        else if (!strcmp(argv[i], "--small") && v)
            small = v;
        else if (!strcmp(argv[i], "--threads"))
            threads = parse_count("--threads", v, 1, 256);
        else if (!strcmp(argv[i], "--runs"))
            runs = parse_count("--runs", v, 1, 16);
        else if (!strcmp(argv[i], "--decode-only"))
            decode_only = parse_count("--decode-only", v, 0, 8);
        else if (!strcmp(argv[i], "--hog"))
            nhog = parse_count("--hog", v, 0, HOG_MAX);
        else if (!strcmp(argv[i], "--kv-type") && v) {
            if (model_kv_type_parse(v, &kv_type) != 0) {
                fprintf(stderr, "bench_engine: --kv-type '%s': expected f32, f16 or q8_0\n", v);
                return 2;
            }
        } else {
            fprintf(stderr,
                    "bench_engine: '%s': unknown option or missing value (--model, "
                    "--threads, --runs, --decode-only, --kv-type, --hog N, --small)\n",
                    argv[i]);
            return 2;
        }
    }
    char msg[512];
    if (!(path = bench_model_path(path)))
        return 1;
    if (nhog >= 0)
        return hog_mode(path, small, nhog, runs);
    model *m;
    if (model_load(path, &m, msg, sizeof msg) != 0) {
        fprintf(stderr, "%s\n", msg);
        return 1;
    }
    const model_config *c = model_get_config(m);
    model_state *st;
    model_state_opts so = {16, 512, 8, threads, kv_type};
    if (model_kv_type_check(c, kv_type, msg, sizeof msg) != 0) {
        fprintf(stderr, "%s\n", msg);
        return 2;
    }
    if (model_state_new(m, &so, &st) != 0)
        return 1;
    int32_t *t = malloc(2048 * sizeof(int32_t));
    srand(1);
    for (int i = 0; i < 2048; i++)
        t[i] = 3 + rand() % (c->vocab_size - 3);
    float *logits = malloc(8 * (size_t)c->vocab_size * sizeof(float));
    seqkv s = seq_new(c);
    prefill_ms(st, &s, t, 64, logits); /* warm-up */

    double v[16], p512 = 0, p2048 = 0;
    if (!decode_only) {
        for (int r = 0; r < runs; r++)
            v[r] = prefill_ms(st, &s, t, 512, logits);
        p512 = 512 / (bench_median(v, runs) / 1e3);
        for (int r = 0; r < runs; r++)
            v[r] = prefill_ms(st, &s, t, 2048, logits);
        p2048 = 2048 / (bench_median(v, runs) / 1e3);
    }

    /* Decode at batch 1 and 8, at position ~512 (after a 512-token prefill). */
    seqkv sb[8];
    for (int i = 0; i < 8; i++) {
        sb[i] = seq_new(c);
        prefill_ms(st, &sb[i], t, 512, NULL);
    }
    double d1, d8;
    {
        int steps = 32;
        for (int r = 0; r < runs && decode_only != 8; r++) {
            double t0 = base_now_ms();
            for (int k = 0; k < steps; k++) {
                int pos = 512 + k;
                model_decode(st, &sb[0].kv, &pos, &t[k], 1, logits);
            }
            v[r] = steps / ((base_now_ms() - t0) / 1e3);
        }
        d1 = decode_only == 8 ? 1 : bench_median(v, runs);
        for (int r = 0; r < runs; r++) {
            model_kv kv[8];
            int pos[8];
            int32_t tk[8];
            double t0 = base_now_ms();
            for (int k = 0; k < steps; k++) {
                for (int i = 0; i < 8; i++) {
                    kv[i] = sb[i].kv;
                    pos[i] = 512 + k;
                    tk[i] = t[k + i];
                }
                model_decode(st, kv, pos, tk, 8, logits);
            }
            v[r] = 8 * steps / ((base_now_ms() - t0) / 1e3);
        }
        d8 = bench_median(v, runs);
    }
    if (decode_only) {
        /* For profiling the decode step alone: no prefill, sgemm or bandwidth runs. */
        printf("decode batch 1: %.1f tokens/s; batch 8: %.1f tokens/s (%.2fx)\n", d1, d8, d8 / d1);
        goto out;
    }

    /* KV cache vs recomputing: 256 new tokens after a 16-token prompt. With the cache: 256
     * decode steps. Without (transformers' use_cache=False): every step prefills the whole
     * sequence so far; measured on every 16th step and integrated (the cost of step k is that
     * of a prefill of 16 + k tokens). */
    double with_cache, without = 0;
    {
        seqkv q = seq_new(c);
        double t0 = base_now_ms();
        prefill_ms(st, &q, t, 16, logits);
        for (int k = 0; k < 256; k++) {
            int pos = 16 + k;
            model_decode(st, &q.kv, &pos, &t[pos], 1, logits);
        }
        with_cache = base_now_ms() - t0;
        for (int k = 0; k < 256; k += 16) {
            double ms = prefill_ms(st, &q, t, 16 + k + 1, logits);
            without += ms * 16;
        }
        seq_free(&q);
    }

    uint64_t params = model_param_count(c);
    double flop_tok = 2.0 * (double)(params - (uint64_t)c->vocab_size * c->dim); /* no cls */
    /* Attention FLOPs per token at mean context T/2: 2 (QK, AV) x 2 x dim x T/2 x layers. */
    double att512 = 2.0 * 2 * c->dim * 256.0 * c->n_layers;
    double att2048 = 2.0 * 2 * c->dim * 1024.0 * c->n_layers;
    double g512 = sgemm_gflops(threads, 512, c->dim, c->dim + 2 * c->kv_dim, runs);
    double g2048 = sgemm_gflops(threads, 2048, c->dim, 2 * c->hidden_dim, runs);
    double k512 = kernel_gflops(threads, 512, c->dim, c->dim + 2 * c->kv_dim, runs);
    double k2048 = kernel_gflops(threads, 2048, c->dim, 2 * c->hidden_dim, runs);
    double bw = bench_bandwidth_gbs(threads, runs);
    double wbytes = (double)model_weight_bytes(c);
    double bound = bw * 1e9 / wbytes;

    printf("model %s: %.1fM params, %.0f MB weights; %d threads; medians of %d runs\n", path,
           params / 1e6, wbytes / 1e6, threads, runs);
    printf("| measure | value | machine limit | share |\n|---|---|---|---|\n");
    printf("| prefill 512 tokens | %.0f tokens/s (%.1f GFLOP/s) | sgemm 512x768x2304: %.1f "
           "GFLOP/s | %.0f%% |\n",
           p512, p512 * (flop_tok + att512) / 1e9, g512,
           100 * p512 * (flop_tok + att512) / 1e9 / g512);
    printf("| prefill 2048 tokens | %.0f tokens/s (%.1f GFLOP/s) | sgemm 2048x768x4096: %.1f "
           "GFLOP/s | %.0f%% |\n",
           p2048, p2048 * (flop_tok + att2048) / 1e9, g2048,
           100 * p2048 * (flop_tok + att2048) / 1e9 / g2048);
    printf("| (same shapes, our packed kernel) | | 512x768x2304: %.1f GFLOP/s; 2048x768x4096: %.1f "
           "GFLOP/s | prefill %.0f%%, %.0f%% of it |\n",
           k512, k2048, 100 * p512 * (flop_tok + att512) / 1e9 / k512,
           100 * p2048 * (flop_tok + att2048) / 1e9 / k2048);
    printf("| decode batch 1 | %.1f tokens/s | bandwidth %.1f GB/s: %.1f tokens/s bound | %.0f%% "
           "|\n",
           d1, bw, bound, 100 * d1 / bound);
    printf("| decode batch 8 | %.1f tokens/s | | %.1fx batch 1 |\n", d8, d8 / d1);
    printf("| 256 new tokens, K/V cache | %.0f ms | recompute every step: %.0f ms | %.1fx faster "
           "|\n",
           with_cache, without, without / with_cache);
out:
    for (int i = 0; i < 8; i++)
        seq_free(&sb[i]);
    seq_free(&s);
    free(t);
    free(logits);
    model_state_free(st);
    model_free(m);
    return 0;
}
