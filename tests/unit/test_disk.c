/* test_disk.c — the LMDB disk tier (cache_disk.h): round trips, persistence, model isolation,
 * format and geometry checks, the byte budget and its LRU, a full LMDB map, corrupted values, bad
 * directories, fault injection at every LMDB call (SQLite's manner), kill -9 in the middle of
 * heavy writing, and a randomized run against an exact model of the LRU.
 *
 * Every case works in temporary directories of its own inside the case's scratch directory
 * (harness.h), removed at its end, passed or failed. A block's key, parent, token ids and payload
 * are all derived from a small integer id, so any block served is checked byte for byte. The
 * store's internals (its four LMDB databases) are checked with LMDB itself, only while no
 * cache_disk handle is open: LMDB forbids one process opening an environment twice.
 */
#include "../../cache/disk_lmdb.h"
#include "cache_disk.h"
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <lmdb.h>
#include <signal.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { B = 16, FLOATS = 2560, BATCH_MAX = 128 };
#define PAYLOAD_BYTES ((size_t)FLOATS * sizeof(float))
#define HDR_BYTES sizeof(cache_disk_value_hdr)
#define TOK_BYTES ((size_t)B * 4) /* B is even: no padding after the token ids */
#define VAL_BYTES (HDR_BYTES + TOK_BYTES + PAYLOAD_BYTES) /* header + token ids + payload */
#define FP_BYTE 0x5a                                      /* the fingerprint of "our" model */
#define HDR_OFF(field) offsetof(cache_disk_value_hdr, field)

/* ---- temporary directories ---- */

static char tmp_dirs[8][PATH_MAX + 16];
static int n_tmp_dirs;

/* Removes the case's directories now (the harness does at its end in any case). */
static void tmpdirs_remove(void)
{
    harness_tmpdir_remove();
    n_tmp_dirs = 0;
}

/* A fresh empty directory inside the case's scratch directory, removed by tmpdirs_remove() or
 * at the end of the case. */
static const char *tmpdir_new(void)
{
    CHECK(n_tmp_dirs < 8);
    char *p = tmp_dirs[n_tmp_dirs];
    snprintf(p, sizeof tmp_dirs[0], "%s/d%d", harness_tmpdir(), n_tmp_dirs);
    CHECK_MSG(mkdir(p, 0700) == 0, "mkdir %s: %s", p, strerror(errno));
    n_tmp_dirs++;
    return p;
}

/* ---- blocks derived from an id ---- */

static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static cache_key key_of(uint64_t id)
{
    return (cache_key){mix(id * 4 + 1), mix(id * 4 + 2)};
}

static cache_key parent_of(uint64_t id)
{
    return (cache_key){mix(id * 4 + 3), mix(id * 4 + 4)};
}

static void tokens_of(uint64_t id, int32_t t[B])
{
    for (int k = 0; k < B; k++)
        t[k] = (int32_t)(mix(id * 131 + (uint64_t)k + 1000003) % 32000);
}

static void payload_of(uint64_t id, float *p)
{
    uint64_t s = mix(id ^ 0x5555aaaa5555aaaaull) | 1;
    for (int i = 0; i < FLOATS; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        p[i] = (float)(int32_t)(s >> 40) / 1024.0f;
    }
}

static int32_t batch_tok[BATCH_MAX][B];
static float batch_data[BATCH_MAX][FLOATS];

/* Writes the blocks ids[0..n) in one cache_disk_put_batch() and returns its result. */
static int put_ids(cache_disk *d, const uint64_t *ids, size_t n, size_t *written)
{
    cache_disk_item it[BATCH_MAX];
    CHECK(n <= BATCH_MAX);
    for (size_t i = 0; i < n; i++) {
        tokens_of(ids[i], batch_tok[i]);
        payload_of(ids[i], batch_data[i]);
        it[i] = (cache_disk_item){key_of(ids[i]), parent_of(ids[i]), batch_tok[i], batch_data[i]};
    }
    return cache_disk_put_batch(d, it, n, written);
}

/* Writes the blocks first .. first + n - 1 in one batch. */
static int put_range(cache_disk *d, uint64_t first, size_t n, size_t *written)
{
    uint64_t ids[BATCH_MAX];
    CHECK(n <= BATCH_MAX);
    for (size_t i = 0; i < n; i++)
        ids[i] = first + i;
    return put_ids(d, ids, n, written);
}

static float got[FLOATS], want[FLOATS];

/* Loads block id and returns what cache_disk_get() returned; a block served (0) has been
 * compared byte for byte with the one written. */
static int get_id(cache_disk *d, uint64_t id)
{
    int32_t t[B];
    tokens_of(id, t);
    memset(got, 0xee, sizeof got);
    int rc = cache_disk_get(d, key_of(id), parent_of(id), t, got);
    if (rc == 0) {
        payload_of(id, want);
        CHECK_MSG(memcmp(got, want, PAYLOAD_BYTES) == 0, "block %llu served with a wrong payload",
                  (unsigned long long)id);
    }
    return rc;
}

static void get_ok(cache_disk *d, uint64_t id)
{
    int rc = get_id(d, id);
    CHECK_MSG(rc == 0, "get block %llu: %d (%s) %s", (unsigned long long)id, rc, cache_strerror(rc),
              cache_disk_errmsg(d));
}

static int contains_id(cache_disk *d, uint64_t id)
{
    return cache_disk_contains(d, key_of(id));
}

static int is_cache_err(int rc)
{
    return rc >= CACHE_EFULL && rc <= CACHE_ENOSPC;
}

/* ---- opening ---- */

static cache_disk_opts opts_for(const char *dir, size_t max_values)
{
    cache_disk_opts o;
    memset(&o, 0, sizeof o);
    o.dir = dir;
    o.max_bytes = max_values * VAL_BYTES;
    memset(o.fingerprint, FP_BYTE, 16);
    o.block_tokens = B;
    o.block_floats = FLOATS;
    return o;
}

static cache_disk *open_opts(const cache_disk_opts *o)
{
    char msg[512] = "";
    cache_disk *d = NULL;
    int rc = cache_disk_open(o, &d, msg, sizeof msg);
    CHECK_MSG(rc == 0 && d, "open '%s': %d (%s): %s", o->dir, rc, cache_strerror(rc), msg);
    return d;
}

static cache_disk *open_dir(const char *dir, size_t max_values)
{
    cache_disk_opts o = opts_for(dir, max_values);
    return open_opts(&o);
}

/* Opens expecting failure err; returns the message. */
static const char *open_fails(const cache_disk_opts *o, int err)
{
    static char msg[512];
    msg[0] = 0;
    cache_disk *d = (cache_disk *)&msg; /* must be reset to NULL */
    int rc = cache_disk_open(o, &d, msg, sizeof msg);
    CHECK_MSG(rc == err, "open '%s': %d (%s), expected %d (%s): %s", o->dir ? o->dir : "(null)", rc,
              cache_strerror(rc), err, cache_strerror(err), msg);
    CHECK(d == NULL);
    return msg;
}

static cache_disk_stats stats(const cache_disk *d)
{
    cache_disk_stats st;
    cache_disk_get_stats(d, &st);
    return st;
}

/* The invariants every handle keeps: all values have one size, and the budget holds. */
static void check_stats_sane(const cache_disk *d)
{
    cache_disk_stats st = stats(d);
    CHECK_EQ_U64(st.bytes_on_disk, st.entries * VAL_BYTES);
    CHECK_MSG(st.bytes_on_disk <= st.max_bytes, "%llu bytes on disk, budget %llu",
              (unsigned long long)st.bytes_on_disk, (unsigned long long)st.max_bytes);
    CHECK(st.hits + st.misses <= st.gets);
}

/* ---- the store seen through LMDB itself (no cache_disk handle may be open) ---- */

typedef struct raw_env {
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi meta, blocks, seq, lru;
} raw_env;

static void raw_open(raw_env *r, const char *dir, int write)
{
    CHECK(mdb_env_create(&r->env) == 0);
    CHECK(mdb_env_set_maxdbs(r->env, 4) == 0);
    int rc = mdb_env_open(r->env, dir, write ? 0 : MDB_RDONLY, 0600);
    CHECK_MSG(rc == 0, "mdb_env_open '%s': %s", dir, mdb_strerror(rc));
    CHECK(mdb_txn_begin(r->env, NULL, write ? 0 : MDB_RDONLY, &r->txn) == 0);
    CHECK(mdb_dbi_open(r->txn, "meta", 0, &r->meta) == 0);
    CHECK(mdb_dbi_open(r->txn, "blocks", 0, &r->blocks) == 0);
    CHECK(mdb_dbi_open(r->txn, "seq", 0, &r->seq) == 0);
    CHECK(mdb_dbi_open(r->txn, "lru", 0, &r->lru) == 0);
}

static void raw_close(raw_env *r, int commit)
{
    if (commit)
        CHECK(mdb_txn_commit(r->txn) == 0);
    else
        mdb_txn_abort(r->txn);
    mdb_env_close(r->env);
}

/* Checks that the store's databases agree: every block has one "seq" entry and one "lru" entry
 * pointing back at it, and meta "used" is the sum of the value sizes. Returns the block count. */
static size_t check_store(const char *dir)
{
    raw_env r;
    raw_open(&r, dir, 0);
    MDB_stat sb, ss, sl;
    CHECK(mdb_stat(r.txn, r.blocks, &sb) == 0);
    CHECK(mdb_stat(r.txn, r.seq, &ss) == 0);
    CHECK(mdb_stat(r.txn, r.lru, &sl) == 0);
    CHECK_EQ_U64(ss.ms_entries, sb.ms_entries);
    CHECK_EQ_U64(sl.ms_entries, sb.ms_entries);
    MDB_cursor *cur;
    CHECK(mdb_cursor_open(r.txn, r.lru, &cur) == 0);
    MDB_val k, v;
    uint64_t sum = 0, prev = 0;
    for (int op = MDB_FIRST; mdb_cursor_get(cur, &k, &v, op) == 0; op = MDB_NEXT) {
        CHECK_EQ_INT(k.mv_size, 8);
        CHECK_EQ_INT(v.mv_size, 16);
        uint64_t seq = 0;
        for (int i = 0; i < 8; i++)
            seq = (seq << 8) | ((const uint8_t *)k.mv_data)[i];
        CHECK(seq > prev);
        prev = seq;
        MDB_val bk = {16, v.mv_data}, sv, bv;
        CHECK_MSG(mdb_get(r.txn, r.seq, &bk, &sv) == 0, "lru entry %llu: no seq entry",
                  (unsigned long long)seq);
        uint64_t s2;
        CHECK_EQ_INT(sv.mv_size, 8);
        memcpy(&s2, sv.mv_data, 8);
        CHECK_EQ_U64(s2, seq);
        CHECK_MSG(mdb_get(r.txn, r.blocks, &bk, &bv) == 0, "lru entry %llu: no block",
                  (unsigned long long)seq);
        sum += bv.mv_size;
    }
    mdb_cursor_close(cur);
    MDB_val uk = {4, "used"}, uv;
    CHECK(mdb_get(r.txn, r.meta, &uk, &uv) == 0);
    uint64_t used;
    CHECK_EQ_INT(uv.mv_size, 8);
    memcpy(&used, uv.mv_data, 8);
    CHECK_EQ_U64(used, sum);
    size_t n = sb.ms_entries;
    raw_close(&r, 0);
    return n;
}

/* Replaces the value of key (a string, or 16 key bytes when klen is 16) in database db. */
static void raw_put(const char *dir, const char *db, const void *key, size_t klen, const void *val,
                    size_t vlen)
{
    raw_env r;
    raw_open(&r, dir, 1);
    MDB_dbi dbi = strcmp(db, "meta") == 0 ? r.meta : r.blocks;
    MDB_val k = {klen, (void *)key}, v = {vlen, (void *)val};
    CHECK(mdb_put(r.txn, dbi, &k, &v, 0) == 0);
    raw_close(&r, 1);
}

static void key_raw(uint8_t out[16], uint64_t id)
{
    cache_key k = key_of(id);
    memcpy(out, &k.lo, 8);
    memcpy(out + 8, &k.hi, 8);
}

/* Flips one byte of block id's stored value inside data.mdb, as bit rot would (the store must
 * be closed). The value is found by its header's first 40 bytes (magic, version, fingerprint,
 * key), which no other value shares; off counts from the start of the value. */
static void flip_value_byte(const char *dir, uint64_t id, size_t off)
{
    char p[256];
    snprintf(p, sizeof p, "%s/data.mdb", dir);
    int fd = open(p, O_RDWR);
    CHECK_MSG(fd >= 0, "%s: %s", p, strerror(errno));
    struct stat sb;
    CHECK(fstat(fd, &sb) == 0);
    uint8_t *buf = malloc((size_t)sb.st_size);
    CHECK(buf);
    CHECK(pread(fd, buf, (size_t)sb.st_size, 0) == sb.st_size);
    cache_disk_value_hdr h = {
        .magic = CACHE_DISK_VALUE_MAGIC, .version = CACHE_DISK_FORMAT, .key = key_of(id)};
    memset(h.fingerprint, FP_BYTE, sizeof h.fingerprint);
    uint8_t hdr[HDR_OFF(parent)];
    memcpy(hdr, &h, sizeof hdr);
    const uint8_t *at = memmem(buf, (size_t)sb.st_size, hdr, sizeof hdr);
    CHECK_MSG(at != NULL, "block %llu not found in %s", (unsigned long long)id, p);
    size_t pos = (size_t)(at - buf);
    CHECK(memmem(at + 1, (size_t)sb.st_size - pos - 1, hdr, sizeof hdr) == NULL);
    CHECK(pos + off < (size_t)sb.st_size);
    uint8_t b = buf[pos + off] ^ 0x10;
    free(buf);
    CHECK(pwrite(fd, &b, 1, (off_t)(pos + off)) == 1);
    close(fd);
}

static void write_file(const char *path, const void *data, size_t n)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    CHECK_MSG(fd >= 0, "%s: %s", path, strerror(errno));
    CHECK(write(fd, data, n) == (ssize_t)n);
    close(fd);
}

static uint8_t *read_file(const char *path, size_t *n)
{
    int fd = open(path, O_RDONLY);
    CHECK_MSG(fd >= 0, "%s: %s", path, strerror(errno));
    struct stat sb;
    CHECK(fstat(fd, &sb) == 0);
    uint8_t *buf = malloc((size_t)sb.st_size + 1);
    CHECK(buf);
    CHECK(read(fd, buf, (size_t)sb.st_size) == sb.st_size);
    close(fd);
    *n = (size_t)sb.st_size;
    return buf;
}

static uint64_t rnd_state;

static uint32_t rnd(void)
{
    rnd_state = rnd_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rnd_state >> 33);
}

/* ---- cases ---- */

static void test_roundtrip(void)
{
    const char *dir = tmpdir_new();
    cache_disk *d = open_dir(dir, 64);
    cache_disk_stats st = stats(d);
    CHECK_EQ_U64(st.entries, 0);
    CHECK_EQ_U64(st.bytes_on_disk, 0);
    CHECK_EQ_U64(st.max_bytes, 64 * VAL_BYTES);
    CHECK_STR_EQ(cache_disk_errmsg(d), "");

    for (uint64_t first = 0; first < 40; first += 8) {
        size_t w = 99;
        CHECK_EQ_INT(put_range(d, first, 8, &w), 0);
        CHECK_EQ_INT(w, 8);
    }
    st = stats(d);
    CHECK_EQ_U64(st.puts, 40);
    CHECK_EQ_U64(st.bytes_written, 40 * VAL_BYTES);
    CHECK_EQ_U64(st.entries, 40);
    CHECK_EQ_U64(st.bytes_on_disk, 40 * VAL_BYTES);
    CHECK_EQ_U64(st.evictions, 0);
    for (uint64_t id = 0; id < 40; id++)
        get_ok(d, id);
    st = stats(d);
    CHECK_EQ_U64(st.gets, 40);
    CHECK_EQ_U64(st.hits, 40);
    CHECK_EQ_U64(st.misses, 0);
    CHECK(st.load_ms_total > 0);

    /* Absent blocks. */
    CHECK_EQ_INT(get_id(d, 1000), CACHE_ENOTFOUND);
    CHECK_EQ_INT(contains_id(d, 1000), 0);
    CHECK_EQ_INT(contains_id(d, 5), 1);
    st = stats(d);
    CHECK_EQ_U64(st.gets, 41);
    CHECK_EQ_U64(st.misses, 1);

    /* Writing stored blocks again only touches them. */
    size_t w = 99;
    CHECK_EQ_INT(put_range(d, 0, 8, &w), 0);
    CHECK_EQ_INT(w, 0);
    st = stats(d);
    CHECK_EQ_U64(st.puts, 40);
    CHECK_EQ_U64(st.entries, 40);
    /* A batch with the same new block twice stores it once. */
    uint64_t dup[3] = {50, 50, 51};
    CHECK_EQ_INT(put_ids(d, dup, 3, &w), 0);
    CHECK_EQ_INT(w, 2);
    CHECK_EQ_U64(stats(d).entries, 42);
    get_ok(d, 50);

    /* A wrong parent key: not served; a check failed, so the value is deleted. */
    int32_t t[B];
    tokens_of(3, t);
    CHECK_EQ_INT(cache_disk_get(d, key_of(3), parent_of(4), t, got), CACHE_ECORRUPT);
    CHECK_STR_CONTAINS(cache_disk_errmsg(d), dir);
    CHECK_STR_CONTAINS(cache_disk_errmsg(d), "parent key mismatch");
    CHECK_EQ_INT(contains_id(d, 3), 0);
    CHECK_EQ_INT(get_id(d, 3), CACHE_ENOTFOUND);
    /* Wrong token ids: the same. */
    tokens_of(6, t);
    t[B - 1] ^= 1;
    CHECK_EQ_INT(cache_disk_get(d, key_of(6), parent_of(6), t, got), CACHE_ECORRUPT);
    CHECK_STR_CONTAINS(cache_disk_errmsg(d), "token ids mismatch");
    CHECK_EQ_INT(get_id(d, 6), CACHE_ENOTFOUND);
    st = stats(d);
    CHECK_EQ_U64(st.corrupt_deleted, 2);
    CHECK_EQ_U64(st.gets, st.hits + st.misses + 2);
    CHECK_EQ_U64(st.entries, 40);
    CHECK_EQ_U64(st.bytes_on_disk, 40 * VAL_BYTES);
    /* The others are untouched. */
    for (uint64_t id = 0; id < 40; id++)
        if (id != 3 && id != 6)
            get_ok(d, id);
    check_stats_sane(d);
    CHECK_EQ_INT(cache_disk_sync(d), 0);
    cache_disk_close(d);
    cache_disk_close(NULL);
    CHECK_EQ_INT(check_store(dir), 40);
    tmpdirs_remove();
}

static void test_persistence(void)
{
    const char *dir = tmpdir_new();
    cache_disk *d = open_dir(dir, 30);
    for (uint64_t first = 0; first < 30; first += 10)
        CHECK_EQ_INT(put_range(d, first, 10, NULL), 0);
    for (uint64_t id = 0; id < 5; id++)
        get_ok(d, id); /* touched: applied when the handle closes */
    cache_disk_close(d);
    CHECK_EQ_INT(check_store(dir), 30);

    d = open_dir(dir, 30);
    cache_disk_stats st = stats(d);
    CHECK_EQ_U64(st.entries, 30);
    CHECK_EQ_U64(st.bytes_on_disk, 30 * VAL_BYTES);
    CHECK_EQ_U64(st.puts, 0);
    for (uint64_t id = 0; id < 30; id++)
        get_ok(d, id);
    cache_disk_close(d); /* applies 30 touches in id order: 0..29 */

    /* The access order survives too: blocks written after the reopen are younger than every
     * block from before, and the blocks touched last before closing are the youngest of those. */
    d = open_dir(dir, 30);
    for (uint64_t id = 0; id < 5; id++)
        get_ok(d, id);
    cache_disk_close(d); /* order now 5..29, 0..4 */
    d = open_dir(dir, 30);
    CHECK_EQ_INT(put_range(d, 30, 5, NULL), 0);
    st = stats(d);
    CHECK_EQ_U64(st.evictions, 5);
    for (uint64_t id = 0; id < 35; id++)
        CHECK_MSG(contains_id(d, id) == !(id >= 5 && id < 10), "block %llu: contains %d",
                  (unsigned long long)id, contains_id(d, id));
    cache_disk_close(d);
    CHECK_EQ_INT(check_store(dir), 30);
    tmpdirs_remove();
}

static void test_model_isolation(void)
{
    const char *dir = tmpdir_new();
    cache_disk *a = open_dir(dir, 64);
    CHECK_EQ_INT(put_range(a, 0, 10, NULL), 0);
    cache_disk_close(a);

    cache_disk_opts ob = opts_for(dir, 64);
    memset(ob.fingerprint, 0x77, 16);
    cache_disk *b = open_opts(&ob);
    for (uint64_t id = 0; id < 10; id++)
        CHECK_EQ_INT(get_id(b, id), CACHE_ENOTFOUND);
    cache_disk_stats st = stats(b);
    CHECK_EQ_U64(st.misses, 10);
    CHECK_EQ_U64(st.hits, 0);
    CHECK_EQ_U64(st.corrupt_deleted, 0);
    CHECK_EQ_U64(st.entries, 10);       /* another model's blocks are not deleted */
    CHECK_EQ_INT(contains_id(b, 0), 1); /* unverified, as documented */
    size_t w = 99;
    CHECK_EQ_INT(put_range(b, 0, 10, &w), 0); /* stored already (by the other model) */
    CHECK_EQ_INT(w, 0);
    CHECK_EQ_INT(get_id(b, 0), CACHE_ENOTFOUND);
    CHECK_EQ_INT(put_range(b, 100, 5, &w), 0);
    CHECK_EQ_INT(w, 5);
    get_ok(b, 100);
    cache_disk_close(b);

    a = open_dir(dir, 64);
    for (uint64_t id = 0; id < 10; id++)
        get_ok(a, id);
    for (uint64_t id = 100; id < 105; id++)
        CHECK_EQ_INT(get_id(a, id), CACHE_ENOTFOUND);
    CHECK_EQ_U64(stats(a).entries, 15);
    cache_disk_close(a);
    CHECK_EQ_INT(check_store(dir), 15);
    tmpdirs_remove();
}

static void test_geometry(void)
{
    const char *dir = tmpdir_new();
    cache_disk *d = open_dir(dir, 64);
    CHECK_EQ_INT(put_range(d, 0, 5, NULL), 0);
    cache_disk_close(d);

    cache_disk_opts o = opts_for(dir, 64);
    o.block_tokens = 32;
    const char *msg = open_fails(&o, CACHE_EVERSION);
    CHECK_STR_CONTAINS(msg, dir);
    CHECK_STR_CONTAINS(msg, "block geometry 16 tokens x 2560 floats");
    CHECK_STR_CONTAINS(msg, "32 tokens x 2560 floats");
    o = opts_for(dir, 64);
    o.block_floats = 1280;
    msg = open_fails(&o, CACHE_EVERSION);
    CHECK_STR_CONTAINS(msg, dir);
    CHECK_STR_CONTAINS(msg, "16 tokens x 1280 floats");
    /* Another K/V type is another geometry, even at the same payload size. */
    o = opts_for(dir, 64);
    o.kv_type = 1;
    msg = open_fails(&o, CACHE_EVERSION);
    CHECK_STR_CONTAINS(msg, dir);
    CHECK_STR_CONTAINS(msg, "2560 floats of f32 K/V, this daemon uses 16 tokens x 2560 floats of "
                            "f16 K/V");

    /* Refusing left the store as it was. */
    d = open_dir(dir, 64);
    for (uint64_t id = 0; id < 5; id++)
        get_ok(d, id);
    cache_disk_close(d);

    /* Another format version: refused, naming both versions. */
    uint8_t f[24] = {0};
    uint32_t u32 = 0x44584650u;
    memcpy(f, &u32, 4);
    u32 = 99;
    memcpy(f + 4, &u32, 4);
    u32 = B;
    memcpy(f + 8, &u32, 4);
    uint64_t u64 = FLOATS;
    memcpy(f + 16, &u64, 8);
    raw_put(dir, "meta", "format", 6, f, sizeof f);
    o = opts_for(dir, 64);
    msg = open_fails(&o, CACHE_EVERSION);
    CHECK_STR_CONTAINS(msg, dir);
    CHECK_STR_CONTAINS(msg, "format version 99");
    /* A meta record that is not ours at all. */
    raw_put(dir, "meta", "format", 6, "hello", 5);
    msg = open_fails(&o, CACHE_EVERSION);
    CHECK_STR_CONTAINS(msg, "not prefixd's");

    /* reset_incompatible wipes it and opens empty, with the new geometry. */
    o.block_tokens = 32;
    o.reset_incompatible = 1;
    d = open_opts(&o);
    cache_disk_stats st = stats(d);
    CHECK_EQ_U64(st.entries, 0);
    CHECK_EQ_U64(st.bytes_on_disk, 0);
    cache_disk_close(d);
    CHECK_EQ_INT(check_store(dir), 0);
    /* Now the 16-token geometry is the foreign one. */
    o = opts_for(dir, 64);
    open_fails(&o, CACHE_EVERSION);
    o.reset_incompatible = 1;
    d = open_opts(&o);
    CHECK_EQ_INT(put_range(d, 0, 3, NULL), 0);
    get_ok(d, 2);
    cache_disk_close(d);
    /* reset_incompatible leaves a compatible store alone. */
    d = open_opts(&o);
    CHECK_EQ_U64(stats(d).entries, 3);
    get_ok(d, 0);
    cache_disk_close(d);
    /* A store of q8_0 K/V: f32 is the foreign type now; reset wipes it for f32. */
    o = opts_for(dir, 64);
    o.kv_type = 8;
    o.reset_incompatible = 1;
    d = open_opts(&o);
    CHECK_EQ_U64(stats(d).entries, 0);
    CHECK_EQ_INT(put_range(d, 0, 2, NULL), 0);
    cache_disk_close(d);
    o.kv_type = 0;
    o.reset_incompatible = 0;
    msg = open_fails(&o, CACHE_EVERSION);
    CHECK_STR_CONTAINS(msg, "of q8_0 K/V, this daemon uses");
    o.reset_incompatible = 1;
    d = open_opts(&o);
    CHECK_EQ_U64(stats(d).entries, 0);
    cache_disk_close(d);
    tmpdirs_remove();
}

static void test_garbage_files(void)
{
    const char *dir = tmpdir_new();
    char p[256];
    snprintf(p, sizeof p, "%s/data.mdb", dir);
    static uint8_t junk[65536];
    rnd_state = 42;
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (uint8_t)rnd();
    size_t sizes[2] = {100, sizeof junk};
    for (int i = 0; i < 2; i++) {
        write_file(p, junk, sizes[i]);
        cache_disk_opts o = opts_for(dir, 64);
        const char *msg = open_fails(&o, CACHE_EVERSION);
        CHECK_STR_CONTAINS(msg, dir);
        CHECK_STR_CONTAINS(msg, "not an LMDB file");
        /* Refusing did not touch the file. */
        size_t n;
        uint8_t *back = read_file(p, &n);
        CHECK_EQ_INT(n, sizes[i]);
        CHECK(memcmp(back, junk, n) == 0);
        free(back);
        o.reset_incompatible = 1;
        cache_disk *d = open_opts(&o);
        CHECK_EQ_U64(stats(d).entries, 0);
        CHECK_EQ_INT(put_range(d, 0, 4, NULL), 0);
        cache_disk_close(d);
        d = open_dir(dir, 64);
        for (uint64_t id = 0; id < 4; id++)
            get_ok(d, id);
        cache_disk_close(d);
    }
    /* An empty data.mdb is a new store. */
    write_file(p, junk, 0);
    cache_disk *d = open_dir(dir, 64);
    CHECK_EQ_U64(stats(d).entries, 0);
    cache_disk_close(d);
    /* A garbage lock file beside a good store: LMDB rebuilds it; the blocks are intact. */
    CHECK_EQ_INT(check_store(dir), 0);
    d = open_dir(dir, 64);
    CHECK_EQ_INT(put_range(d, 0, 4, NULL), 0);
    cache_disk_close(d);
    snprintf(p, sizeof p, "%s/lock.mdb", dir);
    write_file(p, junk, 8192);
    d = open_dir(dir, 64);
    for (uint64_t id = 0; id < 4; id++)
        get_ok(d, id);
    cache_disk_close(d);
    tmpdirs_remove();
}

static void test_budget_lru(void)
{
    const char *dir = tmpdir_new();
    cache_disk *d = open_dir(dir, 4);
    CHECK_EQ_INT(put_range(d, 1, 4, NULL), 0); /* order: 1 2 3 4 */
    CHECK_EQ_U64(stats(d).bytes_on_disk, 4 * VAL_BYTES);
    size_t w;
    CHECK_EQ_INT(put_range(d, 5, 1, &w), 0); /* evicts 1: 2 3 4 5 */
    CHECK_EQ_INT(w, 1);
    CHECK_EQ_INT(contains_id(d, 1), 0);
    CHECK_EQ_U64(stats(d).evictions, 1);
    get_ok(d, 2);                              /* queued: 3 4 5 2 once a write applies it */
    CHECK_EQ_INT(put_range(d, 6, 1, NULL), 0); /* evicts 3: 4 5 2 6 */
    CHECK_EQ_INT(contains_id(d, 2), 1);
    CHECK_EQ_INT(contains_id(d, 3), 0);
    CHECK_EQ_INT(put_range(d, 7, 1, NULL), 0); /* evicts 4: 5 2 6 7 */
    CHECK_EQ_INT(contains_id(d, 4), 0);
    CHECK_EQ_INT(put_range(d, 8, 1, NULL), 0); /* evicts 5: 2 6 7 8 */
    CHECK_EQ_INT(contains_id(d, 5), 0);
    CHECK_EQ_INT(contains_id(d, 2), 1);
    /* Writing a stored block is a touch too. */
    CHECK_EQ_INT(put_range(d, 2, 1, &w), 0); /* 6 7 8 2 */
    CHECK_EQ_INT(w, 0);
    CHECK_EQ_INT(put_range(d, 9, 2, NULL), 0); /* evicts 6, 7: 8 2 9 10 */
    for (uint64_t id = 1; id <= 10; id++)
        CHECK_MSG(contains_id(d, id) == (id == 2 || id >= 8), "block %llu: contains %d",
                  (unsigned long long)id, contains_id(d, id));
    /* A touch queued by a get is applied by cache_disk_sync() too. */
    get_ok(d, 8);
    CHECK_EQ_INT(cache_disk_sync(d), 0); /* 2 9 10 8 */
    CHECK_EQ_INT(put_range(d, 11, 1, NULL), 0);
    CHECK_EQ_INT(contains_id(d, 2), 0);
    CHECK_EQ_INT(contains_id(d, 8), 1);
    /* ... and by closing: the order survives the reopen. */
    get_ok(d, 9); /* 10 8 11 9 */
    cache_disk_close(d);
    d = open_dir(dir, 4);
    CHECK_EQ_INT(put_range(d, 12, 2, NULL), 0); /* evicts 10, 8: 11 9 12 13 */
    for (uint64_t id = 8; id <= 13; id++)
        CHECK_MSG(contains_id(d, id) == (id != 8 && id != 10), "block %llu: contains %d",
                  (unsigned long long)id, contains_id(d, id));
    /* A batch larger than the budget: the budget holds, the newest blocks stay. */
    CHECK_EQ_INT(put_range(d, 20, 6, NULL), 0);
    for (uint64_t id = 20; id < 26; id++)
        CHECK_EQ_INT(contains_id(d, id), id >= 22);
    for (uint64_t id = 22; id < 26; id++)
        get_ok(d, id);
    cache_disk_stats st = stats(d);
    CHECK_EQ_U64(st.entries, 4);
    CHECK_EQ_U64(st.bytes_on_disk, 4 * VAL_BYTES);
    CHECK_EQ_U64(st.full, 0);
    check_stats_sane(d);
    cache_disk_close(d);
    CHECK_EQ_INT(check_store(dir), 4);

    /* The budget shrinks between runs: the store obeys the new one from the open on, keeping
     * the most recently used blocks. */
    cache_disk_opts o = opts_for(dir, 2);
    d = open_opts(&o);
    st = stats(d);
    CHECK_EQ_U64(st.entries, 2);
    CHECK_EQ_U64(st.bytes_on_disk, 2 * VAL_BYTES);
    CHECK_EQ_INT(contains_id(d, 24), 1);
    CHECK_EQ_INT(contains_id(d, 25), 1);
    CHECK_EQ_INT(contains_id(d, 23), 0);
    cache_disk_close(d);
    CHECK_EQ_INT(check_store(dir), 2);

    /* A value larger than the whole budget: CACHE_EFULL, nothing stored, nothing evicted. */
    o.max_bytes = VAL_BYTES - 1;
    d = open_opts(&o);
    CHECK_EQ_U64(stats(d).entries, 0); /* under this budget nothing fits */
    w = 99;
    CHECK_EQ_INT(put_range(d, 30, 1, &w), CACHE_EFULL);
    CHECK_EQ_INT(w, 0);
    CHECK_STR_CONTAINS(cache_disk_errmsg(d), dir);
    CHECK_STR_CONTAINS(cache_disk_errmsg(d), "budget");
    st = stats(d);
    CHECK_EQ_U64(st.entries, 0);
    CHECK_EQ_U64(st.puts, 0);
    CHECK_EQ_U64(st.full, 1);
    CHECK_EQ_INT(contains_id(d, 30), 0);
    cache_disk_close(d);
    CHECK_EQ_INT(check_store(dir), 0);
    tmpdirs_remove();
}

static void test_map_full(void)
{
    const char *dir = tmpdir_new();
    cache_disk_opts o = opts_for(dir, 4096); /* 40 MiB budget: the 1 MiB map binds first */
    o.test_map_bytes = (size_t)1 << 20;
    cache_disk *d = open_opts(&o);
    int full = 0, ok = 0;
    uint64_t next = 0;
    for (int round = 0; round < 40; round++) {
        size_t w = 99;
        int rc = put_range(d, next, 8, &w);
        CHECK_MSG(rc == 0 || rc == CACHE_EFULL, "round %d: %d (%s) %s", round, rc,
                  cache_strerror(rc), cache_disk_errmsg(d));
        if (rc == 0) {
            ok++;
            CHECK_EQ_INT(w, 8);
        } else {
            full++;
            CHECK_STR_CONTAINS(cache_disk_errmsg(d), dir);
        }
        check_stats_sane(d);
        /* Whatever stayed is exact, and the batch just written is there if it was written. */
        for (uint64_t id = 0; id < next + 8; id++) {
            int g = get_id(d, id);
            CHECK_MSG(g == 0 || g == CACHE_ENOTFOUND, "block %llu: %d", (unsigned long long)id, g);
            if (rc == 0 && id >= next)
                CHECK_EQ_INT(g, 0);
        }
        next += 8;
    }
    cache_disk_stats st = stats(d);
    fprintf(stderr,
            "   40 batches of 8 into a 1 MiB map: %d stored, %d full, %llu evictions, "
            "%llu blocks kept\n",
            ok, full, (unsigned long long)st.evictions, (unsigned long long)st.entries);
    CHECK_EQ_INT(ok, 40); /* evicting and retrying always makes room for 8 blocks */
    CHECK(st.evictions > 0);
    CHECK(st.entries < 100);

    /* A batch larger than the whole map: refused, and the store stays usable. */
    size_t w = 99;
    int rc = put_range(d, 1000, BATCH_MAX, &w);
    CHECK_MSG(rc == CACHE_EFULL, "%d (%s) %s", rc, cache_strerror(rc), cache_disk_errmsg(d));
    CHECK_STR_CONTAINS(cache_disk_errmsg(d), "MDB_MAP_FULL");
    check_stats_sane(d);
    CHECK_EQ_INT(put_range(d, 2000, 4, &w), 0);
    CHECK_EQ_INT(w, 4);
    for (uint64_t id = 2000; id < 2004; id++)
        get_ok(d, id);
    st = stats(d);
    cache_disk_close(d);
    CHECK_EQ_INT(check_store(dir), st.entries);
    d = open_opts(&o);
    CHECK_EQ_U64(stats(d).entries, st.entries);
    for (uint64_t id = 2000; id < 2004; id++)
        get_ok(d, id);
    cache_disk_close(d);
    tmpdirs_remove();
}

static void test_corruption(void)
{
    const char *dir = tmpdir_new();
    cache_disk *d = open_dir(dir, 64);
    CHECK_EQ_INT(put_range(d, 0, 12, NULL), 0);
    cache_disk_close(d);

    /* Bytes of a value: the header (cache_disk_value_hdr), the token ids, the payload. */
    struct {
        uint64_t id;
        size_t off;
        const char *why;
    } flips[] = {
        {1, HDR_BYTES + TOK_BYTES + 5000, "checksum"},              /* payload */
        {2, HDR_BYTES + TOK_BYTES + PAYLOAD_BYTES - 1, "checksum"}, /* payload, last byte */
        {3, HDR_OFF(magic), "bad magic"},
        {4, HDR_OFF(version), "wrong format version"},
        {5, HDR_OFF(key) + 2, "key mismatch"},
        {6, HDR_OFF(parent) + 4, "parent key mismatch"},
        {7, HDR_BYTES + 9, "token ids mismatch"}, /* a token id */
        {8, HDR_OFF(checksum), "checksum"},       /* the checksum itself */
        {10, HDR_OFF(n_tokens), "wrong geometry"},
        {11, HDR_OFF(payload_bytes) + 1, "wrong geometry"},
    };
    size_t nf = sizeof flips / sizeof flips[0];
    for (size_t i = 0; i < nf; i++)
        flip_value_byte(dir, flips[i].id, flips[i].off);
    flip_value_byte(dir, 9, HDR_OFF(fingerprint) + 4); /* another model's block: a plain miss */

    d = open_dir(dir, 64);
    for (size_t i = 0; i < nf; i++) {
        int rc = get_id(d, flips[i].id);
        CHECK_MSG(rc == CACHE_ECORRUPT, "block %llu flipped at %zu: %d",
                  (unsigned long long)flips[i].id, flips[i].off, rc);
        CHECK_STR_CONTAINS(cache_disk_errmsg(d), dir);
        CHECK_STR_CONTAINS(cache_disk_errmsg(d), flips[i].why);
        CHECK_EQ_INT(get_id(d, flips[i].id), CACHE_ENOTFOUND); /* deleted */
        CHECK_EQ_INT(contains_id(d, flips[i].id), 0);
    }
    CHECK_EQ_INT(get_id(d, 9), CACHE_ENOTFOUND);
    get_ok(d, 0);
    cache_disk_stats st = stats(d);
    CHECK_EQ_U64(st.corrupt_deleted, nf);
    CHECK_EQ_U64(st.entries, 12 - nf);
    CHECK_EQ_U64(st.bytes_on_disk, (12 - nf) * VAL_BYTES);
    CHECK_EQ_U64(st.hits, 1);
    cache_disk_close(d);
    CHECK_EQ_INT(check_store(dir), 12 - nf);

    /* A value of the wrong length. */
    d = open_dir(dir, 64);
    CHECK_EQ_INT(put_range(d, 20, 1, NULL), 0);
    cache_disk_close(d);
    uint8_t kb[16], shortv[100] = {0};
    key_raw(kb, 20);
    raw_put(dir, "blocks", kb, 16, shortv, sizeof shortv);
    d = open_dir(dir, 64);
    CHECK_EQ_INT(get_id(d, 20), CACHE_ECORRUPT);
    CHECK_STR_CONTAINS(cache_disk_errmsg(d), "wrong length");
    CHECK_EQ_INT(get_id(d, 20), CACHE_ENOTFOUND);
    get_ok(d, 0);
    cache_disk_close(d);
    tmpdirs_remove();
}

static void test_bad_dir(void)
{
    const char *base = tmpdir_new();
    char p[256];
    cache_disk_opts o;

    snprintf(p, sizeof p, "%s/missing/store", base);
    o = opts_for(p, 64);
    const char *msg = open_fails(&o, CACHE_EIO);
    CHECK_STR_CONTAINS(msg, p);
    CHECK_STR_CONTAINS(msg, "No such file or directory");

    snprintf(p, sizeof p, "%s/file", base);
    write_file(p, "x", 1);
    o = opts_for(p, 64);
    msg = open_fails(&o, CACHE_EIO);
    CHECK_STR_CONTAINS(msg, p);
    CHECK_STR_CONTAINS(msg, "not a directory");

    /* Bad options. */
    o = opts_for(NULL, 64);
    open_fails(&o, CACHE_EINVAL);
    o = opts_for("", 64);
    open_fails(&o, CACHE_EINVAL);
    o = opts_for(base, 64);
    o.block_tokens = 0;
    open_fails(&o, CACHE_EINVAL);
    o = opts_for(base, 64);
    o.block_floats = 0;
    open_fails(&o, CACHE_EINVAL);

    /* A directory that is created: mode 0700. */
    snprintf(p, sizeof p, "%s/new", base);
    cache_disk *d = open_dir(p, 64);
    cache_disk_close(d);
    struct stat sb;
    CHECK(stat(p, &sb) == 0);
    CHECK_EQ_INT(sb.st_mode & 0777, 0700);

    /* A read-only directory. */
    snprintf(p, sizeof p, "%s/ro", base);
    CHECK(mkdir(p, 0700) == 0);
    CHECK(chmod(p, 0500) == 0);
    o = opts_for(p, 64);
    if (geteuid() == 0) {
        /* Root writes whatever the mode says: the store really opens and works. */
        fprintf(stderr, "   note: running as root, a 0500 directory is writable; checked that it "
                        "opens and works instead of the not-writable error\n");
        d = open_opts(&o);
        CHECK_EQ_INT(put_range(d, 0, 2, NULL), 0);
        get_ok(d, 1);
        cache_disk_close(d);
    } else {
        msg = open_fails(&o, CACHE_EIO);
        CHECK_STR_CONTAINS(msg, p);
        CHECK_STR_CONTAINS(msg, "not writable");
    }
    tmpdirs_remove();
}

/* The file system full, as a file size limit makes it (RLIMIT_FSIZE: writes past it fail with
 * EFBIG; SIGXFSZ ignored): put_batch evicts, retries, or returns CACHE_EFULL, and the store
 * stays usable. */
static void test_file_limit(void)
{
    const char *dir = tmpdir_new();
    char p[256];
    snprintf(p, sizeof p, "%s/data.mdb", dir);
    cache_disk_opts o = opts_for(dir, 4096); /* the 1 MiB file limit binds, not the budget */
    cache_disk *d = open_opts(&o);
    struct rlimit old, lim;
    CHECK(getrlimit(RLIMIT_FSIZE, &old) == 0);
    void (*old_sig)(int) = signal(SIGXFSZ, SIG_IGN);
    lim = old;
    lim.rlim_cur = 1 << 20;
    CHECK(setrlimit(RLIMIT_FSIZE, &lim) == 0);
    int full = 0, ok = 0;
    uint64_t next = 0;
    for (int round = 0; round < 40; round++, next += 8) {
        size_t w = 99;
        int rc = put_range(d, next, 8, &w);
        if (rc == 0)
            ok++;
        else
            full++;
        if (rc != 0 && rc != CACHE_EFULL) {
            setrlimit(RLIMIT_FSIZE, &old);
            CHECK_MSG(0, "round %d: put: %d (%s) %s", round, rc, cache_strerror(rc),
                      cache_disk_errmsg(d));
        }
        check_stats_sane(d);
        for (uint64_t id = 0; id < next + 8; id++) {
            int g = get_id(d, id);
            if (g != 0 && g != CACHE_ENOTFOUND)
                rc = g;
            if (rc == 0 && id >= next && g != 0)
                rc = -100;
        }
        if (rc != 0 && rc != CACHE_EFULL) {
            setrlimit(RLIMIT_FSIZE, &old);
            CHECK_MSG(0, "round %d: %d (%s) %s", round, rc, cache_strerror(rc),
                      cache_disk_errmsg(d));
        }
    }
    struct stat sb;
    CHECK(stat(p, &sb) == 0);
    CHECK(setrlimit(RLIMIT_FSIZE, &old) == 0);
    signal(SIGXFSZ, old_sig);
    cache_disk_stats st = stats(d);
    fprintf(stderr,
            "   40 batches of 8 under a 1 MiB file limit: %d stored, %d full, %llu evictions, "
            "%llu blocks kept, data.mdb %lld bytes\n",
            ok, full, (unsigned long long)st.evictions, (unsigned long long)st.entries,
            (long long)sb.st_size);
    CHECK(sb.st_size <= 1 << 20);
    CHECK_EQ_INT(ok, 40);
    CHECK(st.evictions > 0);
    cache_disk_close(d);
    CHECK_EQ_INT(check_store(dir), st.entries);
    d = open_opts(&o);
    for (uint64_t id = next - 8; id < next; id++)
        get_ok(d, id);
    cache_disk_close(d);
    tmpdirs_remove();
}

/* ---- fault injection ---- */

/* Opens dir, writes 8 new blocks (8..15; the template holds 0..7 under a budget of 12, so 4 are
 * evicted), reads all 16 (block 7 is corrupt: its get deletes it), syncs and closes, with LMDB
 * calls failing as set up by the caller. Every call returns 0 or a CACHE_E* code; a block served is
 * exact. Returns the number of calls that reported an error; *entries receives what the handle
 * believed was stored at the end
 * (-1 if the open failed). */
static int fault_scenario(const char *dir, const cache_disk_opts *base, long *entries)
{
    cache_disk_opts o = *base;
    o.dir = dir;
    char msg[512];
    cache_disk *d = NULL;
    int errs = 0;
    *entries = -1;
    int rc = cache_disk_open(&o, &d, msg, sizeof msg);
    if (rc) {
        CHECK_MSG(is_cache_err(rc), "open: %d", rc);
        CHECK(d == NULL);
        CHECK_STR_CONTAINS(msg, dir);
        return 1;
    }
    size_t w = 99;
    rc = put_range(d, 8, 8, &w);
    CHECK_MSG(rc == 0 || rc == CACHE_EIO || rc == CACHE_EFULL, "put: %d", rc);
    if (rc) {
        errs++;
        CHECK_STR_CONTAINS(cache_disk_errmsg(d), dir);
    }
    check_stats_sane(d);
    for (uint64_t id = 0; id < 16; id++) {
        rc = get_id(d, id);
        CHECK_MSG(rc == 0 || rc == CACHE_ENOTFOUND || rc == CACHE_EIO ||
                      (rc == CACHE_ECORRUPT && id == 7),
                  "get %llu: %d", (unsigned long long)id, rc);
        errs += rc == CACHE_EIO;
        if (id % 4 == 0) {
            rc = contains_id(d, id);
            CHECK_MSG(rc == 0 || rc == 1 || rc == CACHE_EIO, "contains %llu: %d",
                      (unsigned long long)id, rc);
            errs += rc == CACHE_EIO;
        }
    }
    rc = cache_disk_sync(d);
    CHECK_MSG(rc == 0 || rc == CACHE_EIO || rc == CACHE_EFULL, "sync: %d", rc);
    errs += rc != 0;
    check_stats_sane(d);
    *entries = (long)stats(d).entries;
    cache_disk_close(d);
    return errs;
}

/* After a faulty run: a fresh open (no faults) works, its counters agree with the files (checked
 * with LMDB itself for every third k: an open is slow under ASan) and with what the faulty handle
 * believed, and every block it serves is exact. */
static void fault_verify(const char *dir, const cache_disk_opts *base, long entries, long k,
                         int sticky)
{
    CHECK_EQ_INT(cache_disk_test_fail_at(0, 0) >= 0, 1);
    long n = k % 3 == 0 ? (long)check_store(dir) : -1;
    cache_disk_opts o = *base;
    o.dir = dir;
    cache_disk *d = open_opts(&o);
    cache_disk_stats st = stats(d);
    if (n >= 0)
        CHECK_EQ_U64(st.entries, n);
    check_stats_sane(d);
    if (entries >= 0)
        CHECK_MSG((long)st.entries == entries,
                  "k %ld sticky %d: the faulty handle counted %ld blocks, the store holds %llu", k,
                  sticky, entries, (unsigned long long)st.entries);
    else
        CHECK_MSG(st.entries == 8, "k %ld sticky %d: failed open changed the store (%llu)", k,
                  sticky, (unsigned long long)st.entries);
    uint64_t hits = 0;
    for (uint64_t id = 0; id < 16; id++) {
        int rc = get_id(d, id);
        CHECK_MSG(rc == 0 || rc == CACHE_ENOTFOUND || (rc == CACHE_ECORRUPT && id == 7),
                  "k %ld sticky %d: get %llu: %d", k, sticky, (unsigned long long)id, rc);
        hits += rc == 0 || rc == CACHE_ECORRUPT; /* stored, served or not */
    }
    CHECK_EQ_U64(hits, st.entries);
    /* Still writable. */
    CHECK_EQ_INT(put_range(d, 100, 2, NULL), 0);
    get_ok(d, 101);
    cache_disk_close(d);
}

static void fault_run(const cache_disk_opts *base, const char *label, long expect_entries)
{
    const char *tdir = tmpdir_new();
    cache_disk_opts o = *base;
    o.dir = tdir;
    cache_disk *d = open_opts(&o);
    CHECK_EQ_INT(put_range(d, 0, 8, NULL), 0);
    cache_disk_close(d);
    flip_value_byte(tdir, 7, HDR_BYTES + TOK_BYTES + 100);
    char p[256];
    snprintf(p, sizeof p, "%s/data.mdb", tdir);
    size_t tn;
    uint8_t *tmpl = read_file(p, &tn);

    const char *dir = tmpdir_new();
    snprintf(p, sizeof p, "%s/data.mdb", dir);
    long entries;
    write_file(p, tmpl, tn);
    cache_disk_test_fail_at(0, 0);
    CHECK_EQ_INT(fault_scenario(dir, base, &entries), 0);
    long n = cache_disk_test_fail_at(0, 0);
    CHECK_EQ_INT(entries, expect_entries);
    CHECK(n > 20);
    int runs_with_errors = 0;
    for (int sticky = 0; sticky <= 1; sticky++) {
        for (long k = 1; k <= n + 1; k++) {
            snprintf(p, sizeof p, "%s/lock.mdb", dir);
            unlink(p);
            snprintf(p, sizeof p, "%s/data.mdb", dir);
            write_file(p, tmpl, tn);
            cache_disk_test_fail_at(k, sticky);
            int errs = fault_scenario(dir, base, &entries);
            long calls = cache_disk_test_fail_at(0, 0);
            runs_with_errors += errs > 0;
            if (k == n + 1) {
                CHECK_EQ_INT(errs, 0);
                CHECK_EQ_INT(calls, n);
            }
            fault_verify(dir, base, entries, k, sticky);
        }
    }
    fprintf(stderr, "   %s: %ld LMDB calls, %d of %ld faulty runs reported an error\n", label, n,
            runs_with_errors, 2 * n);
    CHECK(runs_with_errors > n);
    free(tmpl);
    tmpdirs_remove();
}

/* Fault and randomized runs never crash the process, so they skip fsync (test_nosync): they make
 * thousands of commits and the disk is shared. The cases that kill or reopen keep it. */
static void test_faults(void)
{
    cache_disk_opts o = opts_for("", 12);
    o.test_nosync = 1;
    fault_run(&o, "budget 12", 11); /* 4 evicted, 1 corrupt deleted */
}

static void test_faults_map_full(void)
{
    /* A map so small that the scenario's batch hits MDB_MAP_FULL and takes the evict-and-retry
     * path: the clean run ends with only the 8 new blocks, though the budget holds 4096. */
    cache_disk_opts o = opts_for("", 4096);
    o.test_map_bytes = 256 << 10;
    o.test_nosync = 1;
    fault_run(&o, "256 KiB map", 8);
}

/* ---- kill -9 ---- */

/* The child: writes batches of 8 new blocks (and reads some old ones) until killed. progress[0]
 * is raised before each batch to the first id not yet written, so the parent knows which ids
 * can be stored. */
static void kill9_child(const char *dir, volatile uint64_t *progress)
{
    cache_disk_opts o = opts_for(dir, 48);
    char msg[512];
    cache_disk *d = NULL;
    if (cache_disk_open(&o, &d, msg, sizeof msg) != 0)
        _exit(3);
    uint64_t next = progress[0];
    for (long round = 0; round < 1000000; round++) {
        progress[0] = next + 8;
        __sync_synchronize();
        int rc = put_range(d, next, 8, NULL);
        if (rc != 0)
            _exit(4);
        next += 8;
        progress[1]++;
        if (round % 4 == 0 && next > 16) {
            /* No CHECK here: a failed check would longjmp into the harness of the child. */
            uint64_t id = next - 16 + (uint64_t)round % 16;
            int32_t t[B];
            tokens_of(id, t);
            rc = cache_disk_get(d, key_of(id), parent_of(id), t, got);
            payload_of(id, want);
            if (rc != 0 && rc != CACHE_ENOTFOUND)
                _exit(5);
            if (rc == 0 && memcmp(got, want, PAYLOAD_BYTES) != 0)
                _exit(6);
        }
    }
    _exit(0);
}

static void test_kill9(void)
{
    const char *dir = tmpdir_new();
    volatile uint64_t *progress =
        mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(progress != MAP_FAILED);
    progress[0] = progress[1] = 0;
    int delays_ms[3] = {200, 60, 130};
    for (int round = 0; round < 3; round++) {
        uint64_t batches_before = progress[1];
        fflush(NULL);
        pid_t pid = fork();
        CHECK(pid >= 0);
        if (pid == 0)
            kill9_child(dir, progress);
        /* Let it write a few batches first (the disk may be slow: it is shared), then let it run
         * on for the round's delay and kill it, most likely in the middle of a batch. */
        struct timespec tick = {0, 1000000L}, ts = {0, delays_ms[round] * 1000000L};
        for (int i = 0; i < 10000 && progress[1] - batches_before < 4; i++)
            nanosleep(&tick, NULL);
        nanosleep(&ts, NULL);
        CHECK(kill(pid, SIGKILL) == 0);
        int status;
        CHECK(waitpid(pid, &status, 0) == pid);
        CHECK_MSG(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
                  "the writer ended by itself (status %d): it did not run until killed", status);
        uint64_t batches = progress[1] - batches_before, top = progress[0];
        CHECK(batches >= 4);

        CHECK(check_store(dir) <= 48);
        cache_disk *d = open_dir(dir, 48);
        cache_disk_stats st = stats(d);
        check_stats_sane(d);
        CHECK(st.entries > 0);
        uint64_t hits = 0;
        for (uint64_t id = 0; id < top; id++) {
            int rc = get_id(d, id);
            CHECK_MSG(rc == 0 || rc == CACHE_ENOTFOUND, "block %llu: %d", (unsigned long long)id,
                      rc);
            hits += rc == 0;
        }
        CHECK_EQ_U64(hits, st.entries);
        CHECK_EQ_U64(stats(d).corrupt_deleted, 0);
        fprintf(stderr, "   killed after %d ms: %llu batches written, %llu blocks kept\n",
                delays_ms[round], (unsigned long long)batches, (unsigned long long)hits);
        cache_disk_close(d);
    }
    munmap((void *)progress, 4096);
    tmpdirs_remove();
}

/* ---- randomized run against a model ---- */

typedef struct lru_model {
    uint64_t order[64]; /* order[0] is the least recently used */
    size_t n, cap;
    uint64_t touch[4096]; /* queued by gets, applied by the next write */
    size_t n_touch;
} lru_model;

static long model_find(const lru_model *m, uint64_t id)
{
    for (size_t i = 0; i < m->n; i++)
        if (m->order[i] == id)
            return (long)i;
    return -1;
}

static void model_to_end(lru_model *m, size_t i)
{
    uint64_t id = m->order[i];
    memmove(m->order + i, m->order + i + 1, (m->n - i - 1) * sizeof *m->order);
    m->order[m->n - 1] = id;
}

static void model_apply_touches(lru_model *m)
{
    for (size_t t = 0; t < m->n_touch; t++) {
        long i = model_find(m, m->touch[t]);
        if (i >= 0)
            model_to_end(m, (size_t)i);
    }
    m->n_touch = 0;
}

static void model_put(lru_model *m, const uint64_t *ids, size_t n)
{
    model_apply_touches(m);
    for (size_t k = 0; k < n; k++) {
        long i = model_find(m, ids[k]);
        if (i >= 0) {
            model_to_end(m, (size_t)i);
            continue;
        }
        if (m->n == m->cap) {
            memmove(m->order, m->order + 1, (m->n - 1) * sizeof *m->order);
            m->n--;
        }
        m->order[m->n++] = ids[k];
    }
}

static void random_run(uint64_t seed, size_t cap, uint64_t pool, int ops)
{
    const char *dir = tmpdir_new();
    rnd_state = seed;
    lru_model m = {.cap = cap};
    cache_disk_opts o = opts_for(dir, cap);
    o.test_nosync = 1;
    cache_disk *d = open_opts(&o);
    int reopens = 0;
    for (int op = 0; op < ops; op++) {
        int action = (int)(rnd() % 100);
        if (action < 35) {
            uint64_t ids[12];
            size_t n = 1 + rnd() % 12;
            for (size_t i = 0; i < n; i++)
                ids[i] = rnd() % pool;
            size_t w;
            int rc = put_ids(d, ids, n, &w);
            CHECK_MSG(rc == 0, "seed %llu op %d: put: %d %s", (unsigned long long)seed, op, rc,
                      cache_disk_errmsg(d));
            model_put(&m, ids, n);
        } else if (action < 93) {
            uint64_t id = rnd() % pool;
            int rc = get_id(d, id);
            int in = model_find(&m, id) >= 0;
            CHECK_MSG(rc == (in ? 0 : CACHE_ENOTFOUND), "seed %llu op %d: get %llu: %d, model %d",
                      (unsigned long long)seed, op, (unsigned long long)id, rc, in);
            if (in) {
                CHECK(m.n_touch < sizeof m.touch / sizeof m.touch[0]);
                m.touch[m.n_touch++] = id;
            }
        } else if (action < 96) {
            CHECK_EQ_INT(cache_disk_sync(d), 0);
            model_apply_touches(&m);
        } else {
            cache_disk_close(d);
            model_apply_touches(&m);
            CHECK_EQ_INT(check_store(dir), m.n);
            d = open_opts(&o);
            CHECK_MSG(cache_disk_notice(d)[0] == 0, "seed %llu op %d: reopen: %s",
                      (unsigned long long)seed, op, cache_disk_notice(d));
            reopens++;
        }
        cache_disk_stats st = stats(d);
        CHECK_MSG(st.entries == m.n, "seed %llu op %d: %llu entries, model %zu",
                  (unsigned long long)seed, op, (unsigned long long)st.entries, m.n);
        check_stats_sane(d);
        if (op % 64 == 0)
            for (uint64_t id = 0; id < pool; id++)
                CHECK_MSG(contains_id(d, id) == (model_find(&m, id) >= 0),
                          "seed %llu op %d: block %llu: contains %d, model %d",
                          (unsigned long long)seed, op, (unsigned long long)id, contains_id(d, id),
                          model_find(&m, id) >= 0);
    }
    cache_disk_close(d);
    CHECK_EQ_INT(check_store(dir), m.n);
    CHECK(reopens > 10);
    tmpdirs_remove();
}

static void test_randomized(void)
{
    random_run(1, 12, 40, 3000);
    random_run(2, 30, 48, 3000);
    random_run(3, 5, 12, 2000);
    random_run(4, 1, 3, 1000);
}

/* ---- a directory and files of our own ---- */

/* dir/name as a symbolic link to victim, a file of someone else's that must stay untouched. */
static void plant_symlink(const char *dir, const char *name, const char *victim)
{
    char p[256];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    unlink(p);
    CHECK_MSG(symlink(victim, p) == 0, "symlink %s: %s", p, strerror(errno));
}

static void check_victim(const char *victim)
{
    size_t n;
    uint8_t *b = read_file(victim, &n);
    CHECK_EQ_INT(n, 9);
    CHECK(memcmp(b, "precious\n", 9) == 0);
    free(b);
}

/* cache_disk_lock() on dir must fail with err, its message naming dir and containing what. */
static void lock_fails(const char *dir, int err, const char *what)
{
    char msg[512] = "";
    int fd = 99;
    int rc = cache_disk_lock(dir, &fd, msg, sizeof msg);
    CHECK_MSG(rc == err, "lock '%s': %d (%s), expected %d: %s", dir, rc, cache_strerror(rc), err,
              msg);
    CHECK_EQ_INT(fd, -1);
    CHECK_STR_CONTAINS(msg, dir);
    CHECK_STR_CONTAINS(msg, what);
}

/* The files of the store (F3 of the hardening review): another user who owns the directory or
 * may write in it could plant a symbolic link for us to write through, or keep a data.mdb open
 * that we fill with the prompts' token ids. Each is refused with a message naming the directory,
 * the file and the problem; nothing is written through, nothing is repaired. */
static void test_private_files(void)
{
    const char *base = tmpdir_new();
    const char *elsewhere = tmpdir_new();
    char victim[256], p[256], dir[64];
    snprintf(victim, sizeof victim, "%s/victim", elsewhere);
    write_file(victim, "precious\n", 9);
    int root = geteuid() == 0;

    /* A good directory: the lock holds our pid; a second lock is refused as busy. */
    snprintf(dir, sizeof dir, "%s/store", base);
    char msg[512];
    int fd = -1;
    CHECK_EQ_INT(cache_disk_lock(dir, &fd, msg, sizeof msg), 0);
    CHECK(fd >= 0);
    struct stat sb;
    CHECK(stat(dir, &sb) == 0);
    CHECK_EQ_INT(sb.st_mode & 0777, 0700);
    snprintf(p, sizeof p, "%s/prefixd.lock", dir);
    size_t n;
    uint8_t *b = read_file(p, &n);
    char pid[32];
    snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    CHECK_EQ_INT(n, strlen(pid));
    CHECK(memcmp(b, pid, n) == 0);
    free(b);
    pid[strlen(pid) - 1] = 0;
    lock_fails(dir, CACHE_EBUSY, pid);
    close(fd);
    cache_disk *d = open_dir(dir, 64);
    CHECK_EQ_INT(put_range(d, 0, 4, NULL), 0);
    cache_disk_close(d);
    snprintf(p, sizeof p, "%s/data.mdb", dir);
    CHECK(stat(p, &sb) == 0);
    CHECK_EQ_INT(sb.st_mode & 0777, 0600);
    snprintf(p, sizeof p, "%s/lock.mdb", dir);
    CHECK(stat(p, &sb) == 0);
    CHECK_EQ_INT(sb.st_mode & 0777, 0600);

    /* A symbolic link planted as the lock file: refused, the target untouched. */
    plant_symlink(dir, "prefixd.lock", victim);
    lock_fails(dir, CACHE_EIO, "symbolic link");
    check_victim(victim);
    snprintf(p, sizeof p, "%s/prefixd.lock", dir);
    unlink(p);

    /* data.mdb or lock.mdb as symbolic links: refused before LMDB opens them. */
    const char *files[2] = {"data.mdb", "lock.mdb"};
    for (int i = 0; i < 2; i++) {
        char keep[128], moved[128];
        snprintf(keep, sizeof keep, "%s/%s", dir, files[i]);
        snprintf(moved, sizeof moved, "%s/%s.keep", dir, files[i]);
        CHECK(rename(keep, moved) == 0);
        plant_symlink(dir, files[i], victim);
        cache_disk_opts o = opts_for(dir, 64);
        const char *m = open_fails(&o, CACHE_EIO);
        CHECK_STR_CONTAINS(m, dir);
        CHECK_STR_CONTAINS(m, files[i]);
        CHECK_STR_CONTAINS(m, "symbolic link");
        check_victim(victim);
        CHECK(unlink(keep) == 0 && rename(moved, keep) == 0);
    }

    /* data.mdb readable by others (another user may already hold it open): refused, its mode
     * and bytes unchanged; once it is 0600 again the store opens with its blocks. */
    snprintf(p, sizeof p, "%s/data.mdb", dir);
    uint8_t *before = read_file(p, &n);
    CHECK(chmod(p, 0666) == 0);
    cache_disk_opts o = opts_for(dir, 64);
    const char *m = open_fails(&o, CACHE_EIO);
    CHECK_STR_CONTAINS(m, dir);
    CHECK_STR_CONTAINS(m, "data.mdb");
    CHECK_STR_CONTAINS(m, "mode 0666");
    CHECK(stat(p, &sb) == 0);
    CHECK_EQ_INT(sb.st_mode & 0777, 0666);
    size_t n2;
    uint8_t *after = read_file(p, &n2);
    CHECK(n2 == n && memcmp(before, after, n) == 0);
    free(before);
    free(after);
    CHECK(chmod(p, 0640) == 0);
    open_fails(&o, CACHE_EIO);
    CHECK(chmod(p, 0600) == 0);
    d = open_dir(dir, 64);
    get_ok(d, 3);
    cache_disk_close(d);

    /* A group- or other-writable directory: refused (nothing created in it). */
    int modes[3] = {0770, 0703, 0777};
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s/open%d", base, i);
        CHECK(mkdir(p, 0700) == 0 && chmod(p, (mode_t)modes[i]) == 0);
        o = opts_for(p, 64);
        m = open_fails(&o, CACHE_EIO);
        CHECK_STR_CONTAINS(m, p);
        CHECK_STR_CONTAINS(m, "writable by its group or others");
        lock_fails(p, CACHE_EIO, "writable by its group or others");
        char q[300];
        snprintf(q, sizeof q, "%s/prefixd.lock", p);
        CHECK(access(q, F_OK) != 0);
        snprintf(q, sizeof q, "%s/data.mdb", p);
        CHECK(access(q, F_OK) != 0);
    }

    if (!root) {
        fprintf(stderr, "   note: not root: the cases of files and directories owned by another "
                        "uid are skipped (they need chown)\n");
        tmpdirs_remove();
        return;
    }
    /* Another user's directory (uid 65534), even with a private mode. */
    snprintf(p, sizeof p, "%s/theirs", base);
    CHECK(mkdir(p, 0700) == 0 && chown(p, 65534, 65534) == 0);
    o = opts_for(p, 64);
    m = open_fails(&o, CACHE_EIO);
    CHECK_STR_CONTAINS(m, p);
    CHECK_STR_CONTAINS(m, "owned by uid 65534");
    lock_fails(p, CACHE_EIO, "owned by uid 65534");
    /* Their data.mdb, lock.mdb or lock file in our directory. */
    snprintf(p, sizeof p, "%s/prefixd.lock", dir);
    write_file(p, "1\n", 2);
    for (int i = 0; i < 3; i++) {
        const char *name = i < 2 ? files[i] : "prefixd.lock";
        char q[300];
        snprintf(q, sizeof q, "%s/%s", dir, name);
        CHECK(chown(q, 65534, 65534) == 0);
        if (i < 2) {
            o = opts_for(dir, 64);
            m = open_fails(&o, CACHE_EIO);
            CHECK_STR_CONTAINS(m, name);
            CHECK_STR_CONTAINS(m, "owned by uid 65534");
        } else {
            lock_fails(dir, CACHE_EIO, "not a regular file of uid");
        }
        CHECK(chown(q, 0, 0) == 0);
    }
    d = open_dir(dir, 64);
    get_ok(d, 0);
    cache_disk_close(d);
    tmpdirs_remove();
}

/* ---- damaged LMDB pages and truncated files (LMDB checks neither) ---- */

/* Reads data.mdb's current meta record (disk_lmdb.h) into *m; returns the page size. */
static size_t lmdb_meta_read(const uint8_t *file, size_t n, lmdb_meta *m)
{
    CHECK(n >= LMDB_PAGE_HDR + sizeof *m);
    memcpy(m, file + LMDB_PAGE_HDR, sizeof *m);
    CHECK_EQ_INT(m->magic, LMDB_MAGIC);
    size_t psize = m->dbs[0].pad;
    CHECK(psize >= 512 && n >= 2 * psize);
    lmdb_meta m1;
    memcpy(&m1, file + psize + LMDB_PAGE_HDR, sizeof m1);
    if (m1.magic == LMDB_MAGIC && m1.txnid > m->txnid)
        *m = m1;
    return psize;
}

/* The files "DIR/data.mdb.damaged-*" (moved aside); returns how many, the first in first. */
static size_t damaged_files(const char *dir, char *first, size_t len)
{
    char pat[300];
    snprintf(pat, sizeof pat, "%s/data.mdb.damaged-*", dir);
    glob_t g;
    size_t n = 0;
    if (glob(pat, 0, NULL, &g) == 0) {
        n = g.gl_pathc;
        if (first && n)
            snprintf(first, len, "%s", g.gl_pathv[0]);
        globfree(&g);
    }
    return n;
}

/* A store of 40 blocks (under a budget of 64), closed; returns data.mdb's bytes. */
static uint8_t *store_written(const char *dir, size_t *n)
{
    cache_disk *d = open_dir(dir, 64);
    for (uint64_t first = 0; first < 40; first += 8)
        CHECK_EQ_INT(put_range(d, first, 8, NULL), 0);
    cache_disk_close(d);
    char p[256];
    snprintf(p, sizeof p, "%s/data.mdb", dir);
    return read_file(p, n);
}

/* Opens dir, whose store is damaged: it must be moved aside (the file kept under its new name,
 * with the bytes it had; the notice names the directory, the problem why and the new name) and
 * the tier must open empty and work. */
static void check_moved_aside(const char *dir, const uint8_t *bad, size_t bad_n, const char *why)
{
    cache_disk *d = open_dir(dir, 64);
    uint64_t entries = stats(d).entries, found = 0;
    for (uint64_t id = 0; id < 40; id++)
        found += get_id(d, id) != CACHE_ENOTFOUND;
    CHECK_EQ_INT(put_range(d, 100, 8, NULL), 0);
    get_ok(d, 103);
    CHECK_EQ_U64(entries, 0);
    CHECK_EQ_U64(found, 0);
    const char *note = cache_disk_notice(d);
    fprintf(stderr, "   notice: %s\n", note);
    CHECK_STR_CONTAINS(note, dir);
    CHECK_STR_CONTAINS(note, why);
    CHECK_STR_CONTAINS(note, "moved aside");
    char aside[300];
    CHECK_EQ_INT(damaged_files(dir, aside, sizeof aside), 1);
    CHECK_STR_CONTAINS(note, aside);
    cache_disk_close(d);
    size_t n;
    uint8_t *back = read_file(aside, &n);
    CHECK_EQ_INT(n, bad_n);
    CHECK(memcmp(back, bad, n) == 0);
    free(back);
    /* The next open finds a healthy store: nothing more is moved aside. */
    d = open_dir(dir, 64);
    CHECK_STR_EQ(cache_disk_notice(d), "");
    get_ok(d, 100);
    cache_disk_close(d);
    CHECK_EQ_INT(damaged_files(dir, NULL, 0), 1);
    CHECK_EQ_INT(check_store(dir), 8);
}

/* Damaged tree pages: bytes of LMDB's own pages (not of any value) are overwritten, as a bad
 * sector or a stray write would. Without the integrity walk at open, LMDB follows the garbage
 * (SIGBUS, SIGSEGV, or its own assertion's abort; a heap overflow under ASan); with it the store
 * is moved aside and the tier starts empty. Four kinds of damage: on every branch and leaf page
 * of the file, the node offsets (0), the lower/upper bounds (1), the whole contents (2); on every
 * value's first overflow page, its page count (3: LMDB would free the wrong pages when the value
 * is deleted), after a run that did not end cleanly. */
static void test_damaged_pages(void)
{
    for (int kind = 0; kind < 4; kind++) {
        const char *dir = tmpdir_new();
        size_t n;
        uint8_t *file = store_written(dir, &n);
        lmdb_meta m;
        size_t psize = lmdb_meta_read(file, n, &m);
        int damaged = 0;
        for (uint64_t pg = LMDB_META_PAGES; pg <= m.last_pg && (pg + 1) * psize <= n;) {
            uint8_t *page = file + pg * psize;
            lmdb_page_hdr h;
            memcpy(&h, page, sizeof h);
            if (h.flags & LMDB_P_OVERFLOW) {
                pg += h.u.overflow_pages ? h.u.overflow_pages : 1;
                if (kind == 3) {
                    h.u.overflow_pages = 1;
                    memcpy(page, &h, sizeof h);
                    damaged++;
                }
                continue;
            }
            pg++;
            if (!(h.flags & (LMDB_P_BRANCH | LMDB_P_LEAF)) || kind == 3)
                continue;
            if (kind == 0) {
                for (size_t off = LMDB_PAGE_HDR; off + 2 <= h.u.span.lower && off < psize; off += 2)
                    memcpy(page + off, &(uint16_t){(uint16_t)(psize - 9)}, 2);
            } else if (kind == 1) {
                h.u.span.lower = (uint16_t)(psize - 16);
                h.u.span.upper = 20;
                memcpy(page, &h, sizeof h);
            } else {
                rnd_state = pg;
                for (size_t off = LMDB_PAGE_HDR; off < psize; off++)
                    page[off] = (uint8_t)rnd();
            }
            damaged++;
        }
        CHECK(damaged >= 4);
        char p[256];
        snprintf(p, sizeof p, "%s/data.mdb", dir);
        write_file(p, file, n);
        if (kind == 3) {
            /* Only a run that did not end cleanly gets the deep walk, which reads the overflow
             * pages' headers: a crash left the marker at "open". */
            snprintf(p, sizeof p, "%s/prefixd.run", dir);
            write_file(p, "open\n", 5);
        }
        fprintf(stderr, "   damage kind %d: %d pages of %llu damaged\n", kind, damaged,
                (unsigned long long)m.last_pg + 1);
        check_moved_aside(dir, file, n, "damaged");
        free(file);
        tmpdirs_remove();
    }
}

/* A data.mdb cut short (a full disk during a copy, a truncate): LMDB maps the size its meta page
 * says and faults (SIGBUS) on the first page past the file's end. The size is checked against
 * the meta page before mapping; the store is moved aside. */
static void test_truncated(void)
{
    const char *dir = tmpdir_new();
    size_t n;
    uint8_t *file = store_written(dir, &n);
    lmdb_meta m;
    size_t psize = lmdb_meta_read(file, n, &m);
    CHECK((m.last_pg + 1) * psize == n);
    size_t half = n / 2;
    char p[256];
    snprintf(p, sizeof p, "%s/data.mdb", dir);
    CHECK(truncate(p, (off_t)half) == 0);
    check_moved_aside(dir, file, half, "truncated");
    free(file);
    tmpdirs_remove();
}

static const harness_case cases[] = {
    {"roundtrip", test_roundtrip},
    {"persistence", test_persistence},
    {"model_isolation", test_model_isolation},
    {"geometry", test_geometry},
    {"garbage_files", test_garbage_files},
    {"budget_lru", test_budget_lru},
    {"map_full", test_map_full},
    {"corruption", test_corruption},
    {"file_limit", test_file_limit},
    {"bad_dir", test_bad_dir},
    {"faults", test_faults},
    {"faults_map_full", test_faults_map_full},
    {"kill9", test_kill9},
    {"randomized", test_randomized},
    {"private_files", test_private_files},
    {"damaged_pages", test_damaged_pages},
    {"truncated", test_truncated},
};

HARNESS_MAIN(cases)
