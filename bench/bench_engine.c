/* bench_engine.c — the forward pass against the machine's own limits, in one run.
 *
 *   bench_engine [--model PATH] [--threads 2] [--runs 5] [--decode-only 1|8] [--kv-type T]
 *
 * On a stories110M-shaped model (768, 2048, 12 layers, 12 heads, vocab 32000, seq_len 2048,
 * written to /tmp on first use): prefill tokens/s at 512 and 2048 tokens, decode tokens/s at
 * batch 1 and 8; beside them cblas_sgemm GFLOP/s at the prefill's shapes and memory bandwidth;
 * and 256 new tokens with the K/V cache against recomputing the whole sequence at every step.
 * The forward pass no longer calls sgemm: its own packed kernel (model/kernels.c) is measured at
 * the same shapes beside it, so the prefill's share can be read against both. Medians of --runs
 * runs. --decode-only 1 measures decode alone; 8, batch 8 alone (for a profiler). --kv-type
 * f32|f16|q8_0 stores K/V in that type (default f32; bench_kv.c compares the types).
 */
#include "../model/kernels.h"
#include "base.h"
#include "bench_util.h"
#include "model.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

/* Read bandwidth in GB/s: summing a 1 GiB array with `threads` threads (as decode streams its
 * weights). Done with a plain loop per thread through OpenMP-free pthreads: simple sums. */
typedef struct bw_arg {
    const float *p;
    size_t n;
    float sum;
} bw_arg;

static void *bw_thread(void *a)
{
    bw_arg *b = a;
    float s[16] = {0};
    for (size_t i = 0; i + 16 <= b->n; i += 16)
        for (int k = 0; k < 16; k++)
            s[k] += b->p[i + k];
    for (int k = 0; k < 16; k++)
        b->sum += s[k];
    return NULL;
}

static double bandwidth_gbs(int threads, int runs)
{
    size_t n = (size_t)1 << 28; /* 1 GiB of floats */
    float *p = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        p[i] = 1.0f;
    double v[16];
    for (int r = 0; r < runs && r < 16; r++) {
        pthread_t t[16];
        bw_arg a[16];
        double t0 = base_now_ms();
        for (int i = 0; i < threads; i++) {
            a[i] = (bw_arg){p + n / threads * i, n / threads, 0};
            pthread_create(&t[i], NULL, bw_thread, &a[i]);
        }
        for (int i = 0; i < threads; i++)
            pthread_join(t[i], NULL);
        v[r] = n * sizeof(float) / ((base_now_ms() - t0) / 1e3) / 1e9;
    }
    free(p);
    return bench_median(v, runs < 16 ? runs : 16);
}

int main(int argc, char **argv)
{
    const char *path = NULL;
    int threads = 2, runs = 5, decode_only = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--model"))
            path = argv[i + 1];
        else if (!strcmp(argv[i], "--threads"))
            threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--runs"))
            runs = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--decode-only"))
            decode_only = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--kv-type") && model_kv_type_parse(argv[i + 1], &kv_type)) {
            fprintf(stderr, "--kv-type '%s': expected f32, f16 or q8_0\n", argv[i + 1]);
            return 2;
        }
    }
    if (runs < 1)
        runs = 1;
    if (runs > 16)
        runs = 16;
    char msg[512];
    if (!(path = bench_model_path(path)))
        return 1;
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
    double bw = bandwidth_gbs(threads, runs);
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
