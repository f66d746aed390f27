/* kernels.h — the forward pass's compute kernels, private to model/ (the tests include it too,
 * to check each kernel against a plain loop).
 *
 * Every kernel here computes each of its outputs with one fixed sequence of float operations
 * that depends only on that output's own inputs: never on how many rows a call has, where a
 * row sits in a tile, which thread runs it, or which path (full tile or edge) computed it. So a
 * row's result is bitwise the same in a prefill of 1 or 512 tokens, in a split or a whole
 * prefill, and in a decode batch of 1 or 32. Concretely:
 *   - a product output is one fused multiply-add chain over the inner index in order, starting
 *     from zero (then, for the accumulating form, added to the destination once);
 *   - an attention score is one such chain over the head's dimensions, times the scale; the
 *     softmax takes the maximum, then exponentials (exp16, below), summed in key order; the
 *     output is the chain over keys of p_t * v_t, times 1 / sum.
 * Vectors are 16 floats (one AVX-512 register; two AVX2 registers or scalars elsewhere).
 *
 * Builds for one machine (PREFIXD_NATIVE=ON, the default) compile kernels.c once for the build
 * machine's CPU. A portable build (PREFIXD_NATIVE=OFF on x86-64) compiles it three times, for
 * plain x86-64, for AVX2 with FMA and for AVX-512, each with its functions renamed by
 * MODEL_KERNELS_VARIANT (model__gemm_avx512, ...); kernels_dispatch.c then defines the names
 * below as calls through the table of the best variant the CPU runs, picked once at start-up.
 * Each variant keeps the guarantees above on its own (the AVX-512 one computes bitwise what a
 * native build on an AVX-512 machine computes); two variants may differ in the last bits (their
 * horizontal sums and exponentials run on other instructions), so one process never mixes them.
 */
#ifndef PREFIXD_MODEL_KERNELS_H
#define PREFIXD_MODEL_KERNELS_H

#include <stddef.h>

/* MODEL__K(name): a kernel's name in this compilation of kernels.c (suffixed in a variant). */
#ifdef MODEL_KERNELS_VARIANT
#define MODEL__KCAT2(a, b) a##_##b
#define MODEL__KCAT(a, b) MODEL__KCAT2(a, b)
#define MODEL__K(name) MODEL__KCAT(name, MODEL_KERNELS_VARIANT)
#else
#define MODEL__K(name) name
#endif

/* Output columns per packed weight panel. */
#define MODEL__NR 32
/* Most rows per product tile. */
#define MODEL__MR 12
/* Most queries per attention tile. */
#define MODEL__QT 16

/* Floats a packed copy of a (d, n) weight takes: d rounded up to whole panels, times n. */
size_t MODEL__K(model__pack_floats)(int d, int n);

/* Packs W (d, n), row-major (y = W x), into panels of MODEL__NR output columns, each stored
 * inner-index-major: dst[(p * n + k) * NR + j] = W[p * NR + j][k], zero past d. */
void MODEL__K(model__pack)(float *dst, const float *w, int d, int n);

/* Y (m, d) = X (m, n) @ W (d, n)^T for the output columns of panels [p0, p1) only. wp: W packed
 * by model__pack(). Rows are cut into tiles of at most MODEL__MR; each output is the chain
 * described above (Y also holds partial chains while the call runs). */
void MODEL__K(model__gemm)(float *y, size_t ldy, const float *x, size_t ldx, const float *wp, int m,
                           int n, int d, int p0, int p1);

/* Y (m, cols <= 32) = X (m, kn) @ panel (kn, 32): one packed panel's kn-slice (panel[k * 32 + j]
 * is output column j's weight k), the same row tiles and chains as model__gemm(); with first 0
 * the chains continue from the partial sums already in Y (the next k-slice of the same panel). */
void MODEL__K(model__gemm_panel)(float *y, size_t ldy, const float *x, size_t ldx,
                                 const float *panel, int m, int kn, int cols, int first);

/* Causal attention of one head for nq <= MODEL__QT queries at consecutive positions pos0 ..
 * pos0 + nq - 1: query i attends over keys 0 .. pos0 + i. q: query i at q + i * ldq (head_size
 * floats, RoPE applied). Keys and values come from blocks of B positions, in rows of rb bytes
 * in type (MODEL_TYPE_F32, _F16, or _Q8_0: groups of 32 elements, each 34 bytes; a q8_0 row may
 * hold several heads): key t's row is at byte blocks[t / B] + koff + (t % B) * rb, its value's
 * at ... + voff + ..., and the head's hs elements start at element hoff of the row. Typed rows
 * are read in place, converted 16 elements at a time (exactly: the result is bitwise that over
 * the rows' dequantized floats). out: query i's result at out + i * ldo (hs floats).
 * scratch: model__attend_scratch(hs, pos0 + nq) floats. */
void MODEL__K(model__attend)(float *out, size_t ldo, const float *q, size_t ldq, int nq, int pos0,
                             float *const *blocks, size_t koff, size_t voff, size_t rb, int hoff,
                             int B, int hs, int type, float scale, float *scratch);
size_t MODEL__K(model__attend_scratch)(int hs, int keys);

/* The same for one query at position pos (decode), with the keys in the vector lanes: cheaper
 * for a single query, and not bitwise equal to model__attend() (its sums run in another order),
 * but bitwise the same whatever B is. K/V rows and offsets as model__attend(). hs <= 256.
 * out: hs floats. scratch: pos + 1 + 16 floats. */
void MODEL__K(model__attend1)(float *out, const float *q, int pos, float *const *blocks,
                              size_t koff, size_t voff, size_t rb, int hoff, int B, int hs,
                              int type, float scale, float *scratch);

/* o (n) = w (n) * (x (n) / sqrt(mean(x^2) + eps)), as in llama2.c (where eps is 1e-5). */
void MODEL__K(model__rmsnorm)(float *o, const float *x, const float *w, int n, float eps);

/* o (n) = silu(a (n)) * b (n), silu(v) = v / (1 + exp(-v)). */
void MODEL__K(model__silu_mul)(float *o, const float *a, const float *b, int n);

/* e^x of n floats, with the kernels' own exponential (relative error ~1e-7). For the tests. */
void MODEL__K(model__exp)(float *o, const float *x, int n);

/* The name of the kernels this process runs: "native" (compiled for the build machine),
 * "avx512", "avx2" or "generic" (picked at start-up from the CPU's features; the environment
 * variable PREFIXD_KERNELS=generic|avx2|avx512 asks for one the CPU also runs, for tests). */
const char *model__kernels_name(void);

/* One variant's kernels (a portable build holds one table per variant). */
typedef struct model__kernels {
    const char *name;
    size_t (*pack_floats)(int d, int n);
    void (*pack)(float *dst, const float *w, int d, int n);
    void (*gemm)(float *y, size_t ldy, const float *x, size_t ldx, const float *wp, int m, int n,
                 int d, int p0, int p1);
    void (*gemm_panel)(float *y, size_t ldy, const float *x, size_t ldx, const float *panel, int m,
                       int kn, int cols, int first);
    void (*attend)(float *out, size_t ldo, const float *q, size_t ldq, int nq, int pos0,
                   float *const *blocks, size_t koff, size_t voff, size_t rb, int hoff, int B,
                   int hs, int type, float scale, float *scratch);
    size_t (*attend_scratch)(int hs, int keys);
    void (*attend1)(float *out, const float *q, int pos, float *const *blocks, size_t koff,
                    size_t voff, size_t rb, int hoff, int B, int hs, int type, float scale,
                    float *scratch);
    void (*rmsnorm)(float *o, const float *x, const float *w, int n, float eps);
    void (*silu_mul)(float *o, const float *a, const float *b, int n);
    void (*exp)(float *o, const float *x, int n);
} model__kernels;

#ifdef MODEL_KERNELS_VARIANT
extern const model__kernels MODEL__K(model__kernels);
#endif
extern const model__kernels model__kernels_generic, model__kernels_avx2, model__kernels_avx512;

#endif
