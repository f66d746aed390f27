/* value.c — building and verifying the lower tiers' values (cache_value.h).
 *
 * One place for the format, so the disk tier and the remote tier can never disagree on what a
 * good value is. The checks run cheapest first and the checksum last, over the caller's copy:
 * an LMDB page or a hiredis reply buffer is only read once, into the slot that will be served.
 */
#include "cache_value.h"

#include <stddef.h>
#include <stdio.h>
#include <string.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the tiers' value format is little-endian; this host is not"
#endif
_Static_assert(sizeof(cache_value_hdr) == 88, "value header size");
_Static_assert(offsetof(cache_value_hdr, fingerprint) == 8 &&
                   offsetof(cache_value_hdr, key) == 24 &&
                   offsetof(cache_value_hdr, parent) == 40 &&
                   offsetof(cache_value_hdr, n_tokens) == 56 &&
                   offsetof(cache_value_hdr, payload_bytes) == 64 &&
                   offsetof(cache_value_hdr, checksum) == 72,
               "value header layout");

void cache_value_fmt_init(cache_value_fmt *f, const uint8_t fingerprint[16], int block_tokens,
                          size_t block_floats, int kv_type)
{
    memcpy(f->fingerprint, fingerprint, 16);
    f->block_tokens = (uint32_t)block_tokens;
    f->kv_type = (uint32_t)kv_type;
    f->payload_bytes = block_floats * sizeof(float);
    f->tok_bytes = ((size_t)block_tokens * 4 + 7) & ~(size_t)7;
    f->val_bytes = sizeof(cache_value_hdr) + f->tok_bytes + f->payload_bytes;
}

const char *cache_kv_type_name(uint32_t kv_type, char *buf, size_t cap)
{
    /* ggml's type ids, as model.h numbers them (cache/ does not include model.h). */
    switch (kv_type) {
    case 0:
        return "f32";
    case 1:
        return "f16";
    case 8:
        return "q8_0";
    }
    snprintf(buf, cap, "type %u", kv_type);
    return buf;
}

void cache_value_build_head(const cache_value_fmt *f, void *out, cache_key key, cache_key parent,
                            const int32_t *tokens, const float *data)
{
    uint8_t *p = out;
    XXH128_hash_t h = XXH3_128bits(data, f->payload_bytes);
    cache_value_hdr hdr = {.magic = CACHE_VALUE_MAGIC,
                           .version = CACHE_VALUE_FORMAT,
                           .key = key,
                           .parent = parent,
                           .n_tokens = f->block_tokens,
                           .kv_type = f->kv_type,
                           .payload_bytes = f->payload_bytes,
                           .checksum = {h.low64, h.high64}};
    memcpy(hdr.fingerprint, f->fingerprint, 16);
    memcpy(p, &hdr, sizeof hdr);
    size_t tok = (size_t)f->block_tokens * 4;
    memcpy(p + sizeof hdr, tokens, tok);
    memset(p + sizeof hdr + tok, 0, f->tok_bytes - tok);
}

void cache_value_build(const cache_value_fmt *f, void *out, cache_key key, cache_key parent,
                       const int32_t *tokens, const float *data)
{
    cache_value_build_head(f, out, key, parent, tokens, data);
    memcpy((uint8_t *)out + sizeof(cache_value_hdr) + f->tok_bytes, data, f->payload_bytes);
}

int cache_value_check_head(const cache_value_fmt *f, const void *head, cache_key key,
                           cache_key parent, const int32_t *tokens, const char **why)
{
    const uint8_t *p = head;
    cache_value_hdr h;
    memcpy(&h, p, sizeof h);
    *why = NULL;
    if (h.magic != CACHE_VALUE_MAGIC)
        *why = "bad magic";
    else if (h.version != CACHE_VALUE_FORMAT)
        *why = "wrong format version";
    else if (memcmp(h.fingerprint, f->fingerprint, 16) != 0) {
        *why = "another model's block";
        return CACHE_ENOTFOUND;
    } else if (!cache_key_eq(h.key, key))
        *why = "key mismatch";
    else if (!cache_key_eq(h.parent, parent))
        *why = "parent key mismatch";
    else if (h.n_tokens != f->block_tokens || h.payload_bytes != f->payload_bytes)
        *why = "wrong geometry";
    else if (h.kv_type != f->kv_type)
        *why = "another K/V type";
    else if (memcmp(p + sizeof h, tokens, (size_t)f->block_tokens * 4) != 0)
        *why = "token ids mismatch";
    return *why ? CACHE_ECORRUPT : 0;
}

int cache_value_check_sum(const void *head, uint64_t sum_lo, uint64_t sum_hi, const char **why)
{
    cache_value_hdr h;
    memcpy(&h, head, sizeof h);
    *why = NULL;
    if (sum_lo != h.checksum[0] || sum_hi != h.checksum[1]) {
        *why = "payload checksum mismatch";
        return CACHE_ECORRUPT;
    }
    return 0;
}

int cache_value_check_payload(const cache_value_fmt *f, const void *head, const float *payload,
                              const char **why)
{
    XXH128_hash_t sum = XXH3_128bits(payload, f->payload_bytes);
    return cache_value_check_sum(head, sum.low64, sum.high64, why);
}

int cache_value_verify(const cache_value_fmt *f, const void *val, size_t len, cache_key key,
                       cache_key parent, const int32_t *tokens, float *payload_out,
                       const char **why)
{
    const uint8_t *p = val;
    *why = NULL;
    if (len != f->val_bytes) {
        *why = "wrong length";
        return CACHE_ECORRUPT;
    }
    int rc = cache_value_check_head(f, p, key, parent, tokens, why);
    if (rc != 0)
        return rc;
    memcpy(payload_out, p + sizeof(cache_value_hdr) + f->tok_bytes, f->payload_bytes);
    return cache_value_check_payload(f, p, payload_out, why);
}
