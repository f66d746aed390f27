/* cache.h — the K/V block cache in RAM: a pool of fixed-size slots, chained block keys, the
 * prefix index (a radix tree of blocks) and LRU eviction of unreferenced leaves.
 *
 * A block holds the K/V of B consecutive positions of one token sequence (B = block_tokens), as
 * one contiguous payload of block_floats floats (the model defines the layout; the cache only
 * moves bytes). A published block is keyed by XXH3-128 over (parent key, its B token ids); the
 * root parent key is XXH3-128 over (model fingerprint, K/V geometry and dtype, namespace). Each
 * block keeps its token ids and parent key, and a hit is confirmed by comparing them, so a hash
 * collision can never serve the wrong K/V.
 *
 * Life of a block: cache_alloc() hands out a private slot (reference count 1) that the caller
 * fills; cache_publish() enters it in the index, where lookups of other requests find it;
 * references keep it in RAM; when its count drops to zero it becomes evictable once it has no
 * cached children (leaves first, least recently used first). Published blocks are immutable.
 *
 * Two requests that prefill the same new prefix at once both compute it, privately; the second
 * to publish finds the first's block, keeps that one and frees its own (cache_publish()). Neither
 * waits, and since the forward pass is bitwise deterministic the two payloads are equal anyway.
 *
 * Threads: a cache handle is used by one thread (the daemon's engine thread); nothing here locks.
 */
#ifndef PREFIXD_CACHE_H
#define PREFIXD_CACHE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define CACHE_ERRNO_MAP(X)                                                                         \
    X(ENOSPC, -1, "no free block: every slot is referenced or pinned")                             \
    X(EPINMAX, -2, "pin budget exceeded")                                                          \
    X(ENOMEM, -3, "out of memory")                                                                 \
    X(EINVAL, -4, "invalid argument")                                                              \
    X(ENOTFOUND, -5, "not found")                                                                  \
    X(ECORRUPT, -6, "stored block failed verification")                                            \
    X(EIO, -7, "i/o error")                                                                        \
    X(EVERSION, -8, "incompatible on-disk format version")                                         \
    X(EFULL, -9, "disk tier full")                                                                 \
    X(EBUSY, -10, "disk directory in use by another process")                                      \
    X(ETIMEDOUT, -11, "remote tier: no answer within the deadline")                                \
    X(ENOCONN, -12, "remote tier: not connected")

enum {
#define X(name, code, msg) CACHE_##name = code,
    CACHE_ERRNO_MAP(X)
#undef X
};

const char *cache_strerror(int err);

/* A 128-bit block key (plain value). */
typedef struct cache_key {
    uint64_t lo, hi;
} cache_key;

static inline int cache_key_eq(cache_key a, cache_key b)
{
    return a.lo == b.lo && a.hi == b.hi;
}

/* What evicting a block tells its owner, before the slot is reused: the disk tier copies the
 * payload of blocks that are not on disk yet. Called on the cache's thread, inside
 * cache_alloc(); data is valid only during the call. */
typedef struct cache_evicted {
    cache_key key;
    cache_key parent;
    const int32_t *tokens; /* block_tokens ids */
    const float *data;     /* block_floats floats */
    int on_disk;           /* cache_block_set_on_disk() was called for this block */
} cache_evicted;

typedef void (*cache_evict_fn)(void *arg, const cache_evicted *ev);

typedef struct cache_opts {
    size_t mem_bytes;        /* pool budget in bytes (payloads); default 1 GiB (the engine
                                derives its own default from the model, engine.h) */
    size_t pin_bytes;        /* pin budget; 0: mem_bytes / 4 */
    int block_tokens;        /* B */
    size_t block_floats;     /* floats per block payload (model_kv_block_floats()) */
    uint8_t fingerprint[16]; /* the model's fingerprint */
    int n_layers;            /* K/V geometry, folded into the root key */
    int n_kv_heads;          /* ... */
    int head_size;           /* ... */
    int kv_type;             /* ... and the K/V element type (model.h's MODEL_TYPE_* id: 0 f32,
                                1 f16, 8 q8_0) */
    cache_evict_fn on_evict; /* optional */
    void *on_evict_arg;      /* passed to on_evict */
    int test_key_bits;       /* test hook: 0 normally; 1..63 keeps only that many low bits of
                                every key (hi = 0), forcing collisions */
} cache_opts;

typedef struct cache cache;             /* opaque */
typedef struct cache_block cache_block; /* opaque: one slot */

/* Makes the pool (one arena of mem_bytes / (block_floats * 4) slots, allocated once) and the
 * index. out: owned by the caller, freed with cache_close(). Returns 0, CACHE_EINVAL (fewer than
 * one slot, zero sizes) or CACHE_ENOMEM, with a message in msg. */
int cache_open(const cache_opts *o, cache **out, char *msg, size_t msglen);

/* Populates the arena's pages (MADV_POPULATE_WRITE, Linux 5.14+) without writing to them, so
 * that the page faults of a first touch do not land on requests: in chunks of 64 MiB, checking
 * *stop (may be NULL) between chunks. cache_open() only reserves the arena; callers run this on a
 * thread of their own after it. It changes no byte of the memory, so it may run on any thread
 * while another uses the cache (it reads only what cache_open() set). Returns 0 when every page
 * is populated, 1 when *stop ended it first, CACHE_EINVAL when the kernel cannot populate (older
 * than 5.14: nothing done, pages fault in on first use) or CACHE_ENOMEM. */
int cache_prefault(cache *c, atomic_int *stop);

/* The bytes the arena reserves (the payloads of every slot, rounded up to 2 MiB). */
size_t cache_arena_bytes(const cache *c);

/* Frees everything. Accepts NULL. Blocks still referenced are freed too: no handle may be used
 * afterwards. */
void cache_close(cache *c);

/* The root key of a namespace (any bytes; the daemon folds the client's uid in). */
cache_key cache_root(const cache *c, const void *ns, size_t ns_len);

/* The key of the block holding tokens[0..B) whose parent key is parent. */
cache_key cache_key_next(const cache *c, cache_key parent, const int32_t *tokens);

/* Longest cached prefix of tokens[0..n) under root: walks the full blocks in order, confirming
 * each hit by its parent key and token ids, and stops at the first miss or after cap blocks.
 * Takes one reference on each block found, stored in hit[0..*n_hit) in order, and marks them
 * recently used. keys (optional, capacity cap): receives the keys of the first min(cap, n / B)
 * full blocks, hit or not, so the caller can continue into the disk tier or publish later.
 * Counts a lookup. Returns 0. */
int cache_lookup(cache *c, cache_key root, const int32_t *tokens, size_t n, cache_block **hit,
                 cache_key *keys, size_t cap, size_t *n_hit);

/* Finds the published block holding tokens (block_tokens ids) under parent (a published block,
 * or NULL under a root key) with parent_key (the parent's key, or the root key); takes a
 * reference. Returns 0 or CACHE_ENOTFOUND. */
int cache_find(cache *c, const cache_block *parent, cache_key parent_key, const int32_t *tokens,
               cache_block **out);

/* The cached child of parent (a published block) whose token ids begin with the longest run of
 * tokens[0..n) (n < block_tokens): what a request can copy instead of computing when its prompt
 * goes on past its cached full blocks into a block that another request filled (a system prompt
 * that ends mid-block, a turn that diverges mid-block). Marks it recently used. Returns how many
 * leading ids it shares (0: no child shares even one; *out is then NULL). *out is borrowed: valid
 * until the next cache_* call on this handle (copy what you need at once). */
size_t cache_best_child(cache *c, const cache_block *parent, const int32_t *tokens, size_t n,
                        const cache_block **out);

/* A private slot, reference count 1, contents undefined, for the caller to fill. Evicts the
 * least recently used evictable block if no slot is free (calling on_evict first).
 * Returns 0 or CACHE_ENOSPC. */
int cache_alloc(cache *c, cache_block **out);

/* The payload: block_floats floats. Writable only while the block is private. Valid as long as
 * the caller holds a reference. */
float *cache_block_data(const cache_block *b);

/* The block's token ids (block_tokens) once published, else NULL. */
const int32_t *cache_block_tokens(const cache_block *b);
cache_key cache_block_key(const cache_block *b);

void cache_ref(cache *c, cache_block *b);

/* Drops a reference; a private block whose count reaches zero returns to the free slots, a
 * published one becomes evictable once it also has no cached children. Accepts NULL. */
void cache_unref(cache *c, cache_block *b);

/* Publishes private block b, filled with the K/V of tokens (block_tokens ids), as the child of
 * parent (a published block the caller holds a reference on, or NULL for the first block under
 * a root key) whose key is parent_key. A hit is later confirmed by the parent block itself, its
 * key and the token ids, so even colliding keys can never chain a block onto the wrong prefix.
 * The caller's reference carries over. If the same block is already published, *out receives
 * that one, referenced, and b is released; otherwise *out = b. If the key is held by a different
 * block (a collision), b stays private and *out = b: correct, just not shared (its children
 * then cannot be published either: cache_publish() refuses a parent that is not published).
 * Returns 0 or CACHE_EINVAL (b not private, parent not published). */
int cache_publish(cache *c, cache_block *parent, cache_key parent_key, const int32_t *tokens,
                  cache_block *b, cache_block **out);

/* 1 if b is published (in the index), 0 if private. */
int cache_block_published(const cache_block *b);

/* Marks a published block as stored by the disk tier, so evicting it spills nothing. */
void cache_block_set_on_disk(cache_block *b);

/* 1 once cache_block_set_on_disk() was called for b. */
int cache_block_on_disk(const cache_block *b);

/* Calls fn for every published block, with the view on_evict gets (data valid during the call),
 * least recently used first among the evictable ones, then the others; a block for which fn
 * returns 1 is marked as on disk (cache_block_set_on_disk()). Nothing else changes (the disk
 * tier's flush at shutdown uses it). Returns the number of blocks visited. */
typedef int (*cache_visit_fn)(void *arg, const cache_evicted *ev);
size_t cache_visit(cache *c, cache_visit_fn fn, void *arg);

/* Pins published blocks (a prefix chain, root first): pinned blocks are never evicted. Pinning
 * a block already pinned costs nothing. Returns 0 or CACHE_EPINMAX (nothing pinned then).
 * cache_unpin() releases pins; returns the number of blocks unpinned. */
int cache_pin(cache *c, cache_block *const *blocks, size_t n);
size_t cache_unpin(cache *c, cache_block *const *blocks, size_t n);

typedef struct cache_stats {
    uint64_t lookups;       /* cache_lookup() calls */
    uint64_t hit_blocks;    /* blocks found by lookups */
    uint64_t hit_tokens;    /* hit_blocks x B */
    uint64_t miss_blocks;   /* lookups that stopped at a full block not cached */
    uint64_t inserts;       /* blocks published */
    uint64_t dedups;        /* publishes that found the block already there */
    uint64_t collisions;    /* key matches refused by the token comparison */
    uint64_t evictions;     /* blocks evicted from RAM */
    uint64_t slots_total;   /* pool capacity in blocks */
    uint64_t slots_used;    /* private + published */
    uint64_t slots_cached;  /* published */
    uint64_t slots_pinned;  /* pinned */
    uint64_t bytes_total;   /* slots_total x block bytes */
    uint64_t bytes_in_use;  /* slots_used x block bytes */
    uint64_t pin_bytes_max; /* the pin budget */
} cache_stats;

void cache_get_stats(const cache *c, cache_stats *out);

#endif
