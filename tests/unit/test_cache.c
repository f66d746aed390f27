/* test_cache.c — keys, lookup, publish, references, eviction, pins, and a randomized run against
 * a simple model of the cache. */
#include "cache.h"
#include "harness.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

enum { B = 4, FLOATS = 8 };

static cache *open_cache(size_t slots, size_t pin_slots, int key_bits)
{
    cache_opts o = {0};
    o.mem_bytes = slots * FLOATS * sizeof(float);
    o.pin_bytes = pin_slots * FLOATS * sizeof(float);
    o.block_tokens = B;
    o.block_floats = FLOATS;
    memset(o.fingerprint, 0xab, 16);
    o.n_layers = 2;
    o.n_kv_heads = 1;
    o.head_size = 2;
    o.test_key_bits = key_bits;
    char msg[256];
    cache *c = NULL;
    CHECK_MSG(cache_open(&o, &c, msg, sizeof msg) == 0, "%s", msg);
    return c;
}

/* The payload of a block is a function of its whole prefix, so a wrong hit shows. */
static float pattern(const int32_t *prefix, size_t n, int i)
{
    uint32_t h = 2166136261u;
    for (size_t k = 0; k < n; k++)
        h = (h ^ (uint32_t)prefix[k]) * 16777619u;
    return (float)((h + (uint32_t)i * 2654435761u) % 100003u);
}

/* Publishes the full blocks of tokens[0..n) (reusing hits), returns how many were hit. */
static size_t insert_chain(cache *c, cache_key root, const int32_t *t, size_t n)
{
    cache_block *hit[64];
    size_t nh;
    cache_lookup(c, root, t, n, hit, NULL, 64, &nh);
    cache_block *held[64];
    memcpy(held, hit, nh * sizeof *hit);
    size_t nb = n / B;
    for (size_t i = nh; i < nb; i++) {
        cache_block *b;
        if (cache_alloc(c, &b) != 0) {
            nb = i; /* out of slots: keep what was published */
            break;
        }
        float *d = cache_block_data(b);
        for (int k = 0; k < FLOATS; k++)
            d[k] = pattern(t, (i + 1) * B, k);
        cache_block *parent = i ? held[i - 1] : NULL;
        cache_key pk = parent ? cache_block_key(parent) : root;
        cache_block *out;
        if (cache_publish(c, parent, pk, t + i * B, b, &out) != 0 || !cache_block_published(out)) {
            cache_unref(c, out);
            nb = i;
            break;
        }
        held[i] = out;
    }
    for (size_t i = 0; i < nb; i++)
        cache_unref(c, held[i]);
    return nh;
}

static void test_keys(void)
{
    cache *c = open_cache(16, 4, 0);
    cache_key r1 = cache_root(c, "a", 1), r2 = cache_root(c, "b", 1), r1b = cache_root(c, "a", 1);
    CHECK(cache_key_eq(r1, r1b));
    CHECK(!cache_key_eq(r1, r2));
    int32_t t[B] = {1, 2, 3, 4}, u[B] = {1, 2, 3, 5};
    cache_key k1 = cache_key_next(c, r1, t);
    CHECK(cache_key_eq(k1, cache_key_next(c, r1, t)));
    CHECK(!cache_key_eq(k1, cache_key_next(c, r1, u)));
    CHECK(!cache_key_eq(k1, cache_key_next(c, r2, t)));
    /* Another fingerprint or geometry changes the root. */
    cache_opts o = {0};
    o.mem_bytes = 16 * FLOATS * sizeof(float);
    o.block_tokens = B;
    o.block_floats = FLOATS;
    o.n_layers = 2;
    o.n_kv_heads = 1;
    o.head_size = 2;
    memset(o.fingerprint, 0xac, 16);
    char msg[128];
    cache *c2;
    CHECK(cache_open(&o, &c2, msg, sizeof msg) == 0);
    CHECK(!cache_key_eq(r1, cache_root(c2, "a", 1)));
    cache_close(c2);
    memset(o.fingerprint, 0xab, 16);
    o.n_layers = 3;
    CHECK(cache_open(&o, &c2, msg, sizeof msg) == 0);
    CHECK(!cache_key_eq(r1, cache_root(c2, "a", 1)));
    cache_close(c2);
    cache_close(c);
    /* test_key_bits keeps only the low bits. */
    c = open_cache(16, 4, 5);
    cache_key k = cache_key_next(c, cache_root(c, "", 0), t);
    CHECK(k.hi == 0 && k.lo < 32);
    cache_close(c);
    /* A budget smaller than a block is refused with a message. */
    o.mem_bytes = 4;
    CHECK_EQ_INT(cache_open(&o, &c2, msg, sizeof msg), CACHE_EINVAL);
    CHECK_STR_CONTAINS(msg, "holds no block");
}

static void test_lookup_publish_refs(void)
{
    cache *c = open_cache(8, 2, 0);
    cache_key root = cache_root(c, "ns", 2);
    int32_t t[12] = {5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
    CHECK_EQ_INT(insert_chain(c, root, t, 12), 0);
    cache_block *hit[8];
    size_t nh;
    cache_lookup(c, root, t, 12, hit, NULL, 8, &nh);
    CHECK_EQ_INT(nh, 3);
    for (size_t i = 0; i < nh; i++) {
        const float *d = cache_block_data(hit[i]);
        CHECK(d[0] == pattern(t, (i + 1) * B, 0));
        cache_unref(c, hit[i]);
    }
    /* Longest prefix: a diverging third block stops at two. */
    int32_t u[12];
    memcpy(u, t, sizeof u);
    u[9] = 99;
    cache_lookup(c, root, u, 12, hit, NULL, 8, &nh);
    CHECK_EQ_INT(nh, 2);
    for (size_t i = 0; i < nh; i++)
        cache_unref(c, hit[i]);
    /* Another namespace: nothing. */
    cache_lookup(c, cache_root(c, "other", 5), t, 12, hit, NULL, 8, &nh);
    CHECK_EQ_INT(nh, 0);
    /* Dedupe: publishing the same first block again returns the cached one. */
    cache_block *b, *out;
    CHECK(cache_alloc(c, &b) == 0);
    CHECK(cache_publish(c, NULL, root, t, b, &out) == 0);
    CHECK(out != b && cache_block_published(out));
    cache_unref(c, out);
    cache_stats st;
    cache_get_stats(c, &st);
    CHECK_EQ_U64(st.dedups, 1);
    CHECK_EQ_U64(st.inserts, 3);
    CHECK_EQ_U64(st.slots_cached, 3);
    CHECK_EQ_U64(st.slots_used, 3);
    cache_close(c);
}

static void test_eviction_order(void)
{
    cache *c = open_cache(4, 1, 0);
    cache_key root = cache_root(c, "", 0);
    int32_t a[8] = {1, 1, 1, 1, 2, 2, 2, 2}, b[4] = {3, 3, 3, 3};
    insert_chain(c, root, a, 8); /* a0 <- a1 */
    insert_chain(c, root, b, 4); /* b0 */
    /* Hold a reference to b0; touch nothing else. Filling the pool must evict a1 (the only
     * leaf not referenced), then a0 (a leaf now), never b0. */
    cache_block *hb[1];
    size_t nh;
    cache_lookup(c, root, b, 4, hb, NULL, 1, &nh);
    CHECK_EQ_INT(nh, 1);
    cache_block *x[3];
    CHECK(cache_alloc(c, &x[0]) == 0); /* the free slot */
    CHECK(cache_alloc(c, &x[1]) == 0); /* evicts a1 */
    cache_block *ha[2];
    cache_lookup(c, root, a, 8, ha, NULL, 2, &nh);
    CHECK_EQ_INT(nh, 1); /* a0 still there, a1 gone */
    cache_unref(c, ha[0]);
    CHECK(cache_alloc(c, &x[2]) == 0); /* evicts a0 */
    cache_block *y;
    CHECK_EQ_INT(cache_alloc(c, &y), CACHE_ENOSPC); /* b0 referenced, the rest private */
    cache_stats st;
    cache_get_stats(c, &st);
    CHECK_EQ_U64(st.evictions, 2);
    cache_unref(c, hb[0]);
    CHECK(cache_alloc(c, &y) == 0); /* now b0 goes */
    for (int i = 0; i < 3; i++)
        cache_unref(c, x[i]);
    cache_unref(c, y);
    cache_close(c);
}

/* cache_best_child(): the child sharing the longest run of leading ids, found through the
 * parent's list of children, which eviction keeps right (no stale child is ever returned). */
static void test_best_child(void)
{
    cache *c = open_cache(8, 1, 0);
    cache_key root = cache_root(c, "", 0);
    int32_t a[8] = {1, 1, 1, 1, 5, 6, 7, 8}, b[8] = {1, 1, 1, 1, 5, 6, 9, 9},
            d[8] = {1, 1, 1, 1, 4, 4, 4, 4};
    insert_chain(c, root, a, 8);
    insert_chain(c, root, b, 8);
    insert_chain(c, root, d, 8);
    cache_block *p[1];
    size_t nh;
    cache_lookup(c, root, a, 4, p, NULL, 1, &nh);
    CHECK_EQ_INT(nh, 1);
    const cache_block *ch;
    int32_t want[3] = {5, 6, 7};
    CHECK_EQ_INT(cache_best_child(c, p[0], want, 3, &ch), 3);
    CHECK(ch && memcmp(cache_block_tokens(ch), a + 4, 4 * sizeof(int32_t)) == 0);
    CHECK(cache_block_data(ch)[0] == pattern(a, 8, 0)); /* a's payload, not b's */
    int32_t two[3] = {5, 6, 1};
    CHECK_EQ_INT(cache_best_child(c, p[0], two, 3, &ch), 2);
    int32_t none[3] = {9, 9, 9};
    CHECK_EQ_INT(cache_best_child(c, p[0], none, 3, &ch), 0);
    CHECK(ch == NULL);
    /* Evict every child (the parent stays: it is referenced): the list empties. */
    cache_block *x[8];
    int nx = 0;
    while (nx < 8 && cache_alloc(c, &x[nx]) == 0)
        nx++;
    cache_stats st;
    cache_get_stats(c, &st);
    CHECK_EQ_U64(st.evictions, 3);
    CHECK_EQ_INT(cache_best_child(c, p[0], want, 3, &ch), 0);
    for (int i = 0; i < nx; i++)
        cache_unref(c, x[i]);
    cache_unref(c, p[0]);
    cache_close(c);
}

static void test_pins(void)
{
    cache *c = open_cache(4, 2, 0);
    cache_key root = cache_root(c, "", 0);
    int32_t a[12] = {1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3};
    insert_chain(c, root, a, 12);
    cache_block *h[3];
    size_t nh;
    cache_lookup(c, root, a, 12, h, NULL, 3, &nh);
    CHECK_EQ_INT(nh, 3);
    CHECK_EQ_INT(cache_pin(c, h, 3), CACHE_EPINMAX); /* budget: 2 blocks */
    CHECK_EQ_INT(cache_pin(c, h, 2), 0);
    for (int i = 0; i < 3; i++)
        cache_unref(c, h[i]);
    /* Fill the pool: the unpinned leaf goes, the pinned two stay. */
    cache_block *x[2];
    CHECK(cache_alloc(c, &x[0]) == 0);
    CHECK(cache_alloc(c, &x[1]) == 0);
    cache_block *y;
    CHECK_EQ_INT(cache_alloc(c, &y), CACHE_ENOSPC);
    cache_lookup(c, root, a, 12, h, NULL, 3, &nh);
    CHECK_EQ_INT(nh, 2);
    CHECK_EQ_INT(cache_unpin(c, h, 2), 2);
    for (size_t i = 0; i < nh; i++)
        cache_unref(c, h[i]);
    CHECK(cache_alloc(c, &y) == 0);
    cache_unref(c, y);
    cache_unref(c, x[0]);
    cache_unref(c, x[1]);
    cache_close(c);
}

/* ---- Randomized against a model ------------------------------------------------------------ */

/* The model: the set of cached token prefixes (as full-block chains). A lookup's answer must be
 * the longest prefix whose every block is cached, and never a block not in the set. */
typedef struct mblock {
    int32_t prefix[64];
    size_t n; /* tokens in the prefix, a multiple of B */
} mblock;

static uint64_t rnd_state;
static uint32_t rnd(void)
{
    rnd_state = rnd_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rnd_state >> 33);
}

static void random_run(uint64_t seed, int key_bits)
{
    rnd_state = seed;
    size_t slots = 24;
    cache *c = open_cache(slots, 4, key_bits);
    cache_key roots[2] = {cache_root(c, "x", 1), cache_root(c, "y", 1)};
    /* A few base sequences; requests take random prefixes with random tails. */
    int32_t base[4][64];
    for (int i = 0; i < 4; i++)
        for (int k = 0; k < 64; k++)
            base[i][k] = (int32_t)(rnd() % 5);
    cache_block *held[16][16];
    size_t held_n[16] = {0};
    for (int op = 0; op < 4000; op++) {
        int32_t t[64];
        int which = (int)(rnd() % 4), ns = (int)(rnd() % 2);
        size_t n = (size_t)(rnd() % 16 + 1) * B;
        memcpy(t, base[which], sizeof t);
        size_t tail = rnd() % 64;
        for (size_t k = tail; k < 64; k += 1 + rnd() % 8)
            t[k] = (int32_t)(rnd() % 5);
        int action = (int)(rnd() % 10);
        if (action < 5) {
            insert_chain(c, roots[ns], t, n);
        } else if (action < 9) {
            int slot = (int)(rnd() % 16);
            for (size_t i = 0; i < held_n[slot]; i++)
                cache_unref(c, held[slot][i]);
            size_t nh;
            cache_lookup(c, roots[ns], t, n, held[slot], NULL, 16, &nh);
            held_n[slot] = nh;
            /* Longest: the next block is really not there. */
            if (nh < n / B && nh < 16) {
                cache_block *p = nh ? held[slot][nh - 1] : NULL, *f;
                cache_key pk = p ? cache_block_key(p) : roots[ns];
                CHECK_MSG(cache_find(c, p, pk, t + nh * B, &f) == CACHE_ENOTFOUND,
                          "seed %llu op %d: lookup stopped at %zu but block %zu is cached",
                          (unsigned long long)seed, op, nh, nh);
            }
            /* Every hit's payload is the pattern of exactly this prefix. */
            for (size_t i = 0; i < nh; i++) {
                const float *d = cache_block_data(held[slot][i]);
                for (int k = 0; k < FLOATS; k++)
                    CHECK_MSG(d[k] == pattern(t, (i + 1) * B, k) + 0 * ns,
                              "seed %llu op %d: block %zu of a hit has the wrong payload",
                              (unsigned long long)seed, op, i);
            }
        } else {
            int slot = (int)(rnd() % 16);
            for (size_t i = 0; i < held_n[slot]; i++)
                cache_unref(c, held[slot][i]);
            held_n[slot] = 0;
        }
        cache_stats st;
        cache_get_stats(c, &st);
        CHECK_MSG(st.slots_used <= slots, "seed %llu op %d: %llu slots used of %zu",
                  (unsigned long long)seed, op, (unsigned long long)st.slots_used, slots);
        /* Held blocks are never evicted: they still answer with their payload. */
        if (op % 50 == 0)
            for (int s = 0; s < 16; s++)
                for (size_t i = 0; i < held_n[s]; i++)
                    CHECK(cache_block_published(held[s][i]));
    }
    for (int s = 0; s < 16; s++)
        for (size_t i = 0; i < held_n[s]; i++)
            cache_unref(c, held[s][i]);
    cache_close(c);
}

static void test_randomized(void)
{
    for (uint64_t seed = 1; seed <= 6; seed++)
        random_run(seed, 0);
}

static void test_randomized_collisions(void)
{
    for (uint64_t seed = 1; seed <= 6; seed++)
        random_run(seed * 77, 4);
}

/* Whether the page holding p is resident. */
static int resident(const void *p)
{
    long page = sysconf(_SC_PAGE_SIZE);
    unsigned char v = 0;
    void *start = (void *)((uintptr_t)p & ~(uintptr_t)(page - 1));
    CHECK_EQ_INT(mincore(start, (size_t)page, &v), 0);
    return v & 1;
}

/* cache_open() only reserves the arena; cache_prefault() makes every page resident without
 * changing a byte of the blocks in use, in chunks that a stop flag can end. */
static void test_prefault(void)
{
    enum { BIG = 1 << 18, SLOTS = 96 }; /* 1 MiB blocks: a 96 MiB arena, two chunks */
    cache_opts o = {.mem_bytes = (size_t)SLOTS * BIG * sizeof(float),
                    .block_tokens = B,
                    .block_floats = BIG,
                    .n_layers = 1,
                    .n_kv_heads = 1,
                    .head_size = 2};
    char msg[256];
    cache *c = NULL;
    CHECK_MSG(cache_open(&o, &c, msg, sizeof msg) == 0, "%s", msg);
    CHECK(cache_arena_bytes(c) >= (size_t)SLOTS * BIG * sizeof(float));
    cache_block *b[SLOTS];
    for (int i = 0; i < SLOTS; i++)
        CHECK_EQ_INT(cache_alloc(c, &b[i]), 0);
    float *first = cache_block_data(b[0]), *last = cache_block_data(b[SLOTS - 1]);
    for (int i = 0; i < BIG; i += 1024)
        first[i] = (float)i + 0.5f;
    CHECK(!resident(last + BIG / 2));
    atomic_int stop = 1;
    CHECK_EQ_INT(cache_prefault(c, &stop), 1);
    CHECK(!resident(last + BIG / 2));
    int rc = cache_prefault(c, NULL);
    CHECK_MSG(rc == 0 || rc == CACHE_EINVAL, "cache_prefault: %d", rc);
    if (rc == 0)
        CHECK(resident(last + BIG / 2));
    else
        fprintf(stderr, "note: this kernel has no MADV_POPULATE_WRITE (before Linux 5.14)\n");
    for (int i = 0; i < BIG; i += 1024)
        CHECK(first[i] == (float)i + 0.5f);
    cache_close(c);
}

static const harness_case cases[] = {
    {"prefault", test_prefault},
    {"keys", test_keys},
    {"lookup_publish_refs", test_lookup_publish_refs},
    {"eviction_order", test_eviction_order},
    {"pins", test_pins},
    {"best_child", test_best_child},
    {"randomized", test_randomized},
    {"randomized_collisions", test_randomized_collisions},
};

HARNESS_MAIN(cases)
