/* cache_value.h — the verified value format that the lower tiers share: a block as the disk tier
 * (cache_disk.h) stores it in LMDB and the remote tier (cache_remote.h) stores it in Redis.
 *
 * A value is the header below (88 bytes), then the block's token ids (block_tokens i32, padded
 * with zeros to a multiple of 8 bytes), then its payload (block_floats 4-byte words: K/V in the
 * header's K/V type, model.h's layout), little-endian. The header names everything a load must
 * confirm: the model (fingerprint), the geometry (token count, payload length, K/V type), the
 * block's own key and its parent's key, and an XXH3-128 checksum of
 * the payload; the token ids are compared with the caller's. A value that fails any check is
 * never served. Both tiers build values and check them only through the two functions here, so
 * what "verified" means is written once.
 *
 * Pure functions on caller's memory; any thread.
 */
#ifndef PREFIXD_CACHE_VALUE_H
#define PREFIXD_CACHE_VALUE_H

#include <stddef.h>
#include <stdint.h>

#include "cache.h"

#define CACHE_VALUE_FORMAT 1          /* the header's version field */
#define CACHE_VALUE_MAGIC 0x42584650u /* "PFXB" as little-endian bytes */

/* The header that starts every value (88 bytes; every field naturally aligned, so there is no
 * padding: value.c asserts each offset). Its bytes are the stored bytes. */
typedef struct cache_value_hdr {
    uint32_t magic;          /* 0: CACHE_VALUE_MAGIC */
    uint32_t version;        /* 4: CACHE_VALUE_FORMAT */
    uint8_t fingerprint[16]; /* 8: the model's fingerprint */
    cache_key key;           /* 24: the block's key (lo, hi) */
    cache_key parent;        /* 40: its parent's key */
    uint32_t n_tokens;       /* 56: block_tokens */
    uint32_t kv_type;        /* 60: the K/V element type (cache_opts.kv_type: 0 f32, 1 f16,
                                8 q8_0); values written before types existed hold 0, as F32
                                blocks do */
    uint64_t payload_bytes;  /* 64: block_floats * 4 */
    uint64_t checksum[2];    /* 72: XXH3-128 of the payload: low 64 bits, high 64 bits */
} cache_value_hdr;

/* The sizes of one store's values (plain data, filled by cache_value_fmt_init()). */
typedef struct cache_value_fmt {
    uint8_t fingerprint[16];
    uint32_t block_tokens;
    uint32_t kv_type;     /* cache_opts.kv_type */
    size_t payload_bytes; /* block_floats * 4 */
    size_t tok_bytes;     /* block_tokens * 4, padded to 8 */
    size_t val_bytes;     /* header + token ids + payload: the length of every value */
} cache_value_fmt;

void cache_value_fmt_init(cache_value_fmt *f, const uint8_t fingerprint[16], int block_tokens,
                          size_t block_floats, int kv_type);

/* The name of a K/V type id for messages ("f32", "f16", "q8_0", else "type N" in buf). */
const char *cache_kv_type_name(uint32_t kv_type, char *buf, size_t cap);

/* Writes the value of one block into out (f->val_bytes bytes, caller's memory): the header (with
 * the checksum of data), tokens (block_tokens ids), data (block_floats floats). */
void cache_value_build(const cache_value_fmt *f, void *out, cache_key key, cache_key parent,
                       const int32_t *tokens, const float *data);

/* Writes only the head of that value into out (sizeof(cache_value_hdr) + f->tok_bytes bytes):
 * the header (with the checksum of data) and the padded token ids; the payload, data itself,
 * follows them in the stored value (the remote tier sends it from where it lies). */
void cache_value_build_head(const cache_value_fmt *f, void *out, cache_key key, cache_key parent,
                            const int32_t *tokens, const float *data);

/* Checks the stored bytes val[0..len) against what the caller expects (key, parent, tokens) and
 * copies the payload into payload_out (block_floats floats) as it verifies the checksum over the
 * copy (so what is checked is what is served, whatever happens to val meanwhile). Returns 0
 * (payload_out holds the verified block); CACHE_ENOTFOUND (a well-formed value of another model:
 * *why says so); CACHE_ECORRUPT (*why names the failed check: wrong length, bad magic, wrong
 * format version, key mismatch, parent key mismatch, wrong geometry, token ids mismatch, payload
 * checksum mismatch). On failure payload_out is undefined. *why is static text. */
int cache_value_verify(const cache_value_fmt *f, const void *val, size_t len, cache_key key,
                       cache_key parent, const int32_t *tokens, float *payload_out,
                       const char **why);

/* The two halves of cache_value_verify(), for a reader that puts the payload where it belongs
 * itself (the remote tier reads it from the socket straight into the slot): head is the value's
 * first sizeof(cache_value_hdr) + f->tok_bytes bytes (the caller has checked the length).
 * check_head checks everything but the checksum, check_payload the checksum of payload (the
 * caller's copy, block_floats floats) against head's. Same returns and reasons as
 * cache_value_verify(). */
int cache_value_check_head(const cache_value_fmt *f, const void *head, cache_key key,
                           cache_key parent, const int32_t *tokens, const char **why);
int cache_value_check_payload(const cache_value_fmt *f, const void *head, const float *payload,
                              const char **why);

/* check_payload's comparison alone, for a reader that has hashed the payload (XXH3-128) as it
 * landed in its destination, while it was still in the CPU's cache (the remote tier: the
 * separate pass over a cold 1.2 MB block cost as much as reading it from the socket). sum_lo
 * and sum_hi are the hash of the destination's bytes. Same returns and reason. */
int cache_value_check_sum(const void *head, uint64_t sum_lo, uint64_t sum_hi, const char **why);

#endif
