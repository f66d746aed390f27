/* qkernels.c — matrix products over weights in their stored type, in float (qkernels.h says what
 * each computes and why it is deterministic).
 *
 * The float products dequantize the weights (model/quant.c's exact functions of the bytes) and
 * multiply in float32, computing what the float64 reference computes up to float rounding: they
 * serve F16 and BF16 everywhere, and every type on CPUs without AVX-512 VNNI (or with
 * PREFIXD_QKERNELS=float). Where the CPU has VNNI the quantized types take the integer products
 * of qkernels_i8.c instead. Either family computes every output of a matrix in one fixed sequence
 * of operations, and one process takes one family per matrix for prefill and decode alike.
 */
#include "qkernels.h"
#include "kernels.h"
#include "model.h"
#include "quant.h"

#include <math.h>
#include <string.h>

#ifdef __AVX512F__
#include <immintrin.h>
#endif

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

typedef float v16 __attribute__((vector_size(64), aligned(4)));

#define ALWAYS_INLINE static inline __attribute__((always_inline))
#define NRQ MODEL__QNR
#define KC MODEL__QKC
#define MRQ 3 /* input rows per decode tile: 3 x 8 accumulators fit the 32 registers */

ALWAYS_INLINE v16 ld16(const float *p)
{
    v16 v;
    memcpy(&v, p, sizeof v);
    return v;
}

ALWAYS_INLINE v16 fma16(v16 a, v16 b, v16 c)
{
#ifdef __AVX512F__
    return (v16)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#else
    v16 r;
    for (int i = 0; i < 16; i++)
        r[i] = fmaf(a[i], b[i], c[i]);
    return r;
#endif
}

/* Sum of the 16 lanes in a fixed order (halves, quarters, ...). */
ALWAYS_INLINE float hsum16(v16 a)
{
#ifdef __AVX512F__
    return _mm512_reduce_add_ps((__m512)a);
#else
    float s8[8], s4[4];
    for (int i = 0; i < 8; i++)
        s8[i] = a[i] + a[i + 8];
    for (int i = 0; i < 4; i++)
        s4[i] = s8[i] + s8[i + 4];
    return (s4[0] + s4[2]) + (s4[1] + s4[3]);
#endif
}

size_t model__qgemm_scratch(int n)
{
    size_t n16 = (size_t)(n + 15) / 16 * 16, rows = NRQ * n16, tiles = 2 * 32 * (size_t)KC;
    return rows > tiles ? rows : tiles;
}

/* Row r of the fused matrix: its bytes and type. */
static const uint8_t *row_of(const model__qmat *w, int r, int *type)
{
    for (int s = 0; s < w->n_seg; s++) {
        if (r < w->seg[s].rows) {
            *type = w->seg[s].type;
            return w->seg[s].data + (size_t)r * w->seg[s].row_bytes;
        }
        r -= w->seg[s].rows;
    }
    *type = 0;
    return NULL; /* not reached: r < d */
}

/* ---- Prefill: packed 32-column tiles, kernels.c's chains ------------------------------------- */

void model__qgemm_prefill(float *y, size_t ldy, const float *x, size_t ldx, const model__qmat *w,
                          int m, int p0, int p1, float *scratch)
{
    int n = w->n, d = w->d;
    float *panel = scratch, *tmp = scratch + 32 * KC;
    for (int k0 = 0; k0 < n; k0 += KC) {
        int kn = n - k0 < KC ? n - k0 : KC;
        for (int p = p0; p < p1; p++) {
            int cols = d - p * 32 < 32 ? d - p * 32 : 32;
            for (int j = 0; j < cols; j++) {
                int type;
                const uint8_t *row = row_of(w, p * 32 + j, &type);
                model__dequant_row(type, row + model__quant_row_bytes(type, k0),
                                   tmp + (size_t)j * kn, kn);
            }
            /* Transposed into the packed layout, zero past the last column. */
            for (int k = 0; k < kn; k++) {
                float *pk = panel + (size_t)k * 32;
                for (int j = 0; j < cols; j++)
                    pk[j] = tmp[(size_t)j * kn + k];
                for (int j = cols; j < 32; j++)
                    pk[j] = 0.0f;
            }
            model__gemm_panel(y + p * 32, ldy, x + k0, ldx, panel, m, kn, cols, k0 == 0);
        }
    }
}

/* ---- Decode: row dot products ---------------------------------------------------------------- */

/* Y (mr, nr) = X (mr, n) . W (8 rows of n16 floats, zero past n): output (i, j) is lane-wise
 * chains over the 16-float chunks in order, then hsum16. The last chunk of an input row is read
 * through a zero-padded copy, so nothing past n is read. */
ALWAYS_INLINE void rows_tile(int mr, float *y, size_t ldy, const float *x, size_t ldx,
                             const float *w, size_t n16, int n, int nr)
{
    v16 acc[MRQ][NRQ];
#pragma GCC unroll 3
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 8
        for (int j = 0; j < NRQ; j++)
            acc[i][j] = (v16){0};
    int full = n / 16;
    for (int c = 0; c < (int)(n16 / 16); c++) {
        v16 xv[MRQ];
#pragma GCC unroll 3
        for (int i = 0; i < mr; i++) {
            if (c < full) {
                xv[i] = ld16(x + (size_t)i * ldx + (size_t)c * 16);
            } else {
                float t[16] = {0};
                memcpy(t, x + (size_t)i * ldx + (size_t)c * 16, (size_t)(n - c * 16) * 4);
                xv[i] = ld16(t);
            }
        }
#pragma GCC unroll 8
        for (int j = 0; j < NRQ; j++) {
            v16 wv = ld16(w + (size_t)j * n16 + (size_t)c * 16);
#pragma GCC unroll 3
            for (int i = 0; i < mr; i++)
                acc[i][j] = fma16(wv, xv[i], acc[i][j]);
        }
    }
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nr; j++)
            y[(size_t)i * ldy + j] = hsum16(acc[i][j]);
}

static void rows_tile_1(float *y, size_t ldy, const float *x, size_t ldx, const float *w,
                        size_t n16, int n, int nr)
{
    rows_tile(1, y, ldy, x, ldx, w, n16, n, nr);
}

static void rows_tile_2(float *y, size_t ldy, const float *x, size_t ldx, const float *w,
                        size_t n16, int n, int nr)
{
    rows_tile(2, y, ldy, x, ldx, w, n16, n, nr);
}

static void rows_tile_3(float *y, size_t ldy, const float *x, size_t ldx, const float *w,
                        size_t n16, int n, int nr)
{
    rows_tile(3, y, ldy, x, ldx, w, n16, n, nr);
}

void model__qgemm_rows(float *y, size_t ldy, const float *x, size_t ldx, const model__qmat *w,
                       int m, int g0, int g1, float *scratch)
{
    int n = w->n, d = w->d;
    size_t n16 = (size_t)(n + 15) / 16 * 16;
    for (int g = g0; g < g1; g++) {
        int r0 = g * NRQ, nr = d - r0 < NRQ ? d - r0 : NRQ;
        for (int j = 0; j < NRQ; j++) {
            float *wr = scratch + (size_t)j * n16;
            if (j < nr) {
                int type;
                const uint8_t *row = row_of(w, r0 + j, &type);
                model__dequant_row(type, row, wr, n);
                memset(wr + n, 0, (n16 - (size_t)n) * sizeof(float));
            } else {
                memset(wr, 0, n16 * sizeof(float));
            }
        }
        for (int i = 0; i < m; i += MRQ) {
            int mr = m - i < MRQ ? m - i : MRQ;
            float *yi = y + (size_t)i * ldy + r0;
            const float *xi = x + (size_t)i * ldx;
            if (mr == 3)
                rows_tile_3(yi, ldy, xi, ldx, scratch, n16, n, nr);
            else if (mr == 2)
                rows_tile_2(yi, ldy, xi, ldx, scratch, n16, n, nr);
            else
                rows_tile_1(yi, ldy, xi, ldx, scratch, n16, n, nr);
        }
    }
}
