/* bench_ttft.c — time to first token with and without the prefix cache, in-process (the engine,
 * no socket), on a stories110M-shaped model: a P-token shared prefix plus an S-token suffix.
 *
 *   bench_ttft [--model PATH] [--prefix 1500] [--suffix 40] [--runs 5] [--threads 2]
 *
 * For each run, a fresh prefix (so nothing is cached) is asked with one suffix (uncached TTFT,
 * cache on: hashing, lookup and publish included), then with another suffix (cached TTFT); the
 * same uncached prompt also goes to an engine with --no-cache, and the floor is model_prefill of
 * the S new tokens alone against the cached P. Medians over the runs.
 */
#include "base.h"
#include "bench_util.h"
#include "engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static uint64_t rng = 88172645463325252ull;

int main(int argc, char **argv)
{
    const char *model_path = NULL;
    int P = 1500, S = 40, runs = 5, threads = 2;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--model"))
            model_path = argv[i + 1];
        else if (!strcmp(argv[i], "--prefix"))
            P = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--suffix"))
            S = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--runs"))
            runs = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--threads"))
            threads = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (runs < 1 || runs > 100 || P < 1 || S < 1) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    char msg[512];
    if (!(model_path = bench_model_path(model_path)))
        return 1;
    model *m;
    if (model_load(model_path, &m, msg, sizeof msg) != 0) {
        fprintf(stderr, "%s\n", msg);
        return 1;
    }
    const model_config *c = model_get_config(m);
    if (P + 2 * S > c->seq_len) {
        fprintf(stderr, "prefix + suffix longer than the context (%d)\n", c->seq_len);
        return 2;
    }
    engine_opts o = {0};
    o.threads = threads;
    o.max_batch = 1;
    o.max_queue = 1;
    o.emit = bench_emit_cb;
    o.cache_mem = (size_t)1 << 30;
    engine *e, *nc;
    if (engine_new(m, NULL, &o, &e, msg, sizeof msg) != 0) {
        fprintf(stderr, "%s\n", msg);
        return 1;
    }
    o.no_cache = 1;
    o.cache_mem = (size_t)1 << 30;
    if (engine_new(m, NULL, &o, &nc, msg, sizeof msg) != 0) {
        fprintf(stderr, "%s\n", msg);
        return 1;
    }
    /* The floor: S tokens prefilled against P already in blocks (computed once). */
    model_state *ms;
    model_state_opts so = {16, 512, 1, threads, MODEL_TYPE_F32};
    model_state_new(m, &so, &ms);
    int nb = (P + S + 15) / 16;
    size_t bf = model_kv_block_floats(c, 16);
    float **blocks = malloc((size_t)nb * sizeof *blocks);
    for (int i = 0; i < nb; i++)
        blocks[i] = calloc(bf, sizeof(float));
    model_kv kv = {blocks, nb};
    float *logits = malloc((size_t)c->vocab_size * sizeof(float));

    int32_t *ids = malloc((size_t)(P + S) * sizeof(int32_t));
    double *unc = calloc((size_t)runs, sizeof(double)), *cac = calloc((size_t)runs, sizeof(double));
    double *noc = calloc((size_t)runs, sizeof(double)), *flo = calloc((size_t)runs, sizeof(double));
    unsigned cached_tokens = 0;
    /* One warm-up request so page faults and first-touch are not measured. */
    for (int i = 0; i < P + S; i++)
        ids[i] = bench_rand_tok(&rng, c->vocab_size);
    ids[0] = MODEL_TOK_BOS;
    bench_run(nc, ids, (size_t)(P + S), 1);
    for (int r = 0; r < runs; r++) {
        for (int i = 1; i < P + S; i++)
            ids[i] = bench_rand_tok(&rng, c->vocab_size);
        /* Alternate the order, so neither engine always runs on a warmer machine. */
        if (r % 2) {
            noc[r] = bench_run(nc, ids, (size_t)(P + S), 1).ttft_ms;
            unc[r] = bench_run(e, ids, (size_t)(P + S), 1).ttft_ms;
        } else {
            unc[r] = bench_run(e, ids, (size_t)(P + S), 1).ttft_ms;
            noc[r] = bench_run(nc, ids, (size_t)(P + S), 1).ttft_ms;
        }
        for (int i = P; i < P + S; i++)
            ids[i] = bench_rand_tok(&rng, c->vocab_size);
        cac[r] = bench_run(e, ids, (size_t)(P + S), 1).ttft_ms;
        cached_tokens = bench_last.cached_tokens;
        for (int done = 0; done < P; done += 512)
            model_prefill(ms, &kv, done, ids + done, P - done < 512 ? P - done : 512, NULL);
        double t0 = base_now_ms();
        model_prefill(ms, &kv, P, ids + P, S, logits);
        flo[r] = base_now_ms() - t0;
        fprintf(stderr,
                "run %d: no-cache %.1f ms, uncached %.1f ms, cached %.1f ms, floor %.1f ms\n",
                r + 1, noc[r], unc[r], cac[r], flo[r]);
    }
    double mn = bench_median(noc, runs), mu = bench_median(unc, runs), mc = bench_median(cac, runs),
           mf = bench_median(flo, runs);
    printf("model %s: dim %d, %d layers, vocab %d; prompt = %d-token prefix + %d-token suffix; "
           "%d threads; medians of %d runs\n",
           model_path, c->dim, c->n_layers, c->vocab_size, P, S, threads, runs);
    printf("| measure | TTFT (ms) |\n|---|---|\n");
    printf("| no cache (--no-cache) | %.1f |\n", mn);
    printf("| uncached, cache on (hash + lookup + publish included) | %.1f |\n", mu);
    printf("| cached prefix (%u tokens from cache) | %.1f |\n", cached_tokens, mc);
    printf("| floor: prefill of the %d new tokens alone against the cached %d | %.1f |\n", S, P,
           mf);
    printf("cached / uncached = %.2f%%; cached / floor = %.2fx; cache overhead when nothing is "
           "cached = %+.2f%% of TTFT\n",
           100 * mc / mu, mc / mf, 100 * (mu - mn) / mn);
    engine_free(e);
    engine_free(nc);
    model_state_free(ms);
    for (int i = 0; i < nb; i++)
        free(blocks[i]);
    free(blocks);
    free(logits);
    free(ids);
    free(unc);
    free(cac);
    free(noc);
    free(flo);
    model_free(m);
    return 0;
}
