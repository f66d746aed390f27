/* cache.c — the K/V block cache in RAM: slot pool, chained keys, prefix index, LRU eviction.
 *
 * Everything is sized once at cache_open(): the payload arena (slots x block_floats floats), the
 * per-slot metadata, every slot's token ids, and an open-addressed hash table with twice as many
 * buckets as slots, so the hot path never allocates. A published block sits in the table under
 * its key; its parent is found through the table too (parents are always cached: only leaves are
 * evicted), and each block counts its cached children.
 *
 * The evictable blocks (published, no references, no cached children, not pinned) form one
 * intrusive doubly-linked list in least-recently-used order, so taking a victim is O(1). A block
 * joins the list's most recent end when it becomes evictable; a parent that becomes a leaf when
 * its last child leaves joins the least recent end, so idle chains drain from their tips.
 */
#include "cache.h"

#include "base.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14; older kernels answer EINVAL */
#endif

#define XXH_INLINE_ALL
#include <xxhash.h>

enum { SLOT_FREE, SLOT_PRIVATE, SLOT_PUBLISHED };

struct cache_block {
    float *data;  /* the slot's payload in the arena */
    int32_t *tok; /* the slot's B token ids */
    cache_key key;
    cache_key parent;
    uint32_t refs;
    uint32_t children; /* cached children */
    uint8_t state;
    uint8_t pinned;
    uint8_t on_disk;
    uint8_t in_lru;
    int32_t lru_prev, lru_next; /* slot indices, -1 at the ends */
    int32_t free_next;
    int32_t bucket;                     /* index in the table while published */
    int32_t parent_slot;                /* the cached parent block, -1 under a root key */
    int32_t first_child;                /* cached children of a published block: a list through */
    int32_t next_sibling, prev_sibling; /* ... these (slot indices, -1 at the ends) */
};

struct cache {
    cache_opts o;
    size_t n_slots;
    size_t block_bytes;
    float *arena;        /* (n_slots, block_floats) */
    int32_t *tokens;     /* (n_slots, B) */
    cache_block *blocks; /* (n_slots) */
    int32_t *table;      /* buckets: slot index or -1 (empty) or -2 (deleted) */
    size_t table_mask;
    int32_t free_head;
    int32_t lru_head, lru_tail; /* head = least recently used */
    size_t pinned;
    size_t pin_max_blocks;
    cache_stats st;
};

const char *cache_strerror(int err)
{
    switch (err) {
#define X(name, code, msg)                                                                         \
    case code:                                                                                     \
        return msg;
        CACHE_ERRNO_MAP(X)
#undef X
    case 0:
        return "success";
    }
    return "unknown error";
}

/* ---- Keys ----------------------------------------------------------------------------------- */

static cache_key key_trim(const cache *c, XXH128_hash_t h)
{
    cache_key k = {h.low64, h.high64};
    if (c->o.test_key_bits > 0 && c->o.test_key_bits < 64) {
        k.lo &= (1ull << c->o.test_key_bits) - 1;
        k.hi = 0;
    }
    return k;
}

cache_key cache_root(const cache *c, const void *ns, size_t ns_len)
{
    XXH3_state_t st;
    XXH3_128bits_reset(&st);
    XXH3_128bits_update(&st, "prefixd-root-v1", 15);
    XXH3_128bits_update(&st, c->o.fingerprint, 16);
    int32_t geo[4] = {c->o.n_layers, c->o.n_kv_heads, c->o.head_size, c->o.block_tokens};
    XXH3_128bits_update(&st, geo, sizeof geo);
    /* The K/V type: an F32 root keeps the bytes it always had, so stores written before the
     * type was chosen stay valid; another type folds in its id. */
    if (c->o.kv_type == 0) {
        XXH3_128bits_update(&st, "f32", 3);
    } else {
        int32_t t = c->o.kv_type;
        XXH3_128bits_update(&st, "kv-type", 7);
        XXH3_128bits_update(&st, &t, sizeof t);
    }
    uint64_t nl = ns_len;
    XXH3_128bits_update(&st, &nl, sizeof nl);
    if (ns_len)
        XXH3_128bits_update(&st, ns, ns_len);
    return key_trim(c, XXH3_128bits_digest(&st));
}

cache_key cache_key_next(const cache *c, cache_key parent, const int32_t *tokens)
{
    /* One contiguous input (parent key, then the ids) keeps XXH3 on its fast path. */
    size_t B = (size_t)c->o.block_tokens;
    uint64_t buf[2 + 2048];
    if (B <= 4096) {
        buf[0] = parent.lo;
        buf[1] = parent.hi;
        memcpy(buf + 2, tokens, B * sizeof(int32_t));
        return key_trim(c, XXH3_128bits(buf, 16 + B * sizeof(int32_t)));
    }
    XXH3_state_t st;
    XXH3_128bits_reset(&st);
    XXH3_128bits_update(&st, &parent, sizeof parent);
    XXH3_128bits_update(&st, tokens, B * sizeof(int32_t));
    return key_trim(c, XXH3_128bits_digest(&st));
}

/* ---- Table ---------------------------------------------------------------------------------- */

static size_t bucket_of(const cache *c, cache_key k)
{
    return (size_t)(k.lo ^ (k.hi * 0x9e3779b97f4a7c15ull)) & c->table_mask;
}

static int32_t slot_of(const cache *c, const cache_block *b)
{
    return (int32_t)(b - c->blocks);
}

/* Finds the published block with key k whose parent (block slot, -1 for a root, and key) and
 * tokens match. Comparing the parent's slot as well as its key means a hit is confirmed by the
 * whole chain of token comparisons, even when keys collide (test_key_bits). Counts collisions. */
static cache_block *table_find(cache *c, cache_key k, int32_t parent_slot, cache_key parent,
                               const int32_t *tokens)
{
    size_t B = (size_t)c->o.block_tokens;
    for (size_t i = bucket_of(c, k), n = 0; n <= c->table_mask; i = (i + 1) & c->table_mask, n++) {
        int32_t s = c->table[i];
        if (s == -1)
            return NULL;
        if (s < 0)
            continue;
        cache_block *b = &c->blocks[s];
        if (!cache_key_eq(b->key, k))
            continue;
        if (b->parent_slot == parent_slot && cache_key_eq(b->parent, parent) &&
            memcmp(b->tok, tokens, B * sizeof(int32_t)) == 0)
            return b;
        c->st.collisions++;
    }
    return NULL;
}

static int key_taken(const cache *c, cache_key k)
{
    for (size_t i = bucket_of(c, k), n = 0; n <= c->table_mask; i = (i + 1) & c->table_mask, n++) {
        int32_t s = c->table[i];
        if (s == -1)
            return 0;
        if (s >= 0 && cache_key_eq(c->blocks[s].key, k))
            return 1;
    }
    return 0;
}

static void table_insert(cache *c, cache_block *b)
{
    size_t i = bucket_of(c, b->key);
    while (c->table[i] >= 0)
        i = (i + 1) & c->table_mask;
    c->table[i] = slot_of(c, b);
    b->bucket = (int32_t)i;
}

static void table_remove(cache *c, cache_block *b)
{
    size_t i = (size_t)b->bucket;
    c->table[i] = -2;
    /* A tombstone followed by an empty bucket can become empty itself, and so on backwards. */
    if (c->table[(i + 1) & c->table_mask] == -1) {
        while (c->table[i] == -2) {
            c->table[i] = -1;
            i = (i - 1) & c->table_mask;
        }
    }
    b->bucket = -1;
}

/* ---- LRU ------------------------------------------------------------------------------------ */

static void lru_unlink(cache *c, cache_block *b)
{
    if (!b->in_lru)
        return;
    if (b->lru_prev >= 0)
        c->blocks[b->lru_prev].lru_next = b->lru_next;
    else
        c->lru_head = b->lru_next;
    if (b->lru_next >= 0)
        c->blocks[b->lru_next].lru_prev = b->lru_prev;
    else
        c->lru_tail = b->lru_prev;
    b->in_lru = 0;
    b->lru_prev = b->lru_next = -1;
}

static int evictable(const cache_block *b)
{
    return b->state == SLOT_PUBLISHED && b->refs == 0 && b->children == 0 && !b->pinned;
}

/* Puts b in the LRU list if it is evictable: at the recent end, or the old end if `old`. */
static void lru_update(cache *c, cache_block *b, int old)
{
    if (!evictable(b)) {
        lru_unlink(c, b);
        return;
    }
    if (b->in_lru)
        return;
    int32_t s = slot_of(c, b);
    b->in_lru = 1;
    if (old) {
        b->lru_prev = -1;
        b->lru_next = c->lru_head;
        if (c->lru_head >= 0)
            c->blocks[c->lru_head].lru_prev = s;
        else
            c->lru_tail = s;
        c->lru_head = s;
    } else {
        b->lru_next = -1;
        b->lru_prev = c->lru_tail;
        if (c->lru_tail >= 0)
            c->blocks[c->lru_tail].lru_next = s;
        else
            c->lru_head = s;
        c->lru_tail = s;
    }
}

/* ---- Open and close ------------------------------------------------------------------------- */

int cache_open(const cache_opts *o, cache **out, char *msg, size_t msglen)
{
    *out = NULL;
    if (o->block_tokens < 1 || o->block_floats == 0)
        return base_fail(msg, msglen, CACHE_EINVAL, "cache: block size must be positive");
    size_t block_bytes = o->block_floats * sizeof(float);
    size_t mem = o->mem_bytes ? o->mem_bytes : (size_t)1 << 30;
    size_t n = mem / block_bytes;
    if (n < 1)
        return base_fail(msg, msglen, CACHE_EINVAL,
                         "cache: --cache-mem %zu bytes holds no block (one block is %zu bytes)",
                         mem, block_bytes);
    if (n > (size_t)1 << 30)
        n = (size_t)1 << 30;
    cache *c = calloc(1, sizeof *c);
    if (!c)
        return base_fail(msg, msglen, CACHE_ENOMEM, "cache: out of memory");
    c->o = *o;
    c->o.mem_bytes = mem;
    c->n_slots = n;
    c->block_bytes = block_bytes;
    size_t buckets = 16;
    while (buckets < 2 * n)
        buckets <<= 1;
    c->table_mask = buckets - 1;
    /* The arena in 2 MiB pages where the kernel allows (attention reads blocks all over it; with
     * 4 KiB pages every block costs hundreds of TLB misses). */
    c->arena = base_huge_alloc(n * block_bytes, 0);
    c->tokens = malloc(n * (size_t)o->block_tokens * sizeof(int32_t));
    c->blocks = calloc(n, sizeof *c->blocks);
    c->table = malloc(buckets * sizeof(int32_t));
    if (!c->arena || !c->tokens || !c->blocks || !c->table) {
        cache_close(c);
        return base_fail(msg, msglen, CACHE_ENOMEM,
                         "cache: cannot allocate %zu bytes for %zu blocks (lower --cache-mem)",
                         n * block_bytes, n);
    }
    memset(c->table, -1, buckets * sizeof(int32_t));
    /* The arena is only reserved here: cache_prefault() populates it, on the caller's thread of
     * choice, so that a big pool does not hold up the start (a memset of 1 GiB took ~0.2-3 s). */
    for (size_t i = 0; i < n; i++) {
        c->blocks[i].free_next = i + 1 < n ? (int32_t)(i + 1) : -1;
        c->blocks[i].lru_prev = c->blocks[i].lru_next = -1;
        c->blocks[i].bucket = -1;
        c->blocks[i].data = c->arena + i * o->block_floats;
        c->blocks[i].tok = c->tokens + i * (size_t)o->block_tokens;
    }
    c->free_head = 0;
    c->lru_head = c->lru_tail = -1;
    size_t pin_bytes = o->pin_bytes ? o->pin_bytes : mem / 4;
    c->pin_max_blocks = pin_bytes / block_bytes;
    c->st.slots_total = n;
    c->st.bytes_total = (uint64_t)n * block_bytes;
    c->st.pin_bytes_max = (uint64_t)c->pin_max_blocks * block_bytes;
    *out = c;
    return 0;
}

size_t cache_arena_bytes(const cache *c)
{
    return base_huge_round(c->n_slots * c->block_bytes);
}

/* A first touch costs a page fault per 4 KiB page (or a 2 MiB page zeroed), which would land on
 * the first requests (measured: +15% TTFT for a 1,540-token prompt). MADV_POPULATE_WRITE takes
 * those faults now, as a write would, but writes nothing: a page already in use keeps its bytes,
 * so the engine may use blocks while this runs. */
int cache_prefault(cache *c, atomic_int *stop)
{
    const size_t chunk = (size_t)64 << 20;
    size_t total = cache_arena_bytes(c);
    for (size_t off = 0; off < total; off += chunk) {
        if (stop && atomic_load_explicit(stop, memory_order_relaxed))
            return 1;
        size_t len = total - off < chunk ? total - off : chunk;
        while (madvise((char *)c->arena + off, len, MADV_POPULATE_WRITE) != 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            return errno == ENOMEM || errno == EFAULT ? CACHE_ENOMEM : CACHE_EINVAL;
        }
    }
    return 0;
}

void cache_close(cache *c)
{
    if (!c)
        return;
    base_huge_free(c->arena);
    free(c->tokens);
    free(c->blocks);
    free(c->table);
    free(c);
}

/* ---- Blocks --------------------------------------------------------------------------------- */

float *cache_block_data(const cache_block *b)
{
    return b->data;
}

const int32_t *cache_block_tokens(const cache_block *b)
{
    return b->state == SLOT_PUBLISHED ? b->tok : NULL;
}

cache_key cache_block_key(const cache_block *b)
{
    return b->key;
}

void cache_ref(cache *c, cache_block *b)
{
    b->refs++;
    lru_update(c, b, 0);
}

static void slot_free(cache *c, cache_block *b)
{
    int32_t s = slot_of(c, b);
    b->state = SLOT_FREE;
    b->refs = 0;
    b->children = 0;
    b->pinned = 0;
    b->on_disk = 0;
    b->free_next = c->free_head;
    c->free_head = s;
    c->st.slots_used--;
}

void cache_unref(cache *c, cache_block *b)
{
    if (!b)
        return;
    if (b->refs > 0)
        b->refs--;
    if (b->refs > 0)
        return;
    if (b->state == SLOT_PRIVATE)
        slot_free(c, b);
    else
        lru_update(c, b, 0);
}

/* Evicts the least recently used evictable block. Returns 0 or CACHE_ENOSPC. */
static int evict_one(cache *c)
{
    if (c->lru_head < 0)
        return CACHE_ENOSPC;
    cache_block *b = &c->blocks[c->lru_head];
    lru_unlink(c, b);
    if (c->o.on_evict) {
        cache_evicted ev = {b->key, b->parent, b->tok, b->data, b->on_disk};
        c->o.on_evict(c->o.on_evict_arg, &ev);
    }
    table_remove(c, b);
    if (b->parent_slot >= 0) {
        cache_block *parent = &c->blocks[b->parent_slot];
        if (b->prev_sibling >= 0)
            c->blocks[b->prev_sibling].next_sibling = b->next_sibling;
        else
            parent->first_child = b->next_sibling;
        if (b->next_sibling >= 0)
            c->blocks[b->next_sibling].prev_sibling = b->prev_sibling;
        parent->children--;
        lru_update(c, parent, 1);
    }
    c->st.slots_cached--;
    c->st.evictions++;
    slot_free(c, b);
    return 0;
}

int cache_alloc(cache *c, cache_block **out)
{
    *out = NULL;
    if (c->free_head < 0) {
        int rc = evict_one(c);
        if (rc)
            return rc;
    }
    cache_block *b = &c->blocks[c->free_head];
    c->free_head = b->free_next;
    b->state = SLOT_PRIVATE;
    b->refs = 1;
    b->children = 0;
    b->pinned = 0;
    b->on_disk = 0;
    b->in_lru = 0;
    b->lru_prev = b->lru_next = -1;
    b->first_child = b->next_sibling = b->prev_sibling = -1;
    c->st.slots_used++;
    *out = b;
    return 0;
}

int cache_lookup(cache *c, cache_key root, const int32_t *tokens, size_t n, cache_block **hit,
                 cache_key *keys, size_t cap, size_t *n_hit)
{
    size_t B = (size_t)c->o.block_tokens, full = n / B, found = 0;
    if (full > cap)
        full = cap;
    c->st.lookups++;
    cache_key parent = root;
    int32_t parent_slot = -1;
    int missed = 0;
    for (size_t i = 0; i < full; i++) {
        cache_key k = cache_key_next(c, parent, tokens + i * B);
        if (keys)
            keys[i] = k;
        if (!missed) {
            cache_block *b = table_find(c, k, parent_slot, parent, tokens + i * B);
            if (b) {
                b->refs++;
                lru_unlink(c, b);
                hit[found++] = b;
                parent_slot = slot_of(c, b);
            } else {
                missed = 1;
                c->st.miss_blocks++;
                if (!keys)
                    break;
            }
        }
        parent = k;
    }
    c->st.hit_blocks += found;
    c->st.hit_tokens += found * B;
    *n_hit = found;
    return 0;
}

int cache_find(cache *c, const cache_block *parent, cache_key parent_key, const int32_t *tokens,
               cache_block **out)
{
    if (parent && parent->state != SLOT_PUBLISHED)
        return CACHE_ENOTFOUND;
    cache_key k = cache_key_next(c, parent_key, tokens);
    cache_block *b = table_find(c, k, parent ? slot_of(c, parent) : -1, parent_key, tokens);
    if (!b)
        return CACHE_ENOTFOUND;
    b->refs++;
    lru_unlink(c, b);
    *out = b;
    return 0;
}

size_t cache_best_child(cache *c, const cache_block *parent, const int32_t *tokens, size_t n,
                        const cache_block **out)
{
    *out = NULL;
    size_t best = 0;
    if (parent->state != SLOT_PUBLISHED)
        return 0;
    for (int32_t s = parent->first_child; s >= 0; s = c->blocks[s].next_sibling) {
        const cache_block *b = &c->blocks[s];
        size_t k = 0;
        while (k < n && b->tok[k] == tokens[k])
            k++;
        if (k > best) {
            best = k;
            *out = b;
        }
    }
    if (*out) { /* to the recently used end */
        lru_unlink(c, (cache_block *)*out);
        lru_update(c, (cache_block *)*out, 0);
    }
    return best;
}

int cache_publish(cache *c, cache_block *parent, cache_key parent_key, const int32_t *tokens,
                  cache_block *b, cache_block **out)
{
    *out = b;
    if (b->state != SLOT_PRIVATE || (parent && parent->state != SLOT_PUBLISHED))
        return CACHE_EINVAL;
    int32_t ps = parent ? slot_of(c, parent) : -1;
    cache_key k = cache_key_next(c, parent_key, tokens);
    cache_block *same = table_find(c, k, ps, parent_key, tokens);
    if (same) {
        /* Someone published this block first: keep theirs (equal contents), drop ours. */
        same->refs++;
        lru_unlink(c, same);
        cache_unref(c, b);
        c->st.dedups++;
        *out = same;
        return 0;
    }
    if (key_taken(c, k)) {
        /* The key is held by a different block (a collision): stay private, still correct. */
        c->st.collisions++;
        return 0;
    }
    /* A parent with children is never evicted, so the child's parent_slot stays valid. */
    b->key = k;
    b->parent = parent_key;
    b->parent_slot = ps;
    memcpy(b->tok, tokens, (size_t)c->o.block_tokens * sizeof(int32_t));
    b->state = SLOT_PUBLISHED;
    table_insert(c, b);
    if (parent) {
        /* First in the parent's list of children (cache_best_child() walks it). */
        int32_t s = slot_of(c, b);
        b->prev_sibling = -1;
        b->next_sibling = parent->first_child;
        if (parent->first_child >= 0)
            c->blocks[parent->first_child].prev_sibling = s;
        parent->first_child = s;
        parent->children++;
        lru_update(c, parent, 0);
    }
    c->st.inserts++;
    c->st.slots_cached++;
    return 0;
}

void cache_block_set_on_disk(cache_block *b)
{
    b->on_disk = 1;
}

int cache_block_on_disk(const cache_block *b)
{
    return b->on_disk;
}

static void visit_one(cache_block *b, cache_visit_fn fn, void *arg)
{
    cache_evicted ev = {b->key, b->parent, b->tok, b->data, b->on_disk};
    if (fn(arg, &ev) == 1)
        b->on_disk = 1;
}

size_t cache_visit(cache *c, cache_visit_fn fn, void *arg)
{
    size_t n = 0;
    for (int32_t s = c->lru_head; s >= 0; s = c->blocks[s].lru_next, n++)
        visit_one(&c->blocks[s], fn, arg);
    for (size_t i = 0; i < c->n_slots; i++) {
        cache_block *b = &c->blocks[i];
        if (b->state == SLOT_PUBLISHED && !b->in_lru) {
            visit_one(b, fn, arg);
            n++;
        }
    }
    return n;
}

int cache_pin(cache *c, cache_block *const *blocks, size_t n)
{
    size_t add = 0;
    for (size_t i = 0; i < n; i++) {
        if (blocks[i]->state != SLOT_PUBLISHED)
            return CACHE_EINVAL;
        add += !blocks[i]->pinned;
    }
    if (c->pinned + add > c->pin_max_blocks)
        return CACHE_EPINMAX;
    for (size_t i = 0; i < n; i++) {
        if (!blocks[i]->pinned) {
            blocks[i]->pinned = 1;
            lru_unlink(c, blocks[i]);
        }
    }
    c->pinned += add;
    c->st.slots_pinned = c->pinned;
    return 0;
}

size_t cache_unpin(cache *c, cache_block *const *blocks, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (blocks[i]->pinned) {
            blocks[i]->pinned = 0;
            k++;
            lru_update(c, blocks[i], 0);
        }
    }
    c->pinned -= k;
    c->st.slots_pinned = c->pinned;
    return k;
}

void cache_get_stats(const cache *c, cache_stats *out)
{
    *out = c->st;
    out->bytes_in_use = c->st.slots_used * c->block_bytes;
}

int cache_block_published(const cache_block *b)
{
    return b->state == SLOT_PUBLISHED;
}
