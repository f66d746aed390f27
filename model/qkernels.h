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
 * takes the second in both (its logits feed no K/V). Where the CPU has AVX-512 VNNI, matrices
 * of the quantized types take the integer products (qkernels_i8.c) instead, for prefill and decode
 * alike.
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

/* ---- Integer products (qkernels.c says how): 8-bit activations against the weights' codes,
 * with AVX-512 VNNI. Each output is one chain over its two rows (exact integer dot products,
 * float scaling in a fixed order), then a fixed 16-lane sum; an activation row is quantized by
 * itself (per block of 32 for the 32-block types, per 256 for the K-quants, scale max|x| / 127),
 * so an output depends on its own weight row and input row only: not on the batch size, the tile
 * or whether the row came in a prefill or a decode. */

/* 1 when this build has the integer products (compiled with AVX-512 VNNI and BW). */
int model__qi8_available(void);

/* 1 when every segment of w has a type the integer products take (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1,
 * Q4_K, Q5_K, Q6_K) and the build has them. */
int model__qi8_takes(const model__qmat *w);

/* The parts of a quantized activation row of n (a multiple of 32), as byte offsets. Blocks of
 * 32: int8 codes q32 (n rounded up to 64, zeros past n), each block's scale (float dl) and the
 * scale times the block's code sum (float sl). K part (has_k: n a multiple of 256): int8 codes qk
 * with one scale per 256 (float dk), and dk times each 16 codes' sum (float bk16) and each 32's
 * (float bk32). */
typedef struct model__qx_layout {
    size_t q32, dl, sl;
    size_t qk, dk, bk16, bk32;
    int has_k;
    size_t bytes;
} model__qx_layout;
model__qx_layout model__qx_lay(int n);

/* Which parts a product over w reads. */
#define MODEL__QX_32 1u
#define MODEL__QX_K 2u
unsigned model__qx_need(const model__qmat *w);

/* Bytes one quantized activation row of n takes, and the quantizer (x: n floats; the parts of
 * need: MODEL__QX_32 and/or MODEL__QX_K). */
size_t model__qx_row_bytes(int n);
void model__quantize_x(void *dst, const float *x, int n, unsigned need);

/* Bytes of per-thread scratch model__qgemm_i8() needs for inner size n. */
size_t model__qi8_scratch_bytes(int n);

/* Y (m, d) = X (m, n) @ W^T for the output rows of 8-row groups [g0, g1); xq: the m rows
 * quantized by model__quantize_x() with model__qx_need(w), model__qx_row_bytes(n) apart. */
void model__qgemm_i8(float *y, size_t ldy, const void *xq, const model__qmat *w, int m, int g0,
                     int g1, void *scratch);

#endif
