/* disk.c — the LMDB disk tier (cache_disk.h): verified block values, a byte budget, an LRU kept
 * in LMDB itself, batched writes.
 *
 * Why these shapes:
 * - One write transaction per batch of spills: a commit costs a few milliseconds, a block a
 *   fraction of one, so the disk thread writes whatever has queued up in one go. Values are
 *   written in place with MDB_RESERVE (no staging copy).
 * - The LRU lives in two small databases ("seq": key -> sequence number, "lru": big-endian
 *   sequence number -> key), so a touch rewrites 40 bytes, never the megabyte value, and the
 *   oldest block is the first key of "lru". Loads only read; their touches are queued and applied
 *   by the next write transaction, so a load never waits for a commit.
 * - The budget counts value bytes ("used", kept in "meta" and updated in the same transaction as
 *   the values, so it survives a crash consistently). LMDB's map is made larger than the budget
 *   (twice, plus slack: it is only address space, the file grows as pages are used), so the
 *   budget, not the map, normally bounds the store; a full map or disk is still handled: evict
 *   some, retry once, else CACHE_EFULL.
 * - Durability: the cache can always be recomputed, so losing the last spills in a crash is fine;
 *   serving a torn or stale block never is. We open with MDB_NOMETASYNC: each commit fsyncs the
 *   data pages but not the meta page, so a system crash can lose the last transaction but never
 *   leaves a meta page pointing at unwritten pages: the B-tree stays consistent (LMDB's
 *   copy-on-write). MDB_NOSYNC would also survive kill -9 (the writes are in the page cache) but
 *   after a power loss the tree itself could be torn. On top of that every value carries its
 *   key, parent, token ids, the fingerprint and an XXH3-128 checksum of its payload, verified on
 *   every load: whatever goes wrong below us, a bad value is a miss (and deleted), never served.
 */
#include "cache_disk.h"

#include <errno.h>
#include <limits.h>
#include <lmdb.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#define DISK_HDR_BYTES sizeof(cache_disk_value_hdr)
#define DISK_TOUCH_MAX 65536 /* queued LRU touches; beyond that touches are dropped */

/* The records of cache_disk.h are the file's bytes: no padding, every field where the format
 * says, and a little-endian host (the only kind this reads and writes). */
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the disk tier's format is little-endian; this host is not"
#endif
_Static_assert(sizeof(cache_disk_format_rec) == 24, "format record size");
_Static_assert(offsetof(cache_disk_format_rec, block_floats) == 16, "format record layout");
_Static_assert(sizeof(cache_disk_value_hdr) == 88, "value header size");
_Static_assert(offsetof(cache_disk_value_hdr, fingerprint) == 8 &&
                   offsetof(cache_disk_value_hdr, key) == 24 &&
                   offsetof(cache_disk_value_hdr, parent) == 40 &&
                   offsetof(cache_disk_value_hdr, n_tokens) == 56 &&
                   offsetof(cache_disk_value_hdr, payload_bytes) == 64 &&
                   offsetof(cache_disk_value_hdr, checksum) == 72,
               "value header layout");

struct cache_disk {
    MDB_env *env;
    MDB_dbi dbi_meta, dbi_blocks, dbi_seq, dbi_lru;
    char *dir;
    uint8_t fp[16];
    int block_tokens;
    size_t block_floats;
    size_t payload_bytes; /* block_floats * 4 */
    size_t tok_bytes;     /* token ids, padded to 8 */
    size_t val_bytes;     /* header + tokens + payload */
    size_t max_bytes;
    size_t map_bytes;
    int nosync;        /* test hook: MDB_NOSYNC */
    uint64_t used;     /* value bytes stored (mirrors meta "used") */
    uint64_t entries;  /* values stored */
    uint64_t next_seq; /* next access sequence number */
    cache_key *touch;  /* queued LRU touches */
    size_t n_touch;
    cache_disk_stats st;
    char msg[512];
};

/* ---- fault injection (tests) ---- */

static long fault_at, fault_calls;
static int fault_sticky;

long cache_disk_test_fail_at(long k, int sticky)
{
    long calls = fault_calls;
    fault_at = k;
    fault_sticky = sticky;
    fault_calls = 0;
    return calls;
}

static int fault_hit(void)
{
    fault_calls++;
    if (fault_at <= 0)
        return 0;
    return fault_calls == fault_at || (fault_sticky && fault_calls > fault_at);
}

/* Every fallible LMDB call goes through L(), so the tests can fail the k-th one. */
#define L(call) (fault_hit() ? EIO : (call))

/* mdb_txn_commit() frees the transaction even when it fails; an injected failure must too. */
static int txn_commit(MDB_txn *txn)
{
    if (fault_hit()) {
        mdb_txn_abort(txn);
        return EIO;
    }
    return mdb_txn_commit(txn);
}

/* ---- small helpers ---- */

static void put_u64(uint8_t *p, uint64_t v)
{
    memcpy(p, &v, 8);
}
static uint64_t get_u64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static void seq_be(uint8_t out[8], uint64_t seq)
{
    for (int i = 0; i < 8; i++)
        out[i] = (uint8_t)(seq >> (56 - 8 * i));
}

static uint64_t seq_from_be(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}

static void key_bytes(uint8_t out[16], cache_key k)
{
    put_u64(out, k.lo);
    put_u64(out + 8, k.hi);
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* A full map, disk, quota or file size limit: evicting can make room. */
static int rc_is_full(int rc)
{
    return rc == MDB_MAP_FULL || rc == ENOSPC || rc == EDQUOT || rc == EFBIG;
}

/* LMDB reports a short write as EIO (mdb_page_flush), so a full file system or a file size limit
 * often shows up as EIO rather than ENOSPC / EFBIG: a write that crosses the limit is cut short.
 * Tells them apart by looking: ENOSPC or EFBIG if the disk or the limit leaves less than need
 * bytes (plus 1 MiB of slack), else rc unchanged. */
static int full_errno(const cache_disk *d, int rc, uint64_t need)
{
    if (rc != EIO)
        return rc;
    uint64_t want = need + ((uint64_t)1 << 20);
    struct statvfs vs;
    if (statvfs(d->dir, &vs) == 0 && (uint64_t)vs.f_bavail * vs.f_frsize < want)
        return ENOSPC;
    struct rlimit rl;
    struct stat sb;
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/data.mdb", d->dir);
    if (getrlimit(RLIMIT_FSIZE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && stat(p, &sb) == 0 &&
        (uint64_t)sb.st_size + want > (uint64_t)rl.rlim_cur)
        return EFBIG;
    return rc;
}

/* Translates an LMDB (or errno) code at the boundary, keeping its text in d->msg. */
static int disk_fail(cache_disk *d, int rc, const char *what)
{
    snprintf(d->msg, sizeof d->msg, "disk dir '%s': %s: %s", d->dir, what, mdb_strerror(rc));
    switch (rc) {
    case MDB_MAP_FULL:
    case ENOSPC:
    case EDQUOT:
    case EFBIG: /* the file size limit (RLIMIT_FSIZE, or the file system's) */
        return CACHE_EFULL;
    case ENOMEM:
        return CACHE_ENOMEM;
    default:
        return CACHE_EIO;
    }
}

/* ---- open ---- */

static int meta_format_ok(const cache_disk *d, const MDB_val *v, char *why, size_t whylen)
{
    cache_disk_format_rec f;
    if (v->mv_size != sizeof f) {
        snprintf(why, whylen, "its meta record is not prefixd's");
        return 0;
    }
    memcpy(&f, v->mv_data, sizeof f);
    if (f.magic != CACHE_DISK_META_MAGIC) {
        snprintf(why, whylen, "its meta record is not prefixd's");
        return 0;
    }
    if (f.version != CACHE_DISK_FORMAT) {
        snprintf(why, whylen, "format version %u, this build reads version %d", f.version,
                 CACHE_DISK_FORMAT);
        return 0;
    }
    if (f.block_tokens != (uint32_t)d->block_tokens || f.block_floats != d->block_floats) {
        snprintf(why, whylen,
                 "block geometry %u tokens x %llu floats, this daemon uses %d tokens x %zu floats",
                 f.block_tokens, (unsigned long long)f.block_floats, d->block_tokens,
                 d->block_floats);
        return 0;
    }
    return 1;
}

static int meta_used_write(cache_disk *d, MDB_txn *txn);

static int meta_write(cache_disk *d, MDB_txn *txn)
{
    cache_disk_format_rec f = {.magic = CACHE_DISK_META_MAGIC,
                               .version = CACHE_DISK_FORMAT,
                               .block_tokens = (uint32_t)d->block_tokens,
                               .block_floats = d->block_floats};
    MDB_val k = {6, "format"}, v = {sizeof f, &f};
    int rc = L(mdb_put(txn, d->dbi_meta, &k, &v, 0));
    return rc ? rc : meta_used_write(d, txn);
}

static int evict_oldest(cache_disk *d, MDB_txn *txn);

/* Opens the databases, checks or writes the meta record, loads the counters, evicts down to the
 * budget. Returns 0, an LMDB code, or CACHE_EVERSION (message in d->msg). */
static int disk_init_txn(cache_disk *d, int reset)
{
    MDB_txn *txn;
    int rc = L(mdb_txn_begin(d->env, NULL, 0, &txn));
    if (rc)
        return rc;
    if ((rc = L(mdb_dbi_open(txn, "meta", MDB_CREATE, &d->dbi_meta))) ||
        (rc = L(mdb_dbi_open(txn, "blocks", MDB_CREATE, &d->dbi_blocks))) ||
        (rc = L(mdb_dbi_open(txn, "seq", MDB_CREATE, &d->dbi_seq))) ||
        (rc = L(mdb_dbi_open(txn, "lru", MDB_CREATE, &d->dbi_lru))))
        goto fail;

    MDB_val k = {6, "format"}, v;
    rc = L(mdb_get(txn, d->dbi_meta, &k, &v));
    if (rc && rc != MDB_NOTFOUND)
        goto fail;
    int fresh = rc == MDB_NOTFOUND;
    char why[200];
    if (!fresh && !meta_format_ok(d, &v, why, sizeof why)) {
        if (!reset) {
            mdb_txn_abort(txn);
            snprintf(d->msg, sizeof d->msg,
                     "disk dir '%s': incompatible store: %s (use another directory, or reset it)",
                     d->dir, why);
            return CACHE_EVERSION;
        }
        fresh = 1;
    }
    if (fresh) {
        /* A new store, or an incompatible one being wiped: empty every database. */
        if ((rc = L(mdb_drop(txn, d->dbi_blocks, 0))) || (rc = L(mdb_drop(txn, d->dbi_seq, 0))) ||
            (rc = L(mdb_drop(txn, d->dbi_lru, 0))) || (rc = L(mdb_drop(txn, d->dbi_meta, 0))))
            goto fail;
        d->used = 0;
        if ((rc = meta_write(d, txn)))
            goto fail;
    } else {
        MDB_val ku = {4, "used"}, vu;
        rc = L(mdb_get(txn, d->dbi_meta, &ku, &vu));
        if (rc)
            goto fail;
        d->used = vu.mv_size == 8 ? get_u64(vu.mv_data) : 0;
    }
    MDB_stat ms;
    if ((rc = L(mdb_stat(txn, d->dbi_blocks, &ms))))
        goto fail;
    d->entries = ms.ms_entries;
    MDB_cursor *cur;
    if ((rc = L(mdb_cursor_open(txn, d->dbi_lru, &cur))))
        goto fail;
    MDB_val ck, cv;
    rc = L(mdb_cursor_get(cur, &ck, &cv, MDB_LAST));
    mdb_cursor_close(cur);
    if (rc && rc != MDB_NOTFOUND)
        goto fail;
    d->next_seq = rc == 0 && ck.mv_size == 8 ? seq_from_be(ck.mv_data) + 1 : 1;
    /* A budget smaller than the last run's: evict down to it now, so that the store keeps the
     * budget from the open on (not only after the next write of a new block). */
    if (d->used > d->max_bytes) {
        while (d->used > d->max_bytes && (rc = evict_oldest(d, txn)) == 0)
            ;
        if (rc && rc != MDB_NOTFOUND)
            goto fail;
        if ((rc = meta_used_write(d, txn)))
            goto fail;
    }
    rc = txn_commit(txn);
    return rc;
fail:
    mdb_txn_abort(txn);
    return rc;
}

static int disk_env_open(cache_disk *d)
{
    int rc = L(mdb_env_create(&d->env));
    if (rc) {
        d->env = NULL;
        return rc;
    }
    if ((rc = L(mdb_env_set_maxdbs(d->env, 4))) ||
        (rc = L(mdb_env_set_mapsize(d->env, d->map_bytes))) ||
        (rc = L(mdb_env_open(d->env, d->dir,
                             MDB_NOMETASYNC | MDB_NOTLS | (d->nosync ? MDB_NOSYNC : 0), 0600)))) {
        mdb_env_close(d->env);
        d->env = NULL;
        return rc;
    }
    int dead;
    if ((rc = L(mdb_reader_check(d->env, &dead)))) {
        mdb_env_close(d->env);
        d->env = NULL;
    }
    return rc;
}

static void disk_remove_files(const char *dir)
{
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/data.mdb", dir);
    unlink(p);
    snprintf(p, sizeof p, "%s/lock.mdb", dir);
    unlink(p);
}

int cache_disk_open(const cache_disk_opts *o, cache_disk **out, char *msg, size_t msglen)
{
    *out = NULL;
    if (!o || !o->dir || !o->dir[0] || o->block_tokens <= 0 || o->block_floats == 0 ||
        o->block_floats > ((size_t)1 << 30)) {
        snprintf(msg, msglen, "disk tier: invalid options (dir, block_tokens, block_floats)");
        return CACHE_EINVAL;
    }
    if (mkdir(o->dir, 0700) != 0 && errno != EEXIST) {
        snprintf(msg, msglen, "disk dir '%s': cannot create: %s", o->dir, strerror(errno));
        return CACHE_EIO;
    }
    struct stat sb;
    if (stat(o->dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        snprintf(msg, msglen, "disk dir '%s': not a directory", o->dir);
        return CACHE_EIO;
    }
    if (access(o->dir, W_OK | X_OK) != 0) {
        snprintf(msg, msglen, "disk dir '%s': not writable: %s", o->dir, strerror(errno));
        return CACHE_EIO;
    }
    cache_disk *d = calloc(1, sizeof *d);
    if (!d || !(d->dir = strdup(o->dir)) ||
        !(d->touch = malloc(DISK_TOUCH_MAX * sizeof *d->touch))) {
        if (d)
            free(d->dir);
        free(d);
        snprintf(msg, msglen, "disk dir '%s': out of memory", o->dir);
        return CACHE_ENOMEM;
    }
    memcpy(d->fp, o->fingerprint, 16);
    d->block_tokens = o->block_tokens;
    d->block_floats = o->block_floats;
    d->payload_bytes = o->block_floats * sizeof(float);
    d->tok_bytes = ((size_t)o->block_tokens * 4 + 7) & ~(size_t)7;
    d->val_bytes = DISK_HDR_BYTES + d->tok_bytes + d->payload_bytes;
    d->max_bytes = o->max_bytes ? o->max_bytes : CACHE_DISK_DEFAULT_MAX;
    d->st.max_bytes = d->max_bytes;
    d->nosync = o->test_nosync != 0;
    d->map_bytes = o->test_map_bytes ? o->test_map_bytes : d->max_bytes * 2 + ((size_t)64 << 20);
    d->map_bytes = (d->map_bytes + 65535) & ~(size_t)65535;

    int rc = disk_env_open(d);
    if ((rc == MDB_INVALID || rc == MDB_VERSION_MISMATCH) && o->reset_incompatible) {
        disk_remove_files(d->dir);
        rc = disk_env_open(d);
    }
    if (rc == MDB_INVALID || rc == MDB_VERSION_MISMATCH) {
        snprintf(msg, msglen,
                 "disk dir '%s': incompatible store: %s (use another directory, or reset it)",
                 d->dir, mdb_strerror(rc));
        cache_disk_close(d);
        return CACHE_EVERSION;
    }
    if (rc == 0)
        rc = disk_init_txn(d, o->reset_incompatible);
    if (rc) {
        int err;
        if (rc == CACHE_EVERSION) {
            snprintf(msg, msglen, "%s", d->msg);
            err = rc;
        } else {
            err = disk_fail(d, rc, "cannot open the LMDB store");
            if (err == CACHE_EFULL)
                err = CACHE_EIO;
            snprintf(msg, msglen, "%s", d->msg);
        }
        cache_disk_close(d);
        return err;
    }
    d->st.entries = d->entries;
    d->st.bytes_on_disk = d->used;
    *out = d;
    return 0;
}

void cache_disk_close(cache_disk *d)
{
    if (!d)
        return;
    if (d->env) {
        if (d->n_touch)
            cache_disk_sync(d);
        mdb_env_sync(d->env, !d->nosync);
        mdb_env_close(d->env);
    }
    free(d->touch);
    free(d->dir);
    free(d);
}

const char *cache_disk_errmsg(const cache_disk *d)
{
    return d ? d->msg : "";
}

/* ---- write transactions ---- */

/* The counters a write transaction changes, restored if it aborts. */
typedef struct disk_saved {
    uint64_t used, entries, next_seq;
    cache_disk_stats st;
} disk_saved;

static void disk_save(const cache_disk *d, disk_saved *s)
{
    s->used = d->used;
    s->entries = d->entries;
    s->next_seq = d->next_seq;
    s->st = d->st;
}

static void disk_restore(cache_disk *d, const disk_saved *s)
{
    d->used = s->used;
    d->entries = s->entries;
    d->next_seq = s->next_seq;
    d->st = s->st;
}

/* Gives key the next sequence number (moving it to the young end of the LRU). */
static int lru_set(cache_disk *d, MDB_txn *txn, const uint8_t kb[16], int had_seq, uint64_t old)
{
    int rc;
    uint8_t sb[8];
    if (had_seq) {
        seq_be(sb, old);
        MDB_val ko = {8, sb};
        rc = L(mdb_del(txn, d->dbi_lru, &ko, NULL));
        if (rc && rc != MDB_NOTFOUND)
            return rc;
    }
    uint64_t seq = d->next_seq++;
    seq_be(sb, seq);
    uint8_t sv[8];
    put_u64(sv, seq);
    MDB_val kl = {8, sb}, vl = {16, (void *)kb};
    MDB_val ks = {16, (void *)kb}, vs = {8, sv};
    if ((rc = L(mdb_put(txn, d->dbi_lru, &kl, &vl, 0))))
        return rc;
    return L(mdb_put(txn, d->dbi_seq, &ks, &vs, 0));
}

/* Reads key's sequence number: 0 found, MDB_NOTFOUND, or an LMDB error. */
static int seq_get(cache_disk *d, MDB_txn *txn, const uint8_t kb[16], uint64_t *seq)
{
    MDB_val k = {16, (void *)kb}, v;
    int rc = L(mdb_get(txn, d->dbi_seq, &k, &v));
    if (rc == 0)
        *seq = v.mv_size == 8 ? get_u64(v.mv_data) : 0;
    return rc;
}

static int apply_touches(cache_disk *d, MDB_txn *txn)
{
    for (size_t i = 0; i < d->n_touch; i++) {
        uint8_t kb[16];
        uint64_t old;
        key_bytes(kb, d->touch[i]);
        int rc = seq_get(d, txn, kb, &old);
        if (rc == MDB_NOTFOUND)
            continue; /* evicted or deleted since */
        if (rc || (rc = lru_set(d, txn, kb, 1, old)))
            return rc;
    }
    return 0;
}

/* Deletes the block kb and its LRU entries, adjusting the counters. MDB_NOTFOUND if absent. */
static int block_delete(cache_disk *d, MDB_txn *txn, const uint8_t kb[16])
{
    MDB_val k = {16, (void *)kb}, v;
    int rc = L(mdb_get(txn, d->dbi_blocks, &k, &v));
    if (rc)
        return rc;
    size_t sz = v.mv_size;
    if ((rc = L(mdb_del(txn, d->dbi_blocks, &k, NULL))))
        return rc;
    uint64_t seq;
    rc = seq_get(d, txn, kb, &seq);
    if (rc == 0) {
        uint8_t sb[8];
        seq_be(sb, seq);
        MDB_val ko = {8, sb};
        if ((rc = L(mdb_del(txn, d->dbi_seq, &k, NULL))))
            return rc;
        rc = L(mdb_del(txn, d->dbi_lru, &ko, NULL));
    }
    if (rc && rc != MDB_NOTFOUND)
        return rc;
    d->used = d->used >= sz ? d->used - sz : 0;
    if (d->entries)
        d->entries--;
    return 0;
}

/* Evicts the least recently used block: 0, MDB_NOTFOUND if the store is empty, or an error. */
static int evict_oldest(cache_disk *d, MDB_txn *txn)
{
    MDB_cursor *cur;
    int rc = L(mdb_cursor_open(txn, d->dbi_lru, &cur));
    if (rc)
        return rc;
    MDB_val k, v;
    rc = L(mdb_cursor_get(cur, &k, &v, MDB_FIRST));
    uint8_t kb[16];
    if (rc == 0 && v.mv_size == 16)
        memcpy(kb, v.mv_data, 16);
    else if (rc == 0)
        memset(kb, 0, 16);
    if (rc == 0)
        rc = L(mdb_cursor_del(cur, 0));
    mdb_cursor_close(cur);
    if (rc)
        return rc;
    MDB_val ks = {16, kb};
    rc = L(mdb_del(txn, d->dbi_seq, &ks, NULL));
    if (rc && rc != MDB_NOTFOUND)
        return rc;
    /* The lru entry is gone already, so block_delete() finds no seq; it still frees the value. */
    rc = block_delete(d, txn, kb);
    if (rc && rc != MDB_NOTFOUND)
        return rc;
    d->st.evictions++;
    return 0;
}

static int meta_used_write(cache_disk *d, MDB_txn *txn)
{
    uint8_t u[8];
    put_u64(u, d->used);
    MDB_val ku = {4, "used"}, vu = {8, u};
    return L(mdb_put(txn, d->dbi_meta, &ku, &vu, 0));
}

static void value_fill(const cache_disk *d, uint8_t *p, const cache_disk_item *it)
{
    XXH128_hash_t h = XXH3_128bits(it->data, d->payload_bytes);
    cache_disk_value_hdr hdr = {.magic = CACHE_DISK_VALUE_MAGIC,
                                .version = CACHE_DISK_FORMAT,
                                .key = it->key,
                                .parent = it->parent,
                                .n_tokens = (uint32_t)d->block_tokens,
                                .payload_bytes = d->payload_bytes,
                                .checksum = {h.low64, h.high64}};
    memcpy(hdr.fingerprint, d->fp, 16);
    memcpy(p, &hdr, sizeof hdr);
    size_t tok = (size_t)d->block_tokens * 4;
    memcpy(p + DISK_HDR_BYTES, it->tokens, tok);
    memset(p + DISK_HDR_BYTES + tok, 0, d->tok_bytes - tok);
    memcpy(p + DISK_HDR_BYTES + d->tok_bytes, it->data, d->payload_bytes);
}

/* One attempt: touches, then each item (evicting to fit), in one transaction. Returns 0 or an
 * LMDB code; *written and *over (an item did not fit the budget) report what happened. */
static int put_txn(cache_disk *d, const cache_disk_item *items, size_t n, size_t *written,
                   int *over)
{
    MDB_txn *txn;
    int rc = L(mdb_txn_begin(d->env, NULL, 0, &txn));
    if (rc)
        return rc;
    *written = 0;
    *over = 0;
    if ((rc = apply_touches(d, txn)))
        goto fail;
    uint64_t vb = d->val_bytes;
    for (size_t i = 0; i < n; i++) {
        uint8_t kb[16];
        uint64_t old;
        key_bytes(kb, items[i].key);
        rc = seq_get(d, txn, kb, &old);
        if (rc == 0) { /* already stored: a touch */
            if ((rc = lru_set(d, txn, kb, 1, old)))
                goto fail;
            continue;
        }
        if (rc != MDB_NOTFOUND)
            goto fail;
        if (vb > d->max_bytes) {
            *over = 1;
            break;
        }
        while (d->used + vb > d->max_bytes) {
            rc = evict_oldest(d, txn);
            if (rc == MDB_NOTFOUND)
                break;
            if (rc)
                goto fail;
        }
        if (d->used + vb > d->max_bytes) {
            *over = 1;
            break;
        }
        MDB_val k = {16, kb}, v = {vb, NULL};
        if ((rc = L(mdb_put(txn, d->dbi_blocks, &k, &v, MDB_RESERVE))))
            goto fail;
        value_fill(d, v.mv_data, &items[i]);
        if ((rc = lru_set(d, txn, kb, 0, 0)))
            goto fail;
        d->used += vb;
        d->entries++;
        d->st.puts++;
        d->st.bytes_written += vb;
        ++*written;
    }
    if ((rc = meta_used_write(d, txn)))
        goto fail;
    rc = txn_commit(txn);
    if (rc == 0)
        d->n_touch = 0;
    return rc;
fail:
    mdb_txn_abort(txn);
    return rc;
}

/* Frees room after a full map or disk: evicts the oldest blocks until need bytes plus a quarter
 * of what is stored are gone, in a transaction of its own, then commits one more small write
 * transaction. LMDB reuses the pages freed by transaction T only from transaction T + 2 on (the
 * previous meta page may still point at them until T + 1 commits), so without that second commit
 * the retry would find the map as full as before. */
static int make_room(cache_disk *d, uint64_t need)
{
    disk_saved s;
    disk_save(d, &s);
    MDB_txn *txn;
    int rc = L(mdb_txn_begin(d->env, NULL, 0, &txn));
    if (rc)
        return rc;
    uint64_t target = d->used / 4 + need;
    uint64_t goal = d->used > target ? d->used - target : 0;
    while (d->used > goal) {
        rc = evict_oldest(d, txn);
        if (rc == MDB_NOTFOUND)
            break;
        if (rc)
            goto fail;
    }
    if ((rc = meta_used_write(d, txn)))
        goto fail;
    if ((rc = txn_commit(txn))) {
        disk_restore(d, &s);
        return rc;
    }
    /* The evictions are committed: the counters stay. The second transaction rewrites "used"
     * (unchanged), which is enough to make it a real commit. */
    if ((rc = L(mdb_txn_begin(d->env, NULL, 0, &txn))))
        return rc;
    if ((rc = meta_used_write(d, txn))) {
        mdb_txn_abort(txn);
        return rc;
    }
    return txn_commit(txn);
fail:
    mdb_txn_abort(txn);
    disk_restore(d, &s);
    return rc;
}

int cache_disk_put_batch(cache_disk *d, const cache_disk_item *items, size_t n, size_t *n_written)
{
    size_t written = 0;
    int over = 0, rc = 0;
    uint64_t need = (uint64_t)n * d->val_bytes;
    if (n_written)
        *n_written = 0;
    d->msg[0] = 0;
    for (int attempt = 0; attempt < 2; attempt++) {
        disk_saved s;
        disk_save(d, &s);
        rc = put_txn(d, items, n, &written, &over);
        if (rc == 0)
            break;
        disk_restore(d, &s);
        written = 0;
        rc = full_errno(d, rc, need);
        if (attempt > 0 || !rc_is_full(rc))
            break;
        int rc2 = make_room(d, need);
        if (rc2) {
            rc = full_errno(d, rc2, need);
            break;
        }
    }
    d->st.entries = d->entries;
    d->st.bytes_on_disk = d->used;
    if (n_written)
        *n_written = written;
    if (rc) {
        int err = disk_fail(d, rc, "writing spilled blocks");
        if (err == CACHE_EFULL)
            d->st.full++;
        return err;
    }
    if (over) {
        snprintf(d->msg, sizeof d->msg,
                 "disk dir '%s': budget of %zu bytes full: stored %zu of %zu blocks", d->dir,
                 d->max_bytes, written, n);
        d->st.full++;
        return CACHE_EFULL;
    }
    return 0;
}

int cache_disk_sync(cache_disk *d)
{
    int rc = 0;
    if (d->n_touch) {
        disk_saved s;
        disk_save(d, &s);
        size_t w;
        int over;
        rc = put_txn(d, NULL, 0, &w, &over);
        if (rc) {
            disk_restore(d, &s);
            d->n_touch = 0; /* touches are only hints: never retry them forever */
            return disk_fail(d, rc, "recording recent use");
        }
    }
    rc = L(mdb_env_sync(d->env, !d->nosync));
    return rc ? disk_fail(d, rc, "syncing") : 0;
}

/* ---- reads ---- */

int cache_disk_contains(cache_disk *d, cache_key key)
{
    MDB_txn *txn;
    int rc = L(mdb_txn_begin(d->env, NULL, MDB_RDONLY, &txn));
    if (rc)
        return disk_fail(d, rc, "reading");
    uint8_t kb[16];
    key_bytes(kb, key);
    MDB_val k = {16, kb}, v;
    rc = L(mdb_get(txn, d->dbi_blocks, &k, &v));
    mdb_txn_abort(txn);
    if (rc == 0)
        return 1;
    if (rc == MDB_NOTFOUND)
        return 0;
    return disk_fail(d, rc, "reading");
}

/* Records why block key failed verification; returns CACHE_ECORRUPT. */
static int value_bad(cache_disk *d, cache_key key, const char *why)
{
    snprintf(d->msg, sizeof d->msg,
             "disk dir '%s': block %016llx%016llx failed verification (%s): deleted", d->dir,
             (unsigned long long)key.hi, (unsigned long long)key.lo, why);
    return CACHE_ECORRUPT;
}

/* Checks a stored value against what the caller expects. Returns 0 (good: payload copied into
 * out and verified), CACHE_ENOTFOUND (another model's block) or CACHE_ECORRUPT, with the reason
 * in d->msg. */
static int value_check(cache_disk *d, const MDB_val *v, cache_key key, cache_key parent,
                       const int32_t *tokens, float *out)
{
    const uint8_t *p = v->mv_data;
    const char *why = NULL;
    cache_disk_value_hdr h;
    if (v->mv_size != d->val_bytes)
        return value_bad(d, key, "wrong length");
    memcpy(&h, p, sizeof h);
    if (h.magic != CACHE_DISK_VALUE_MAGIC)
        why = "bad magic";
    else if (h.version != CACHE_DISK_FORMAT)
        why = "wrong format version";
    else if (memcmp(h.fingerprint, d->fp, 16) != 0)
        return CACHE_ENOTFOUND;
    else if (!cache_key_eq(h.key, key))
        why = "key mismatch";
    else if (!cache_key_eq(h.parent, parent))
        why = "parent key mismatch";
    else if (h.n_tokens != (uint32_t)d->block_tokens || h.payload_bytes != d->payload_bytes)
        why = "wrong geometry";
    else if (memcmp(p + DISK_HDR_BYTES, tokens, (size_t)d->block_tokens * 4) != 0)
        why = "token ids mismatch";
    if (!why) {
        memcpy(out, p + DISK_HDR_BYTES + d->tok_bytes, d->payload_bytes);
        XXH128_hash_t sum = XXH3_128bits(out, d->payload_bytes);
        if (sum.low64 != h.checksum[0] || sum.high64 != h.checksum[1])
            why = "payload checksum mismatch";
    }
    return why ? value_bad(d, key, why) : 0;
}

static void delete_corrupt(cache_disk *d, cache_key key)
{
    disk_saved s;
    disk_save(d, &s);
    MDB_txn *txn;
    int rc = L(mdb_txn_begin(d->env, NULL, 0, &txn));
    if (rc)
        return;
    uint8_t kb[16];
    key_bytes(kb, key);
    rc = block_delete(d, txn, kb);
    if (rc == 0)
        rc = meta_used_write(d, txn);
    if (rc == 0)
        rc = txn_commit(txn);
    else
        mdb_txn_abort(txn);
    if (rc) {
        /* Not deleted now: the value still fails verification on the next get. */
        disk_restore(d, &s);
        return;
    }
    d->st.corrupt_deleted++;
    d->st.entries = d->entries;
    d->st.bytes_on_disk = d->used;
}

int cache_disk_get(cache_disk *d, cache_key key, cache_key parent, const int32_t *tokens,
                   float *payload_out)
{
    double t0 = now_ms();
    d->st.gets++;
    MDB_txn *txn;
    int rc = L(mdb_txn_begin(d->env, NULL, MDB_RDONLY, &txn));
    if (rc)
        return disk_fail(d, rc, "reading a block");
    uint8_t kb[16];
    key_bytes(kb, key);
    MDB_val k = {16, kb}, v;
    rc = L(mdb_get(txn, d->dbi_blocks, &k, &v));
    int res;
    if (rc == MDB_NOTFOUND)
        res = CACHE_ENOTFOUND;
    else if (rc)
        res = disk_fail(d, rc, "reading a block");
    else
        res = value_check(d, &v, key, parent, tokens, payload_out);
    mdb_txn_abort(txn); /* the payload is copied (or not needed) before the snapshot ends */
    if (res == CACHE_ECORRUPT) {
        delete_corrupt(d, key);
    } else if (res == CACHE_ENOTFOUND) {
        d->st.misses++;
    } else if (res == 0) {
        d->st.hits++;
        if (d->n_touch < DISK_TOUCH_MAX)
            d->touch[d->n_touch++] = key;
        d->st.load_ms_total += now_ms() - t0;
    }
    return res;
}

void cache_disk_get_stats(const cache_disk *d, cache_disk_stats *out)
{
    *out = d->st;
    out->entries = d->entries;
    out->bytes_on_disk = d->used;
}
