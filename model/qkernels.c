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
#if QI8
    /* The loop below, 32 at a time: the same maximum, reciprocal, rounding (to nearest even,
     * the default mode, as nearbyintf) and sums. */
    for (int b = 0; b < n / 32; b++) {
        __m512 x0 = _mm512_loadu_ps(x + b * 32), x1 = _mm512_loadu_ps(x + b * 32 + 16);
        float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(x0), _mm512_abs_ps(x1)));
        float d = amax / 127.0f, id = d > 0.0f ? 127.0f / amax : 0.0f;
        __m512 vid = _mm512_set1_ps(id), lim = _mm512_set1_ps(127.0f);
        __m512 r0 = _mm512_roundscale_ps(_mm512_mul_ps(x0, vid), _MM_FROUND_TO_NEAREST_INT);
        __m512 r1 = _mm512_roundscale_ps(_mm512_mul_ps(x1, vid), _MM_FROUND_TO_NEAREST_INT);
        r0 = _mm512_max_ps(_mm512_min_ps(r0, lim), _mm512_sub_ps(_mm512_setzero_ps(), lim));
        r1 = _mm512_max_ps(_mm512_min_ps(r1, lim), _mm512_sub_ps(_mm512_setzero_ps(), lim));
        __m512i i0 = _mm512_cvtps_epi32(r0), i1 = _mm512_cvtps_epi32(r1);
        _mm_storeu_si128((__m128i *)(q + b * 32), _mm512_cvtepi32_epi8(i0));
        _mm_storeu_si128((__m128i *)(q + b * 32 + 16), _mm512_cvtepi32_epi8(i1));
        /* Sums of each 4: pairs, then pairs of pairs, as exact integers. */
        __m512i idx = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
        __m512i p2 = _mm512_add_epi32(
            _mm512_permutex2var_epi32(i0, idx, i1),
            _mm512_permutex2var_epi32(i0, _mm512_add_epi32(idx, _mm512_set1_epi32(1)), i1));
        __m256i s4 = _mm512_cvtepi64_epi32(_mm512_add_epi64(
            _mm512_srai_epi64(_mm512_slli_epi64(p2, 32), 32), _mm512_srai_epi64(p2, 32)));
        _mm256_storeu_ps(dx + b * 8, _mm256_set1_ps(d));
        _mm256_storeu_ps(sx + b * 8, _mm256_mul_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(s4)));
    }
    return;
#endif
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

#if QI8
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

/* Chunk c (weights 64 c .. 64 c + 63) of a weight row of type at row: the byte codes u, and
 * the scale and offset of each lane of 4 (a chunk past n / 64, the 32-weight tail of a Q8_0 or
 * Q4_0 row, has zero codes, scales and offsets in its upper half). The scales are computed with
 * the same float operations wherever a chunk is decoded, so the integer products give one row's
 * outputs bitwise the same through either of their paths below. */
ALWAYS_INLINE void qchunk(int type, const uint8_t *row, int c, int n, __m512i *u, __m512 *sv,
                          __m512 *ov)
{
    const __m512i lo4 = _mm512_set1_epi8(0x0F);
    int half = n - 64 * c < 64; /* only the first block of 32 */
    switch (type) {
    case MODEL_TYPE_Q8_0: {
        const uint8_t *b = row + (size_t)c * 68;
        float d0 = model__f16_to_f32(rd16(b)), d1 = half ? 0.0f : model__f16_to_f32(rd16(b + 34));
        __m256i q0 = _mm256_loadu_si256((const __m256i *)(b + 2));
        __m256i q1 =
            half ? _mm256_set1_epi8((char)0x80) : _mm256_loadu_si256((const __m256i *)(b + 36));
        *u = _mm512_xor_si512(_mm512_inserti64x4(_mm512_castsi256_si512(q0), q1, 1),
                              _mm512_set1_epi8((char)0x80));
        *sv = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(d0), _mm512_set1_ps(d1));
        *ov = _mm512_mul_ps(*sv, _mm512_set1_ps(-128.0f));
        break;
    }
    case MODEL_TYPE_Q4_0: {
        const uint8_t *b = row + (size_t)c * 36;
        float d0 = model__f16_to_f32(rd16(b)), d1 = half ? 0.0f : model__f16_to_f32(rd16(b + 18));
        __m128i x0 = _mm_loadu_si128((const __m128i *)(b + 2));
        __m128i x1 = half ? _mm_setzero_si128() : _mm_loadu_si128((const __m128i *)(b + 20));
        __m512i z = _mm512_castsi128_si512(x0);
        z = _mm512_inserti32x4(z, x0, 1);
        z = _mm512_inserti32x4(z, x1, 2);
        z = _mm512_inserti32x4(z, x1, 3);
        *u = _mm512_and_si512(_mm512_mask_blend_epi64(0xCC, z, _mm512_srli_epi16(z, 4)), lo4);
        *sv = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(d0), _mm512_set1_ps(d1));
        *ov = _mm512_mul_ps(*sv, _mm512_set1_ps(-8.0f));
        break;
    }
    case MODEL_TYPE_Q4_K:
    case MODEL_TYPE_Q5_K: {
        int five = type == MODEL_TYPE_Q5_K, k = c & 3;
        const uint8_t *b = row + (size_t)(c >> 2) * (five ? 176 : 144);
        float d = model__f16_to_f32(rd16(b)), dmin = model__f16_to_f32(rd16(b + 2));
        int s0, m0, s1, m1;
        kscale(b + 4, 2 * k, &s0, &m0);
        kscale(b + 4, 2 * k + 1, &s1, &m1);
        __m256i q = _mm256_loadu_si256((const __m256i *)(b + (five ? 48 : 16) + 32 * k));
        __m512i z = _mm512_inserti64x4(_mm512_castsi256_si512(q), q, 1);
        *u = _mm512_and_si512(_mm512_mask_blend_epi64(0xF0, z, _mm512_srli_epi16(z, 4)), lo4);
        if (five) {
            __m256i h = _mm256_loadu_si256((const __m256i *)(b + 16));
            __m512i hz = _mm512_inserti64x4(_mm512_castsi256_si512(h), h, 1);
            __m512i sh =
                _mm512_mask_blend_epi64(0xF0, _mm512_srl_epi16(hz, _mm_cvtsi32_si128(2 * k)),
                                        _mm512_srl_epi16(hz, _mm_cvtsi32_si128(2 * k + 1)));
            sh = _mm512_and_si512(sh, _mm512_set1_epi8(1));
            *u = _mm512_or_si512(*u, _mm512_slli_epi16(sh, 4));
        }
        *sv = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(d * (float)s0),
                                   _mm512_set1_ps(d * (float)s1));
        *ov = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(-(dmin * (float)m0)),
                                   _mm512_set1_ps(-(dmin * (float)m1)));
        break;
    }
    case MODEL_TYPE_Q6_K: {
        /* Chunk c: half h = (c & 3) / 2 of super-block c / 4, its first or second 64 weights
         * (j = 0, 1 or j = 2, 3 in dq_q6_k's y[l + 32 j]). */
        const uint8_t *b = row + (size_t)(c >> 2) * 210;
        int h = (c & 3) >> 1, second = c & 1;
        const uint8_t *ql = b + 64 * h, *qh = b + 128 + 32 * h;
        const int8_t *sc = (const int8_t *)(b + 192) + 8 * h + 4 * second;
        float d = model__f16_to_f32(rd16(b + 208));
        __m512i Q = _mm512_loadu_si512(ql);
        __m256i hh = _mm256_loadu_si256((const __m256i *)qh);
        __m512i hz = _mm512_inserti64x4(_mm512_castsi256_si512(hh), hh, 1);
        int s0 = second ? 4 : 0;
        __m512i hs = _mm512_mask_blend_epi64(0xF0, _mm512_srl_epi16(hz, _mm_cvtsi32_si128(s0)),
                                             _mm512_srl_epi16(hz, _mm_cvtsi32_si128(s0 + 2)));
        hs = _mm512_slli_epi16(_mm512_and_si512(hs, _mm512_set1_epi8(3)), 4);
        __m512i lo = second ? _mm512_srli_epi16(Q, 4) : Q;
        *u = _mm512_or_si512(_mm512_and_si512(lo, lo4), hs);
        float ds[4];
        for (int i = 0; i < 4; i++)
            ds[i] = d * (float)sc[i];
        /* Lanes 4 i .. 4 i + 3 (weights 16 i .. 16 i + 15) take ds[i]. */
        __m512 v = _mm512_castps128_ps512(_mm_loadu_ps(ds));
        *sv = _mm512_permutexvar_ps(
            _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0), v);
        *ov = _mm512_mul_ps(*sv, _mm512_set1_ps(-32.0f));
        break;
    }
    default:
        *u = _mm512_setzero_si512();
        *sv = *ov = _mm512_setzero_ps();
    }
}

/* One step of an output's chain: the chunk's 16 lanes of products, scaled, then the offsets. */
ALWAYS_INLINE __m512 qstep(__m512 acc, __m512i u, __m512 sv, __m512 ov, __m512i q, __m512 dx,
                           __m512 sx)
{
    __m512 t =
        _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), u, q)), dx);
    acc = _mm512_fmadd_ps(t, sv, acc);
    return _mm512_fmadd_ps(ov, sx, acc);
}

/* Direct path (decode, m <= 8): each weight row decoded chunk by chunk in registers, straight
 * from the mapping, and run against all m activation rows. */
ALWAYS_INLINE void qi8_direct(int m, float *y, size_t ldy, const uint8_t *xq, size_t xs,
                              const uint8_t *row, int type, int n)
{
    __m512 acc[8];
    for (int i = 0; i < m; i++)
        acc[i] = _mm512_setzero_ps();
    for (int c = 0; c < (n + 63) / 64; c++) {
        __mmask64 mb = n - 64 * c >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (n - 64 * c)) - 1);
        __mmask16 mf = n - 64 * c >= 64 ? (__mmask16)0xFFFF : (__mmask16)0x00FF;
        __m512i u;
        __m512 sv, ov;
        qchunk(type, row, c, n, &u, &sv, &ov);
        for (int i = 0; i < m; i++) {
            const uint8_t *xr = xq + (size_t)i * xs;
            const float *dxp = (const float *)(xr + n) + 16 * c;
            __m512i q = _mm512_maskz_loadu_epi8(mb, xr + 64 * c);
            acc[i] = qstep(acc[i], u, sv, ov, q, _mm512_maskz_loadu_ps(mf, dxp),
                           _mm512_maskz_loadu_ps(mf, dxp + n / 4));
        }
    }
    for (int i = 0; i < m; i++)
        y[(size_t)i * ldy] = _mm512_reduce_add_ps(acc[i]);
}

#define QI8_DIRECT(M)                                                                              \
    static void qi8_direct_##M(float *y, size_t ldy, const uint8_t *xq, size_t xs,                 \
                               const uint8_t *row, int type, int n)                                \
    {                                                                                              \
        qi8_direct(M, y, ldy, xq, xs, row, type, n);                                               \
    }
QI8_DIRECT(1)
QI8_DIRECT(2)
QI8_DIRECT(3)
QI8_DIRECT(4)
QI8_DIRECT(5)
QI8_DIRECT(6)
QI8_DIRECT(7)
QI8_DIRECT(8)

static void (*const qi8_directs[9])(float *, size_t, const uint8_t *, size_t, const uint8_t *, int,
                                    int) = {NULL,         qi8_direct_1, qi8_direct_2,
                                            qi8_direct_3, qi8_direct_4, qi8_direct_5,
                                            qi8_direct_6, qi8_direct_7, qi8_direct_8};

/* Decodes a row into scratch (u: n bytes, then s and o: n / 4 floats each) chunk by chunk. */
static void qw_decode(int type, const uint8_t *row, uint8_t *u, float *s, float *o, int n)
{
    for (int c = 0; c < (n + 63) / 64; c++) {
        __m512i uv;
        __m512 sv, ov;
        qchunk(type, row, c, n, &uv, &sv, &ov);
        if (n - 64 * c >= 64) {
            _mm512_storeu_si512(u + 64 * c, uv);
            _mm512_storeu_ps(s + 16 * c, sv);
            _mm512_storeu_ps(o + 16 * c, ov);
        } else {
            _mm256_storeu_si256((__m256i *)(u + 64 * c), _mm512_castsi512_si256(uv));
            _mm256_storeu_ps(s + 16 * c, _mm512_castps512_ps256(sv));
            _mm256_storeu_ps(o + 16 * c, _mm512_castps512_ps256(ov));
        }
    }
}

/* Scratch path (prefill): rows of activations against nw <= 4 decoded weight rows; each output
 * the same chain as the direct path's. */
ALWAYS_INLINE void qi8_tile(int mr, int nw, float *y, size_t ldy, const uint8_t *xq, size_t xstride,
                            const uint8_t *wd, size_t wstride, int n)
{
    __m512 acc[4][4];
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nw; j++)
            acc[i][j] = _mm512_setzero_ps();
    for (int c = 0; c < n; c += 64) {
        __mmask64 mb = n - c >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (n - c)) - 1);
        __mmask16 mf = n - c >= 64 ? (__mmask16)0xFFFF : (__mmask16)0x00FF;
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
                acc[i][j] = qstep(acc[i][j], u[j], _mm512_maskz_loadu_ps(mf, sp),
                                  _mm512_maskz_loadu_ps(mf, sp + n / 4), q, dx, sx);
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
    if (m <= 8) {
        int rend = g1 * NRQ < d ? g1 * NRQ : d;
        for (int r = g0 * NRQ; r < rend; r++) {
            int type;
            const uint8_t *row = row_of(w, r, &type);
            qi8_directs[m](y + r, ldy, xq, xs, row, type, n);
        }
        return;
    }
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
#endif
}
