/* qkernels_i8.c — the integer products over the quantized weight types: 8-bit activations, AVX-512
 * VNNI dot products (qkernels.h declares them). A build for the build machine compiles this file
 * with its own flags; a portable x86-64 build compiles it with AVX-512 VNNI enabled and
 * model__qi8_available() asks the CPU at run time, so nothing here runs where it cannot.
 */
#include "qkernels.h"
#include "model.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef __AVX512F__
#include <immintrin.h>
#endif

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

#define ALWAYS_INLINE static inline __attribute__((always_inline))
#define NRQ MODEL__QNR

/* ---- Integer products: 8-bit activations, VNNI dot products ---------------------------------- */

/* Two kinds of weight types, each with its own form of the activation row (model__qx_layout):
 *
 * Blocks of 32 (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1): w = d u + o per block, with u an unsigned byte
 * code and o = -128 d, -8 d, -16 d (the code's bias) or the block's stored minimum m. The
 * activation block of 32 is x ~ dx qx, qx in [-127, 127], so over a 64-weight chunk (two blocks)
 * the product is, lane l by lane (4 weights each),
 *   d_l dx_l (sum_4 u qx - bias sum_4 qx)
 * where the bracket is one vpdpbusd started from -bias sum_4 qx (exact in 32-bit integers), plus
 * for Q4_1 and Q5_1 each block's m (dx sum_32 qx), the sum kept with the activation row. Per chunk
 * and pair of rows: one vpdpbusd, a conversion, a multiply, a fused multiply-add (and one more for
 * the minimum).
 *
 * K-quants (Q4_K, Q5_K, Q6_K): super-blocks of 256 with small integer sub-block scales sc under
 * one float d, w = d sc u + o, o = -dmin m (Q4_K, Q5_K, per 32) or -32 d sc (Q6_K, per 16). The
 * activations are rounded per 256 (x ~ dk qk, as llama.cpp's Q8_K), so a super-block's whole
 * product stays in integers: vpmaddubsw (u qk, pairs, no saturation: u <= 63) and vpdpwssd
 * (times sc, into 32-bit lanes), then one conversion and one multiply-add by d dk; the offsets add
 * sum_s o_s (dk sum_s qk), 8 or 16 products per super-block.
 *
 * Either way each output is one fixed chain of float operations over its two rows (the integer
 * parts are exact), then a 16-lane sum in a fixed order: the same in decode (weight rows decoded
 * in registers, straight from the mapping) and in prefill (rows decoded into scratch first, then
 * tiles of activation rows x weight rows), whatever the batch, tile or thread. */

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define QI8 1
#else
#define QI8 0
#endif

#define GROW 16   /* weight rows decoded into scratch at a time (prefill) */
#define MDIRECT 8 /* up to this many activation rows, weights are decoded in registers */

int model__qi8_available(void)
{
#if QI8 && defined(MODEL_QI8_DISPATCH)
    /* PREFIXD_KERNELS=avx2 or generic runs the process as on a CPU without AVX-512: without
     * these too (the portable build's tests run the model's unit tests so). */
    const char *want = getenv("PREFIXD_KERNELS");
    if (want && *want && strcmp(want, "avx512") != 0)
        return 0;
    __builtin_cpu_init(); /* F16C too, which every AVX-512 CPU has */
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("fma");
#else
    return QI8;
#endif
}

static int kind_k(int t)
{
    return t == MODEL_TYPE_Q4_K || t == MODEL_TYPE_Q5_K || t == MODEL_TYPE_Q6_K;
}

static int kind_32(int t)
{
    return t == MODEL_TYPE_Q8_0 || t == MODEL_TYPE_Q4_0 || t == MODEL_TYPE_Q4_1 ||
           t == MODEL_TYPE_Q5_0 || t == MODEL_TYPE_Q5_1;
}

int model__qi8_takes(const model__qmat *w)
{
    static int cpu = -1; /* model__qi8_available(), asked once (a race writes the same value) */
    if (cpu < 0)
        cpu = model__qi8_available();
    if (!cpu || w->n % 32 != 0) /* a portable build on a CPU without VNNI takes none */
        return 0;
    for (int s = 0; s < w->n_seg; s++) {
        int t = w->seg[s].type;
        if (!kind_32(t) && !(kind_k(t) && w->n % 256 == 0))
            return 0;
    }
    return 1;
}

unsigned model__qx_need(const model__qmat *w)
{
    unsigned need = 0;
    for (int s = 0; s < w->n_seg; s++)
        need |= kind_k(w->seg[s].type) ? MODEL__QX_K : MODEL__QX_32;
    return need;
}

model__qx_layout model__qx_lay(int n)
{
    model__qx_layout l = {0};
    size_t n64 = (size_t)(n + 63) / 64 * 64, off;
    l.q32 = 0;
    l.dl = n64;
    l.sl = n64 + n64 / 32 * sizeof(float);
    off = (n64 + 2 * (n64 / 32) * sizeof(float) + 63) / 64 * 64;
    if (n % 256 == 0) {
        l.has_k = 1;
        l.qk = off;
        off += (size_t)n;
        l.dk = off;
        off += (size_t)n / 256 * sizeof(float);
        l.bk16 = off;
        off += (size_t)n / 16 * sizeof(float);
        l.bk32 = off;
        off += (size_t)n / 32 * sizeof(float);
    }
    l.bytes = (off + 63) / 64 * 64;
    return l;
}

size_t model__qx_row_bytes(int n)
{
    return model__qx_lay(n).bytes;
}

/* Bytes of one weight row decoded into scratch: blocks of 32 take u (n64 bytes), then the scale
 * and the minimum of each block (n64 / 32 floats each); K-quants take u (n), then per
 * super-block its 16 sub-block scales (int16; Q4_K and Q5_K: 8 and zeros), d and its 16
 * offsets. */
static size_t qw_row_bytes(int n)
{
    size_t n64 = (size_t)(n + 63) / 64 * 64;
    return 2 * n64 + 64;
}

size_t model__qi8_scratch_bytes(int n)
{
    return GROW * qw_row_bytes(n) + 64;
}

/* Rounds x / d to the nearest integer (ties to even) within [-127, 127]. */
static int8_t q8(float v)
{
    v = nearbyintf(v);
    return (int8_t)(v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v);
}

void model__quantize_x(void *dst, const float *x, int n, unsigned need)
{
    model__qx_layout l = model__qx_lay(n);
    uint8_t *base = dst;
    int n64 = (n + 63) / 64 * 64;
    if (need & MODEL__QX_32) {
        int8_t *q = (int8_t *)(base + l.q32);
        float *dl = (float *)(base + l.dl), *sl = (float *)(base + l.sl);
        int b = 0;
#if QI8
        /* The loop below, 32 at a time: the same maximum, reciprocal, rounding (to nearest even,
         * the default mode, as nearbyintf) and sum. */
        for (; b < n / 32; b++) {
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
            dl[b] = d;
            sl[b] = d * (float)_mm512_reduce_add_epi32(_mm512_add_epi32(i0, i1));
        }
#endif
        for (; b < n / 32; b++) {
            const float *xb = x + b * 32;
            float amax = 0.0f;
            for (int k = 0; k < 32; k++)
                amax = fmaxf(amax, fabsf(xb[k]));
            float d = amax / 127.0f, id = d > 0.0f ? 127.0f / amax : 0.0f;
            int t = 0;
            for (int k = 0; k < 32; k++) {
                q[b * 32 + k] = q8(xb[k] * id);
                t += q[b * 32 + k];
            }
            dl[b] = d;
            sl[b] = d * (float)t;
        }
        /* A last half chunk reads zeros. */
        memset(q + n, 0, (size_t)(n64 - n));
        for (int k = n / 32; k < n64 / 32; k++)
            dl[k] = sl[k] = 0.0f;
    }
    if ((need & MODEL__QX_K) && l.has_k) {
        int8_t *q = (int8_t *)(base + l.qk);
        float *dk = (float *)(base + l.dk), *b16 = (float *)(base + l.bk16),
              *b32 = (float *)(base + l.bk32);
        for (int s = 0; s < n / 256; s++) {
            const float *xs = x + s * 256;
            int8_t *qs = q + s * 256;
            float amax = 0.0f;
            int i = 0;
#if QI8
            __m512 mx = _mm512_setzero_ps();
            for (; i < 256; i += 16)
                mx = _mm512_max_ps(mx, _mm512_abs_ps(_mm512_loadu_ps(xs + i)));
            amax = _mm512_reduce_max_ps(mx);
#endif
            for (; i < 256; i++)
                amax = fmaxf(amax, fabsf(xs[i]));
            float d = amax / 127.0f, id = d > 0.0f ? 127.0f / amax : 0.0f;
            int sums[16];
            i = 0;
#if QI8
            __m512 vid = _mm512_set1_ps(id), lim = _mm512_set1_ps(127.0f);
            for (; i < 256; i += 16) {
                __m512 r = _mm512_roundscale_ps(_mm512_mul_ps(_mm512_loadu_ps(xs + i), vid),
                                                _MM_FROUND_TO_NEAREST_INT);
                r = _mm512_max_ps(_mm512_min_ps(r, lim), _mm512_sub_ps(_mm512_setzero_ps(), lim));
                __m512i iv = _mm512_cvtps_epi32(r);
                _mm_storeu_si128((__m128i *)(qs + i), _mm512_cvtepi32_epi8(iv));
                sums[i / 16] = _mm512_reduce_add_epi32(iv);
            }
#endif
            for (; i < 256; i += 16) {
                int t = 0;
                for (int k = 0; k < 16; k++) {
                    qs[i + k] = q8(xs[i + k] * id);
                    t += qs[i + k];
                }
                sums[i / 16] = t;
            }
            dk[s] = d;
            for (int k = 0; k < 16; k++)
                b16[s * 16 + k] = d * (float)sums[k];
            for (int k = 0; k < 8; k++)
                b32[s * 8 + k] = d * (float)(sums[2 * k] + sums[2 * k + 1]);
        }
    }
}

#if QI8
ALWAYS_INLINE float h2f(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

ALWAYS_INLINE uint32_t rd32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* ---- Blocks of 32 ---- */

static size_t block_bytes(int type)
{
    switch (type) {
    case MODEL_TYPE_Q8_0:
        return 34;
    case MODEL_TYPE_Q4_0:
        return 18;
    case MODEL_TYPE_Q4_1:
        return 20;
    case MODEL_TYPE_Q5_0:
        return 22;
    default: /* MODEL_TYPE_Q5_1 */
        return 24;
    }
}

static int has_min(int type)
{
    return type == MODEL_TYPE_Q4_1 || type == MODEL_TYPE_Q5_1;
}

/* Two blocks' 16-byte nibble fields as 64 codes: low nibbles of the first (its weights 0-15),
 * its high nibbles (16-31), then the second's. */
ALWAYS_INLINE __m512i nibbles2(const uint8_t *p0, const uint8_t *p1, int half)
{
    __m128i x0 = _mm_loadu_si128((const __m128i *)p0);
    __m128i x1 = half ? _mm_setzero_si128() : _mm_loadu_si128((const __m128i *)p1);
    __m512i z = _mm512_castsi128_si512(x0);
    z = _mm512_inserti32x4(z, x0, 1);
    z = _mm512_inserti32x4(z, x1, 2);
    z = _mm512_inserti32x4(z, x1, 3);
    return _mm512_and_si512(_mm512_mask_blend_epi64(0xCC, z, _mm512_srli_epi16(z, 4)),
                            _mm512_set1_epi8(0x0F));
}

/* Chunk c (blocks 2c and 2c + 1) of a 32-block row: the 64 codes u, each lane's scale sv and
 * minimum mv (zero without one). half: only block 2c exists (codes, scales and minimum of the
 * upper half zero). */
ALWAYS_INLINE void w32_chunk(int type, const uint8_t *row, int c, int half, __m512i *u, __m512 *sv,
                             __m512 *mv)
{
    size_t bs = block_bytes(type);
    const uint8_t *b0 = row + (size_t)(2 * c) * bs, *b1 = b0 + bs;
    float d0 = h2f(b0), d1 = half ? 0.0f : h2f(b1);
    *sv = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(d0), _mm512_set1_ps(d1));
    *mv = _mm512_setzero_ps();
    if (has_min(type)) {
        float m0 = h2f(b0 + 2), m1 = half ? 0.0f : h2f(b1 + 2);
        *mv = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(m0), _mm512_set1_ps(m1));
    }
    switch (type) {
    case MODEL_TYPE_Q8_0: {
        __m256i q0 = _mm256_loadu_si256((const __m256i *)(b0 + 2));
        __m256i q1 =
            half ? _mm256_set1_epi8((char)0x80) : _mm256_loadu_si256((const __m256i *)(b1 + 2));
        *u = _mm512_xor_si512(_mm512_inserti64x4(_mm512_castsi256_si512(q0), q1, 1),
                              _mm512_set1_epi8((char)0x80));
        break;
    }
    case MODEL_TYPE_Q4_0:
        *u = nibbles2(b0 + 2, b1 + 2, half);
        break;
    case MODEL_TYPE_Q4_1:
        *u = nibbles2(b0 + 4, b1 + 4, half);
        break;
    default: { /* Q5_0, Q5_1: the fifth bit of weight k is bit k of the block's qh */
        int mn = has_min(type);
        uint64_t qh = rd32(b0 + 2 + 2 * mn) | (half ? 0 : (uint64_t)rd32(b1 + 2 + 2 * mn) << 32);
        *u = _mm512_or_si512(nibbles2(b0 + 6 + 2 * mn, b1 + 6 + 2 * mn, half),
                             _mm512_maskz_mov_epi8((__mmask64)qh, _mm512_set1_epi8(0x10)));
        break;
    }
    }
}

/* The activation row's parts for blocks of 32. */
typedef struct xrow32 {
    const uint8_t *q;
    const float *dl, *sl;
} xrow32;

ALWAYS_INLINE xrow32 x32_of(const uint8_t *xr, const model__qx_layout *l)
{
    xrow32 r = {xr + l->q32, (const float *)(xr + l->dl), (const float *)(xr + l->sl)};
    return r;
}

/* Blocks 2c and 2c + 1 of a per-block array as lanes (0-7 the first, 8-15 the second); with
 * first_only, only lanes 0 and 8 (the rest zero). */
ALWAYS_INLINE __m512 lanes2(const float *p, int c)
{
    double two;
    memcpy(&two, p + 2 * c, sizeof two);
    return _mm512_permutexvar_ps(_mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0),
                                 _mm512_castpd_ps(_mm512_set1_pd(two)));
}

ALWAYS_INLINE __m512 lanes2_first(const float *p, int c)
{
    return _mm512_maskz_mov_ps(0x0101, lanes2(p, c));
}

/* The start of a lane's dot product: minus the codes' bias times the sum of its 4 activation
 * codes (exact). */
ALWAYS_INLINE __m512i bias_init(int bias, __m512i q)
{
    if (!bias)
        return _mm512_setzero_si512();
    return _mm512_sub_epi32(
        _mm512_setzero_si512(),
        _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8((char)bias), q));
}

static int bias_of(int type)
{
    return type == MODEL_TYPE_Q8_0   ? 128
           : type == MODEL_TYPE_Q4_0 ? 8
           : type == MODEL_TYPE_Q5_0 ? 16
                                     : 0;
}

/* One chunk of one output's chain. */
ALWAYS_INLINE __m512 step32(__m512 acc, int mn, __m512i init, __m512i u, __m512 sv, __m512 mv,
                            __m512i q, __m512 dl, __m512 sl)
{
    __m512i dot = _mm512_dpbusd_epi32(init, u, q);
    acc = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(dot), dl), sv, acc);
    return mn ? _mm512_fmadd_ps(mv, sl, acc) : acc;
}

/* Decode, blocks of 32: each weight row decoded chunk by chunk in registers and run against all
 * m (1 to MDIRECT) activation rows. */
ALWAYS_INLINE void direct32(int type, int m, float *y, size_t ldy, const uint8_t *xq, size_t xs,
                            const model__qx_layout *l, const uint8_t *row, int n)
{
    int nc = (n + 63) / 64, mn = has_min(type), bias = bias_of(type);
    __m512 acc[MDIRECT];
    xrow32 xr[MDIRECT];
    for (int i = 0; i < m; i++) {
        acc[i] = _mm512_setzero_ps();
        xr[i] = x32_of(xq + (size_t)i * xs, l);
    }
    for (int c = 0; c < nc; c++) {
        __m512i u;
        __m512 sv, mv;
        w32_chunk(type, row, c, n - 64 * c < 64, &u, &sv, &mv);
        for (int i = 0; i < m; i++) {
            __m512i q = _mm512_loadu_si512(xr[i].q + 64 * c);
            acc[i] = step32(acc[i], mn, bias_init(bias, q), u, sv, mv, q, lanes2(xr[i].dl, c),
                            mn ? lanes2_first(xr[i].sl, c) : _mm512_setzero_ps());
        }
    }
    for (int i = 0; i < m; i++)
        y[(size_t)i * ldy] = _mm512_reduce_add_ps(acc[i]);
}

/* Prefill, blocks of 32: a row decoded into scratch (u, then each block's scale and minimum). */
static void decode32(int type, const uint8_t *row, uint8_t *dst, int n)
{
    int nc = (n + 63) / 64;
    float *sv = (float *)(dst + 64 * (size_t)nc), *mv = sv + 2 * (size_t)nc;
    for (int c = 0; c < nc; c++) {
        __m512i u;
        __m512 s, m;
        w32_chunk(type, row, c, n - 64 * c < 64, &u, &s, &m);
        _mm512_storeu_si512(dst + 64 * c, u);
        sv[2 * c] = s[0];
        sv[2 * c + 1] = s[8];
        mv[2 * c] = m[0];
        mv[2 * c + 1] = m[8];
    }
}

/* A tile's float accumulators: zeroed, and at the end each summed into its output. */
ALWAYS_INLINE void tile_zero(int mr, int nw, __m512 acc[4][4])
{
#pragma GCC unroll 4
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 4
        for (int j = 0; j < nw; j++)
            acc[i][j] = _mm512_setzero_ps();
}

ALWAYS_INLINE void tile_store(int mr, int nw, float *y, size_t ldy, __m512 acc[4][4])
{
#pragma GCC unroll 4
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 4
        for (int j = 0; j < nw; j++)
            y[(size_t)i * ldy + j] = _mm512_reduce_add_ps(acc[i][j]);
}

/* mr activation rows x nw decoded weight rows (ws bytes apart), all of one type. */
ALWAYS_INLINE void tile32(int mr, int nw, int mn, int bias, float *y, size_t ldy, const uint8_t *xq,
                          size_t xs, const model__qx_layout *l, const uint8_t *wd, size_t ws, int n)
{
    int nc = (n + 63) / 64;
    __m512 acc[4][4];
    xrow32 xr[4];
    const uint8_t *wu[4];
    const float *wsv[4], *wmv[4];
#pragma GCC unroll 4
    for (int i = 0; i < mr; i++)
        xr[i] = x32_of(xq + (size_t)i * xs, l);
    tile_zero(mr, nw, acc);
#pragma GCC unroll 4
    for (int j = 0; j < nw; j++) {
        wu[j] = wd + (size_t)j * ws;
        wsv[j] = (const float *)(wu[j] + 64 * (size_t)nc);
        wmv[j] = wsv[j] + 2 * (size_t)nc;
    }
    for (int c = 0; c < nc; c++) {
        __m512i u[4];
        __m512 sv[4], mv[4];
#pragma GCC unroll 4
        for (int j = 0; j < nw; j++) {
            u[j] = _mm512_loadu_si512(wu[j] + 64 * c);
            sv[j] = lanes2(wsv[j], c);
            mv[j] = mn ? lanes2(wmv[j], c) : _mm512_setzero_ps();
        }
#pragma GCC unroll 4
        for (int i = 0; i < mr; i++) {
            __m512i q = _mm512_loadu_si512(xr[i].q + 64 * c), init = bias_init(bias, q);
            __m512 dl = lanes2(xr[i].dl, c);
            __m512 sl = mn ? lanes2_first(xr[i].sl, c) : _mm512_setzero_ps();
#pragma GCC unroll 4
            for (int j = 0; j < nw; j++)
                acc[i][j] = step32(acc[i][j], mn, init, u[j], sv[j], mv[j], q, dl, sl);
        }
    }
    tile_store(mr, nw, y, ldy, acc);
}

/* ---- K-quants ---- */

/* A super-block's header: d, the sub-block scales as 16-bit integers (8 for Q4_K and Q5_K, 16
 * for Q6_K) and the 16 offsets o_s (Q4_K, Q5_K: 8, then zeros). */
ALWAYS_INLINE void wk_head(int type, const uint8_t *b, float *d, __m512i *sc, __m512 *o)
{
    if (type == MODEL_TYPE_Q6_K) {
        __m128i s8 = _mm_loadu_si128((const __m128i *)(b + 192));
        *d = h2f(b + 208);
        *sc = _mm512_castsi256_si512(_mm256_cvtepi8_epi16(s8));
        *o = _mm512_mul_ps(
            _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(s8)), _mm512_set1_ps(-32.0f)),
            _mm512_set1_ps(*d));
        return;
    }
    /* Q4_K, Q5_K: eight 6-bit scales and mins in 12 bytes (model/quant.c k_scale_min). */
    uint32_t w0 = rd32(b + 4), w1 = rd32(b + 8), w2 = rd32(b + 12);
    uint32_t slo = w0 & 0x3F3F3F3Fu, shi = (w2 & 0x0F0F0F0Fu) | ((w0 >> 6) & 0x03030303u) << 4;
    uint32_t mlo = w1 & 0x3F3F3F3Fu, mhi = ((w2 >> 4) & 0x0F0F0F0Fu) | ((w1 >> 6) & 0x03030303u)
                                                                           << 4;
    *d = h2f(b);
    float dmin = h2f(b + 2);
    *sc = _mm512_castsi128_si512(
        _mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)(slo | (uint64_t)shi << 32))));
    __m256 m = _mm256_cvtepi32_ps(
        _mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)(mlo | (uint64_t)mhi << 32))));
    *o = _mm512_zextps256_ps512(_mm256_mul_ps(m, _mm256_set1_ps(-dmin)));
}

/* Each 16-bit pair lane's sub-block scale for chunk k (0-3) of a super-block, from its scales
 * sc: Q6_K's pair lane p takes scale 4 k + p / 8 (16 weights each); Q4_K's and Q5_K's lanes 0-15
 * sub-block 2 k (the low nibbles), 16-31 sub-block 2 k + 1. */
ALWAYS_INLINE __m512i k_s16(int q6, int k, __m512i sc)
{
    static const int16_t p8[32] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                   2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3};
    if (q6)
        return _mm512_permutexvar_epi16(
            _mm512_add_epi16(_mm512_loadu_si512(p8), _mm512_set1_epi16((short)(4 * k))), sc);
    return _mm512_permutexvar_epi16(_mm512_mask_blend_epi16(0xFFFF0000u,
                                                            _mm512_set1_epi16((short)(2 * k)),
                                                            _mm512_set1_epi16((short)(2 * k + 1))),
                                    sc);
}

/* Chunk k (0-3) of a super-block: 64 codes u and each 16-bit pair lane's sub-block scale. */
ALWAYS_INLINE void wk_chunk(int type, const uint8_t *b, int k, __m512i sc, __m512i *u, __m512i *s16)
{
    const __m512i lo4 = _mm512_set1_epi8(0x0F);
    if (type == MODEL_TYPE_Q6_K) {
        /* Half h = k / 2 of the super-block, its first or second 64 weights; pair lane p takes
         * scale 4 k + p / 8 (16 weights each). */
        int h = k >> 1, second = k & 1;
        __m512i Q = _mm512_loadu_si512(b + 64 * h);
        __m256i hh = _mm256_loadu_si256((const __m256i *)(b + 128 + 32 * h));
        __m512i hz = _mm512_inserti64x4(_mm512_castsi256_si512(hh), hh, 1);
        int s0 = second ? 4 : 0;
        __m512i hs = _mm512_mask_blend_epi64(0xF0, _mm512_srl_epi16(hz, _mm_cvtsi32_si128(s0)),
                                             _mm512_srl_epi16(hz, _mm_cvtsi32_si128(s0 + 2)));
        hs = _mm512_slli_epi16(_mm512_and_si512(hs, _mm512_set1_epi8(3)), 4);
        __m512i lo = second ? _mm512_srli_epi16(Q, 4) : Q;
        *u = _mm512_or_si512(_mm512_and_si512(lo, lo4), hs);
        *s16 = k_s16(1, k, sc);
        return;
    }
    int five = type == MODEL_TYPE_Q5_K;
    __m256i q = _mm256_loadu_si256((const __m256i *)(b + (five ? 48 : 16) + 32 * k));
    __m512i z = _mm512_inserti64x4(_mm512_castsi256_si512(q), q, 1);
    *u = _mm512_and_si512(_mm512_mask_blend_epi64(0xF0, z, _mm512_srli_epi16(z, 4)), lo4);
    if (five) {
        __m256i h = _mm256_loadu_si256((const __m256i *)(b + 16));
        __m512i hz = _mm512_inserti64x4(_mm512_castsi256_si512(h), h, 1);
        __m512i bit = _mm512_mask_blend_epi64(0xF0, _mm512_srl_epi16(hz, _mm_cvtsi32_si128(2 * k)),
                                              _mm512_srl_epi16(hz, _mm_cvtsi32_si128(2 * k + 1)));
        bit = _mm512_and_si512(bit, _mm512_set1_epi8(1));
        *u = _mm512_or_si512(*u, _mm512_slli_epi16(bit, 4));
    }
    *s16 = k_s16(0, k, sc);
}

static size_t sb_bytes(int type)
{
    return type == MODEL_TYPE_Q4_K ? 144 : type == MODEL_TYPE_Q5_K ? 176 : 210;
}

/* The activation row's parts for K-quants. */
typedef struct xrowk {
    const int8_t *q;
    const float *dk, *b16, *b32;
} xrowk;

ALWAYS_INLINE xrowk xk_of(const uint8_t *xr, const model__qx_layout *l)
{
    xrowk r = {(const int8_t *)(xr + l->qk), (const float *)(xr + l->dk),
               (const float *)(xr + l->bk16), (const float *)(xr + l->bk32)};
    return r;
}

/* The offsets' partners of super-block s: dk sum qk per 16 (Q6_K) or per 32 (8, then zeros). */
ALWAYS_INLINE __m512 xk_b(const xrowk *x, int q6, int s)
{
    return q6 ? _mm512_loadu_ps(x->b16 + 16 * s) : _mm512_maskz_loadu_ps(0x00FF, x->b32 + 8 * s);
}

/* The end of a super-block in an output's chain. */
ALWAYS_INLINE __m512 endk(__m512 acc, __m512i isum, __m512 ddk, __m512 o, __m512 b)
{
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), ddk, acc);
    return _mm512_fmadd_ps(o, b, acc);
}

/* Decode, K-quants: as direct32. */
ALWAYS_INLINE void directk(int type, int m, float *y, size_t ldy, const uint8_t *xq, size_t xs,
                           const model__qx_layout *l, const uint8_t *row, int n)
{
    int q6 = type == MODEL_TYPE_Q6_K;
    size_t bs = sb_bytes(type);
    __m512 acc[MDIRECT];
    xrowk xr[MDIRECT];
    for (int i = 0; i < m; i++) {
        acc[i] = _mm512_setzero_ps();
        xr[i] = xk_of(xq + (size_t)i * xs, l);
    }
    for (int s = 0; s < n / 256; s++) {
        const uint8_t *b = row + (size_t)s * bs;
        float d;
        __m512i sc, isum[MDIRECT];
        __m512 o;
        wk_head(type, b, &d, &sc, &o);
        for (int i = 0; i < m; i++)
            isum[i] = _mm512_setzero_si512();
        for (int k = 0; k < 4; k++) {
            __m512i u, s16;
            wk_chunk(type, b, k, sc, &u, &s16);
            for (int i = 0; i < m; i++)
                isum[i] = _mm512_dpwssd_epi32(
                    isum[i],
                    _mm512_maddubs_epi16(u, _mm512_loadu_si512(xr[i].q + 256 * s + 64 * k)), s16);
        }
        for (int i = 0; i < m; i++)
            acc[i] = endk(acc[i], isum[i], _mm512_set1_ps(d * xr[i].dk[s]), o, xk_b(&xr[i], q6, s));
    }
    for (int i = 0; i < m; i++)
        y[(size_t)i * ldy] = _mm512_reduce_add_ps(acc[i]);
}

/* Prefill, K-quants: a row decoded into scratch: u (n bytes), then per super-block its 16
 * scales (int16), d and the 16 offsets. */
static void decodek(int type, const uint8_t *row, uint8_t *dst, int n)
{
    int ns = n / 256;
    size_t bs = sb_bytes(type);
    int16_t *sc16 = (int16_t *)(dst + n);
    float *dd = (float *)(sc16 + 16 * ns), *o = dd + ns;
    for (int s = 0; s < ns; s++) {
        const uint8_t *b = row + (size_t)s * bs;
        __m512i sc;
        __m512 ov;
        wk_head(type, b, &dd[s], &sc, &ov);
        _mm256_storeu_si256((__m256i *)(sc16 + 16 * s), _mm512_castsi512_si256(sc));
        _mm512_storeu_ps(o + 16 * s, ov);
        for (int k = 0; k < 4; k++) {
            __m512i u, sv;
            wk_chunk(type, b, k, sc, &u, &sv);
            _mm512_storeu_si512(dst + 256 * s + 64 * k, u);
        }
    }
}

ALWAYS_INLINE void tilek(int mr, int nw, int q6, float *y, size_t ldy, const uint8_t *xq, size_t xs,
                         const model__qx_layout *l, const uint8_t *wd, size_t ws, int n)
{
    int ns = n / 256;
    __m512 acc[4][4];
    xrowk xr[4];
    const uint8_t *wu[4];
    const int16_t *wsc[4];
    const float *wdd[4], *wo[4];
#pragma GCC unroll 4
    for (int i = 0; i < mr; i++)
        xr[i] = xk_of(xq + (size_t)i * xs, l);
    tile_zero(mr, nw, acc);
#pragma GCC unroll 4
    for (int j = 0; j < nw; j++) {
        wu[j] = wd + (size_t)j * ws;
        wsc[j] = (const int16_t *)(wu[j] + n);
        wdd[j] = (const float *)(wsc[j] + 16 * ns);
        wo[j] = wdd[j] + ns;
    }
    for (int s = 0; s < ns; s++) {
        __m512i isum[4][4];
#pragma GCC unroll 4
        for (int i = 0; i < mr; i++)
#pragma GCC unroll 4
            for (int j = 0; j < nw; j++)
                isum[i][j] = _mm512_setzero_si512();
        for (int k = 0; k < 4; k++) {
            __m512i u[4], s16[4];
#pragma GCC unroll 4
            for (int j = 0; j < nw; j++) {
                u[j] = _mm512_loadu_si512(wu[j] + 256 * s + 64 * k);
                s16[j] = k_s16(
                    q6, k,
                    _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(wsc[j] + 16 * s))));
            }
#pragma GCC unroll 4
            for (int i = 0; i < mr; i++) {
                __m512i q = _mm512_loadu_si512(xr[i].q + 256 * s + 64 * k);
#pragma GCC unroll 4
                for (int j = 0; j < nw; j++)
                    isum[i][j] =
                        _mm512_dpwssd_epi32(isum[i][j], _mm512_maddubs_epi16(u[j], q), s16[j]);
            }
        }
#pragma GCC unroll 4
        for (int i = 0; i < mr; i++) {
            __m512 b = xk_b(&xr[i], q6, s), dk = _mm512_set1_ps(xr[i].dk[s]);
            /* d dk as a vector product: the same rounding as directk's scalar one */
#pragma GCC unroll 4
            for (int j = 0; j < nw; j++)
                acc[i][j] =
                    endk(acc[i][j], isum[i][j], _mm512_mul_ps(_mm512_set1_ps(wdd[j][s]), dk),
                         _mm512_loadu_ps(wo[j] + 16 * s), b);
        }
    }
    tile_store(mr, nw, y, ldy, acc);
}

/* ---- Instances and the driver ---- */

typedef void (*direct_fn)(float *, size_t, const uint8_t *, size_t, const model__qx_layout *,
                          const uint8_t *, int);
typedef void (*tile_fn)(float *, size_t, const uint8_t *, size_t, const model__qx_layout *,
                        const uint8_t *, size_t, int, int);

#define DIRECT(T, M)                                                                               \
    static void direct_##T##_##M(float *y, size_t ldy, const uint8_t *xq, size_t xs,               \
                                 const model__qx_layout *l, const uint8_t *row, int n)             \
    {                                                                                              \
        if (kind_k(MODEL_TYPE_##T))                                                                \
            directk(MODEL_TYPE_##T, M, y, ldy, xq, xs, l, row, n);                                 \
        else                                                                                       \
            direct32(MODEL_TYPE_##T, M, y, ldy, xq, xs, l, row, n);                                \
    }
#define DIRECTS(T)                                                                                 \
    DIRECT(T, 1)                                                                                   \
    DIRECT(T, 2) DIRECT(T, 3) DIRECT(T, 4) DIRECT(T, 5) DIRECT(T, 6) DIRECT(T, 7) DIRECT(T, 8)
DIRECTS(Q8_0)
DIRECTS(Q4_0)
DIRECTS(Q4_1)
DIRECTS(Q5_0)
DIRECTS(Q5_1)
DIRECTS(Q4_K)
DIRECTS(Q5_K)
DIRECTS(Q6_K)
#define DIRECT_ROW(T)                                                                              \
    {                                                                                              \
        direct_##T##_1, direct_##T##_2, direct_##T##_3, direct_##T##_4, direct_##T##_5,            \
            direct_##T##_6, direct_##T##_7, direct_##T##_8                                         \
    }

/* The direct instances of type t: m = 1 to MDIRECT. */
static const direct_fn *directs_of(int t)
{
    static const direct_fn q8_0[MDIRECT] = DIRECT_ROW(Q8_0), q4_0[MDIRECT] = DIRECT_ROW(Q4_0),
                           q4_1[MDIRECT] = DIRECT_ROW(Q4_1), q5_0[MDIRECT] = DIRECT_ROW(Q5_0),
                           q5_1[MDIRECT] = DIRECT_ROW(Q5_1), q4_k[MDIRECT] = DIRECT_ROW(Q4_K),
                           q5_k[MDIRECT] = DIRECT_ROW(Q5_K), q6_k[MDIRECT] = DIRECT_ROW(Q6_K);
    switch (t) {
    case MODEL_TYPE_Q8_0:
        return q8_0;
    case MODEL_TYPE_Q4_0:
        return q4_0;
    case MODEL_TYPE_Q4_1:
        return q4_1;
    case MODEL_TYPE_Q5_0:
        return q5_0;
    case MODEL_TYPE_Q5_1:
        return q5_1;
    case MODEL_TYPE_Q4_K:
        return q4_k;
    case MODEL_TYPE_Q5_K:
        return q5_k;
    default:
        return q6_k;
    }
}

/* Tiles: variant v = 0 blocks of 32 without a minimum, 1 with one, 2 K-quants (Q4_K, Q5_K),
 * 3 Q6_K; the last argument is the codes' bias (blocks of 32). */
#define TILE(MR, NW)                                                                               \
    static void tile32_##MR##_##NW(float *y, size_t ldy, const uint8_t *xq, size_t xs,             \
                                   const model__qx_layout *l, const uint8_t *wd, size_t ws, int n, \
                                   int bias)                                                       \
    {                                                                                              \
        tile32(MR, NW, 0, bias, y, ldy, xq, xs, l, wd, ws, n);                                     \
    }                                                                                              \
    static void tile32m_##MR##_##NW(float *y, size_t ldy, const uint8_t *xq, size_t xs,            \
                                    const model__qx_layout *l, const uint8_t *wd, size_t ws,       \
                                    int n, int bias)                                               \
    {                                                                                              \
        tile32(MR, NW, 1, bias, y, ldy, xq, xs, l, wd, ws, n);                                     \
    }                                                                                              \
    static void tilek_##MR##_##NW(float *y, size_t ldy, const uint8_t *xq, size_t xs,              \
                                  const model__qx_layout *l, const uint8_t *wd, size_t ws, int n,  \
                                  int bias)                                                        \
    {                                                                                              \
        (void)bias;                                                                                \
        tilek(MR, NW, 0, y, ldy, xq, xs, l, wd, ws, n);                                            \
    }                                                                                              \
    static void tilek6_##MR##_##NW(float *y, size_t ldy, const uint8_t *xq, size_t xs,             \
                                   const model__qx_layout *l, const uint8_t *wd, size_t ws, int n, \
                                   int bias)                                                       \
    {                                                                                              \
        (void)bias;                                                                                \
        tilek(MR, NW, 1, y, ldy, xq, xs, l, wd, ws, n);                                            \
    }
#define TILES(MR) TILE(MR, 1) TILE(MR, 2) TILE(MR, 3) TILE(MR, 4)
TILES(1)
TILES(2)
TILES(3)
TILES(4)
#define TILE_ROW(P, MR)                                                                            \
    {                                                                                              \
        P##_##MR##_1, P##_##MR##_2, P##_##MR##_3, P##_##MR##_4                                     \
    }
#define TILE_SET(P)                                                                                \
    {                                                                                              \
        TILE_ROW(P, 1), TILE_ROW(P, 2), TILE_ROW(P, 3), TILE_ROW(P, 4)                             \
    }
static const tile_fn tiles[4][4][4] = {TILE_SET(tile32), TILE_SET(tile32m), TILE_SET(tilek),
                                       TILE_SET(tilek6)};

/* Weight rows per tile: 4 (16 chains; a K-quant tile's float accumulators, touched once per
 * super-block, wait in memory while the 16 integer ones run). */
static int tile_nw(int t)
{
    (void)t;
    return 4;
}

static int tile_variant(int t)
{
    return t == MODEL_TYPE_Q6_K ? 3 : kind_k(t) ? 2 : has_min(t) ? 1 : 0;
}

/* Rows [r0, r1) of w, all of segment seg's type, against the m activation rows. */
static void qi8_run(float *y, size_t ldy, const uint8_t *xq, const model__qmat *w, int seg, int r0,
                    int r1, int m, uint8_t *wd)
{
    const model__qseg *sg = &w->seg[seg];
    int n = w->n, t = sg->type, first = 0;
    for (int s = 0; s < seg; s++)
        first += w->seg[s].rows;
    model__qx_layout l = model__qx_lay(n);
    size_t xs = l.bytes, ws = qw_row_bytes(n);
    const uint8_t *rows = sg->data + (size_t)(r0 - first) * sg->row_bytes;
    if (m <= MDIRECT) {
        direct_fn f = directs_of(t)[m - 1];
        for (int r = r0; r < r1; r++, rows += sg->row_bytes)
            f(y + r, ldy, xq, xs, &l, rows, n);
        return;
    }
    int nw = tile_nw(t), v = tile_variant(t), bias = kind_k(t) ? 0 : bias_of(t);
    for (int g = r0; g < r1; g += GROW) {
        int nr = r1 - g < GROW ? r1 - g : GROW;
        for (int j = 0; j < nr; j++) {
            const uint8_t *row = rows + (size_t)(g - r0 + j) * sg->row_bytes;
            if (kind_k(t))
                decodek(t, row, wd + (size_t)j * ws, n);
            else
                decode32(t, row, wd + (size_t)j * ws, n);
        }
        for (int i = 0; i < m; i += 4) {
            int mr = m - i < 4 ? m - i : 4;
            for (int j = 0; j < nr; j += nw) {
                int cols = nr - j < nw ? nr - j : nw;
                tiles[v][mr - 1][cols - 1](y + (size_t)i * ldy + g + j, ldy, xq + (size_t)i * xs,
                                           xs, &l, wd + (size_t)j * ws, ws, n, bias);
            }
        }
    }
}
#endif

void model__qgemm_i8(float *y, size_t ldy, const void *xq, const model__qmat *w, int m, int g0,
                     int g1, void *scratch)
{
#if QI8
    int d = w->d, r = g0 * NRQ, rend = g1 * NRQ < d ? g1 * NRQ : d, first = 0;
    uint8_t *wd = (uint8_t *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63); /* whole lines */
    for (int s = 0; s < w->n_seg && r < rend; s++) {
        int last = first + w->seg[s].rows, e = rend < last ? rend : last;
        if (r < e) {
            qi8_run(y, ldy, xq, w, s, r, e, m, wd);
            r = e;
        }
        first = last;
    }
#else
    (void)y, (void)ldy, (void)xq, (void)w, (void)m, (void)g0, (void)g1, (void)scratch;
#endif
}
