/* quant.c — ggml's weight encodings: half-precision conversions, quantizers and dequantizers
 * (quant.h gives each block layout).
 *
 * The dequantizers are plain loops over a block's weights, written so that the compiler can
 * vectorize them (they run inside the products, once per 32-column tile of weights, see
 * qkernels.c); each weight's value is computed with the same float operations whether a loop is
 * vectorized or not, which is what the kernels' determinism rests on. The quantizers run only
 * when a file is written (synth, convert) and favour clarity: each block's scale comes from its
 * range, the codes are rounded to nearest, and there is no search for better scales such as
 * llama.cpp's quantizers do (our files are random weights or conversions between float types).
 */
#include "quant.h"
#include "model.h"

#include <math.h>
#include <string.h>

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif

/* ---- Half precision ------------------------------------------------------------------------- */

/* The conversions by their bits, for compilers without _Float16 on this target (clang before 15
 * on x86 without AVX512-FP16: the fuzzing build); the same results as the type's conversions
 * (test_model quant_f16_bits compares them over every half and many floats). */
float model__f16_to_f32_bits(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1Fu, m = h & 0x3FFu, u;
    float f;
    if (e == 0x1F) { /* infinity, NaN (quiet, payload kept) */
        u = sign | 0x7F800000u | (m << 13) | (m ? 0x400000u : 0);
    } else if (e) {
        u = sign | ((e + 112) << 23) | (m << 13);
    } else { /* zero and subnormals: m x 2^-24, exact in float */
        f = (float)m * 0x1p-24f;
        memcpy(&u, &f, 4);
        u |= sign;
    }
    memcpy(&f, &u, 4);
    return f;
}

uint16_t model__f32_to_f16_bits(float f)
{
    uint32_t u, a;
    memcpy(&u, &f, 4);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    a = u & 0x7FFFFFFFu;
    if (a > 0x7F800000u) /* NaN: quiet, the payload's top bits */
        return (uint16_t)(sign | 0x7E00u | ((a >> 13) & 0x3FFu));
    if (a >= 0x477FF000u) /* 65520 and up round to infinity */
        return (uint16_t)(sign | 0x7C00u);
    if (a >= 0x38800000u) { /* normal: rebias, round to nearest even at bit 13 */
        uint32_t r = a - 0x38000000u;
        r += 0xFFFu + ((r >> 13) & 1u);
        return (uint16_t)(sign | (r >> 13));
    }
    float v; /* subnormal or zero: |f| / 2^-24 to the nearest even integer (up to 0x400) */
    memcpy(&v, &a, 4);
    return (uint16_t)(sign | (uint16_t)nearbyintf(v * 0x1p24f));
}

#ifdef __FLT16_MAX__
float model__f16_to_f32(uint16_t h)
{
    _Float16 v;
    memcpy(&v, &h, 2);
    return (float)v;
}

uint16_t model__f32_to_f16(float f)
{
    _Float16 v = (_Float16)f;
    uint16_t h;
    memcpy(&h, &v, 2);
    return h;
}
#else
float model__f16_to_f32(uint16_t h)
{
    return model__f16_to_f32_bits(h);
}

uint16_t model__f32_to_f16(float f)
{
    return model__f32_to_f16_bits(f);
}
#endif

float model__bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t model__f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40); /* a quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static uint16_t rd16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static void wr16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

/* ---- Sizes ---------------------------------------------------------------------------------- */

typedef struct qtype {
    int type, block, bytes;
} qtype;

static const qtype qtypes[] = {
    {MODEL_TYPE_F32, 1, 4},      {MODEL_TYPE_F16, 1, 2},      {MODEL_TYPE_BF16, 1, 2},
    {MODEL_TYPE_Q8_0, 32, 34},   {MODEL_TYPE_Q4_0, 32, 18},   {MODEL_TYPE_Q4_1, 32, 20},
    {MODEL_TYPE_Q5_0, 32, 22},   {MODEL_TYPE_Q5_1, 32, 24},   {MODEL_TYPE_Q4_K, 256, 144},
    {MODEL_TYPE_Q5_K, 256, 176}, {MODEL_TYPE_Q6_K, 256, 210},
};

static const qtype *qtype_of(int type)
{
    for (size_t i = 0; i < sizeof qtypes / sizeof qtypes[0]; i++)
        if (qtypes[i].type == type)
            return &qtypes[i];
    return NULL;
}

int model__quant_supported(int type)
{
    return qtype_of(type) != NULL;
}

size_t model__quant_row_bytes(int type, int n)
{
    const qtype *q = qtype_of(type);
    if (!q || n < 0 || n % q->block != 0)
        return 0;
    return (size_t)(n / q->block) * (size_t)q->bytes;
}

/* ---- K-quant scales ------------------------------------------------------------------------- */

/* The 6-bit (scale, min) pair of sub-block j (0..7) from a K-quant's 12 scale bytes. */
static void k_scale_min(const uint8_t *q, int j, int *sc, int *m)
{
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

/* The inverse: eight 6-bit scales and mins into 12 bytes. */
static void k_scale_pack(uint8_t *q, const uint8_t sc[8], const uint8_t m[8])
{
    for (int j = 0; j < 4; j++) {
        q[j] = (uint8_t)(sc[j] | ((sc[j + 4] >> 4) << 6));
        q[j + 4] = (uint8_t)(m[j] | ((m[j + 4] >> 4) << 6));
        q[j + 8] = (uint8_t)((sc[j + 4] & 0xF) | ((m[j + 4] & 0xF) << 4));
    }
}

/* ---- Dequantizers --------------------------------------------------------------------------- */

static void dq_q8_0(const uint8_t *b, float *y, int nb)
{
    for (int i = 0; i < nb; i++, b += 34, y += 32) {
        float d = model__f16_to_f32(rd16(b));
        const int8_t *q = (const int8_t *)(b + 2);
        for (int l = 0; l < 32; l++)
            y[l] = d * (float)q[l];
    }
}

static void dq_q4_0(const uint8_t *b, float *y, int nb)
{
    for (int i = 0; i < nb; i++, b += 18, y += 32) {
        float d = model__f16_to_f32(rd16(b));
        const uint8_t *q = b + 2;
        for (int l = 0; l < 16; l++) {
            y[l] = d * (float)((q[l] & 0xF) - 8);
            y[l + 16] = d * (float)((q[l] >> 4) - 8);
        }
    }
}

static void dq_q4_1(const uint8_t *b, float *y, int nb)
{
    for (int i = 0; i < nb; i++, b += 20, y += 32) {
        float d = model__f16_to_f32(rd16(b)), m = model__f16_to_f32(rd16(b + 2));
        const uint8_t *q = b + 4;
        for (int l = 0; l < 16; l++) {
            y[l] = d * (float)(q[l] & 0xF) + m;
            y[l + 16] = d * (float)(q[l] >> 4) + m;
        }
    }
}

/* Q5_0 and Q5_1: the fifth bit of weight l (0..31) is bit l of the 32-bit qh. */
static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void dq_q5_0(const uint8_t *b, float *y, int nb)
{
    for (int i = 0; i < nb; i++, b += 22, y += 32) {
        float d = model__f16_to_f32(rd16(b));
        uint32_t qh = rd32(b + 2);
        const uint8_t *q = b + 6;
        for (int l = 0; l < 16; l++) {
            int lo = (q[l] & 0xF) | (int)(((qh >> l) & 1) << 4);
            int hi = (q[l] >> 4) | (int)(((qh >> (l + 16)) & 1) << 4);
            y[l] = d * (float)(lo - 16);
            y[l + 16] = d * (float)(hi - 16);
        }
    }
}

static void dq_q5_1(const uint8_t *b, float *y, int nb)
{
    for (int i = 0; i < nb; i++, b += 24, y += 32) {
        float d = model__f16_to_f32(rd16(b)), m = model__f16_to_f32(rd16(b + 2));
        uint32_t qh = rd32(b + 4);
        const uint8_t *q = b + 8;
        for (int l = 0; l < 16; l++) {
            int lo = (q[l] & 0xF) | (int)(((qh >> l) & 1) << 4);
            int hi = (q[l] >> 4) | (int)(((qh >> (l + 16)) & 1) << 4);
            y[l] = d * (float)lo + m;
            y[l + 16] = d * (float)hi + m;
        }
    }
}

static void dq_q4_k(const uint8_t *b, float *y, int nb)
{
    for (int i = 0; i < nb; i++, b += 144) {
        float d = model__f16_to_f32(rd16(b)), dmin = model__f16_to_f32(rd16(b + 2));
        const uint8_t *sc = b + 4, *q = b + 16;
        for (int c = 0; c < 4; c++, q += 32, y += 64) {
            int s0, m0, s1, m1;
            k_scale_min(sc, 2 * c, &s0, &m0);
            k_scale_min(sc, 2 * c + 1, &s1, &m1);
            float d0 = d * (float)s0, n0 = dmin * (float)m0;
            float d1 = d * (float)s1, n1 = dmin * (float)m1;
            for (int l = 0; l < 32; l++)
                y[l] = d0 * (float)(q[l] & 0xF) - n0;
            for (int l = 0; l < 32; l++)
                y[l + 32] = d1 * (float)(q[l] >> 4) - n1;
        }
    }
}

static void dq_q5_k(const uint8_t *b, float *y, int nb)
{
    for (int i = 0; i < nb; i++, b += 176) {
        float d = model__f16_to_f32(rd16(b)), dmin = model__f16_to_f32(rd16(b + 2));
        const uint8_t *sc = b + 4, *qh = b + 16, *q = b + 48;
        for (int c = 0; c < 4; c++, q += 32, y += 64) {
            int s0, m0, s1, m1;
            k_scale_min(sc, 2 * c, &s0, &m0);
            k_scale_min(sc, 2 * c + 1, &s1, &m1);
            float d0 = d * (float)s0, n0 = dmin * (float)m0;
            float d1 = d * (float)s1, n1 = dmin * (float)m1;
            for (int l = 0; l < 32; l++)
                y[l] = d0 * (float)((q[l] & 0xF) | (((qh[l] >> (2 * c)) & 1) << 4)) - n0;
            for (int l = 0; l < 32; l++)
                y[l + 32] = d1 * (float)((q[l] >> 4) | (((qh[l] >> (2 * c + 1)) & 1) << 4)) - n1;
        }
    }
}

static void dq_q6_k(const uint8_t *b, float *y, int nb)
{
    for (int i = 0; i < nb; i++, b += 210) {
        const uint8_t *ql = b, *qh = b + 128;
        const int8_t *sc = (const int8_t *)(b + 192);
        float d = model__f16_to_f32(rd16(b + 208));
        for (int h = 0; h < 2; h++, ql += 64, qh += 32, sc += 8, y += 128) {
            float ds[8];
            for (int s = 0; s < 8; s++)
                ds[s] = d * (float)sc[s];
            for (int l = 0; l < 32; l++) {
                int is = l / 16;
                y[l] = ds[is] * (float)(((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32);
                y[l + 32] =
                    ds[is + 2] * (float)(((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32);
                y[l + 64] = ds[is + 4] * (float)(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
                y[l + 96] =
                    ds[is + 6] * (float)(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
            }
        }
    }
}

/* F16 to float is exact, so the conversion instruction (F16C, 8 at a time; every x86-64 CPU with
 * AVX2 has it) gives the loop's values; it runs where the CPU has it, whatever the build. */
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx,f16c"))) static int dq_f16_wide(const uint8_t *b, float *y, int n)
{
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(b + 2 * i))));
    return i;
}

static int has_f16c(void)
{
    static int known = -1; /* a race writes the same value */
    if (known < 0) {
        unsigned a, b, c,
            d; /* F16C by cpuid: not every compiler's __builtin_cpu_supports names it */
        __builtin_cpu_init();
        known = __builtin_cpu_supports("avx") && __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
    }
    return known;
}
#endif

static void dq_f16(const uint8_t *b, float *y, int n)
{
    int i = 0;
#if defined(__x86_64__) && defined(__GNUC__)
    if (has_f16c())
        i = dq_f16_wide(b, y, n);
#endif
    for (; i < n; i++)
        y[i] = model__f16_to_f32((uint16_t)(b[2 * i] | b[2 * i + 1] << 8));
}

void model__dequant_row(int type, const void *src, float *y, int n)
{
    const uint8_t *b = src;
    switch (type) {
    case MODEL_TYPE_F32:
        memcpy(y, src, (size_t)n * sizeof(float));
        break;
    case MODEL_TYPE_F16:
        dq_f16(b, y, n);
        break;
    case MODEL_TYPE_BF16:
        for (int i = 0; i < n; i++) {
            uint32_t u = (uint32_t)rd16(b + 2 * i) << 16;
            memcpy(&y[i], &u, 4);
        }
        break;
    case MODEL_TYPE_Q8_0:
        dq_q8_0(b, y, n / 32);
        break;
    case MODEL_TYPE_Q4_0:
        dq_q4_0(b, y, n / 32);
        break;
    case MODEL_TYPE_Q4_1:
        dq_q4_1(b, y, n / 32);
        break;
    case MODEL_TYPE_Q5_0:
        dq_q5_0(b, y, n / 32);
        break;
    case MODEL_TYPE_Q5_1:
        dq_q5_1(b, y, n / 32);
        break;
    case MODEL_TYPE_Q4_K:
        dq_q4_k(b, y, n / 256);
        break;
    case MODEL_TYPE_Q5_K:
        dq_q5_k(b, y, n / 256);
        break;
    case MODEL_TYPE_Q6_K:
        dq_q6_k(b, y, n / 256);
        break;
    }
}

/* ---- Quantizers ----------------------------------------------------------------------------- */

static int clampi(int v, int lo, int hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

static void q_q8_0(const float *x, uint8_t *b, int nb)
{
    for (int i = 0; i < nb; i++, x += 32, b += 34) {
        float amax = 0;
        for (int l = 0; l < 32; l++)
            amax = fmaxf(amax, fabsf(x[l]));
        float d = amax / 127.0f, id = d > 0 ? 1.0f / d : 0.0f;
        wr16(b, model__f32_to_f16(d));
        for (int l = 0; l < 32; l++)
            b[2 + l] = (uint8_t)(int8_t)clampi((int)lrintf(x[l] * id), -127, 127);
    }
}

static void q_q4_0(const float *x, uint8_t *b, int nb)
{
    for (int i = 0; i < nb; i++, x += 32, b += 18) {
        /* The value of largest magnitude maps to -8, so both signs use the full range. */
        float mx = 0;
        for (int l = 0; l < 32; l++)
            if (fabsf(x[l]) > fabsf(mx))
                mx = x[l];
        float d = mx / -8.0f, id = d != 0 ? 1.0f / d : 0.0f;
        wr16(b, model__f32_to_f16(d));
        for (int l = 0; l < 16; l++) {
            int lo = clampi((int)lrintf(x[l] * id) + 8, 0, 15);
            int hi = clampi((int)lrintf(x[l + 16] * id) + 8, 0, 15);
            b[2 + l] = (uint8_t)(lo | (hi << 4));
        }
    }
}

/* Q4_1 and Q5_1 (levels 15 or 31): each block maps [lo, hi] onto 0..levels, w = d * q + m. Fills
 * d and m (as stored) and the codes q[32]. */
static void q_min_range(const float *x, int levels, uint8_t *b, uint8_t *q)
{
    float lo = x[0], hi = x[0];
    for (int l = 1; l < 32; l++) {
        lo = fminf(lo, x[l]);
        hi = fmaxf(hi, x[l]);
    }
    uint16_t dh = model__f32_to_f16((hi - lo) / (float)levels), mh = model__f32_to_f16(lo);
    wr16(b, dh);
    wr16(b + 2, mh);
    float d = model__f16_to_f32(dh), m = model__f16_to_f32(mh), id = d > 0 ? 1.0f / d : 0.0f;
    for (int l = 0; l < 32; l++)
        q[l] = (uint8_t)clampi((int)lrintf((x[l] - m) * id), 0, levels);
}

static void q_q4_1(const float *x, uint8_t *b, int nb)
{
    uint8_t q[32];
    for (int i = 0; i < nb; i++, x += 32, b += 20) {
        q_min_range(x, 15, b, q);
        for (int l = 0; l < 16; l++)
            b[4 + l] = (uint8_t)(q[l] | (q[l + 16] << 4));
    }
}

/* The low nibbles of 32 five-bit codes into qs[16] and their fifth bits into qh (4 bytes). */
static void pack_q5(const uint8_t *q, uint8_t *qh, uint8_t *qs)
{
    uint32_t h = 0;
    for (int l = 0; l < 16; l++) {
        qs[l] = (uint8_t)((q[l] & 0xF) | ((q[l + 16] & 0xF) << 4));
        h |= (uint32_t)(q[l] >> 4) << l | (uint32_t)(q[l + 16] >> 4) << (l + 16);
    }
    for (int k = 0; k < 4; k++)
        qh[k] = (uint8_t)(h >> (8 * k));
}

static void q_q5_0(const float *x, uint8_t *b, int nb)
{
    uint8_t q[32];
    for (int i = 0; i < nb; i++, x += 32, b += 22) {
        /* As Q4_0: the value of largest magnitude maps to -16. */
        float mx = 0;
        for (int l = 0; l < 32; l++)
            if (fabsf(x[l]) > fabsf(mx))
                mx = x[l];
        float d = mx / -16.0f, id = d != 0 ? 1.0f / d : 0.0f;
        wr16(b, model__f32_to_f16(d));
        for (int l = 0; l < 32; l++)
            q[l] = (uint8_t)clampi((int)lrintf(x[l] * id) + 16, 0, 31);
        pack_q5(q, b + 2, b + 6);
    }
}

static void q_q5_1(const float *x, uint8_t *b, int nb)
{
    uint8_t q[32];
    for (int i = 0; i < nb; i++, x += 32, b += 24) {
        q_min_range(x, 31, b, q);
        pack_q5(q, b + 4, b + 8);
    }
}

/* Sub-block scales and mins of a Q4_K or Q5_K super-block (levels: 15 or 31): each sub-block
 * of 32 maps [min(0, lo), hi] onto 0..levels; the scales and mins are then 6-bit multiples of
 * the super-block's d and dmin. Fills codes q[256]. */
static void k_quant(const float *x, int levels, uint8_t *b, uint8_t *q)
{
    float scale[8], mn[8], smax = 0, mmax = 0;
    for (int s = 0; s < 8; s++) {
        float lo = 0, hi = 0;
        for (int l = 0; l < 32; l++) {
            lo = fminf(lo, x[32 * s + l]);
            hi = fmaxf(hi, x[32 * s + l]);
        }
        scale[s] = (hi - lo) / (float)levels;
        mn[s] = -lo;
        smax = fmaxf(smax, scale[s]);
        mmax = fmaxf(mmax, mn[s]);
    }
    float d = smax / 63.0f, dmin = mmax / 63.0f;
    uint16_t dh = model__f32_to_f16(d), mh = model__f32_to_f16(dmin);
    wr16(b, dh);
    wr16(b + 2, mh);
    d = model__f16_to_f32(dh);
    dmin = model__f16_to_f32(mh);
    uint8_t ls[8], lm[8];
    for (int s = 0; s < 8; s++) {
        ls[s] = (uint8_t)(d > 0 ? clampi((int)lrintf(scale[s] / d), 0, 63) : 0);
        lm[s] = (uint8_t)(dmin > 0 ? clampi((int)lrintf(mn[s] / dmin), 0, 63) : 0);
        float ds = d * (float)ls[s], ms = dmin * (float)lm[s];
        for (int l = 0; l < 32; l++)
            q[32 * s + l] =
                (uint8_t)(ds > 0 ? clampi((int)lrintf((x[32 * s + l] + ms) / ds), 0, levels) : 0);
    }
    k_scale_pack(b + 4, ls, lm);
}

static void q_q4_k(const float *x, uint8_t *b, int nb)
{
    uint8_t q[256];
    for (int i = 0; i < nb; i++, x += 256, b += 144) {
        k_quant(x, 15, b, q);
        for (int c = 0; c < 4; c++)
            for (int l = 0; l < 32; l++)
                b[16 + 32 * c + l] = (uint8_t)(q[64 * c + l] | (q[64 * c + 32 + l] << 4));
    }
}

static void q_q5_k(const float *x, uint8_t *b, int nb)
{
    uint8_t q[256];
    for (int i = 0; i < nb; i++, x += 256, b += 176) {
        k_quant(x, 31, b, q);
        uint8_t *qh = b + 16, *ql = b + 48;
        memset(qh, 0, 32);
        for (int c = 0; c < 4; c++)
            for (int l = 0; l < 32; l++) {
                int a = q[64 * c + l], e = q[64 * c + 32 + l];
                ql[32 * c + l] = (uint8_t)((a & 0xF) | ((e & 0xF) << 4));
                qh[l] |= (uint8_t)(((a >> 4) << (2 * c)) | ((e >> 4) << (2 * c + 1)));
            }
    }
}

static void q_q6_k(const float *x, uint8_t *b, int nb)
{
    for (int i = 0; i < nb; i++, x += 256, b += 210) {
        float sc[16], smax = 0;
        for (int s = 0; s < 16; s++) {
            float amax = 0;
            for (int l = 0; l < 16; l++)
                amax = fmaxf(amax, fabsf(x[16 * s + l]));
            sc[s] = amax / 31.0f;
            smax = fmaxf(smax, sc[s]);
        }
        uint16_t dh = model__f32_to_f16(smax / 127.0f);
        float d = model__f16_to_f32(dh);
        int8_t *scales = (int8_t *)(b + 192);
        uint8_t L[256];
        for (int s = 0; s < 16; s++) {
            int ls = d > 0 ? clampi((int)lrintf(sc[s] / d), 0, 127) : 0;
            scales[s] = (int8_t)ls;
            float ds = d * (float)ls;
            for (int l = 0; l < 16; l++)
                L[16 * s + l] =
                    (uint8_t)(ds > 0 ? clampi((int)lrintf(x[16 * s + l] / ds), -32, 31) + 32 : 32);
        }
        wr16(b + 208, dh);
        uint8_t *ql = b, *qh = b + 128;
        for (int h = 0; h < 2; h++, ql += 64, qh += 32) {
            const uint8_t *Lh = L + 128 * h;
            for (int l = 0; l < 32; l++) {
                ql[l] = (uint8_t)((Lh[l] & 0xF) | ((Lh[l + 64] & 0xF) << 4));
                ql[l + 32] = (uint8_t)((Lh[l + 32] & 0xF) | ((Lh[l + 96] & 0xF) << 4));
                qh[l] = (uint8_t)((Lh[l] >> 4) | ((Lh[l + 32] >> 4) << 2) |
                                  ((Lh[l + 64] >> 4) << 4) | ((Lh[l + 96] >> 4) << 6));
            }
        }
    }
}

void model__quant_row(int type, const float *x, void *dst, int n)
{
    uint8_t *b = dst;
    switch (type) {
    case MODEL_TYPE_F32:
        memcpy(dst, x, (size_t)n * sizeof(float));
        break;
    case MODEL_TYPE_F16:
        for (int i = 0; i < n; i++)
            wr16(b + 2 * i, model__f32_to_f16(x[i]));
        break;
    case MODEL_TYPE_BF16:
        for (int i = 0; i < n; i++)
            wr16(b + 2 * i, model__f32_to_bf16(x[i]));
        break;
    case MODEL_TYPE_Q8_0:
        q_q8_0(x, b, n / 32);
        break;
    case MODEL_TYPE_Q4_0:
        q_q4_0(x, b, n / 32);
        break;
    case MODEL_TYPE_Q4_1:
        q_q4_1(x, b, n / 32);
        break;
    case MODEL_TYPE_Q5_0:
        q_q5_0(x, b, n / 32);
        break;
    case MODEL_TYPE_Q5_1:
        q_q5_1(x, b, n / 32);
        break;
    case MODEL_TYPE_Q4_K:
        q_q4_k(x, b, n / 256);
        break;
    case MODEL_TYPE_Q5_K:
        q_q5_k(x, b, n / 256);
        break;
    case MODEL_TYPE_Q6_K:
        q_q6_k(x, b, n / 256);
        break;
    }
}
