/* kernels_dispatch.c — which kernels this process runs (see kernels.h).
 *
 * In a build for the build machine (PREFIXD_NATIVE=ON) kernels.c is compiled once and defines
 * the kernels itself: this file only names them. In a portable x86-64 build
 * (MODEL_KERNELS_DISPATCH) it defines each kernel as a call through the table of one variant,
 * picked once when the program starts (a constructor, before any thread exists) from what the CPU
 * reports: AVX-512 (F, BW, VL, DQ) where it has it, else AVX2 with FMA, else plain x86-64. The
 * calls are coarse (a product's panels, a head's attention, a row's norm), so the indirect call
 * costs nothing that shows; the arithmetic of each variant is its own compilation of the same
 * source.
 */
#include "kernels.h"

#ifndef MODEL_KERNELS_DISPATCH

const char *model__kernels_name(void)
{
    return "native";
}

#else

#include <stdlib.h>
#include <string.h>

static const model__kernels *kern = &model__kernels_generic;

static int cpu_runs(const model__kernels *k)
{
    __builtin_cpu_init();
    if (k == &model__kernels_avx512)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("fma");
    if (k == &model__kernels_avx2)
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    return 1;
}

/* Picks the variant PREFIXD_KERNELS names if the CPU runs it, else the best one it runs. */
__attribute__((constructor)) static void kernels_pick(void)
{
    static const model__kernels *const best_first[] = {&model__kernels_avx512, &model__kernels_avx2,
                                                       &model__kernels_generic};
    const char *want = getenv("PREFIXD_KERNELS");
    for (int pass = want && *want ? 0 : 1; pass < 2; pass++)
        for (size_t i = 0; i < sizeof best_first / sizeof *best_first; i++) {
            const model__kernels *k = best_first[i];
            if ((pass == 1 || strcmp(want, k->name) == 0) && cpu_runs(k)) {
                kern = k;
                return;
            }
        }
}

const char *model__kernels_name(void)
{
    return kern->name;
}

size_t model__pack_floats(int d, int n)
{
    return kern->pack_floats(d, n);
}

void model__pack(float *dst, const float *w, int d, int n)
{
    kern->pack(dst, w, d, n);
}

void model__gemm(float *y, size_t ldy, const float *x, size_t ldx, const float *wp, int m, int n,
                 int d, int p0, int p1)
{
    kern->gemm(y, ldy, x, ldx, wp, m, n, d, p0, p1);
}

void model__gemm_panel(float *y, size_t ldy, const float *x, size_t ldx, const float *panel, int m,
                       int kn, int cols, int first)
{
    kern->gemm_panel(y, ldy, x, ldx, panel, m, kn, cols, first);
}

void model__attend(float *out, size_t ldo, const float *q, size_t ldq, int nq, int pos0,
                   float *const *blocks, size_t koff, size_t voff, size_t rb, int hoff, int B,
                   int hs, int type, float scale, float *scratch)
{
    kern->attend(out, ldo, q, ldq, nq, pos0, blocks, koff, voff, rb, hoff, B, hs, type, scale,
                 scratch);
}

size_t model__attend_scratch(int hs, int keys)
{
    return kern->attend_scratch(hs, keys);
}

void model__attend1(float *out, const float *q, int pos, float *const *blocks, size_t koff,
                    size_t voff, size_t rb, int hoff, int B, int hs, int type, float scale,
                    float *scratch)
{
    kern->attend1(out, q, pos, blocks, koff, voff, rb, hoff, B, hs, type, scale, scratch);
}

void model__rmsnorm(float *o, const float *x, const float *w, int n, float eps)
{
    kern->rmsnorm(o, x, w, n, eps);
}

void model__silu_mul(float *o, const float *a, const float *b, int n)
{
    kern->silu_mul(o, a, b, n);
}

void model__exp(float *o, const float *x, int n)
{
    kern->exp(o, x, n);
}

#endif
