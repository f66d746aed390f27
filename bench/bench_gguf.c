/* bench_gguf.c — the forward pass on GGUF models of each weight type, against the machine's
 * memory bandwidth.
 *
 *   bench_gguf [--types f32,q8_0,q4_k_m] [--rss-types LIST] [--threads 2] [--runs 5]
 *              [--prefix /tmp/prefixd-bench-110M]
 *
 * For each type: a stories110M-shaped GGUF of random weights (768, 2048, 12 layers, 12 heads,
 * vocab 32000, context 1024; written once to PREFIX-TYPE.gguf, by default
 * /tmp/prefixd-bench-110M-TYPE.gguf, by the same code as `prefixd synth --format gguf --type
 * TYPE`; an existing file is used as it is, so bench/vs_llama_bench.sh gives its own --prefix
 * rather than trust files an older build left without a vocabulary, which llama.cpp refuses),
 * loaded as the daemon loads it; then prefill of 512 tokens, and decode at batch 1 and 8 at
 * position ~512, medians of --runs runs. Each decode rate is set beside the bandwidth bound: the
 * weights are streamed once per step, so a step cannot take less than file size / bandwidth (the
 * bandwidth measured here, 1 GiB summed by
 * --threads threads). Also the resident memory after load and state creation (VmRSS) for every
 * type in --rss-types (default: all): about the file's size, never an expanded copy.
 */
#include "base.h"
#include "bench_util.h"
#include "model.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>

/* Resident memory of this process, in MB (VmRSS). */
static double rss_mb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    double kb = 0;
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "VmRSS:", 6) == 0)
            kb = atof(line + 6);
    if (f)
        fclose(f);
    return kb / 1024.0;
}

typedef struct seqkv {
    float **blocks;
    float *arena;
    model_kv kv;
} seqkv;

static seqkv seq_new(const model_config *c)
{
    seqkv s;
    int n = (c->seq_len + 15) / 16;
    size_t bf = model_kv_block_floats(c, 16);
    s.blocks = malloc((size_t)n * sizeof(float *));
    s.arena = calloc((size_t)n * bf, sizeof(float));
    if (!s.blocks || !s.arena)
        exit(1);
    for (int i = 0; i < n; i++)
        s.blocks[i] = s.arena + (size_t)i * bf;
    s.kv = (model_kv){s.blocks, n};
    return s;
}

static void seq_free(seqkv *s)
{
    free(s->arena);
    free(s->blocks);
}

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
    size_t n = (size_t)1 << 28;
    float *p = malloc(n * sizeof(float));
    if (!p)
        return 0;
    for (size_t i = 0; i < n; i++)
        p[i] = 1.0f;
    double v[16];
    for (int r = 0; r < runs; r++) {
        pthread_t t[16];
        bw_arg a[16];
        double t0 = base_now_ms();
        for (int i = 0; i < threads; i++) {
            a[i] = (bw_arg){p + n / threads * i, n / threads, 0};
            pthread_create(&t[i], NULL, bw_thread, &a[i]);
        }
        for (int i = 0; i < threads; i++)
            pthread_join(t[i], NULL);
        v[r] = (double)n * sizeof(float) / ((base_now_ms() - t0) / 1e3) / 1e9;
    }
    free(p);
    return bench_median(v, runs);
}

static const char *file_prefix = "/tmp/prefixd-bench-110M";

/* The file for type, written on first use. */
static const char *model_file(const char *type, char *buf, size_t len)
{
    snprintf(buf, len, "%s-%s.gguf", file_prefix, type);
    struct stat st;
    if (stat(buf, &st) == 0)
        return buf;
    char msg[512];
    model_config c;
    int t;
    if (model_shape_parse("stories110M", &c, msg, sizeof msg) != 0 ||
        model_type_parse(type, &t) != 0) {
        fprintf(stderr, "type '%s'?\n", type);
        return NULL;
    }
    fprintf(stderr, "writing %s...\n", buf);
    if (model_synth_write_gguf(buf, &c, "llama", t, 1, msg, sizeof msg) != 0) {
        fprintf(stderr, "%s\n", msg);
        return NULL;
    }
    return buf;
}

typedef struct result {
    double mb, rss, p512, d1, d8;
} result;

static int measure(const char *type, int threads, int runs, int speed, result *out)
{
    char path[256], msg[512];
    if (!model_file(type, path, sizeof path))
        return -1;
    struct stat st;
    stat(path, &st);
    out->mb = (double)st.st_size / 1e6;
    double rss0 = rss_mb();
    model *m;
    if (model_load(path, &m, msg, sizeof msg) != 0) {
        fprintf(stderr, "%s\n", msg);
        return -1;
    }
    const model_config *c = model_get_config(m);
    model_state *s;
    model_state_opts so = {16, 512, 8, threads};
    if (model_state_new(m, &so, &s) != 0)
        return -1;
    out->rss = rss_mb() - rss0;
    if (speed) {
        int32_t t[512];
        uint64_t rng = 1;
        for (int i = 0; i < 512; i++)
            t[i] = bench_rand_tok(&rng, c->vocab_size);
        float *logits = malloc(8 * (size_t)c->vocab_size * sizeof(float));
        seqkv kv[8];
        for (int i = 0; i < 8; i++)
            kv[i] = seq_new(c);
        double v[16];
        model_prefill(s, &kv[0].kv, 0, t, 64, logits); /* warm-up */
        for (int r = 0; r < runs; r++) {
            double t0 = base_now_ms();
            model_prefill(s, &kv[0].kv, 0, t, 512, logits);
            v[r] = 512 / ((base_now_ms() - t0) / 1e3);
        }
        out->p512 = bench_median(v, runs);
        for (int i = 1; i < 8; i++)
            model_prefill(s, &kv[i].kv, 0, t, 512, NULL);
        int steps = 32;
        for (int b = 1; b <= 8; b += 7) {
            model_kv kvs[8];
            int pos[8];
            int32_t tok[8];
            for (int r = 0; r < runs; r++) {
                double t0 = base_now_ms();
                for (int k = 0; k < steps; k++) {
                    for (int i = 0; i < b; i++) {
                        kvs[i] = kv[i].kv;
                        pos[i] = 512 + k;
                        tok[i] = t[(k + i) % 512];
                    }
                    model_decode(s, kvs, pos, tok, b, logits);
                }
                v[r] = steps * b / ((base_now_ms() - t0) / 1e3);
            }
            if (b == 1)
                out->d1 = bench_median(v, runs);
            else
                out->d8 = bench_median(v, runs);
        }
        for (int i = 0; i < 8; i++)
            seq_free(&kv[i]);
        free(logits);
    }
    model_state_free(s);
    model_free(m);
    return 0;
}

int main(int argc, char **argv)
{
    char types[256] = "f32,q8_0,q4_k_m";
    char rss_types[256] = "f32,f16,bf16,q8_0,q4_0,q4_k,q5_k,q6_k,q4_k_m";
    int threads = 2, runs = 5;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--types"))
            snprintf(types, sizeof types, "%s", argv[i + 1]);
        else if (!strcmp(argv[i], "--rss-types"))
            snprintf(rss_types, sizeof rss_types, "%s", argv[i + 1]);
        else if (!strcmp(argv[i], "--threads"))
            threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--runs"))
            runs = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--prefix"))
            file_prefix = argv[i + 1];
    }
    runs = runs < 1 ? 1 : runs > 16 ? 16 : runs;
    threads = threads < 1 ? 1 : threads > 16 ? 16 : threads;
    double bw = bandwidth_gbs(threads, runs);
    printf("stories110M shape, %d threads, medians of %d runs; memory bandwidth %.1f GB/s\n\n",
           threads, runs, bw);
    printf("| type | file MB | prefill 512 tok/s | decode b1 tok/s | b1 bound (bw / file) | "
           "b1 share | decode b8 tok/s | b8 / b1 |\n|---|---|---|---|---|---|---|---|\n");
    for (char *save = NULL, *t = strtok_r(types, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        result r;
        if (measure(t, threads, runs, 1, &r) != 0)
            return 1;
        double bound = bw * 1e3 / r.mb;
        printf("| %s | %.0f | %.0f | %.0f | %.0f | %.0f%% | %.0f | %.1fx |\n", t, r.mb, r.p512,
               r.d1, bound, 100 * r.d1 / bound, r.d8, r.d8 / r.d1);
        fflush(stdout);
    }
    printf("\n| type | file MB | RSS after load MiB |\n|---|---|---|\n");
    for (char *save = NULL, *t = strtok_r(rss_types, ",", &save); t;
         t = strtok_r(NULL, ",", &save)) {
        result r;
        if (measure(t, threads, 1, 0, &r) != 0)
            return 1;
        printf("| %s | %.0f | %.0f |\n", t, r.mb, r.rss);
        fflush(stdout);
    }
    return 0;
}
