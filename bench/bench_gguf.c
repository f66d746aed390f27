/* bench_gguf.c — the forward pass on GGUF models of each weight type, against the machine's
 * memory bandwidth and compute peak.
 *
 *   bench_gguf [--types f32,q8_0,q4_k_m] [--rss-types LIST|none] [--threads 2] [--runs 5]
 *              [--kernels default|float|both] [--prefix /tmp/prefixd-bench-110M]
 *
 * For each type: a stories110M-shaped GGUF of random weights (768, 2048, 12 layers, 12 heads,
 * vocab 32000, context 1024; written once to PREFIX-TYPE.gguf, by default
 * /tmp/prefixd-bench-110M-TYPE.gguf, by the same code as `prefixd synth --format gguf --type
 * TYPE`; an existing file is used as it is, so bench/vs_llama_bench.sh gives its own --prefix
 * rather than trust files an older build left without a vocabulary, which llama.cpp refuses),
 * loaded as the daemon loads it; then prefill of
 * 512 tokens, and decode at batch 1 and 8 (32 steps from position --decode-pos, default 512; 0
 * decodes from an empty context as llama-bench's tg does), K/V stored as --kv-type (default f16,
 * the daemon's), medians of --runs runs. Each decode
 * rate is set beside the bandwidth bound: the weights are streamed once per step, so a step
 * cannot take less than file size / bandwidth (the bandwidth measured here, 1 GiB summed by
 * --threads threads). Prefill is set beside the compute bound: the products' multiply-adds per
 * token (2 x the matrices' weights, the classifier once per prefill is left out as the forward
 * pass computes only the last row's logits) at the peak of --threads threads running
 * independent AVX-512 FMAs (float products) or VNNI vpdpbusd (integer products, 64 multiply-adds
 * an instruction), measured here. --kernels both measures each quantized type with the float
 * products (PREFIXD_QKERNELS=float) and with the default ones, alternately in one process, so
 * the two rows share the machine's load. Also the resident memory after load and state creation
 * (VmRSS) for every type in --rss-types (default: all): about the file's size, never an
 * expanded copy.
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

#if defined(__x86_64__)
#include <immintrin.h>
#endif

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

static int kv_type = MODEL_TYPE_F16; /* --kv-type: the daemon's default */
static int decode_pos = 512;         /* --decode-pos */

static seqkv seq_new(const model_config *c)
{
    seqkv s;
    int n = (c->seq_len + 15) / 16;
    size_t bf = (model_kv_block_bytes(c, 16, kv_type) + sizeof(float) - 1) / sizeof(float);
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

/* Peak multiply-adds per second (x 2: operations) of threads threads: 12 independent chains of
 * AVX-512 FMAs (vnni 0) or of vpdpbusd (vnni 1; 64 byte products each), in G op/s. 0 when the
 * build lacks the instructions. */
typedef struct peak_arg {
    int vnni;
    double ops;
} peak_arg;

/* The probes are compiled for AVX-512 (and VNNI) whatever the build's flags, and run only where
 * the CPU has them, so a portable build measures the same peaks as a native one. */
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx512f"))) static double peak_fma(long iters)
{
    __m512 acc[12], m = _mm512_set1_ps(0.999f), c = _mm512_set1_ps(0.001f);
    for (int i = 0; i < 12; i++)
        acc[i] = _mm512_set1_ps((float)i);
    for (long k = 0; k < iters; k++)
        for (int i = 0; i < 12; i++)
            acc[i] = _mm512_fmadd_ps(acc[i], m, c);
    float s = 0;
    for (int i = 0; i < 12; i++)
        s += _mm512_reduce_add_ps(acc[i]);
    return s == 12345.0f ? 0 : (double)iters * 12 * 16 * 2;
}

__attribute__((target("avx512f,avx512bw,avx512vnni"))) static double peak_vnni(long iters)
{
    __m512i acc[12], ua = _mm512_set1_epi8(3), sb = _mm512_set1_epi8(-2);
    for (int i = 0; i < 12; i++)
        acc[i] = _mm512_set1_epi32(i);
    for (long k = 0; k < iters; k++)
        for (int i = 0; i < 12; i++)
            acc[i] = _mm512_dpbusd_epi32(acc[i], ua, sb);
    int s = 0;
    for (int i = 0; i < 12; i++)
        s += _mm512_reduce_add_epi32(acc[i]);
    return s == 12345 ? 0 : (double)iters * 12 * 64 * 2;
}
#endif

static void *peak_thread(void *a)
{
    peak_arg *p = a;
    long iters = 20000000;
    p->ops = 0; /* a CPU without AVX-512 (or VNNI) measures no peak */
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    if (!p->vnni && __builtin_cpu_supports("avx512f"))
        p->ops = peak_fma(iters);
    if (p->vnni && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vnni"))
        p->ops = peak_vnni(iters);
#else
    (void)iters;
#endif
    return NULL;
}

static double peak_gops(int threads, int vnni, int runs)
{
    double v[16];
    for (int r = 0; r < runs; r++) {
        pthread_t t[16];
        peak_arg a[16];
        double t0 = base_now_ms(), ops = 0;
        for (int i = 0; i < threads; i++) {
            a[i] = (peak_arg){vnni, 0};
            pthread_create(&t[i], NULL, peak_thread, &a[i]);
        }
        for (int i = 0; i < threads; i++) {
            pthread_join(t[i], NULL);
            ops += a[i].ops;
        }
        v[r] = ops / ((base_now_ms() - t0) / 1e3) / 1e9;
    }
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
    double mb, rss, p512, d1, d8, flops; /* flops: the products' operations per prefill token */
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
    out->flops = 2.0 * c->n_layers *
                 ((double)c->dim * (c->dim + 2 * c->kv_dim) + (double)c->dim * c->dim +
                  3.0 * c->dim * c->hidden_dim);
    model_state *s;
    model_state_opts so = {16, 512, 8, threads, kv_type};
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
            if (decode_pos > 0)
                model_prefill(s, &kv[i].kv, 0, t, decode_pos, NULL);
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
                        pos[i] = decode_pos + k;
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

static int quantized(const char *type)
{
    return type[0] == 'q';
}

int main(int argc, char **argv)
{
    char types[256] = "f32,q8_0,q4_k_m";
    char rss_types[256] = "f32,f16,bf16,q8_0,q4_0,q4_k,q5_k,q6_k,q4_k_m";
    const char *kernels = "default";
    int threads = 2, runs = 5;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage: bench_gguf [--types f32,q8_0,q4_k_m] [--rss-types LIST|none] "
                   "[--threads 2] [--runs 5] [--kernels default|float|both] "
                   "[--kv-type f32|f16|q8_0] [--decode-pos P]\n");
            return 0;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "bench_gguf: %s needs a value (--help)\n", argv[i]);
            return 2;
        }
        if (!strcmp(argv[i], "--types"))
            snprintf(types, sizeof types, "%s", argv[i + 1]);
        else if (!strcmp(argv[i], "--rss-types"))
            snprintf(rss_types, sizeof rss_types, "%s",
                     strcmp(argv[i + 1], "none") ? argv[i + 1] : "");
        else if (!strcmp(argv[i], "--threads"))
            threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--runs"))
            runs = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--prefix"))
            file_prefix = argv[i + 1];
        else if (!strcmp(argv[i], "--kernels"))
            kernels = argv[i + 1];
        else if (!strcmp(argv[i], "--kv-type")) {
            if (model_kv_type_parse(argv[i + 1], &kv_type) != 0) {
                fprintf(stderr, "bench_gguf: --kv-type '%s': expected f32, f16 or q8_0\n",
                        argv[i + 1]);
                return 2;
            }
        } else if (!strcmp(argv[i], "--decode-pos")) {
            char *end;
            long p = strtol(argv[i + 1], &end, 10);
            if (*end || p < 0 || p > 512) {
                fprintf(stderr, "bench_gguf: --decode-pos '%s': expected 0 to 512\n", argv[i + 1]);
                return 2;
            }
            decode_pos = (int)p;
        } else {
            fprintf(stderr, "bench_gguf: unknown option '%s' (--help)\n", argv[i]);
            return 2;
        }
        i++;
    }
    if (strcmp(kernels, "default") && strcmp(kernels, "float") && strcmp(kernels, "both")) {
        fprintf(stderr, "bench_gguf: --kernels '%s': expected default, float or both\n", kernels);
        return 2;
    }
    runs = runs < 1 ? 1 : runs > 16 ? 16 : runs;
    threads = threads < 1 ? 1 : threads > 16 ? 16 : threads;
    double bw = bench_bandwidth_gbs(threads, runs);
    double fma = peak_gops(threads, 0, runs), vnni = peak_gops(threads, 1, runs);
    double load[3] = {0};
    FILE *la = fopen("/proc/loadavg", "r");
    if (la) {
        if (fscanf(la, "%lf %lf %lf", &load[0], &load[1], &load[2]) != 3)
            load[0] = -1;
        fclose(la);
    }
    printf("stories110M shape, %d threads, medians of %d runs; decode from position %d, K/V %s; "
           "memory bandwidth %.1f GB/s; peak %.0f GFLOP/s (FMA), %.0f GOP/s (VNNI); load average "
           "%.1f %.1f %.1f\n\n",
           threads, runs, decode_pos, model_type_name(kv_type), bw, fma, vnni, load[0], load[1],
           load[2]);
    printf("| type | kernels | file MB | prefill 512 tok/s | compute bound | decode b1 tok/s | "
           "b1 bound (bw / file) | b1 share | decode b8 tok/s | b8 / b1 |\n"
           "|---|---|---|---|---|---|---|---|---|---|\n");
    for (char *save = NULL, *t = strtok_r(types, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        for (int pass = 0; pass < 2; pass++) {
            int flt = !strcmp(kernels, "float") || (!strcmp(kernels, "both") && pass == 0);
            if (pass == 1 && (strcmp(kernels, "both") || !quantized(t)))
                break;
            if (flt)
                setenv("PREFIXD_QKERNELS", "float", 1);
            else
                unsetenv("PREFIXD_QKERNELS");
            int i8 = !flt && quantized(t) && vnni > 0;
            result r;
            if (measure(t, threads, runs, 1, &r) != 0)
                return 1;
            double bound = bw * 1e3 / r.mb, cbound = (i8 ? vnni : fma) * 1e9 / r.flops;
            printf("| %s | %s | %.0f | %.0f | %.0f (%s) | %.0f | %.0f | %.0f%% | %.0f | %.1fx |\n",
                   t, i8 ? "int8" : "float", r.mb, r.p512, cbound, i8 ? "VNNI" : "FMA", r.d1, bound,
                   100 * r.d1 / bound, r.d8, r.d8 / r.d1);
            fflush(stdout);
        }
    }
    unsetenv("PREFIXD_QKERNELS");
    if (!rss_types[0])
        return 0;
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
