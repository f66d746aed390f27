/* bench_disk.c — the disk tier on a stories110M-shaped model, in-process (the engine, no socket).
 *
 *   bench_disk [--model PATH] [--prefix 1500] [--suffix 40] [--runs 5] [--threads 2]
 *              [--dir DIR] [--decode 128] [--spill-rate 20] [--kv-type f32|f16|q8_0]
 *
 * Per run, with a fresh random prefix:
 *   uncached   an engine with an empty disk tier: the whole prompt is computed (its blocks are
 *              written to disk when the engine closes, as at a daemon's shutdown);
 *   disk warm  a new engine on the same directory (a restart: RAM empty), the same prefix with
 *              another suffix: the prefix's blocks come from disk, page cache warm;
 *   disk cold  the same after the store's file was dropped from the page cache
 *              (posix_fadvise DONTNEED; the pages are clean after the close's sync);
 *   RAM        that engine again with a third suffix: the prefix is in RAM now.
 * Then the disk thread's write throughput (spills of the blocks written at close), and decode
 * tokens/s at batch 1 alone, beside spills at a steady rate (--spill-rate MB/s, default 20: about
 * what eight decoding streams of this model produce in K/V) and beside spills as fast as the disk
 * thread takes them (a second store fed by a thread: the worst case). Medians over the runs.
 * --kv-type stores K/V in that type (default f32), in RAM and on disk alike.
 */
#include "base.h"
#include "bench_util.h"
#include "disk_thread.h"
#include "engine.h"

#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static int kv_type = MODEL_TYPE_F32;

static engine *open_engine(const model *m, const char *dir, int threads)
{
    char msg[512];
    engine_opts o = {0};
    o.threads = threads;
    o.kv_type = kv_type;
    o.max_batch = 1;
    o.max_queue = 1;
    o.emit = bench_emit_cb;
    o.cache_mem = (size_t)256 << 20;
    o.disk_dir = dir;
    engine *e;
    if (engine_new(m, NULL, &o, &e, msg, sizeof msg) != 0) {
        fprintf(stderr, "%s\n", msg);
        exit(1);
    }
    return e;
}

static int rm_cb(const char *p, const struct stat *sb, int f, struct FTW *w)
{
    (void)sb;
    (void)f;
    (void)w;
    return remove(p);
}

static void drop_page_cache(const char *dir)
{
    char p[1024];
    snprintf(p, sizeof p, "%s/data.mdb", dir);
    int fd = open(p, O_RDONLY);
    if (fd >= 0) {
        fdatasync(fd);
        posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
        close(fd);
    }
}

/* ---- continuous spilling beside decode ---- */

typedef struct spiller {
    disk_thread *w;
    size_t floats;
    int B;
    double mbs; /* 0: as fast as the disk thread takes them */
    volatile int stop;
    uint64_t blocks;
} spiller;

static void *spill_main(void *arg)
{
    spiller *s = arg;
    float *data = malloc(s->floats * sizeof(float));
    int32_t tok[4096];
    for (size_t i = 0; i < s->floats; i++)
        data[i] = (float)i;
    for (int i = 0; i < s->B; i++)
        tok[i] = i;
    double t0 = base_now_ms(), block_mb = s->floats * 4 / 1e6;
    while (!s->stop) {
        if (s->mbs > 0) {
            double due = t0 + (double)s->blocks * block_mb / s->mbs * 1e3 - base_now_ms();
            if (due > 0)
                usleep((useconds_t)(due * 1e3));
        }
        cache_evicted ev = {{s->blocks + 1, 7}, {s->blocks, 7}, tok, data, 0};
        disk_thread_spill_wait(s->w, &ev);
        s->blocks++;
    }
    free(data);
    return NULL;
}

int main(int argc, char **argv)
{
    const char *model_path = NULL, *dir_arg = NULL;
    int P = 1500, S = 40, runs = 5, threads = 2, ndec = 128;
    double spill_mbs = 20;
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
        else if (!strcmp(argv[i], "--dir"))
            dir_arg = argv[i + 1];
        else if (!strcmp(argv[i], "--decode"))
            ndec = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--spill-rate"))
            spill_mbs = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--kv-type") && model_kv_type_parse(argv[i + 1], &kv_type) == 0)
            ;
        else {
            fprintf(stderr, "unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (runs < 1 || runs > 100 || P < 16 || S < 1 || ndec < 2) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    char msg[512];
    if (!(model_path = bench_model_path(model_path)))
        return 1;
    char base[512], dir[600], dir2[600];
    snprintf(base, sizeof base, "%s/prefixd-bench-disk-XXXXXX", dir_arg ? dir_arg : "/tmp");
    if (!mkdtemp(base)) {
        perror(base);
        return 1;
    }
    snprintf(dir, sizeof dir, "%s/tier", base);
    snprintf(dir2, sizeof dir2, "%s/spill", base);
    model *m;
    if (model_load(model_path, &m, msg, sizeof msg) != 0) {
        fprintf(stderr, "%s\n", msg);
        return 1;
    }
    const model_config *c = model_get_config(m);
    if (P + 3 * S > c->seq_len) {
        fprintf(stderr, "prefix + suffixes longer than the context (%d)\n", c->seq_len);
        return 2;
    }
    int32_t *ids = malloc((size_t)(P + S) * sizeof(int32_t));
    double *unc = calloc((size_t)runs, sizeof(double)),
           *warm = calloc((size_t)runs, sizeof(double));
    double *cold = calloc((size_t)runs, sizeof(double)),
           *ram = calloc((size_t)runs, sizeof(double));
    double *wmbs = calloc((size_t)runs, sizeof(double));
    double *lms = calloc((size_t)runs, sizeof(double));
    unsigned disk_tokens = 0;
    for (int r = 0; r < runs; r++) {
        nftw(dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
        for (int i = 0; i < P + S; i++)
            ids[i] = bench_rand_tok(&rng, c->vocab_size);
        ids[0] = MODEL_TOK_BOS;
        engine *e = open_engine(m, dir, threads);
        if (r == 0) /* warm-up: first touch of the weights */
            bench_run(e, ids, (size_t)(P + S), 1);
        for (int i = 1; i < P + S; i++)
            ids[i] = bench_rand_tok(&rng, c->vocab_size);
        unc[r] = bench_run(e, ids, (size_t)(P + S), 1).ttft_ms;
        /* Close = shutdown: the RAM blocks are written to disk; that is the write throughput. */
        engine_flush_disk(e);
        disk_thread_stats ds;
        engine_disk_stats(e, &ds);
        wmbs[r] = ds.spill_ms > 0 ? ds.spill_bytes_written / 1e3 / ds.spill_ms : 0;
        engine_free(e);

        e = open_engine(m, dir, threads);
        for (int i = P; i < P + S; i++)
            ids[i] = bench_rand_tok(&rng, c->vocab_size);
        engine_done d = bench_run(e, ids, (size_t)(P + S), 1);
        warm[r] = d.ttft_ms;
        disk_tokens = d.cached_tokens_disk;
        engine_disk_stats(e, &ds);
        lms[r] = ds.load_ms;
        for (int i = P; i < P + S; i++)
            ids[i] = bench_rand_tok(&rng, c->vocab_size);
        ram[r] = bench_run(e, ids, (size_t)(P + S), 1).ttft_ms;
        engine_free(e);

        drop_page_cache(dir);
        e = open_engine(m, dir, threads);
        for (int i = P; i < P + S; i++)
            ids[i] = bench_rand_tok(&rng, c->vocab_size);
        cold[r] = bench_run(e, ids, (size_t)(P + S), 1).ttft_ms;
        engine_free(e);
        fprintf(stderr,
                "run %d: uncached %.1f ms, disk warm %.1f ms (%u tokens from disk, loaded in %.1f "
                "ms), disk cold %.1f ms, RAM %.1f ms; writes %.0f MB/s\n",
                r + 1, unc[r], warm[r], disk_tokens, lms[r], cold[r], ram[r], wmbs[r]);
    }

    /* Decode alone, beside spills at a steady rate (--spill-rate MB/s), and beside spills as fast
     * as the disk thread takes them; the order rotates so no condition always gets the quieter
     * machine. */
    double *dec[3], *smbs[3];
    for (int k = 0; k < 3; k++) {
        dec[k] = calloc((size_t)runs, sizeof(double));
        smbs[k] = calloc((size_t)runs, sizeof(double));
    }
    disk_thread_opts wo = {0};
    wo.disk.dir = dir2;
    wo.disk.max_bytes = (size_t)2 << 30;
    memcpy(wo.disk.fingerprint, model_fingerprint(m), 16);
    wo.disk.block_tokens = 16;
    wo.disk.block_floats = model_kv_block_bytes(c, 16, kv_type) / sizeof(float);
    wo.disk.kv_type = kv_type;
    wo.spill_bytes = (size_t)64 << 20;
    disk_thread *w;
    if (disk_thread_open(&wo, &w, msg, sizeof msg) != 0) {
        fprintf(stderr, "%s\n", msg);
        return 1;
    }
    engine *e = open_engine(m, NULL, threads);
    for (int r = 0; r < 3 * runs; r++) {
        int k = (r + r / 3) % 3; /* 0 alone, 1 steady rate, 2 unthrottled */
        spiller sp = {w, wo.disk.block_floats, 16, k == 1 ? spill_mbs : 0, 0, 0};
        pthread_t t;
        disk_thread_stats a, b;
        disk_thread_get_stats(w, &a);
        double t0 = base_now_ms();
        if (k)
            pthread_create(&t, NULL, spill_main, &sp);
        for (int i = 1; i < 16; i++)
            ids[i] = bench_rand_tok(&rng, c->vocab_size);
        engine_done d = bench_run(e, ids, 16, (uint32_t)ndec);
        if (k) {
            sp.stop = 1;
            pthread_join(t, NULL);
        }
        disk_thread_get_stats(w, &b);
        smbs[k][r / 3] =
            (b.spill_bytes_written - a.spill_bytes_written) / 1e3 / (base_now_ms() - t0);
        dec[k][r / 3] = d.decode_tokens_per_s;
    }
    disk_thread_flush(w);
    engine_free(e);
    disk_thread_close(w);

    double mu = bench_median(unc, runs), mw = bench_median(warm, runs),
           mc = bench_median(cold, runs), mr = bench_median(ram, runs);
    printf("model %s: dim %d, %d layers, vocab %d; %s K/V; prompt = %d-token prefix + %d-token "
           "suffix; %d threads; medians of %d runs\n",
           model_path, c->dim, c->n_layers, c->vocab_size, model_type_name(kv_type), P, S, threads,
           runs);
    printf("| measure | TTFT (ms) | share of uncached |\n|---|---|---|\n");
    printf("| uncached | %.1f | 100%% |\n", mu);
    printf("| prefix on disk only, page cache warm (%u tokens from disk) | %.1f | %.1f%% |\n",
           disk_tokens, mw, 100 * mw / mu);
    printf("| of which the disk thread's load of the %u tokens' blocks (%.0f MB) | %.1f | |\n",
           disk_tokens, disk_tokens / 16.0 * wo.disk.block_floats * 4 / 1e6,
           bench_median(lms, runs));
    printf("| prefix on disk only, page cache dropped | %.1f | %.1f%% |\n", mc, 100 * mc / mu);
    printf("| prefix in RAM | %.1f | %.1f%% |\n", mr, 100 * mr / mu);
    printf("disk writes (spill transactions of up to 8 MiB, data synced at each commit): %.0f "
           "MB/s\n",
           bench_median(wmbs, runs));
    double d0 = bench_median(dec[0], runs), d1 = bench_median(dec[1], runs),
           d2 = bench_median(dec[2], runs);
    printf("decode batch 1 (%d tokens): %.1f tokens/s alone; %.1f beside spills at %.0f MB/s "
           "(%+.1f%%); %.1f beside spills as fast as they go, %.0f MB/s (%+.1f%%)\n",
           ndec, d0, d1, bench_median(smbs[1], runs), 100 * (d1 - d0) / d0, d2,
           bench_median(smbs[2], runs), 100 * (d2 - d0) / d0);
    nftw(base, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
    free(ids);
    free(unc);
    free(warm);
    free(cold);
    free(ram);
    free(wmbs);
    free(lms);
    for (int k = 0; k < 3; k++) {
        free(dec[k]);
        free(smbs[k]);
    }
    model_free(m);
    return 0;
}
