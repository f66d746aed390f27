/* test_remote.c — the tiers' shared value format (cache_value.h) and the remote store
 * (cache_remote.h): URLs, key names, verification of every field, and, against a real
 * redis-server started on a Unix socket in the case's scratch folder, pipelined chains over
 * several batches, misses in the middle, bad values deleted, a stalled server past the deadline
 * and a server that is gone. Cases that need redis-server say so and pass when it is missing. */
#include "base.h"
#include "cache_remote.h"
#include "cache_remote_cluster.h"
#include "cache_value.h"
#include "harness.h"
#include "redis_server.h"

#include <signal.h>
#include <stdint.h>
#include <sys/wait.h>
#include <time.h>

#define B 16

static const uint8_t FP[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};

static cache_key key_of(uint64_t i)
{
    return (cache_key){0x1234567800000000ull + i, 0xfeedull * (i + 1)};
}

static void fill_block(uint64_t i, int32_t *tok, float *data, size_t floats)
{
    for (int t = 0; t < B; t++)
        tok[t] = (int32_t)(i * 100 + (uint64_t)t);
    for (size_t f = 0; f < floats; f++)
        data[f] = (float)(i * 7 + f % 1000) * 0.25f;
}

/* ---- the value format ---- */

static void test_value_verify(void)
{
    size_t floats = 1000;
    cache_value_fmt f;
    cache_value_fmt_init(&f, FP, B, floats, 0);
    CHECK_EQ_U64(f.val_bytes, sizeof(cache_value_hdr) + B * 4 + floats * 4);
    int32_t tok[B];
    float *data = malloc(floats * 4), *out = malloc(floats * 4);
    uint8_t *v = malloc(f.val_bytes), *w = malloc(f.val_bytes);
    fill_block(3, tok, data, floats);
    cache_key k = key_of(3), parent = key_of(2);
    cache_value_build(&f, v, k, parent, tok, data);
    const char *why;
    CHECK_EQ_INT(cache_value_verify(&f, v, f.val_bytes, k, parent, tok, out, &why), 0);
    CHECK(memcmp(out, data, floats * 4) == 0);
    /* The head alone is the same bytes as the full value's start. */
    cache_value_build_head(&f, w, k, parent, tok, data);
    CHECK(memcmp(w, v, sizeof(cache_value_hdr) + f.tok_bytes) == 0);
    /* Every byte flipped fails (header, token ids, payload), the fingerprint's as another
     * model's block. */
    size_t steps[] = {1, 7, 13};
    for (size_t off = 0; off < f.val_bytes; off += off < 128 ? 1 : steps[off % 3] * 97) {
        memcpy(w, v, f.val_bytes);
        w[off] ^= 0x10;
        int rc = cache_value_verify(&f, w, f.val_bytes, k, parent, tok, out, &why);
        int fp = off >= 8 && off < 24;
        CHECK_MSG(rc == (fp ? CACHE_ENOTFOUND : CACHE_ECORRUPT), "offset %zu: %d", off, rc);
        CHECK(why != NULL && why[0]);
    }
    CHECK_EQ_INT(cache_value_verify(&f, v, f.val_bytes - 1, k, parent, tok, out, &why),
                 CACHE_ECORRUPT);
    CHECK_STR_EQ(why, "wrong length");
    /* A value of another K/V type (the same size: the header says which) is never served. */
    cache_value_fmt f16;
    cache_value_fmt_init(&f16, FP, B, floats, 1);
    cache_value_build(&f16, w, k, parent, tok, data);
    cache_value_hdr h;
    memcpy(&h, w, sizeof h);
    CHECK_EQ_INT(h.kv_type, 1);
    CHECK_EQ_INT(cache_value_verify(&f, w, f.val_bytes, k, parent, tok, out, &why), CACHE_ECORRUPT);
    CHECK_STR_EQ(why, "another K/V type");
    CHECK_EQ_INT(cache_value_verify(&f16, w, f.val_bytes, k, parent, tok, out, &why), 0);
    CHECK_EQ_INT(cache_value_verify(&f, v, f.val_bytes, key_of(4), parent, tok, out, &why),
                 CACHE_ECORRUPT);
    CHECK_STR_EQ(why, "key mismatch");
    CHECK_EQ_INT(cache_value_verify(&f, v, f.val_bytes, k, key_of(9), tok, out, &why),
                 CACHE_ECORRUPT);
    CHECK_STR_EQ(why, "parent key mismatch");
    tok[5]++;
    CHECK_EQ_INT(cache_value_verify(&f, v, f.val_bytes, k, parent, tok, out, &why), CACHE_ECORRUPT);
    CHECK_STR_EQ(why, "token ids mismatch");
    free(data);
    free(out);
    free(v);
    free(w);
}

/* ---- URLs and names ---- */

static void test_urls(void)
{
    char msg[512];
    const char *good[] = {"redis://localhost",    "redis://127.0.0.1:6380",
                          "redis://cache:6379/3", "redis://[::1]:6379/0",
                          "redis://h/",           "unix:/run/redis/redis.sock",
                          "unix:///tmp/r.sock",   "unix:relative.sock"};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++)
        CHECK_MSG(cache_remote_url_check(good[i], msg, sizeof msg) == 0, "%s: %s", good[i], msg);
    struct {
        const char *url, *says;
    } bad[] = {{"http://x", "not a URL"},
               {"rediss://x", "rediss:// is not supported"},
               {"redis://", "no host"},
               {"redis://:6379", "no host"},
               {"redis://h:0", "port"},
               {"redis://h:65536", "port"},
               {"redis://h:12x", "port"},
               {"redis://h/x", "database"},
               {"redis://h/-1", "database"},
               {"redis://u:pw@h", "--remote-password-file"},
               {"redis://[::1", "IPv6"},
               {"unix:", "no socket path"},
               {"", "not a URL"}};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        msg[0] = 0;
        CHECK_EQ_INT(cache_remote_url_check(bad[i].url, msg, sizeof msg), CACHE_EINVAL);
        CHECK_STR_CONTAINS(msg, bad[i].says);
    }
    char name[CACHE_REMOTE_KEY_LEN + 1];
    cache_remote_key_name((cache_key){0x0123456789abcdefull, 0xfedcba9876543210ull}, name);
    CHECK_STR_EQ(name, "prefixd:v1:fedcba98765432100123456789abcdef");
    CHECK_EQ_U64(strlen(name), CACHE_REMOTE_KEY_LEN);
}

/* Redis Cluster's key slots (CRC16/XMODEM mod 16384, hash tags) against the values Redis's
 * documentation and a real server (CLUSTER KEYSLOT) give; seed lists. */
static void test_cluster_slots(void)
{
    CHECK_EQ_INT(cache_remote_cluster_key_slot("123456789", 9), 0x31C3 & 16383);
    CHECK_EQ_INT(cache_remote_cluster_key_slot("foo", 3), 12182);
    CHECK_EQ_INT(cache_remote_cluster_key_slot("", 0), 0);
    CHECK_EQ_INT(cache_remote_cluster_key_slot("{user1000}.following", 20),
                 cache_remote_cluster_key_slot("user1000", 8));
    /* An empty tag hashes the whole key (redis-server 7.0: CLUSTER KEYSLOT {}x is 10595). */
    CHECK_EQ_INT(cache_remote_cluster_key_slot("{}x", 3), 10595);
    CHECK_EQ_INT(cache_remote_cluster_key_slot("x", 1), 16287);
    /* Our keys have no tag: the whole name is hashed (CLUSTER KEYSLOT of this name: 5204). */
    const char *k = "prefixd:v1:fedcba98765432100123456789abcdef";
    CHECK_EQ_INT(cache_remote_cluster_key_slot(k, strlen(k)), 5204);
    char msg[256];
    const char *good[] = {"h:1", "127.0.0.1:7000,127.0.0.1:7001", "[::1]:7000,host.example:65535"};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++)
        CHECK_MSG(cache_remote_cluster_seeds_check(good[i], msg, sizeof msg) == 0, "%s: %s",
                  good[i], msg);
    const struct {
        const char *seeds, *says;
    } bad[] = {{"", "empty"},          {"h:1,", "an empty entry"}, {"h", "expected HOST:PORT"},
               {":7000", "HOST:PORT"}, {"h:0", "1..65535"},        {"h:70000", "1..65535"},
               {"[::1]7000", "IPv6"},  {"h:12x", "1..65535"}};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        msg[0] = 0;
        CHECK_EQ_INT(cache_remote_cluster_seeds_check(bad[i].seeds, msg, sizeof msg), CACHE_EINVAL);
        CHECK_STR_CONTAINS(msg, bad[i].says);
    }
}

/* ---- against a real redis-server ---- */

static cache_remote *open_store(size_t floats, double timeout_ms)
{
    char url[700], msg[512];
    snprintf(url, sizeof url, "unix:%s", redis_sock);
    cache_remote_opts o = {
        .url = url, .block_tokens = B, .block_floats = floats, .timeout_ms = timeout_ms};
    memcpy(o.fingerprint, FP, 16);
    cache_remote *r;
    CHECK_EQ_INT(cache_remote_open(&o, &r, msg, sizeof msg), 0);
    int rc = -1;
    for (int i = 0; i < 100 && (rc = cache_remote_connect(r)) != 0; i++)
        usleep(20000);
    CHECK_MSG(rc == 0, "connect: %s", cache_remote_errmsg(r));
    return r;
}

/* A chain of n blocks of 4 MB (two per batch): stored, loaded back over several round trips,
 * a missing block in the middle ends the chain, a bad value ends it and is deleted. */
static void test_store_chain(void)
{
    if (!have_redis()) {
        printf("skipped: no redis-server\n");
        CHECK(1);
        return;
    }
    redis_start("");
    enum { N = 7 };
    size_t floats = (size_t)1 << 20;
    cache_remote *r = open_store(floats, 2000);
    int32_t tok[N * B];
    float *data[N], *out[N];
    cache_key keys[N];
    cache_remote_item items[N];
    for (int i = 0; i < N; i++) {
        data[i] = malloc(floats * 4);
        out[i] = malloc(floats * 4);
        fill_block((uint64_t)i, tok + i * B, data[i], floats);
        keys[i] = key_of((uint64_t)i);
        items[i] =
            (cache_remote_item){keys[i], i ? keys[i - 1] : key_of(999), tok + i * B, data[i]};
    }
    size_t stored = 0;
    CHECK_EQ_INT(cache_remote_put(r, items, N, &stored), 0);
    CHECK_EQ_U64(stored, N);
    size_t got = 0;
    CHECK_EQ_INT(cache_remote_get(r, key_of(999), keys, tok, out, N, &got), 0);
    CHECK_EQ_U64(got, N);
    for (int i = 0; i < N; i++)
        CHECK(memcmp(out[i], data[i], floats * 4) == 0);
    cache_remote_stats st;
    cache_remote_get_stats(r, &st);
    CHECK(st.round_trips >= 1 + (N + 1) / 2); /* one put, then batches of at most 8 MB */
    CHECK_EQ_U64(st.hits, N);
    /* The wrong parent for the first block: nothing loaded, the value deleted as corrupt. */
    CHECK_EQ_INT(cache_remote_get(r, key_of(998), keys, tok, out, N, &got), 0);
    CHECK_EQ_U64(got, 0);
    CHECK_STR_CONTAINS(cache_remote_errmsg(r), "parent key mismatch");
    cache_remote_get_stats(r, &st);
    CHECK_EQ_U64(st.corrupt_deleted, 1);
    CHECK_EQ_INT(cache_remote_get(r, key_of(999), keys, tok, out, N, &got), 0);
    CHECK_EQ_U64(got, 0); /* gone */
    /* Store it again; block 4 lost (another token id asked): the chain ends at 4. */
    CHECK_EQ_INT(cache_remote_put(r, items, 1, NULL), 0);
    tok[4 * B + 3]++;
    CHECK_EQ_INT(cache_remote_get(r, key_of(999), keys, tok, out, N, &got), 0);
    CHECK_EQ_U64(got, 4);
    CHECK_STR_CONTAINS(cache_remote_errmsg(r), "token ids mismatch");
    CHECK_EQ_INT(cache_remote_get(r, key_of(999), keys, tok, out, N, &got), 0);
    CHECK_EQ_U64(got, 4); /* deleted: a miss now */
    cache_remote_get_stats(r, &st);
    CHECK_EQ_U64(st.misses, 2);
    CHECK(cache_remote_connected(r));
    /* A value of another geometry (twice the payload) under block 0's key: read past, dropped,
     * deleted; the connection stays in step. */
    cache_remote *big = open_store(2 * floats, 2000);
    float *twice = calloc(2 * floats, 4);
    cache_remote_item bi = {keys[0], key_of(999), tok, twice};
    CHECK_EQ_INT(cache_remote_put(big, &bi, 1, NULL), 0);
    cache_remote_close(big);
    free(twice);
    CHECK_EQ_INT(cache_remote_get(r, key_of(999), keys, tok, out, N, &got), 0);
    CHECK_EQ_U64(got, 0);
    CHECK_STR_CONTAINS(cache_remote_errmsg(r), "wrong length");
    CHECK(cache_remote_connected(r));
    CHECK_EQ_INT(cache_remote_put(r, items, 2, NULL), 0);
    CHECK_EQ_INT(cache_remote_get(r, key_of(999), keys, tok, out, 2, &got), 0);
    CHECK_EQ_U64(got, 2);
    cache_remote_close(r);
    redis_stop();
    for (int i = 0; i < N; i++) {
        free(data[i]);
        free(out[i]);
    }
}

/* A stalled server costs one deadline and drops the connection; a server that is gone fails at
 * once; full (maxmemory, noeviction) refuses writes and stays connected. */
static void test_store_faults(void)
{
    if (!have_redis()) {
        printf("skipped: no redis-server\n");
        CHECK(1);
        return;
    }
    redis_start("--maxmemory 2mb --maxmemory-policy noeviction");
    size_t floats = 1000;
    cache_remote *r = open_store(floats, 100);
    int32_t tok[B];
    float *data = malloc(floats * 4), *out = malloc(floats * 4);
    fill_block(1, tok, data, floats);
    cache_key k = key_of(1);
    cache_remote_item it = {k, key_of(0), tok, data};
    CHECK_EQ_INT(cache_remote_put(r, &it, 1, NULL), 0);
    /* Full: writes refused (big enough to pass maxmemory), the connection stays. */
    size_t big = (size_t)1 << 20;
    float *bd = calloc(big, 4);
    cache_remote_close(r);
    r = open_store(big, 1000);
    cache_remote_item bi[4];
    int32_t bt[4][B];
    for (int i = 0; i < 4; i++) {
        fill_block((uint64_t)(10 + i), bt[i], bd, 0);
        bi[i] = (cache_remote_item){key_of((uint64_t)(10 + i)), key_of(0), bt[i], bd};
    }
    size_t stored = 9;
    CHECK_EQ_INT(cache_remote_put(r, bi, 4, &stored), CACHE_EFULL);
    CHECK(stored < 4);
    CHECK_STR_CONTAINS(cache_remote_errmsg(r), "OOM");
    CHECK(cache_remote_connected(r));
    cache_remote_close(r);
    free(bd);
    /* Stalled: one deadline, then disconnected. */
    r = open_store(floats, 100);
    float *dst[1] = {out};
    size_t got = 9;
    kill(redis_pid, SIGSTOP);
    double t0 = base_now_ms();
    int rc = cache_remote_get(r, key_of(0), &k, tok, dst, 1, &got);
    double dt = base_now_ms() - t0;
    kill(redis_pid, SIGCONT);
    CHECK_EQ_INT(rc, CACHE_ETIMEDOUT);
    CHECK_EQ_U64(got, 0);
    CHECK_MSG(dt >= 90 && dt < 1000, "%.0f ms for a 100 ms deadline", dt);
    CHECK(!cache_remote_connected(r));
    CHECK_EQ_INT(cache_remote_get(r, key_of(0), &k, tok, dst, 1, &got), CACHE_ENOCONN);
    CHECK_EQ_INT(cache_remote_put(r, &it, 1, NULL), CACHE_ENOCONN);
    CHECK_EQ_INT(cache_remote_connect(r), 0);
    CHECK_EQ_INT(cache_remote_get(r, key_of(0), &k, tok, dst, 1, &got), 0);
    CHECK_EQ_U64(got, 1);
    /* Gone: the next exchange fails with an I/O error, connecting fails, with messages. */
    redis_stop();
    CHECK_EQ_INT(cache_remote_get(r, key_of(0), &k, tok, dst, 1, &got), CACHE_EIO);
    CHECK(cache_remote_errmsg(r)[0] != 0);
    CHECK_EQ_INT(cache_remote_connect(r), CACHE_EIO);
    CHECK_STR_CONTAINS(cache_remote_errmsg(r), "cannot connect");
    cache_remote_stats st;
    cache_remote_get_stats(r, &st);
    CHECK(st.timeouts == 1 && st.errors >= 1 && st.connect_fails >= 1);
    cache_remote_close(r);
    free(data);
    free(out);
}

/* The partial block after a chain: found by the tokens a prompt has of it (the longest partial
 * pointer), loaded and verified, its usable rows counted; none without a pointer; a pointer
 * moved to the latest block with those tokens; a block of another parent named by a pointer is
 * not taken (nor deleted). */
static void test_store_partial(void)
{
    if (!have_redis()) {
        printf("skipped: no redis-server\n");
        CHECK(1);
        return;
    }
    redis_start("");
    size_t floats = 4096;
    cache_remote *r = open_store(floats, 2000);
    int32_t tok[3 * B];
    float *data[3], *out = malloc(floats * 4);
    for (int i = 0; i < 3; i++) {
        data[i] = malloc(floats * 4);
        fill_block((uint64_t)i, tok + i * B, data[i], floats);
    }
    /* Blocks 1 and 2 are both children of block 0; 2 shares 1's first 5 tokens. */
    memcpy(tok + 2 * B, tok + B, 5 * sizeof(int32_t));
    cache_remote_item items[3] = {{key_of(0), key_of(999), tok, data[0]},
                                  {key_of(1), key_of(0), tok + B, data[1]},
                                  {key_of(2), key_of(0), tok + 2 * B, data[2]}};
    CHECK_EQ_INT(cache_remote_put(r, items, 2, NULL), 0);
    int32_t ask[B];
    memcpy(ask, tok + B, sizeof ask);
    ask[10] = -5; /* the prompt has block 1's first 10 tokens, then others */
    size_t k = 99;
    CHECK_EQ_INT(cache_remote_get_partial(r, key_of(0), ask, 12, out, &k), 0);
    CHECK_EQ_U64(k, 10);
    CHECK(memcmp(out, data[1], floats * 4) == 0);
    CHECK_EQ_INT(cache_remote_get_partial(r, key_of(0), ask, 0, out, &k), 0);
    CHECK_EQ_U64(k, 0);
    CHECK_EQ_INT(cache_remote_get_partial(r, key_of(5), ask, 12, out, &k), 0);
    CHECK_EQ_U64(k, 0); /* no pointer under another parent */
    /* Block 2 written later: the pointers of the first 5 tokens name it now, those of 6 and more
     * still name block 1. */
    CHECK_EQ_INT(cache_remote_put(r, items + 2, 1, NULL), 0);
    ask[5] = -6;
    CHECK_EQ_INT(cache_remote_get_partial(r, key_of(0), ask, 12, out, &k), 0);
    CHECK_EQ_U64(k, 5);
    CHECK(memcmp(out, data[2], floats * 4) == 0);
    /* A pointer planted to name a block of another parent (block 0, whose parent is 999): not
     * taken, and block 0 not deleted. */
    char pk[CACHE_REMOTE_PARTIAL_KEY_LEN + 1], k0[CACHE_REMOTE_KEY_LEN + 1], cmd[1024];
    cache_remote_partial_key_name(key_of(0), ask, 5, pk);
    cache_remote_key_name(key_of(0), k0);
    CHECK_EQ_INT(cache_remote_put(r, items, 1, NULL), 0);
    snprintf(cmd, sizeof cmd, "redis-cli -s %s SET %s %s >/dev/null", redis_sock, pk, k0);
    CHECK_EQ_INT(system(cmd), 0);
    CHECK_EQ_INT(cache_remote_get_partial(r, key_of(0), ask, 12, out, &k), 0);
    CHECK_EQ_U64(k, 0);
    size_t got = 0;
    cache_key first = key_of(0);
    CHECK_EQ_INT(cache_remote_get(r, key_of(999), &first, tok, &out, 1, &got), 0);
    CHECK_EQ_U64(got, 1); /* block 0 is still there */
    cache_remote_stats st;
    cache_remote_get_stats(r, &st);
    CHECK_EQ_U64(st.partial_hits, 2);
    CHECK_EQ_U64(st.partial_tokens, 15);
    CHECK_EQ_U64(st.corrupt_deleted, 0);
    cache_remote_close(r);
    redis_stop();
    for (int i = 0; i < 3; i++)
        free(data[i]);
    free(out);
}

static const harness_case cases[] = {
    {"value_verify", test_value_verify},   {"urls", test_urls},
    {"cluster_slots", test_cluster_slots}, {"store_chain", test_store_chain},
    {"store_partial", test_store_partial}, {"store_faults", test_store_faults},
};

HARNESS_MAIN(cases)
