/* bench_util.h — what the in-process benchmarks share: medians, random token ids, and the default
 * model (a stories110M-shaped checkpoint with random weights, written once). Header-only: each
 * benchmark is one executable of one file. */
#ifndef PREFIXD_BENCH_UTIL_H
#define PREFIXD_BENCH_UTIL_H

#include "model.h"

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

#endif
