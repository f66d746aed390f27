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
#include "base.h"
#include "cache_disk.h"

#include "disk_lmdb.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <lmdb.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define DISK_TOUCH_MAX 65536 /* queued LRU touches; beyond that touches are dropped */

/* The records of cache_disk.h are the file's bytes: no padding, every field where the format
 * says, and a little-endian host (the only kind this reads and writes). */
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the disk tier's format is little-endian; this host is not"
#endif
_Static_assert(sizeof(cache_disk_format_rec) == 24, "format record size");
_Static_assert(offsetof(cache_disk_format_rec, block_floats) == 16, "format record layout");

struct cache_disk {
    MDB_env *env;
    MDB_dbi dbi_meta, dbi_blocks, dbi_seq, dbi_lru;
    char *dir;
    int block_tokens;
    size_t block_floats;
    cache_value_fmt fmt;  /* the value format (cache_value.h): sizes, fingerprint */
    size_t payload_bytes; /* block_floats * 4 */
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
    char notice[1024]; /* what the open did that the caller should log (cache_disk_notice()) */
    int marked;        /* the run marker says "open" (written by this handle) */
    int suspect;       /* LMDB reported a damaged tree: the marker stays "open" at close */
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
    case MDB_CORRUPTED:
    case MDB_PAGE_NOTFOUND: /* a damaged tree: the next open walks it deeply */
        d->suspect = 1;
        return CACHE_EIO;
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

/* ---- the directory and its files: private to this uid ---- */

int cache_disk_dir_check(const char *dir, char *msg, size_t msglen)
{
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        snprintf(msg, msglen, "disk dir '%s': cannot create: %s", dir, strerror(errno));
        return CACHE_EIO;
    }
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        snprintf(msg, msglen, "disk dir '%s': not a directory", dir);
        return CACHE_EIO;
    }
    if (access(dir, W_OK | X_OK) != 0) {
        snprintf(msg, msglen, "disk dir '%s': not writable: %s", dir, strerror(errno));
        return CACHE_EIO;
    }
    /* Another user who owns the directory, or may write in it, can plant links or files for us
     * to write through, or read the store (it holds the prompts' token ids). */
    if (sb.st_uid != geteuid()) {
        snprintf(msg, msglen,
                 "disk dir '%s': owned by uid %lu, not by this process's uid %lu: refused "
                 "(another user could read or replace the store; use a directory of your own)",
                 dir, (unsigned long)sb.st_uid, (unsigned long)geteuid());
        return CACHE_EIO;
    }
    if (sb.st_mode & (S_IWGRP | S_IWOTH)) {
        snprintf(msg, msglen,
                 "disk dir '%s': writable by its group or others (mode %04o): refused "
                 "(other users could plant files in it; chmod go-w it, or use another)",
                 dir, (unsigned)(sb.st_mode & 07777));
        return CACHE_EIO;
    }
    return 0;
}

/* DIR/name, if it exists, must be a regular file of this uid that nobody else may read or
 * write: refused otherwise, not repaired (someone else may already hold it open). Returns 0 or
 * CACHE_EIO with the message in msg. */
static int file_check_private(const char *dir, const char *name, char *msg, size_t msglen)
{
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    struct stat sb;
    const char *why = NULL;
    char whybuf[96];
    if (lstat(p, &sb) != 0) {
        if (errno == ENOENT)
            return 0;
        why = strerror(errno);
    } else if (S_ISLNK(sb.st_mode)) {
        why = "a symbolic link";
    } else if (!S_ISREG(sb.st_mode)) {
        why = "not a regular file";
    } else if (sb.st_uid != geteuid()) {
        snprintf(whybuf, sizeof whybuf, "owned by uid %lu, not by this process's uid %lu",
                 (unsigned long)sb.st_uid, (unsigned long)geteuid());
        why = whybuf;
    } else if (sb.st_mode & 077) {
        snprintf(whybuf, sizeof whybuf, "mode %04o lets other users in (want 0600)",
                 (unsigned)(sb.st_mode & 07777));
        why = whybuf;
    }
    if (!why)
        return 0;
    snprintf(msg, msglen,
             "disk dir '%s': file '%s': %s: refused (remove it if you trust nobody "
             "holds it open)",
             dir, name, why);
    return CACHE_EIO;
}

int cache_disk_lock(const char *dir, int *fd_out, char *msg, size_t msglen)
{
    *fd_out = -1;
    int rc = cache_disk_dir_check(dir, msg, msglen);
    if (rc)
        return rc;
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/prefixd.lock", dir) >= (int)sizeof path) {
        snprintf(msg, msglen, "disk dir '%.200s...': path too long", dir);
        return CACHE_EINVAL;
    }
    /* O_NOFOLLOW: a symbolic link planted here is refused, never written through; O_NONBLOCK:
     * nor does a FIFO make the open wait (it is refused below). */
    int fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0600);
    if (fd < 0) {
        snprintf(msg, msglen, "disk dir '%s': lock file 'prefixd.lock': %s: refused", dir,
                 errno == ELOOP ? "a symbolic link" : strerror(errno));
        return CACHE_EIO;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) || sb.st_uid != geteuid()) {
        snprintf(msg, msglen,
                 "disk dir '%s': lock file 'prefixd.lock': not a regular file of uid %lu: refused",
                 dir, (unsigned long)geteuid());
        close(fd);
        return CACHE_EIO;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        char pid[32] = "";
        ssize_t n = e == EWOULDBLOCK ? pread(fd, pid, sizeof pid - 1, 0) : 0;
        pid[n > 0 ? n : 0] = 0;
        pid[strcspn(pid, "\n")] = 0;
        close(fd);
        if (e != EWOULDBLOCK) {
            snprintf(msg, msglen, "disk dir '%s': cannot lock 'prefixd.lock': %s", dir,
                     strerror(e));
            return CACHE_EIO;
        }
        snprintf(msg, msglen, "disk dir '%s': in use by another prefixd%s%s%s", dir,
                 pid[0] ? " (pid " : "", pid, pid[0] ? ")" : "");
        return CACHE_EBUSY;
    }
    char pid[32];
    int n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) == 0 && pwrite(fd, pid, (size_t)n, 0) < 0) {
        /* only informative */
    }
    *fd_out = fd;
    return 0;
}

/* ---- LMDB's files before mapping: truncation and damage ----
 *
 * LMDB maps data.mdb and trusts it: it does not compare the file's size with the pages its meta
 * record says are in use (a truncated file faults, SIGBUS, at the first read past its end), and
 * its pages carry no checksum (a damaged branch or leaf page can make it read or copy out of
 * bounds, or fail an assertion and abort). Neither can be caught in this process, and both would
 * recur at every start. So before LMDB maps the file:
 * - the two meta pages are read with pread() (disk_lmdb.h); a tree's root past the file's end
 *   is a truncation seen without mapping. (The file may legitimately end before the meta's last
 *   page: LMDB never writes pages that were freed in the transaction that allocated them, so
 *   only a page in use past the end is damage, which the walk finds.)
 * - every tree (the free list, the main tree, our four databases) is walked in a child process,
 *   which opens the store read-only and without the lock file, reads every record through
 *   cursors and checks each leaf page's header, that every key and value lies in pages in the
 *   file, the order and count of the keys, the free list's page numbers; a child that fails,
 *   dies of a signal (SIGBUS past the end, SIGSEGV) or of LMDB's assertion or a sanitizer, or
 *   overruns DISK_WALK_TIMEOUT_MS, means a damaged store.
 * - when the last run did not end cleanly (the run marker below), the walk is deep: it also
 *   reads the header of every value's first overflow page (whose page count LMDB trusts when it
 *   frees a deleted value's pages). That costs one page read per value, so it is kept for the
 *   starts after a crash: a store damaged while the daemon was stopped, in a way only the deep
 *   walk sees, costs at most one crash before it is moved aside.
 * A damaged store is renamed to data.mdb.damaged-<time> (kept for a post-mortem; the notice
 * says so) and the tier starts empty. Value bytes are not read: every load verifies its value.
 *
 * Cost (measured on this 2-vCPU VM, busy with other builds, 128 MB store of 10,240 values of
 * 10.3 KB; an open without any check: 0.06 ms): the walk adds ~5 ms to an open with the page
 * cache warm and 0.1-0.3 s cold; the deep walk ~30 ms warm, ~0.15-0.2 s cold. The walk reads the
 * tree pages only (~1% of the file here, less for larger blocks), so it runs at every open; the
 * deep walk's page per value is what grows with the store (a 4 GB store of such small blocks
 * holds 400,000 values). */

#define DISK_WALK_TIMEOUT_MS 120000.0

/* What the meta pages say of data.mdb, and its size. */
typedef struct store_geom {
    size_t psize;        /* the page size */
    uint64_t npages;     /* pages allocated: the current meta's last_pg + 1 */
    uint64_t file_pages; /* whole pages in the file: fewer than npages is legitimate when the
                            last pages allocated were freed before they were ever written (LMDB
                            does not write them), so only a page in use past it is damage */
    int deep;            /* 1: also check the header of every value's overflow pages */
} store_geom;

/* What the walk knows of the mapped file. */
typedef struct walk_ctx {
    uintptr_t map; /* the map's address */
    store_geom g;
    char why[200];
} walk_ctx;

static int walk_fail(walk_ctx *w, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->why, sizeof w->why, fmt, ap);
    va_end(ap);
    return -1;
}

static lmdb_page_hdr walk_page_hdr(const walk_ctx *w, uint64_t pg)
{
    lmdb_page_hdr h;
    memcpy(&h, (const void *)(w->map + pg * w->g.psize), sizeof h);
    return h;
}

/* One record of a tree, as the cursor returned it: its key must lie in a sound leaf page, its
 * value in that page or in overflow pages that say so, all inside the pages in use. */
static int walk_record(walk_ctx *w, const char *db, const MDB_val *k, const MDB_val *v)
{
    size_t psize = w->g.psize;
    uint64_t in_file = w->g.npages < w->g.file_pages ? w->g.npages : w->g.file_pages;
    uintptr_t lo = w->map + LMDB_META_PAGES * psize, hi = w->map + in_file * psize;
    uintptr_t kp = (uintptr_t)k->mv_data, vp = (uintptr_t)v->mv_data;
    if (kp < lo || kp >= hi || k->mv_size > hi - kp)
        return walk_fail(w, "tree '%s': a key outside the file's pages in use", db);
    uint64_t pg = (kp - w->map) / w->g.psize;
    uintptr_t page = w->map + pg * w->g.psize;
    lmdb_page_hdr h = walk_page_hdr(w, pg);
    if (h.pgno != pg || !(h.flags & LMDB_P_LEAF) ||
        (h.flags & (LMDB_P_BRANCH | LMDB_P_OVERFLOW | LMDB_P_META | LMDB_P_LEAF2)) ||
        h.u.span.lower < LMDB_PAGE_HDR || h.u.span.lower > h.u.span.upper ||
        h.u.span.upper > w->g.psize || kp + k->mv_size > page + w->g.psize)
        return walk_fail(w, "tree '%s': leaf page %llu has a bad header", db,
                         (unsigned long long)pg);
    if (v->mv_size == 0 ||
        (vp >= page && vp < page + w->g.psize && v->mv_size <= page + w->g.psize - vp))
        return 0; /* in the leaf page */
    /* A value of its own overflow pages, whose header is just before it. */
    if (vp < lo + LMDB_PAGE_HDR || vp >= hi || v->mv_size > hi - vp ||
        (vp - LMDB_PAGE_HDR - w->map) % w->g.psize != 0)
        return walk_fail(w, "tree '%s': a value of %zu bytes outside the file's pages in use", db,
                         v->mv_size);
    if (!w->g.deep)
        return 0; /* its bounds are right; its header is read only by the deep walk */
    uint64_t op = (vp - LMDB_PAGE_HDR - w->map) / w->g.psize;
    uint64_t pages = (v->mv_size + LMDB_PAGE_HDR + w->g.psize - 1) / w->g.psize;
    h = walk_page_hdr(w, op);
    if (h.pgno != op || !(h.flags & LMDB_P_OVERFLOW) || h.u.overflow_pages != pages)
        return walk_fail(w, "tree '%s': overflow page %llu has a bad header", db,
                         (unsigned long long)op);
    return 0;
}

/* The free list's values are page lists (a count, then that many page numbers in use). */
static int walk_free_value(walk_ctx *w, const MDB_val *v)
{
    uint64_t n;
    if (v->mv_size < 8 || v->mv_size % 8)
        return walk_fail(w, "free list: a page list of %zu bytes", v->mv_size);
    memcpy(&n, v->mv_data, 8);
    if (n != v->mv_size / 8 - 1)
        return walk_fail(w, "free list: a page list of %zu bytes says %llu pages", v->mv_size,
                         (unsigned long long)n);
    for (uint64_t i = 1; i <= n; i++) {
        uint64_t pg;
        memcpy(&pg, (const uint8_t *)v->mv_data + 8 * i, 8);
        if (pg < LMDB_META_PAGES || pg >= w->g.npages)
            return walk_fail(w, "free list: page %llu was never allocated", (unsigned long long)pg);
    }
    return 0;
}

/* LMDB's default key order (mdb_cmp_memn): bytes, then length; the free list's keys are
 * native integers (MDB_INTEGERKEY). */
static int walk_key_cmp(int integer, const MDB_val *a, const MDB_val *b)
{
    if (integer && a->mv_size == 8 && b->mv_size == 8) {
        uint64_t x, y;
        memcpy(&x, a->mv_data, 8);
        memcpy(&y, b->mv_data, 8);
        return x < y ? -1 : x > y;
    }
    size_t n = a->mv_size < b->mv_size ? a->mv_size : b->mv_size;
    int c = memcmp(a->mv_data, b->mv_data, n);
    return c ? c : (a->mv_size > b->mv_size) - (a->mv_size < b->mv_size);
}

/* Every record of one tree, in order, and as many as its record says. Returns 0 or -1
 * (w->why). */
static int walk_tree(walk_ctx *w, MDB_txn *txn, MDB_dbi dbi, const char *db)
{
    MDB_stat st;
    MDB_cursor *cur;
    int rc = mdb_stat(txn, dbi, &st);
    if (rc || (rc = mdb_cursor_open(txn, dbi, &cur)))
        return walk_fail(w, "tree '%s': %s", db, mdb_strerror(rc));
    uint8_t prev[512];
    MDB_val k, v, pk = {0, prev};
    uint64_t count = 0;
    for (int op = MDB_FIRST; (rc = mdb_cursor_get(cur, &k, &v, op)) == 0; op = MDB_NEXT) {
        if (walk_record(w, db, &k, &v) != 0 || (dbi == 0 && walk_free_value(w, &v) != 0))
            break;
        if (count > 0 && walk_key_cmp(dbi == 0, &pk, &k) >= 0) {
            walk_fail(w, "tree '%s': keys out of order", db);
            break;
        }
        if (k.mv_size > sizeof prev) {
            walk_fail(w, "tree '%s': a key of %zu bytes", db, k.mv_size);
            break;
        }
        memcpy(prev, k.mv_data, k.mv_size);
        pk.mv_size = k.mv_size;
        count++;
    }
    mdb_cursor_close(cur);
    if (w->why[0])
        return -1;
    if (rc != MDB_NOTFOUND)
        return walk_fail(w, "tree '%s': %s", db, mdb_strerror(rc));
    if (count != st.ms_entries)
        return walk_fail(w, "tree '%s': %llu records, its header says %llu", db,
                         (unsigned long long)count, (unsigned long long)st.ms_entries);
    return 0;
}

/* The address at which this process maps dir/data.mdb (offset 0), from /proc/self/maps
 * (mdb_env_info() reports only a fixed map's address), or 0. */
static uintptr_t walk_map_address(const char *dir)
{
    char p[PATH_MAX], line[PATH_MAX + 128];
    struct stat sb;
    snprintf(p, sizeof p, "%s/data.mdb", dir);
    FILE *f = stat(p, &sb) == 0 ? fopen("/proc/self/maps", "re") : NULL;
    uintptr_t at = 0;
    while (f && !at && fgets(line, sizeof line, f)) {
        unsigned long start, end, off, ino;
        unsigned maj, mnr;
        if (sscanf(line, "%lx-%lx %*s %lx %x:%x %lu", &start, &end, &off, &maj, &mnr, &ino) == 6 &&
            off == 0 && ino == (unsigned long)sb.st_ino && maj == major(sb.st_dev) &&
            mnr == minor(sb.st_dev))
            at = (uintptr_t)start;
    }
    if (f)
        fclose(f);
    return at;
}

/* The child: walks every tree and exits 0, or writes why to fd and exits 1. A crash is the
 * parent's to see. Plain LMDB calls, not L(): injected faults are the parent's. */
static void walk_child(const char *dir, size_t map_bytes, const store_geom *g, int fd)
{
    static const char *const names[] = {"meta", "blocks", "seq", "lru"};
    walk_ctx w = {.g = *g};
    MDB_env *env;
    MDB_txn *txn;
    int rc = mdb_env_create(&env);
    if (rc == 0 && (rc = mdb_env_set_maxdbs(env, 4)) == 0 &&
        (rc = mdb_env_set_mapsize(env, map_bytes)) == 0 &&
        (rc = mdb_env_open(env, dir, MDB_RDONLY | MDB_NOLOCK | MDB_NOTLS, 0600)) == 0)
        rc = mdb_txn_begin(env, NULL, MDB_RDONLY, &txn);
    if (rc) {
        walk_fail(&w, "cannot open it read-only: %s", mdb_strerror(rc));
    } else if (!(w.map = walk_map_address(dir))) {
        walk_fail(&w, "cannot find its map in /proc/self/maps");
    } else {
        if (walk_tree(&w, txn, 0, "free list") == 0 && walk_tree(&w, txn, 1, "main") == 0) {
            for (size_t i = 0; i < 4; i++) {
                MDB_dbi dbi;
                rc = mdb_dbi_open(txn, names[i], 0, &dbi);
                if (rc == MDB_NOTFOUND)
                    continue;
                if (rc) {
                    walk_fail(&w, "tree '%s': %s", names[i], mdb_strerror(rc));
                    break;
                }
                if (walk_tree(&w, txn, dbi, names[i]) != 0)
                    break;
            }
        }
    }
    if (w.why[0]) {
        if (write(fd, w.why, strlen(w.why)) < 0) {
            /* the parent still sees the exit status */
        }
        _exit(1);
    }
    _exit(0);
}

/* The line of what the child said that tells most, in out: a sanitizer's "ERROR:" line, else
 * the first line that is not a rule of '=' (its own reason, LMDB's assertion). */
static void walk_said(const char *buf, char *out, size_t outlen)
{
    out[0] = 0;
    for (const char *p = buf; *p;) {
        size_t n = strcspn(p, "\n");
        const char *err = strstr(p, "ERROR: ");
        if (err && err < p + n) {
            snprintf(out, outlen, "%.*s", (int)(p + n - err < 160 ? p + n - err : 160), err);
            return;
        }
        if (n && strspn(p, "=") < n && !out[0])
            snprintf(out, outlen, "%.*s", (int)(n < 160 ? n : 160), p);
        p += n + (p[n] == '\n');
    }
}

/* Runs the walk in a child and waits for it. Returns 1 (sound), 0 (damaged: why) or -1 (the
 * walk could not run: why). */
static int store_walk(const cache_disk *d, const store_geom *g, char *why, size_t whylen)
{
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) {
        snprintf(why, whylen, "pipe: %s", strerror(errno));
        return -1;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(why, whylen, "fork: %s", strerror(errno));
        close(fds[0]);
        close(fds[1]);
        return -1;
    }
    if (pid == 0) {
        close(fds[0]);
        dup2(fds[1], STDERR_FILENO); /* LMDB's assertion or a sanitizer's report, for the parent */
        walk_child(d->dir, d->map_bytes, g, fds[1]);
    }
    close(fds[1]);
    char buf[2048];
    size_t got = 0;
    int status = 0, eof = 0, timed_out = 0;
    double deadline = base_now_ms() + DISK_WALK_TIMEOUT_MS;
    /* Read what the child says until it closes the pipe (it has exited then), so that a long
     * report never fills the pipe and blocks it; then reap it. */
    while (!eof) {
        struct pollfd pf = {fds[0], POLLIN, 0};
        double left = deadline - base_now_ms();
        if (left <= 0) {
            kill(pid, SIGKILL);
            timed_out = 1;
            break;
        }
        int n = poll(&pf, 1, left > 1000 ? 1000 : (int)left + 1);
        if (n < 0 && errno != EINTR)
            break;
        if (n <= 0)
            continue;
        char tmp[4096];
        ssize_t r = read(fds[0], tmp, sizeof tmp);
        if (r == 0 || (r < 0 && errno != EINTR && errno != EAGAIN))
            eof = 1;
        for (ssize_t i = 0; i < r && got + 1 < sizeof buf; i++)
            buf[got++] = tmp[i];
    }
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    buf[got] = 0;
    close(fds[0]);
    char said[200];
    walk_said(buf, said, sizeof said);
    if (timed_out) {
        snprintf(why, whylen, "the integrity walk took longer than %.0f s",
                 DISK_WALK_TIMEOUT_MS / 1e3);
        return 0;
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
        return 1;
    if (WIFSIGNALED(status))
        snprintf(why, whylen, "the integrity walk died of signal %d (%s)%s%s", WTERMSIG(status),
                 strsignal(WTERMSIG(status)), said[0] ? ": " : "", said);
    else
        snprintf(why, whylen, "%s", said[0] ? said : "the integrity walk failed");
    return 0;
}

/* Reads data.mdb's meta pages (without LMDB) into *g. Returns 1 (an LMDB file: *g set), 0
 * (nothing to check: no file, an empty one, or not LMDB's format: mdb_env_open() names that),
 * -1 (damaged: why), or CACHE_EIO (errno). */
static int store_meta_check(const cache_disk *d, store_geom *g, char *why, size_t whylen)
{
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/data.mdb", d->dir);
    int fd = open(p, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? 0 : CACHE_EIO;
    struct stat sb;
    lmdb_meta m[2];
    int res = 0;
    if (fstat(fd, &sb) != 0 || pread(fd, &m[0], sizeof m[0], LMDB_PAGE_HDR) != sizeof m[0] ||
        m[0].magic != LMDB_MAGIC || m[0].version != LMDB_DATA_VERSION)
        goto out; /* empty, or not an LMDB file of this version: LMDB's open says so */
    size_t ps = m[0].dbs[0].pad;
    uint64_t size = (uint64_t)sb.st_size;
    res = -1;
    if (ps < 512 || ps > 65536 || (ps & (ps - 1))) {
        snprintf(why, whylen, "meta page 0 names a page size of %zu bytes", ps);
        goto out;
    }
    if (size < LMDB_META_PAGES * ps) {
        snprintf(why, whylen, "truncated: %llu bytes, shorter than its two meta pages",
                 (unsigned long long)size);
        goto out;
    }
    if (pread(fd, &m[1], sizeof m[1], (off_t)(ps + LMDB_PAGE_HDR)) != sizeof m[1] ||
        m[1].magic != LMDB_MAGIC || m[1].version != LMDB_DATA_VERSION) {
        snprintf(why, whylen, "meta page 1 is damaged");
        goto out;
    }
    const lmdb_meta *cur = m[1].txnid > m[0].txnid ? &m[1] : &m[0];
    if (cur->last_pg < LMDB_META_PAGES - 1 || cur->last_pg >= (UINT64_MAX / ps) - 1) {
        snprintf(why, whylen, "its meta page says the last page is %llu",
                 (unsigned long long)cur->last_pg);
        goto out;
    }
    g->psize = ps;
    g->npages = cur->last_pg + 1;
    g->file_pages = size / ps;
    /* The roots are in use: one past the file's end is a truncation seen without mapping. */
    for (int i = 0; i < 2; i++) {
        uint64_t root = cur->dbs[i].root;
        if (root == LMDB_P_INVALID)
            continue;
        if (root < LMDB_META_PAGES || root >= g->npages) {
            snprintf(why, whylen, "its meta page says a tree's root is page %llu of %llu",
                     (unsigned long long)root, (unsigned long long)g->npages);
            goto out;
        }
        if (root >= g->file_pages) {
            snprintf(why, whylen,
                     "truncated: %llu bytes, and its meta page puts a tree's root at page %llu "
                     "of %zu bytes",
                     (unsigned long long)size, (unsigned long long)root, ps);
            goto out;
        }
    }
    res = 1;
out:
    close(fd);
    return res;
}

/* Renames data.mdb to data.mdb.damaged-<local time> (with a suffix if taken) and removes
 * lock.mdb (LMDB rebuilds it); the notice names both and why. Returns 0 or CACHE_EIO (msg). */
static int store_move_aside(cache_disk *d, const char *why, char *msg, size_t msglen)
{
    char from[PATH_MAX], to[PATH_MAX], name[64], stamp[32];
    time_t t = time(NULL);
    struct tm tm;
    strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", localtime_r(&t, &tm));
    snprintf(from, sizeof from, "%s/data.mdb", d->dir);
    struct stat sb;
    for (int i = 0;; i++) {
        if (i == 0)
            snprintf(name, sizeof name, "data.mdb.damaged-%s", stamp);
        else
            snprintf(name, sizeof name, "data.mdb.damaged-%s.%d", stamp, i);
        snprintf(to, sizeof to, "%s/%s", d->dir, name);
        if (lstat(to, &sb) != 0 || i == 1000)
            break;
    }
    if (rename(from, to) != 0) {
        snprintf(msg, msglen, "disk dir '%s': data.mdb damaged (%s), and cannot move it aside: %s",
                 d->dir, why, strerror(errno));
        return CACHE_EIO;
    }
    snprintf(to, sizeof to, "%s/lock.mdb", d->dir);
    unlink(to);
    snprintf(d->notice, sizeof d->notice,
             "disk dir '%s': data.mdb damaged (%s): moved aside to '%s/%s'; the disk tier starts "
             "empty (remove that file once it is no longer wanted)",
             d->dir, why, d->dir, name);
    return 0;
}

/* The run marker, DIR/prefixd.run: "open" while a handle is open, "clean" once it closed. A
 * store whose last run did not end cleanly (a crash, kill -9, a power loss, or a store written
 * before the marker existed) gets the deep walk. */
#define DISK_RUN_FILE "prefixd.run"

static int run_marker_clean(const char *dir)
{
    char p[PATH_MAX], buf[16] = "";
    snprintf(p, sizeof p, "%s/" DISK_RUN_FILE, dir);
    int fd = open(p, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    return n >= 5 && memcmp(buf, "clean", 5) == 0;
}

/* Best effort: a marker that cannot be written costs a deep walk at the next start. */
static void run_marker_set(const char *dir, const char *state)
{
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/" DISK_RUN_FILE, dir);
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0600);
    if (fd < 0)
        return;
    if (write(fd, state, strlen(state)) < 0) {
        /* see above */
    }
    close(fd);
}

/* Checks data.mdb before LMDB maps it and moves a damaged store aside. Returns 0 (sound, moved
 * aside, absent, or not LMDB's: mdb_env_open() refuses that) or CACHE_EIO (msg). */
static int store_check(cache_disk *d, char *msg, size_t msglen)
{
    char why[512] = "", walk_why[240] = "";
    store_geom g = {0};
    int rc = store_meta_check(d, &g, why, sizeof why);
    g.deep = !run_marker_clean(d->dir);
    if (rc == CACHE_EIO) {
        snprintf(msg, msglen, "disk dir '%s': cannot read data.mdb: %s", d->dir, strerror(errno));
        return rc;
    }
    if (rc == 0)
        return 0;
    if (rc == 1) {
        rc = store_walk(d, &g, walk_why, sizeof walk_why);
        if (rc < 0) {
            snprintf(d->notice, sizeof d->notice,
                     "disk dir '%s': the integrity walk could not run (%s): opening unchecked",
                     d->dir, walk_why);
            return 0;
        }
        if (rc == 1)
            return 0;
        if (g.file_pages < g.npages)
            snprintf(why, sizeof why,
                     "truncated: the file holds %llu of the %llu pages of %zu bytes its meta "
                     "page counts, and pages in use are missing: %s",
                     (unsigned long long)g.file_pages, (unsigned long long)g.npages, g.psize,
                     walk_why);
        else
            snprintf(why, sizeof why, "%s", walk_why);
    }
    return store_move_aside(d, why, msg, msglen);
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
    if (f.block_tokens != (uint32_t)d->block_tokens || f.block_floats != d->block_floats ||
        f.kv_type != d->fmt.kv_type) {
        char a[32], b[32];
        snprintf(why, whylen,
                 "block geometry %u tokens x %llu floats of %s K/V, this daemon uses %d tokens x "
                 "%zu floats of %s K/V",
                 f.block_tokens, (unsigned long long)f.block_floats,
                 cache_kv_type_name(f.kv_type, a, sizeof a), d->block_tokens, d->block_floats,
                 cache_kv_type_name(d->fmt.kv_type, b, sizeof b));
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
                               .kv_type = d->fmt.kv_type,
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
    int rc = cache_disk_dir_check(o->dir, msg, msglen);
    if (rc == 0)
        rc = file_check_private(o->dir, "data.mdb", msg, msglen);
    if (rc == 0)
        rc = file_check_private(o->dir, "lock.mdb", msg, msglen);
    if (rc)
        return rc;
    cache_disk *d = calloc(1, sizeof *d);
    if (!d || !(d->dir = strdup(o->dir)) ||
        !(d->touch = malloc(DISK_TOUCH_MAX * sizeof *d->touch))) {
        if (d)
            free(d->dir);
        free(d);
        snprintf(msg, msglen, "disk dir '%s': out of memory", o->dir);
        return CACHE_ENOMEM;
    }
    d->block_tokens = o->block_tokens;
    d->block_floats = o->block_floats;
    cache_value_fmt_init(&d->fmt, o->fingerprint, o->block_tokens, o->block_floats, o->kv_type);
    d->payload_bytes = d->fmt.payload_bytes;
    d->val_bytes = d->fmt.val_bytes;
    d->max_bytes = o->max_bytes ? o->max_bytes : CACHE_DISK_DEFAULT_MAX;
    d->st.max_bytes = d->max_bytes;
    d->nosync = o->test_nosync != 0;
    d->map_bytes = o->test_map_bytes ? o->test_map_bytes : d->max_bytes * 2 + ((size_t)64 << 20);
    d->map_bytes = (d->map_bytes + 65535) & ~(size_t)65535;

    if ((rc = store_check(d, msg, msglen)) != 0) {
        cache_disk_close(d);
        return rc;
    }
    rc = disk_env_open(d);
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
    if (rc == 0) {
        /* From here until cache_disk_close(), a crash leaves the marker at "open". */
        run_marker_set(d->dir, "open\n");
        d->marked = 1;
        rc = disk_init_txn(d, o->reset_incompatible);
    }
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
        if (d->marked && !d->suspect)
            run_marker_set(d->dir, "clean\n");
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
        cache_value_build(&d->fmt, v.mv_data, items[i].key, items[i].parent, items[i].tokens,
                          items[i].data);
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

/* Checks a stored value against what the caller expects (cache_value_verify()). Returns 0
 * (good: payload copied into out and verified), CACHE_ENOTFOUND (another model's block) or
 * CACHE_ECORRUPT, with the reason in d->msg. */
static int value_check(cache_disk *d, const MDB_val *v, cache_key key, cache_key parent,
                       const int32_t *tokens, float *out)
{
    const char *why;
    int rc = cache_value_verify(&d->fmt, v->mv_data, v->mv_size, key, parent, tokens, out, &why);
    return rc == CACHE_ECORRUPT ? value_bad(d, key, why) : rc;
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
    double t0 = base_now_ms();
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
        d->st.load_ms_total += base_now_ms() - t0;
    }
    return res;
}

void cache_disk_get_stats(const cache_disk *d, cache_disk_stats *out)
{
    *out = d->st;
    out->entries = d->entries;
    out->bytes_on_disk = d->used;
}

const char *cache_disk_notice(const cache_disk *d)
{
    return d ? d->notice : "";
}
