/* quant.h — ggml's weight encodings, private to model/ (the tests, synth and the GGUF writer use
 * it too): half-precision conversions, and for each supported type a row quantizer (float to
 * the type's blocks) and a row dequantizer (blocks to float).
 *
 * Block layouts, as GGUF files store them (little-endian, packed, no padding):
 *   F16   2 bytes per weight: IEEE half.        BF16  2 bytes: the float's upper 16 bits.
 *   Q8_0  32 weights in 34 bytes: half d, int8 q[32];           w = d * q.
 *   Q4_0  32 weights in 18 bytes: half d, uint8 qs[16];         w = d * (nibble - 8); weight
 *         j < 16 is qs[j]'s low nibble, weight j + 16 its high nibble.
 *   Q4_1  32 weights in 20 bytes: half d, half m, qs[16] as Q4_0;  w = d * nibble + m.
 *   Q5_0  32 weights in 22 bytes: half d, 4 bytes qh, qs[16] as Q4_0; the fifth bit of weight j
 *         is bit j of qh (little-endian u32); w = d * (q - 16), q in 0..31.
 *   Q5_1  32 weights in 24 bytes: half d, half m, qh, qs[16];   w = d * q + m.
 *         (llama.cpp's Q4_K_M and Q5_K_M files use Q5_0, Q5_1 and Q8_0 for matrices whose rows
 *         are not a whole number of 256-weight blocks.)
 *   Q4_K  256 weights in 144 bytes: half d, half dmin, 12 bytes of eight 6-bit (scale, min)
 *         pairs, 128 bytes of nibbles; sub-block s of 32: w = d * sc_s * q - dmin * m_s.
 *         Each 64 weights take 32 bytes: the first 32 the low nibbles, the next 32 the high.
 *   Q5_K  256 weights in 176 bytes: half d, half dmin, 12 scale bytes, 32 bytes of fifth bits
 *         (bit s of qh[l] is weight l of sub-block s), 128 bytes of nibbles as Q4_K; q in 0..31.
 *   Q6_K  256 weights in 210 bytes: 128 bytes of low nibbles, 64 bytes of high 2-bit pairs,
 *         16 int8 scales (one per 16 weights), half d; w = d * sc * (q - 32), q in 0..63.
 * The dequantizers compute each weight with one fixed sequence of float operations (the same on
 * every build, vector or scalar), so a weight's float value is a pure function of its bytes.
 */
#ifndef PREFIXD_MODEL_QUANT_H
#define PREFIXD_MODEL_QUANT_H

#include <stddef.h>
#include <stdint.h>

/* A pseudo type for synth and convert: llama.cpp's Q4_K_M mix (Q4_K, with Q6_K for the output
 * and tied embedding, and for attn_v and ffn_down in the first and last eighth of the layers
 * and every third layer between). Never stored in a file. */
#define MODEL__TYPE_Q4_K_M 1000

float model__f16_to_f32(uint16_t h);
uint16_t model__f32_to_f16(float f); /* round to nearest even */
/* The same by their bits (what a compiler without _Float16 uses; tests compare the two). */
float model__f16_to_f32_bits(uint16_t h);
uint16_t model__f32_to_f16_bits(float f);
float model__bf16_to_f32(uint16_t h);
uint16_t model__f32_to_bf16(float f); /* round to nearest even; NaN stays NaN */

/* Whether the quantizer and dequantizer below take type (a MODEL_TYPE_* id). */
int model__quant_supported(int type);

/* Bytes a row of n weights takes in type (n a multiple of the type's block), or 0 when the type
 * is unsupported or n is not a whole number of blocks. */
size_t model__quant_row_bytes(int type, int n);

/* Encodes n floats x as type into dst (model__quant_row_bytes(type, n) bytes). The scales come
 * from each block's range (no search): good enough for synthetic weights and for conversion
 * between float types, which are exact or rounded to nearest. */
void model__quant_row(int type, const float *x, void *dst, int n);

/* Decodes n weights of type at src into y. */
void model__dequant_row(int type, const void *src, float *y, int n);

#endif
