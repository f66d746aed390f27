/* qkernels.h — matrix products over weights in their stored type (F16, BF16, Q8_0, Q4_0, Q4_K,
 * Q5_K, Q6_K, and F32), read in place from the mapped model file. Private to model/ (the tests
 * include it to check the products against a plain loop).
 *
 * Weights are never expanded in memory: each product dequantizes a small tile of them at a time
 * into per-thread scratch (model/quant.c's dequantizers, exact functions of the stored bytes) and
 * multiplies the floats. Two kernels, each with the determinism of kernels.h:
 *   - prefill (model__qgemm_prefill): a tile of 32 output rows x 256 inner indices is
 *     dequantized into the layout model__pack() gives, and kernels.c's packed tile runs over all
 *     rows: an output is one fused multiply-add chain over the inner index in order, whatever
 *     the row count (the same operations as the F32 product, on the dequantized weights);
 *   - decode (model__qgemm_rows): 8 weight rows at a time are dequantized whole, and each output
 *     is a dot product of its weight row and its input row: 16 lanes, each a chain of fused
 *     multiply-adds over its indices i = lane mod 16 in order, then summed across the lanes in a
 *     fixed tree. Each output depends on its own two rows only, never on the batch size.
 * The two give different roundings of the same sums; a request's prefill rows always take the
 * first and its decode steps the second, so each guarantee holds on its own path. The classifier
 * takes the second in both (its logits feed no K/V).
 */
#ifndef PREFIXD_MODEL_QKERNELS_H
#define PREFIXD_MODEL_QKERNELS_H

#include <stddef.h>
#include <stdint.h>

/* Weight rows per dequantized group in the decode kernel. */
#define MODEL__QNR 8
/* Inner indices per prefill tile (a multiple of every block size: 1, 32, 256). */
#define MODEL__QKC 256

/* A matrix of d rows of n weights, made of up to 3 stacked tensors (Q|K|V or W1|W3 fused into
 * one product): rows [0, seg[0].rows) are seg[0]'s, the next seg[1].rows seg[1]'s, and so on. */
typedef struct model__qseg {
    const uint8_t *data; /* row r at data + r * row_bytes */
    int type;            /* MODEL_TYPE_* */
    int rows;
    size_t row_bytes;
} model__qseg;

typedef struct model__qmat {
    model__qseg seg[3];
    int n_seg;
    int d, n;
} model__qmat;

/* Floats of per-thread scratch the two products need for inner size n. */
size_t model__qgemm_scratch(int n);

/* Y (m, d) = X (m, n) @ W^T for the output columns of 32-wide panels [p0, p1) (prefill). */
void model__qgemm_prefill(float *y, size_t ldy, const float *x, size_t ldx, const model__qmat *w,
                          int m, int p0, int p1, float *scratch);

/* Y (m, d) = X (m, n) @ W^T for the output columns of 8-row groups [g0, g1) (decode). */
void model__qgemm_rows(float *y, size_t ldy, const float *x, size_t ldx, const model__qmat *w,
                       int m, int g0, int g1, float *scratch);

#endif
