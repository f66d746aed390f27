/* kernels.c — matrix products, attention, normalisation and activation for the forward pass.
 *
 * Shaped for a CPU with a few cores and wide FMA units (AVX-512 on this project's machine):
 * products read weights pre-packed into panels of 32 output columns, so a 12-row x 32-column
 * tile of outputs stays in 24 vector registers while the inner index runs, each weight element
 * is loaded once per tile and each input element broadcast once per tile. Attention works on
 * a tile of up to 16 queries with the queries in the vector lanes: scores for 16 keys at a time,
 * then the weighted values 16 dimensions at a time, both as register-held outer products.
 * Decode (a few rows against every weight and each row's own K/V) is bound by memory instead,
 * so its loops prefetch ahead of themselves: the hardware prefetcher falls behind once a few
 * rows' FMAs sit between the weight loads, and cannot follow K/V scattered in 4 KiB runs.
 *
 * Determinism (see kernels.h) comes from the shape of the loops, not from luck: an output's
 * operations are the same whatever tile, edge path or batch computes it, and every fused
 * multiply-add is spelled out (the file is compiled as ISO C, where the compiler fuses nothing
 * on its own).
 */
#include "kernels.h"
#include "quant.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#ifdef __AVX512F__
#include <immintrin.h>
#elif defined(__FMA__)
#include <immintrin.h>
#endif

/* Without AVX-512, GCC notes that passing a 64-byte vector by value has another ABI; every
 * function that does so here is static and inlined, so no such value crosses a call. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

typedef float v16 __attribute__((vector_size(64), aligned(4)));
typedef int v16i __attribute__((vector_size(64), aligned(4)));

#define NR MODEL__NR
#define MR MODEL__MR
#define QT MODEL__QT

#define ALWAYS_INLINE static inline __attribute__((always_inline))

ALWAYS_INLINE v16 ld16(const float *p)
{
    v16 v;
    memcpy(&v, p, sizeof v);
    return v;
}

ALWAYS_INLINE void st16(float *p, v16 v)
{
    memcpy(p, &v, sizeof v);
}

ALWAYS_INLINE v16 bc16(float x)
{
    return (v16){x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x};
}

/* a * b + c in each lane, rounded once. */
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

ALWAYS_INLINE v16 max16(v16 a, v16 b)
{
#ifdef __AVX512F__
    return (v16)_mm512_max_ps((__m512)a, (__m512)b);
#else
    v16 r;
    for (int i = 0; i < 16; i++)
        r[i] = a[i] > b[i] ? a[i] : b[i];
    return r;
#endif
}

ALWAYS_INLINE v16 min16(v16 a, v16 b)
{
#ifdef __AVX512F__
    return (v16)_mm512_min_ps((__m512)a, (__m512)b);
#else
    v16 r;
    for (int i = 0; i < 16; i++)
        r[i] = a[i] < b[i] ? a[i] : b[i];
    return r;
#endif
}

/* Lanes i < first take `fill`, the others keep a. */
ALWAYS_INLINE v16 fill_below(v16 a, int first, float fill)
{
#ifdef __AVX512F__
    __mmask16 m = (__mmask16)(first >= 16 ? 0xffffu : (1u << first) - 1u);
    return (v16)_mm512_mask_mov_ps((__m512)a, m, _mm512_set1_ps(fill));
#else
    for (int i = 0; i < first && i < 16; i++)
        a[i] = fill;
    return a;
#endif
}

/* Lanes i >= first take `fill`, the others keep a. */
ALWAYS_INLINE v16 fill_above(v16 a, int first, float fill)
{
#ifdef __AVX512F__
    __mmask16 m = (__mmask16)(first >= 16 ? 0u : 0xffffu << first);
    return (v16)_mm512_mask_mov_ps((__m512)a, m, _mm512_set1_ps(fill));
#else
    for (int i = first; i < 16; i++)
        a[i] = fill;
    return a;
#endif
}

/* e^x per lane: x = n ln2 + r with |r| <= ln2 / 2, e^r by a degree-7 polynomial (Cephes's expf
 * coefficients), then 2^n put into the exponent. Inputs are clamped to where 2^n stays a normal
 * float, so the result is never inf or NaN for finite x (e^-87.3 ~ 1e-38 stands for 0). */
ALWAYS_INLINE v16 exp16(v16 x)
{
    x = max16(x, bc16(-87.3f));
    x = min16(x, bc16(88.3f));
    v16 magic = bc16(12582912.0f); /* 1.5 * 2^23: adding it rounds to an integer */
    v16 t = fma16(x, bc16(1.44269504088896341f), magic);
    v16 n = t - magic;
    v16 r = fma16(n, bc16(-0.693359375f), x);
    r = fma16(n, bc16(2.12194440e-4f), r);
    v16 p = bc16(1.9875691500e-4f);
    p = fma16(p, r, bc16(1.3981999507e-3f));
    p = fma16(p, r, bc16(8.3334519073e-3f));
    p = fma16(p, r, bc16(4.1665795894e-2f));
    p = fma16(p, r, bc16(1.6666665459e-1f));
    p = fma16(p, r, bc16(5.0000001201e-1f));
    v16 y = fma16(p, r * r, r) + bc16(1.0f);
    v16i e = ((v16i)t - (v16i)magic + 127) << 23;
    return y * (v16)e;
}

/* Horizontal sum in a fixed order (halves added, then quarters, ...). */
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

/* Up to 16 floats of p (n of them) as a vector, zero past n. */
ALWAYS_INLINE v16 ld16_part(const float *p, int n)
{
    if (n >= 16)
        return ld16(p);
    float tmp[16] = {0};
    /* 0 <= n < 16 here; the mask says so to compilers that cannot see it (debug builds). */
    memcpy(tmp, p, (size_t)(n & 15) * sizeof(float));
    return ld16(tmp);
}

ALWAYS_INLINE void st16_part(float *p, v16 v, int n)
{
    if (n >= 16) {
        st16(p, v);
        return;
    }
    float tmp[16];
    st16(tmp, v);
    memcpy(p, tmp, (size_t)(n & 15) * sizeof(float));
}

/* ---- Products ------------------------------------------------------------------------------- */

size_t MODEL__K(model__pack_floats)(int d, int n)
{
    return (size_t)(d + NR - 1) / NR * NR * (size_t)n;
}

void MODEL__K(model__pack)(float *dst, const float *w, int d, int n)
{
    int panels = (d + NR - 1) / NR;
    for (int p = 0; p < panels; p++) {
        float *pd = dst + (size_t)p * n * NR;
        for (int j = 0; j < NR; j++) {
            int row = p * NR + j;
            if (row >= d) {
                for (int k = 0; k < n; k++)
                    pd[(size_t)k * NR + j] = 0.0f;
                continue;
            }
            const float *src = w + (size_t)row * n;
            for (int k = 0; k < n; k++)
                pd[(size_t)k * NR + j] = src[k];
        }
    }
}

/* Weight rows (128 bytes each) prefetched ahead of the product's loads: 4 KiB. */
#define PF_AHEAD 32

/* Y (mr, cols <= 32) = X (mr, kn) @ panel (kn, 32), continuing the chains already in Y unless
 * first: two 16-column accumulators per row, one fused multiply-add per k in order. Y holds a
 * partial chain between calls exactly (a float store and load round nothing), so a product cut
 * into k blocks computes every output as one unbroken chain. mr is a constant in each
 * instantiation below, so the accumulators live in registers. */
ALWAYS_INLINE void gemm_tile(int mr, float *y, size_t ldy, const float *x, size_t ldx,
                             const float *b, int kn, int cols, int first)
{
    v16 c0[MR], c1[MR];
#pragma GCC unroll 12
    for (int i = 0; i < mr; i++) {
        if (first) {
            c0[i] = c1[i] = bc16(0.0f);
        } else if (cols == NR) {
            c0[i] = ld16(y + (size_t)i * ldy);
            c1[i] = ld16(y + (size_t)i * ldy + 16);
        } else {
            float tmp[NR] = {0};
            memcpy(tmp, y + (size_t)i * ldy, (size_t)cols * sizeof(float));
            c0[i] = ld16(tmp);
            c1[i] = ld16(tmp + 16);
        }
    }
    for (int k = 0; k < kn; k++) {
        /* The hardware prefetcher alone does not run far enough ahead once the FMAs of a few
         * rows sit between the loads (8 rows streamed at ~60% of 1 row's rate): ask for the
         * panel PF_AHEAD k-steps ahead (past the panel's end that is the next panel, which the
         * decode walk reads next; a prefetch never faults). One row keeps up without it, and
         * its loop is left as it was. */
        if (mr > 1) {
            __builtin_prefetch(b + (size_t)(k + PF_AHEAD) * NR, 0, 3);
            __builtin_prefetch(b + (size_t)(k + PF_AHEAD) * NR + 16, 0, 3);
        }
        v16 b0 = ld16(b + (size_t)k * NR), b1 = ld16(b + (size_t)k * NR + 16);
#pragma GCC unroll 12
        for (int i = 0; i < mr; i++) {
            v16 a = bc16(x[(size_t)i * ldx + k]);
            c0[i] = fma16(a, b0, c0[i]);
            c1[i] = fma16(a, b1, c1[i]);
        }
    }
#pragma GCC unroll 12
    for (int i = 0; i < mr; i++) {
        float *yr = y + (size_t)i * ldy;
        if (cols == NR) {
            st16(yr, c0[i]);
            st16(yr + 16, c1[i]);
        } else {
            float tmp[NR];
            st16(tmp, c0[i]);
            st16(tmp + 16, c1[i]);
            memcpy(yr, tmp, (size_t)cols * sizeof(float));
        }
    }
}

#define GEMM_TILE_N(N)                                                                             \
    static void gemm_tile_##N(float *y, size_t ldy, const float *x, size_t ldx, const float *b,    \
                              int kn, int cols, int first)                                         \
    {                                                                                              \
        gemm_tile(N, y, ldy, x, ldx, b, kn, cols, first);                                          \
    }
GEMM_TILE_N(1)
GEMM_TILE_N(2)
GEMM_TILE_N(3)
GEMM_TILE_N(4)
GEMM_TILE_N(5)
GEMM_TILE_N(6)
GEMM_TILE_N(7)
GEMM_TILE_N(8)
GEMM_TILE_N(9)
GEMM_TILE_N(10)
GEMM_TILE_N(11)
GEMM_TILE_N(12)

typedef void (*gemm_tile_fn)(float *, size_t, const float *, size_t, const float *, int, int, int);
static const gemm_tile_fn gemm_tiles[MR + 1] = {
    NULL,        gemm_tile_1, gemm_tile_2, gemm_tile_3,  gemm_tile_4,  gemm_tile_5, gemm_tile_6,
    gemm_tile_7, gemm_tile_8, gemm_tile_9, gemm_tile_10, gemm_tile_11, gemm_tile_12};

/* Inner-index block: a panel's KC x 32 weights (32 KiB) stay in L1 while every row tile passes
 * over them, and the rows' KC-wide slice of X stays in L2 for all the panels. */
#define KC 256

void MODEL__K(model__gemm)(float *y, size_t ldy, const float *x, size_t ldx, const float *wp, int m,
                           int n, int d, int p0, int p1)
{
    /* Tiles of near-equal height (52 rows: 11, 11, 10, 10, 10), so no tile runs nearly empty. */
    int tiles = (m + MR - 1) / MR, base = m / tiles, extra = m % tiles;
    /* One tile (decode): each panel is read once anyway, so read it as one sequential stream. */
    int kc = tiles == 1 ? n : KC;
    for (int k0 = 0; k0 < n; k0 += kc) {
        int kn = n - k0 < kc ? n - k0 : kc;
        for (int p = p0; p < p1; p++) {
            const float *b = wp + ((size_t)p * n + k0) * NR;
            int col = p * NR, cols = d - col < NR ? d - col : NR;
            int r = 0;
            for (int t = 0; t < tiles; t++) {
                int mr = base + (t < extra);
                gemm_tiles[mr](y + (size_t)r * ldy + col, ldy, x + (size_t)r * ldx + k0, ldx, b, kn,
                               cols, k0 == 0);
                r += mr;
            }
        }
    }
}

void MODEL__K(model__gemm_panel)(float *y, size_t ldy, const float *x, size_t ldx,
                                 const float *panel, int m, int kn, int cols, int first)
{
    int tiles = (m + MR - 1) / MR, base = m / tiles, extra = m % tiles, r = 0;
    for (int t = 0; t < tiles; t++) {
        int mr = base + (t < extra);
        gemm_tiles[mr](y + (size_t)r * ldy, ldy, x + (size_t)r * ldx, ldx, panel, kn, cols, first);
        r += mr;
    }
}

/* ---- Attention ------------------------------------------------------------------------------ */

/* K/V rows in their stored type (model.h: f32, f16, or q8_0 groups of 32). The kernels read
 * them where they lie and convert 16 elements at a time as they go: a converted element is its
 * exact float value (an f16 widens exactly; a q8_0 element d * q has at most 11 + 7 significant
 * bits), so attention over a typed row computes bitwise what it computes over the float row
 * the type's dequantizer gives. A head's hs elements start at element hoff of its row (not 0
 * only for q8_0 rows that hold several heads, when hs is not a multiple of 32). */
#define KV_F32 0  /* MODEL_TYPE_F32 */
#define KV_F16 1  /* MODEL_TYPE_F16 */
#define KV_Q8_0 8 /* MODEL_TYPE_Q8_0 */

/* Elements [e0, e0 + n) (n <= 16 taken, zero past n) of a row in type, as floats. */
ALWAYS_INLINE v16 ldkv16(int type, const uint8_t *row, int e0, int n)
{
    if (type == KV_F16) {
        const uint8_t *p = row + (size_t)e0 * 2;
#ifdef __AVX512F__
        if (n >= 16)
            return (v16)_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)p));
#endif
        v16 r = bc16(0.0f);
        for (int i = 0; i < n && i < 16; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            r[i] = model__f16_to_f32(h);
        }
        return r;
    }
    if (type == KV_Q8_0 && (n < 16 || e0 % 32 > 16)) { /* a short run, or across two groups */
        v16 r = bc16(0.0f);
        for (int i = 0; i < n && i < 16; i++) {
            const uint8_t *b = row + (size_t)((e0 + i) / 32) * 34;
            uint16_t dh;
            memcpy(&dh, b, 2);
            r[i] = model__f16_to_f32(dh) * (float)(int8_t)b[2 + (e0 + i) % 32];
        }
        return r;
    }
    if (type == KV_Q8_0) {
        const uint8_t *b = row + (size_t)(e0 / 32) * 34;
        uint16_t dh;
        memcpy(&dh, b, 2);
        const int8_t *q = (const int8_t *)(b + 2 + e0 % 32);
#ifdef __AVX512F__
        v16 d = (v16)_mm512_cvtph_ps(_mm256_set1_epi16((short)dh));
        __m128i q8 = _mm_loadu_si128((const __m128i *)(const void *)q);
        return d * (v16)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q8));
#else
        v16 d = bc16(model__f16_to_f32(dh)), r;
        for (int i = 0; i < 16; i++)
            r[i] = (float)q[i];
        return d * r;
#endif
    }
    return ld16_part((const float *)(const void *)row + e0, n);
}

size_t MODEL__K(model__attend_scratch)(int hs, int keys)
{
    /* Transposed queries (QT x hs), a tile of converted keys (16 x hs), the scores. */
    return (size_t)QT * (2 * (size_t)hs + (size_t)keys);
}

/* Scores of g keys (rows of k, hs floats each) against the 16 query lanes of qt (hs x 16):
 * sc[j * 16 + i] = scale * (chain over d of k[j][d] * q_i[d]). */
ALWAYS_INLINE void scores_keys(int g, float *sc, const float *k, int hs, const float *qt,
                               float scale)
{
    v16 acc[QT];
#pragma GCC unroll 16
    for (int j = 0; j < g; j++)
        acc[j] = bc16(0.0f);
    for (int d = 0; d < hs; d++) {
        v16 qd = ld16(qt + (size_t)d * QT);
#pragma GCC unroll 16
        for (int j = 0; j < g; j++)
            acc[j] = fma16(bc16(k[(size_t)j * hs + d]), qd, acc[j]);
    }
#pragma GCC unroll 16
    for (int j = 0; j < g; j++)
        st16(sc + (size_t)j * QT, acc[j] * bc16(scale));
}

static void scores_16(float *sc, const float *k, int hs, const float *qt, float scale)
{
    scores_keys(16, sc, k, hs, qt, scale);
}

/* The same operations for fewer keys (a block's or the context's end); not unrolled. */
static void scores_few(int g, float *sc, const float *k, int hs, const float *qt, float scale)
{
    for (int j = 0; j < g; j++) {
        v16 acc = bc16(0.0f);
        for (int d = 0; d < hs; d++)
            acc = fma16(bc16(k[(size_t)j * hs + d]), ld16(qt + (size_t)d * QT), acc);
        st16(sc + (size_t)j * QT, acc * bc16(scale));
    }
}

/* acc[dd] (16 query lanes) = chain over keys t <= tmax of v_t[d0 + dd] * p_t (p: sc[t][16]),
 * dn <= 16 dimensions, walking the blocks with the accumulators held in registers. Rows of rb
 * bytes in type, d0 counted from the row's start; a typed row's 16 elements are converted once
 * per key. */
ALWAYS_INLINE void values_chunk(int type, int dn, v16 *acc, float *const *blocks, size_t voff,
                                int B, size_t rb, int d0, const float *sc, int tmax)
{
    v16 a[16];
#pragma GCC unroll 16
    for (int dd = 0; dd < dn; dd++)
        a[dd] = bc16(0.0f);
    for (int t0 = 0; t0 <= tmax;) {
        int r = t0 % B, n = B - r;
        if (n > tmax + 1 - t0)
            n = tmax + 1 - t0;
        const uint8_t *v = (const uint8_t *)blocks[t0 / B] + voff + (size_t)r * rb;
        const float *p = sc + (size_t)t0 * QT;
        for (int t = 0; t < n; t++) {
            v16 pt = ld16(p + (size_t)t * QT);
            if (type == KV_F32) {
                const float *vr = (const float *)(const void *)(v + (size_t)t * rb) + d0;
#pragma GCC unroll 16
                for (int dd = 0; dd < dn; dd++)
                    a[dd] = fma16(bc16(vr[dd]), pt, a[dd]);
            } else {
                v16 vv = ldkv16(type, v + (size_t)t * rb, d0, dn);
#pragma GCC unroll 16
                for (int dd = 0; dd < dn; dd++)
                    a[dd] = fma16(bc16(vv[dd]), pt, a[dd]);
            }
        }
        t0 += n;
    }
#pragma GCC unroll 16
    for (int dd = 0; dd < dn; dd++)
        acc[dd] = a[dd];
}

#define VALUES_16(T, name)                                                                         \
    static void name(v16 *acc, float *const *blocks, size_t voff, int B, size_t rb, int d0,        \
                     const float *sc, int tmax)                                                    \
    {                                                                                              \
        values_chunk(T, 16, acc, blocks, voff, B, rb, d0, sc, tmax);                               \
    }
VALUES_16(KV_F32, values_16_f32)
VALUES_16(KV_F16, values_16_f16)
VALUES_16(KV_Q8_0, values_16_q8_0)

/* The same operations for a last chunk of fewer dimensions; not unrolled. */
static void values_few(int type, int dn, v16 *acc, float *const *blocks, size_t voff, int B,
                       size_t rb, int d0, const float *sc, int tmax)
{
    for (int dd = 0; dd < dn; dd++)
        acc[dd] = bc16(0.0f);
    for (int t = 0; t <= tmax; t++) {
        const uint8_t *row = (const uint8_t *)blocks[t / B] + voff + (size_t)(t % B) * rb;
        float vr[16];
        st16(vr, ldkv16(type, row, d0, dn));
        v16 pt = ld16(sc + (size_t)t * QT);
        for (int dd = 0; dd < dn; dd++)
            acc[dd] = fma16(bc16(vr[dd]), pt, acc[dd]);
    }
}

/* Converts g rows (rb bytes apart, in type; the head's elements from hoff) into kt (g x hs
 * floats). */
static void keys_to_f32(int type, float *kt, const uint8_t *k, size_t rb, int hoff, int g, int hs)
{
    for (int j = 0; j < g; j++)
        for (int c = 0; c < hs; c += 16)
            st16_part(kt + (size_t)j * hs + c, ldkv16(type, k + (size_t)j * rb, hoff + c, hs - c),
                      hs - c);
}

void MODEL__K(model__attend)(float *out, size_t ldo, const float *q, size_t ldq, int nq, int pos0,
                             float *const *blocks, size_t koff, size_t voff, size_t rb, int hoff,
                             int B, int hs, int type, float scale, float *scratch)
{
    int tmax = pos0 + nq - 1; /* the last key any query of the tile sees */
    float *qt = scratch, *kt = scratch + (size_t)QT * hs, *sc = kt + (size_t)QT * hs;
    /* Queries transposed: qt[d][i], zero in the lanes past nq. */
    for (int d = 0; d < hs; d++)
        for (int i = 0; i < QT; i++)
            qt[(size_t)d * QT + i] = i < nq ? q[(size_t)i * ldq + d] : 0.0f;
    /* Scores, 16 keys at a time within each block: sc[t][i]. Typed keys (or rows of more than
     * the head) are converted into kt first, a tile at a time (16 queries read each). */
    for (int t0 = 0; t0 <= tmax;) {
        int r = t0 % B, g = B - r;
        if (g > 16)
            g = 16;
        if (g > tmax + 1 - t0)
            g = tmax + 1 - t0;
        const uint8_t *kb = (const uint8_t *)blocks[t0 / B] + koff + (size_t)r * rb;
        const float *k = (const float *)(const void *)kb;
        if (type != KV_F32 || hoff != 0 || rb != (size_t)hs * 4) {
            keys_to_f32(type, kt, kb, rb, hoff, g, hs);
            k = kt;
        }
        if (g == 16)
            scores_16(sc + (size_t)t0 * QT, k, hs, qt, scale);
        else
            scores_few(g, sc + (size_t)t0 * QT, k, hs, qt, scale);
        t0 += g;
    }
    /* Softmax per lane; query i sees keys t <= pos0 + i, so at key t > pos0 the lanes
     * i < t - pos0 are masked (their weight is exactly 0, which adds nothing below). */
    v16 mx = bc16(-INFINITY);
    for (int t = 0; t <= tmax; t++) {
        v16 s = ld16(sc + (size_t)t * QT);
        if (t > pos0)
            s = fill_below(s, t - pos0, -INFINITY);
        mx = max16(mx, s);
    }
    v16 sum = bc16(0.0f);
    for (int t = 0; t <= tmax; t++) {
        v16 e = exp16(ld16(sc + (size_t)t * QT) - mx);
        if (t > pos0)
            e = fill_below(e, t - pos0, 0.0f);
        st16(sc + (size_t)t * QT, e);
        sum = sum + e;
    }
    v16 inv = bc16(1.0f) / sum;
    /* Values, 16 dimensions at a time: acc[dd][i] = chain over t of p_t[i] * v_t[d0 + dd]. */
    for (int d0 = 0; d0 < hs; d0 += 16) {
        int dn = hs - d0 < 16 ? hs - d0 : 16;
        v16 acc[16];
        int e0 = hoff + d0; /* the chunk's first element in the row */
        if (dn == 16 && type == KV_F16)
            values_16_f16(acc, blocks, voff, B, rb, e0, sc, tmax);
        else if (dn == 16 && type == KV_Q8_0)
            values_16_q8_0(acc, blocks, voff, B, rb, e0, sc, tmax);
        else if (dn == 16)
            values_16_f32(acc, blocks, voff, B, rb, e0, sc, tmax);
        else
            values_few(type, dn, acc, blocks, voff, B, rb, e0, sc, tmax);
        for (int dd = 0; dd < dn; dd++) {
            v16 o = acc[dd] * inv;
            for (int i = 0; i < nq; i++)
                out[(size_t)i * ldo + d0 + dd] = o[i];
        }
    }
}

/* Keys (or values) prefetched ahead of the decode attention's loops. A head's rows are runs of
 * B rows (4 KiB at B 16, head_size 64, f32) scattered over the blocks, each too short for the
 * hardware prefetcher to get going, so the loops ask for the rows ATT_AHEAD keys ahead
 * themselves (8 KiB at head_size 64, f32). */
#define ATT_AHEAD 32

/* Prefetches bytes [lo, hi) of the rows (rb bytes each) of keys [t, t + n) that exist
 * (t <= last) at blocks[.] + off: the whole run when [lo, hi) is the whole row. */
static inline void prefetch_keys(float *const *blocks, size_t off, int B, size_t rb, size_t lo,
                                 size_t hi, int t, int n, int last)
{
    int end = t + n - 1 < last ? t + n - 1 : last; /* inclusive */
    while (t <= end) {
        int r = t % B, m = B - r;
        if (m > end + 1 - t)
            m = end + 1 - t;
        const char *p = (const char *)blocks[t / B] + off + (size_t)r * rb;
        if (lo == 0 && hi == rb) {
            const char *e = p + (size_t)m * rb;
            for (p = (const char *)((uintptr_t)p & ~(uintptr_t)63); p < e; p += 64)
                __builtin_prefetch(p, 0, 3);
        } else {
            for (int i = 0; i < m; i++, p += rb)
                for (const char *q = (const char *)((uintptr_t)(p + lo) & ~(uintptr_t)63);
                     q < p + hi; q += 64)
                    __builtin_prefetch(q, 0, 3);
        }
        t += m;
    }
}

/* s[j] = hsum16(a[j]) for 16 vectors at once, bitwise: the same additions in the same order
 * (lane i + lane i+8, then i + i+4, i + i+2, i + i+1), done as a transposing tree of shuffles,
 * two per vector where hsum16 alone takes four in a serial chain. */
ALWAYS_INLINE v16 hsum16x16(const v16 *a)
{
#ifdef __AVX512F__
    /* The tree leaves vector j's sum in lane f(j) (f below, its own inverse): feed it a[f(j)]. */
    static const int f[16] = {0, 2, 1, 3, 8, 10, 9, 11, 4, 6, 5, 7, 12, 14, 13, 15};
    __m512 b[8], c[4], d[2];
#pragma GCC unroll 8
    for (int j = 0; j < 8; j++) {
        __m512 x = (__m512)a[f[j]], y = (__m512)a[f[j + 8]];
        b[j] = _mm512_add_ps(_mm512_shuffle_f32x4(x, y, 0x44), _mm512_shuffle_f32x4(x, y, 0xee));
    }
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++)
        c[j] = _mm512_add_ps(_mm512_shuffle_f32x4(b[j], b[j + 4], 0x88),
                             _mm512_shuffle_f32x4(b[j], b[j + 4], 0xdd));
#pragma GCC unroll 2
    for (int j = 0; j < 2; j++) {
        __m512d x = _mm512_castps_pd(c[j]), y = _mm512_castps_pd(c[j + 2]);
        d[j] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)),
                             _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
    }
    return (v16)_mm512_add_ps(_mm512_shuffle_ps(d[0], d[1], 0x88),
                              _mm512_shuffle_ps(d[0], d[1], 0xdd));
#else
    v16 s;
    for (int j = 0; j < 16; j++)
        s[j] = hsum16(a[j]);
    return s;
#endif
}

/* Scores of g <= 16 consecutive keys k (rows of rb bytes in type, hs elements) against one
 * query (chunks vectors qv): sc[j] = hsum16(chain over chunks of k_j * q) * scale. A full group
 * takes the tree above, a short one hsum16 per key: bitwise the same. */
ALWAYS_INLINE void scores1(int type, int chunks, int g, float *sc, const uint8_t *k, int hs,
                           size_t rb, int hoff, const v16 *qv, float scale)
{
    v16 acc[16];
    if (g == 16) {
#pragma GCC unroll 16
        for (int j = 0; j < 16; j++) {
            const uint8_t *kt = k + (size_t)j * rb;
            acc[j] = ldkv16(type, kt, hoff, hs) * qv[0];
            for (int c = 1; c < chunks; c++)
                acc[j] = fma16(ldkv16(type, kt, hoff + c * 16, hs - c * 16), qv[c], acc[j]);
        }
        st16(sc, hsum16x16(acc) * bc16(scale));
        return;
    }
    for (int j = 0; j < g; j++) {
        const uint8_t *kt = k + (size_t)j * rb;
        v16 a = ldkv16(type, kt, hoff, hs) * qv[0];
        for (int c = 1; c < chunks; c++)
            a = fma16(ldkv16(type, kt, hoff + c * 16, hs - c * 16), qv[c], a);
        sc[j] = hsum16(a) * scale;
    }
}

/* Head size 64, the common case, with its loops' bounds known to the compiler (one per type). */
#define SCORES1_64(T, name)                                                                        \
    static void name(int g, float *sc, const uint8_t *k, size_t rb, int hoff, const v16 *qv,       \
                     float scale)                                                                  \
    {                                                                                              \
        scores1(T, 4, g, sc, k, 64, rb, hoff, qv, scale);                                          \
    }
SCORES1_64(KV_F32, scores1_64_f32)
SCORES1_64(KV_F16, scores1_64_f16)
SCORES1_64(KV_Q8_0, scores1_64_q8_0)

/* One query (decode): the same softmax attention with the keys in the lanes instead. A score is
 * the query's dot product with the key: 16-float chunks multiplied and chained over the chunks,
 * then summed across lanes in a fixed order (hsum16); the softmax runs over 16 keys per vector
 * with per-lane sums (lane j sums keys t = j mod 16 in order) added up by hsum16; the output is
 * the sum over keys of p_t * v_t, 16 dimensions per vector (for head_size 64, even and odd keys
 * in two chains added at the end), times 1 / sum. The operations depend on pos, B and the
 * inputs only. One body, instantiated per K/V type (type is a constant in each). */
ALWAYS_INLINE void attend1(int type, float *out, const float *q, int pos, float *const *blocks,
                           size_t koff, size_t voff, size_t rb, int hoff, int B, int hs,
                           float scale, float *scratch)
{
    int chunks = (hs + 15) / 16;
    /* The bytes of a row the head reads: the whole row, or its q8_0 groups that hold the head. */
    size_t lo = 0, hi = rb;
    if (type == KV_Q8_0 && (size_t)hs / 32 * 34 != rb) {
        lo = (size_t)(hoff / 32) * 34;
        hi = (size_t)((hoff + hs - 1) / 32 + 1) * 34;
    }
    float *sc = scratch;
    v16 qv[16]; /* head_size <= 256 (checked by the caller) */
    for (int c = 0; c < chunks; c++)
        qv[c] = ld16_part(q + c * 16, hs - c * 16);
    prefetch_keys(blocks, koff, B, rb, lo, hi, 0, ATT_AHEAD, pos);
    for (int t0 = 0; t0 <= pos;) {
        int r = t0 % B, n = B - r;
        if (n > pos + 1 - t0)
            n = pos + 1 - t0;
        const uint8_t *k = (const uint8_t *)blocks[t0 / B] + koff + (size_t)r * rb;
        for (int t = 0; t < n; t += 16) {
            int g = n - t < 16 ? n - t : 16;
            prefetch_keys(blocks, koff, B, rb, lo, hi, t0 + t + ATT_AHEAD, g, pos);
            if (hs == 64 && type == KV_F16)
                scores1_64_f16(g, sc + t0 + t, k + (size_t)t * rb, rb, hoff, qv, scale);
            else if (hs == 64 && type == KV_Q8_0)
                scores1_64_q8_0(g, sc + t0 + t, k + (size_t)t * rb, rb, hoff, qv, scale);
            else if (hs == 64)
                scores1_64_f32(g, sc + t0 + t, k + (size_t)t * rb, rb, hoff, qv, scale);
            else
                scores1(type, chunks, g, sc + t0 + t, k + (size_t)t * rb, hs, rb, hoff, qv, scale);
        }
        t0 += n;
    }
    /* The first values while the softmax runs. */
    prefetch_keys(blocks, voff, B, rb, lo, hi, 0, ATT_AHEAD, pos);
    int nk = pos + 1;
    v16 mx = bc16(-INFINITY);
    for (int t = 0; t < nk; t += 16)
        mx = max16(mx, t + 16 <= nk ? ld16(sc + t)
                                    : fill_above(ld16_part(sc + t, nk - t), nk - t, -INFINITY));
    float m = mx[0];
    for (int i = 1; i < 16; i++)
        m = mx[i] > m ? mx[i] : m;
    v16 sum = bc16(0.0f);
    for (int t = 0; t < nk; t += 16) {
        v16 e = exp16(ld16_part(sc + t, nk - t) - bc16(m));
        if (t + 16 > nk)
            e = fill_above(e, nk - t, 0.0f);
        st16_part(sc + t, e, nk - t);
        sum = sum + e;
    }
    float inv = 1.0f / hsum16(sum);
    v16 acc[16];
    for (int c = 0; c < 16; c++)
        acc[c] = bc16(0.0f);
    for (int t0 = 0; t0 <= pos;) {
        int r = t0 % B, n = B - r;
        if (n > pos + 1 - t0)
            n = pos + 1 - t0;
        const uint8_t *v = (const uint8_t *)blocks[t0 / B] + voff + (size_t)r * rb;
        for (int t = 0; t < n; t += 16)
            prefetch_keys(blocks, voff, B, rb, lo, hi, t0 + t + ATT_AHEAD, n - t < 16 ? n - t : 16,
                          pos);
        if (hs == 64) {
            /* Even and odd keys in two chains, added at the end: eight independent chains keep
             * both FMA units busy where four would wait on latency. */
            v16 a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
            v16 b0 = acc[4], b1 = acc[5], b2 = acc[6], b3 = acc[7];
            const float *p = sc + t0;
            int t = 0;
            if (t0 & 1) { /* an odd first key: the odd chain */
                v16 pt = bc16(p[0]);
                b0 = fma16(pt, ldkv16(type, v, hoff + 0, 16), b0);
                b1 = fma16(pt, ldkv16(type, v, hoff + 16, 16), b1);
                b2 = fma16(pt, ldkv16(type, v, hoff + 32, 16), b2);
                b3 = fma16(pt, ldkv16(type, v, hoff + 48, 16), b3);
                t = 1;
            }
            for (; t < n; t += 2) { /* key t is even */
                v16 pe = bc16(p[t]);
                const uint8_t *ve = v + (size_t)t * rb;
                a0 = fma16(pe, ldkv16(type, ve, hoff + 0, 16), a0);
                a1 = fma16(pe, ldkv16(type, ve, hoff + 16, 16), a1);
                a2 = fma16(pe, ldkv16(type, ve, hoff + 32, 16), a2);
                a3 = fma16(pe, ldkv16(type, ve, hoff + 48, 16), a3);
                if (t + 1 == n)
                    break;
                v16 po = bc16(p[t + 1]);
                const uint8_t *vo = ve + rb;
                b0 = fma16(po, ldkv16(type, vo, hoff + 0, 16), b0);
                b1 = fma16(po, ldkv16(type, vo, hoff + 16, 16), b1);
                b2 = fma16(po, ldkv16(type, vo, hoff + 32, 16), b2);
                b3 = fma16(po, ldkv16(type, vo, hoff + 48, 16), b3);
            }
            acc[0] = a0, acc[1] = a1, acc[2] = a2, acc[3] = a3;
            acc[4] = b0, acc[5] = b1, acc[6] = b2, acc[7] = b3;
        } else {
            for (int t = 0; t < n; t++) {
                v16 p = bc16(sc[t0 + t]);
                for (int c = 0; c < chunks; c++)
                    acc[c] = fma16(p, ldkv16(type, v + (size_t)t * rb, hoff + c * 16, hs - c * 16),
                                   acc[c]);
            }
        }
        t0 += n;
    }
    if (hs == 64)
        for (int c = 0; c < 4; c++)
            acc[c] = acc[c] + acc[c + 4];
    for (int c = 0; c < chunks; c++)
        st16_part(out + c * 16, acc[c] * bc16(inv), hs - c * 16);
}

void MODEL__K(model__attend1)(float *out, const float *q, int pos, float *const *blocks,
                              size_t koff, size_t voff, size_t rb, int hoff, int B, int hs,
                              int type, float scale, float *scratch)
{
    if (type == KV_F16)
        attend1(KV_F16, out, q, pos, blocks, koff, voff, rb, hoff, B, hs, scale, scratch);
    else if (type == KV_Q8_0)
        attend1(KV_Q8_0, out, q, pos, blocks, koff, voff, rb, hoff, B, hs, scale, scratch);
    else
        attend1(KV_F32, out, q, pos, blocks, koff, voff, rb, hoff, B, hs, scale, scratch);
}

/* ---- Element-wise --------------------------------------------------------------------------- */

void MODEL__K(model__rmsnorm)(float *o, const float *x, const float *w, int n, float eps)
{
    v16 acc = bc16(0.0f);
    for (int i = 0; i < n; i += 16) {
        v16 v = ld16_part(x + i, n - i);
        acc = fma16(v, v, acc);
    }
    float ss = hsum16(acc) / (float)n + eps;
    v16 r = bc16(1.0f / sqrtf(ss));
    for (int i = 0; i < n; i += 16)
        st16_part(o + i, ld16_part(w + i, n - i) * (r * ld16_part(x + i, n - i)), n - i);
}

void MODEL__K(model__silu_mul)(float *o, const float *a, const float *b, int n)
{
    for (int i = 0; i < n; i += 16) {
        v16 v = ld16_part(a + i, n - i);
        v16 s = v / (bc16(1.0f) + exp16(bc16(0.0f) - v));
        st16_part(o + i, s * ld16_part(b + i, n - i), n - i);
    }
}

void MODEL__K(model__exp)(float *o, const float *x, int n)
{
    for (int i = 0; i < n; i += 16)
        st16_part(o + i, exp16(ld16_part(x + i, n - i)), n - i);
}

#ifdef MODEL_KERNELS_VARIANT
/* This variant's table, for kernels_dispatch.c. */
const model__kernels MODEL__K(model__kernels) = {
#define MODEL__KSTR2(x) #x
#define MODEL__KSTR(x) MODEL__KSTR2(x)
    MODEL__KSTR(MODEL_KERNELS_VARIANT),
    MODEL__K(model__pack_floats),
    MODEL__K(model__pack),
    MODEL__K(model__gemm),
    MODEL__K(model__gemm_panel),
    MODEL__K(model__attend),
    MODEL__K(model__attend_scratch),
    MODEL__K(model__attend1),
    MODEL__K(model__rmsnorm),
    MODEL__K(model__silu_mul),
    MODEL__K(model__exp),
};
#endif
