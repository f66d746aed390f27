/* qkernels.c — matrix products over weights in their stored type (qkernels.h says what each
 * computes and why it is deterministic).
 *
 * Two families. The float products dequantize the weights (model/quant.c's exact functions of
 * the bytes) and multiply in float32, computing what the float64 reference computes up to float
 * rounding: they serve F16 and BF16 everywhere, and every type in builds without AVX-512 VNNI
 * (or with PREFIXD_QKERNELS=float). The integer products (the end of this file) serve the
 * quantized types where the CPU has VNNI: activations are rounded to 8 bits per block of 32, as
 * llama.cpp's are, and each vpdpbusd multiplies 64 weight codes by 64 activation codes in one
 * instruction, so decode no longer spends its time turning every weight into a float (it was
 * compute-bound at about a tenth of the memory bound) and prefill does a quarter of the float
 * work. Either family computes every output of a matrix in one fixed sequence of operations,
 * and one process takes one family per matrix for prefill and decode alike.
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

/* ---- Integer products: 8-bit activations, VNNI dot products ---------------------------------- */

/* Every weight of the quantized types is an affine function of an unsigned byte code u, with a
 * scale and an offset shared by (at least) each 4 consecutive weights, one 32-bit lane of a VNNI
 * dot product:
 *   Q8_0  u = q + 128 (the sign bit flipped)   s = d           o = -128 d
 *   Q4_0  u = nibble                           s = d           o = -8 d
 *   Q4_K  u = nibble                           s = d sc_j      o = -dmin m_j
 *   Q5_K  u = nibble | fifth bit << 4          s = d sc_j      o = -dmin m_j
 *   Q6_K  u = 6-bit code                       s = d sc_16     o = -32 d sc_16
 * so w = s u + o. An activation block of 32 is x ~ dx qx (qx in [-127, 127]), and the dot product
 * of a weight row with an activation row is, over the lanes l of 4 weights,
 *   sum_l s_l (dx_l sum_4 u qx) + o_l (dx_l sum_4 qx),
 * where sum_4 u qx is vpdpbusd's lane (exact in 32-bit integers) and dx_l sum_4 qx is one rounded
 * product computed when the activation row is quantized. A row's weights are first decoded into
 * that form (u bytes, s and o per lane) in per-thread scratch, 32 rows at a time, then every
 * activation row runs against them. */

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define QI8 1
#else
#define QI8 0
#endif

#define GROW 32 /* weight rows decoded at a time (4 of the scheduler's 8-row groups) */

int model__qi8_available(void)
{
    return QI8;
}

int model__qi8_takes(const model__qmat *w)
{
    if (!QI8 || w->n % 32 != 0)
        return 0;
    for (int s = 0; s < w->n_seg; s++) {
        int t = w->seg[s].type;
        if (t != MODEL_TYPE_Q8_0 && t != MODEL_TYPE_Q4_0 && t != MODEL_TYPE_Q4_K &&
            t != MODEL_TYPE_Q5_K && t != MODEL_TYPE_Q6_K)
            return 0;
    }
    return 1;
}

size_t model__qx_row_bytes(int n)
{
    return (size_t)n + 2 * (size_t)(n / 4) * sizeof(float);
}

/* Bytes of one decoded weight row (u, then s and o per lane). */
static size_t qw_row_bytes(int n)
{
    return (size_t)n + 2 * (size_t)(n / 4) * sizeof(float);
}

size_t model__qi8_scratch_bytes(int n)
{
    return GROW * qw_row_bytes(n) + 64;
}

void model__quantize_x(void *dst, const float *x, int n)
{
    int8_t *q = dst;
    float *dx = (float *)((uint8_t *)dst + n), *sx = dx + n / 4;
    for (int b = 0; b < n / 32; b++) {
        const float *xb = x + b * 32;
        float amax = 0.0f;
        for (int l = 0; l < 32; l++)
            amax = fmaxf(amax, fabsf(xb[l]));
        float d = amax / 127.0f, id = d > 0.0f ? 127.0f / amax : 0.0f;
        for (int l = 0; l < 32; l++) {
            float v = nearbyintf(xb[l] * id); /* |v| <= 127 up to rounding of id */
            q[b * 32 + l] = (int8_t)(v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v);
        }
        for (int k = 0; k < 8; k++) {
            const int8_t *ql = q + b * 32 + 4 * k;
            dx[b * 8 + k] = d;
            sx[b * 8 + k] = d * (float)(ql[0] + ql[1] + ql[2] + ql[3]);
        }
    }
}

static uint16_t rd16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static void kscale(const uint8_t *q, int j, int *sc, int *m)
{
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

/* Lanes [l0, l0 + n) of s and o set to (sv, ov). */
static inline void lanes(float *s, float *o, int l0, int n, float sv, float ov)
{
    for (int k = 0; k < n; k++) {
        s[l0 + k] = sv;
        o[l0 + k] = ov;
    }
}

/* Decodes a row of n weights of type into u (n bytes), s and o (n / 4 floats each). */
static void qw_decode(int type, const uint8_t *b, uint8_t *u, float *s, float *o, int n)
{
    switch (type) {
    case MODEL_TYPE_Q8_0:
        for (int i = 0; i < n / 32; i++, b += 34) {
            float d = model__f16_to_f32(rd16(b));
            for (int l = 0; l < 32; l++)
                u[i * 32 + l] = (uint8_t)(b[2 + l] ^ 0x80);
            lanes(s, o, i * 8, 8, d, -128.0f * d);
        }
        break;
    case MODEL_TYPE_Q4_0:
        for (int i = 0; i < n / 32; i++, b += 18) {
            float d = model__f16_to_f32(rd16(b));
            for (int l = 0; l < 16; l++) {
                u[i * 32 + l] = b[2 + l] & 0xF;
                u[i * 32 + l + 16] = b[2 + l] >> 4;
            }
            lanes(s, o, i * 8, 8, d, -8.0f * d);
        }
        break;
    case MODEL_TYPE_Q4_K:
    case MODEL_TYPE_Q5_K: {
        int five = type == MODEL_TYPE_Q5_K, bytes = five ? 176 : 144;
        for (int i = 0; i < n / 256; i++, b += bytes) {
            float d = model__f16_to_f32(rd16(b)), dmin = model__f16_to_f32(rd16(b + 2));
            const uint8_t *sc = b + 4, *qh = b + 16, *q = b + (five ? 48 : 16);
            uint8_t *ui = u + i * 256;
            for (int c = 0; c < 4; c++, q += 32) {
                for (int h = 0; h < 2; h++) {
                    int scv, mv;
                    kscale(sc, 2 * c + h, &scv, &mv);
                    lanes(s, o, i * 64 + (2 * c + h) * 8, 8, d * (float)scv, -(dmin * (float)mv));
                }
                for (int l = 0; l < 32; l++) {
                    ui[c * 64 + l] = q[l] & 0xF;
                    ui[c * 64 + 32 + l] = q[l] >> 4;
                }
                if (five)
                    for (int l = 0; l < 32; l++) {
                        ui[c * 64 + l] |= (uint8_t)(((qh[l] >> (2 * c)) & 1) << 4);
                        ui[c * 64 + 32 + l] |= (uint8_t)(((qh[l] >> (2 * c + 1)) & 1) << 4);
                    }
            }
        }
        break;
    }
    case MODEL_TYPE_Q6_K:
        for (int i = 0; i < n / 256; i++, b += 210) {
            const uint8_t *ql = b, *qh = b + 128;
            const int8_t *sc = (const int8_t *)(b + 192);
            float d = model__f16_to_f32(rd16(b + 208));
            uint8_t *ui = u + i * 256;
            for (int h = 0; h < 2; h++, ql += 64, qh += 32, sc += 8, ui += 128) {
                for (int l = 0; l < 32; l++) {
                    ui[l] = (uint8_t)((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4));
                    ui[l + 32] = (uint8_t)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4));
                    ui[l + 64] = (uint8_t)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4));
                    ui[l + 96] = (uint8_t)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4));
                }
                /* As in dq_q6_k: weight 32 j + l of this half takes sc[l / 16 + 2 j]. */
                for (int j = 0; j < 4; j++)
                    for (int half = 0; half < 2; half++) {
                        float ds = d * (float)sc[half + 2 * j];
                        lanes(s, o, i * 64 + h * 32 + j * 8 + half * 4, 4, ds, -32.0f * ds);
                    }
            }
        }
        break;
    }
}

#if QI8
/* Y (mr, nw) += ... : rows of activations (qx layout of model__quantize_x) against nw <= 4
 * decoded weight rows; each output one chain over 64-weight chunks (masked at a 32 tail), then
 * hsum16. */
ALWAYS_INLINE void qi8_tile(int mr, int nw, float *y, size_t ldy, const uint8_t *xq, size_t xstride,
                            const uint8_t *wd, size_t wstride, int n)
{
    __m512 acc[4][4];
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nw; j++)
            acc[i][j] = _mm512_setzero_ps();
    const __m512i zero = _mm512_setzero_si512();
    for (int c = 0; c < n; c += 64) {
        __mmask64 mb = n - c >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (n - c)) - 1);
        __mmask16 mf = n - c >= 64 ? (__mmask16)0xFFFF : (__mmask16)((1u << ((n - c) / 4)) - 1);
        __m512i u[4];
        for (int j = 0; j < nw; j++)
            u[j] = _mm512_maskz_loadu_epi8(mb, wd + (size_t)j * wstride + c);
        for (int i = 0; i < mr; i++) {
            const uint8_t *xr = xq + (size_t)i * xstride;
            __m512i q = _mm512_maskz_loadu_epi8(mb, xr + c);
            const float *dxp = (const float *)(xr + n) + c / 4, *sxp = dxp + n / 4;
            __m512 dx = _mm512_maskz_loadu_ps(mf, dxp), sx = _mm512_maskz_loadu_ps(mf, sxp);
            for (int j = 0; j < nw; j++) {
                const float *sp = (const float *)(wd + (size_t)j * wstride + n) + c / 4;
                __m512 sv = _mm512_maskz_loadu_ps(mf, sp),
                       ov = _mm512_maskz_loadu_ps(mf, sp + n / 4);
                __m512 t =
                    _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, u[j], q)), dx);
                acc[i][j] = _mm512_fmadd_ps(t, sv, acc[i][j]);
                acc[i][j] = _mm512_fmadd_ps(ov, sx, acc[i][j]);
            }
        }
    }
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nw; j++)
            y[(size_t)i * ldy + j] = _mm512_reduce_add_ps(acc[i][j]);
}

#define QI8_TILE(MR, NW)                                                                           \
    static void qi8_tile_##MR##_##NW(float *y, size_t ldy, const uint8_t *xq, size_t xs,           \
                                     const uint8_t *wd, size_t ws, int n)                          \
    {                                                                                              \
        qi8_tile(MR, NW, y, ldy, xq, xs, wd, ws, n);                                               \
    }
QI8_TILE(4, 4)
QI8_TILE(3, 4)
QI8_TILE(2, 4)
QI8_TILE(1, 4)
QI8_TILE(4, 1)
QI8_TILE(1, 1)
#endif

void model__qgemm_i8(float *y, size_t ldy, const void *xq, const model__qmat *w, int m, int g0,
                     int g1, void *scratch)
{
#if QI8
    int n = w->n, d = w->d;
    size_t ws = qw_row_bytes(n), xs = model__qx_row_bytes(n);
    uint8_t *wd = scratch;
    for (int r0 = g0 * NRQ; r0 < g1 * NRQ && r0 < d; r0 += GROW) {
        int rend = g1 * NRQ < d ? g1 * NRQ : d;
        int nr = rend - r0 < GROW ? rend - r0 : GROW;
        for (int j = 0; j < nr; j++) {
            int type;
            const uint8_t *row = row_of(w, r0 + j, &type);
            uint8_t *u = wd + (size_t)j * ws;
            float *s = (float *)(u + n);
            qw_decode(type, row, u, s, s + n / 4, n);
        }
        for (int i = 0; i < m; i += 4) {
            int mr = m - i < 4 ? m - i : 4;
            const uint8_t *xi = (const uint8_t *)xq + (size_t)i * xs;
            for (int j = 0; j < nr; j += 4) {
                float *yij = y + (size_t)i * ldy + r0 + j;
                const uint8_t *wj = wd + (size_t)j * ws;
                if (nr - j >= 4) {
                    if (mr == 4)
                        qi8_tile_4_4(yij, ldy, xi, xs, wj, ws, n);
                    else if (mr == 3)
                        qi8_tile_3_4(yij, ldy, xi, xs, wj, ws, n);
                    else if (mr == 2)
                        qi8_tile_2_4(yij, ldy, xi, xs, wj, ws, n);
                    else
                        qi8_tile_1_4(yij, ldy, xi, xs, wj, ws, n);
                } else {
                    for (int jj = j; jj < nr; jj++) {
                        float *yj = y + (size_t)i * ldy + r0 + jj;
                        const uint8_t *wjj = wd + (size_t)jj * ws;
                        if (mr == 4)
                            qi8_tile_4_1(yj, ldy, xi, xs, wjj, ws, n);
                        else
                            for (int ii = 0; ii < mr; ii++)
                                qi8_tile_1_1(yj + (size_t)ii * ldy, ldy, xi + (size_t)ii * xs, xs,
                                             wjj, ws, n);
                    }
                }
            }
        }
    }
#else
    (void)y, (void)ldy, (void)xq, (void)w, (void)m, (void)g0, (void)g1, (void)scratch;
    (void)qw_decode;
#endif
}
