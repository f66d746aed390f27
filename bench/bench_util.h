/* bench_util.h — what the in-process benchmarks share: medians, random token ids, the default
 * model (a stories110M-shaped checkpoint with random weights, written once), and one request
 * run to its end on an engine. Header-only: each benchmark is one executable of one file. */
#ifndef PREFIXD_BENCH_UTIL_H
#define PREFIXD_BENCH_UTIL_H

#include "base.h"
#include "engine.h"
#include "model.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BENCH_DEFAULT_MODEL "/tmp/prefixd-bench-110M.bin"

static int bench_cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The median of v[0..n), n >= 1 (v is left as it was). */
static inline double bench_median(const double *v, int n)
{
    double *c = malloc((size_t)n * sizeof *c);
    if (!c)
        abort();
    memcpy(c, v, (size_t)n * sizeof *c);
    qsort(c, (size_t)n, sizeof *c, bench_cmp_d);
    double m = n % 2 ? c[n / 2] : (c[n / 2 - 1] + c[n / 2]) / 2;
    free(c);
    return m;
}

/* A pseudo-random id in [3, vocab): never UNK, BOS or EOS. */
static inline int32_t bench_rand_tok(uint64_t *rng, int vocab)
{
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    return 3 + (int32_t)(*rng % (uint64_t)(vocab - 3));
}

/* path, or BENCH_DEFAULT_MODEL when path is NULL, written first if it does not exist. Returns
 * the path, or NULL after printing why it could not be written. */
static inline const char *bench_model_path(const char *path)
{
    if (path)
        return path;
    if (access(BENCH_DEFAULT_MODEL, R_OK) == 0)
        return BENCH_DEFAULT_MODEL;
    char msg[512];
    model_config c;
    model_shape_parse("768,2048,12,12,12,32000,2048", &c, msg, sizeof msg);
    fprintf(stderr, "writing %s (stories110M shape, seq_len 2048)...\n", BENCH_DEFAULT_MODEL);
    if (model_synth_write(BENCH_DEFAULT_MODEL, &c, 1, msg, sizeof msg) != 0) {
        fprintf(stderr, "%s\n", msg);
        return NULL;
    }
    return BENCH_DEFAULT_MODEL;
}

/* The last request's DONE statistics (bench_emit_cb, set as the engine's emit callback). */
static engine_done bench_last;

static inline void bench_emit_cb(void *arg, const engine_event *ev)
{
    (void)arg;
    if (ev->type == ENGINE_EV_DONE)
        bench_last = ev->done;
    else if (ev->type == ENGINE_EV_ERROR)
        fprintf(stderr, "error: %s\n", ev->msg);
}

/* Runs one GENERATE of ids[0..n) (max_new new tokens) to its end, alone on e; returns its DONE
 * statistics. */
static inline engine_done bench_run(engine *e, const int32_t *ids, size_t n, uint32_t max_new)
{
    engine_request q = {0};
    q.handle = 1;
    q.kind = ENGINE_REQ_GENERATE;
    q.tokens = ids;
    q.n_tokens = n;
    q.max_new = max_new;
    q.t_received_ms = base_now_ms();
    engine_submit(e, &q);
    while (engine_live(e) > 0 && engine_step(e) > 0)
        ;
    return bench_last;
}

/* Read bandwidth in GB/s, the median of runs (at most 16): threads threads (at most 16) each sum
 * their share of a 1 GiB array, as decode streams its weights. 0 when the array cannot be had. */
typedef struct bench_bw_arg {
    const float *p;
    size_t n;
    float sum;
} bench_bw_arg;

static inline void *bench_bw_thread(void *a)
{
    bench_bw_arg *b = a;
    float s[16] = {0};
    for (size_t i = 0; i + 16 <= b->n; i += 16)
        for (int k = 0; k < 16; k++)
            s[k] += b->p[i + k];
    for (int k = 0; k < 16; k++)
        b->sum += s[k];
    return NULL;
}

static inline double bench_bandwidth_gbs(int threads, int runs)
{
    size_t n = (size_t)1 << 28;
    runs = runs < 1 ? 1 : runs > 16 ? 16 : runs;
    threads = threads < 1 ? 1 : threads > 16 ? 16 : threads;
    float *p = malloc(n * sizeof(float));
    if (!p)
        return 0;
    for (size_t i = 0; i < n; i++)
        p[i] = 1.0f;
    double v[16];
    for (int r = 0; r < runs; r++) {
        pthread_t t[16];
        bench_bw_arg a[16];
        double t0 = base_now_ms();
        for (int i = 0; i < threads; i++) {
            a[i] = (bench_bw_arg){p + n / (size_t)threads * (size_t)i, n / (size_t)threads, 0};
            pthread_create(&t[i], NULL, bench_bw_thread, &a[i]);
        }
        for (int i = 0; i < threads; i++)
            pthread_join(t[i], NULL);
        v[r] = (double)n * sizeof(float) / ((base_now_ms() - t0) / 1e3) / 1e9;
    }
    free(p);
    return bench_median(v, runs);
}

#endif
