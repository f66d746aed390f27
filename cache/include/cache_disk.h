/* cache_disk.h — the disk tier of the K/V block cache: blocks spilled from RAM into an LMDB
 * environment, verified on every load, kept under a byte budget by an LRU of its own.
 *
 * Synchronous and single-threaded: one handle is used by one thread (the daemon's disk thread,
 * daemon/disk_thread.h); nothing here locks. The handle is opaque, so this header never includes
 * lmdb.h; LMDB's errors are translated into CACHE_E* codes here, and LMDB's own text
 * (mdb_strerror) is kept in cache_disk_errmsg() for the caller to log.
 *
 * On-disk format (version CACHE_DISK_FORMAT), little-endian, in the directory given at open:
 *   database "meta":   "format" -> cache_disk_format_rec (below)
 *                      "used"   -> u64 bytes of block values stored (the budget's measure)
 *   database "blocks": key (16 bytes: lo, hi) -> value = cache_disk_value_hdr (88 bytes), then
 *                        i32 tokens[n_tokens], padded to 8 bytes, then the payload floats
 *   database "seq":    key -> u64 its access sequence number
 *   database "lru":    u64 sequence number, big-endian (so LMDB's order is access order) -> key
 * A block is keyed by its chained key, whose root folds in the model fingerprint, so blocks of
 * different models share a directory without ever meeting; the header's fingerprint is checked
 * too. A different format version or block geometry (tokens, payload size, K/V type) is refused
 * (CACHE_EVERSION) unless the caller asks to wipe and recreate.
 *
 * The directory and its files are private: the directory must belong to the process's effective
 * uid and be writable by nobody else, LMDB's files must be regular files of ours that nobody else
 * may read (they hold the prompts' token ids). Anything else is refused, never repaired: another
 * user may already hold a file open. LMDB's files are created 0600.
 *
 * LMDB does not checksum its own pages. Before LMDB maps data.mdb, the open checks the file's
 * size against its meta pages (a truncated file would fault, SIGBUS, at the first page past its
 * end) and walks every tree in a child process (a damaged page may make LMDB read out of bounds
 * or abort): a store that fails is moved aside to data.mdb.damaged-<time> and the tier starts
 * empty, saying so in cache_disk_notice().
 */
#ifndef PREFIXD_CACHE_DISK_H
#define PREFIXD_CACHE_DISK_H

#include <stddef.h>
#include <stdint.h>

#include "cache.h"
#include "cache_value.h"

#define CACHE_DISK_FORMAT 1
#define CACHE_DISK_DEFAULT_MAX ((size_t)4 << 30)

#define CACHE_DISK_META_MAGIC 0x44584650u        /* "PFXD" as little-endian bytes */
#define CACHE_DISK_VALUE_MAGIC CACHE_VALUE_MAGIC /* "PFXB" (cache_value.h) */

/* The records on disk, declared as LMDB declares its page and meta records: their bytes are the
 * file's bytes (little-endian; every field naturally aligned, so there is no padding: disk.c
 * asserts each offset). disk.c reads and writes them whole, with memcpy, and nothing else lays
 * them out. */

/* meta "format": what a store holds, checked at every open (24 bytes). */
typedef struct cache_disk_format_rec {
    uint32_t magic;        /* 0: CACHE_DISK_META_MAGIC */
    uint32_t version;      /* 4: CACHE_DISK_FORMAT */
    uint32_t block_tokens; /* 8: B */
    uint32_t kv_type;      /* 12: the K/V element type (cache_value.h; 0 f32 in stores written
                              before types existed) */
    uint64_t block_floats; /* 16: 4-byte words per block payload */
} cache_disk_format_rec;

/* The header that starts every value of "blocks" (88 bytes): the tiers' shared value format,
 * cache_value_hdr (cache_value.h), under its disk name. The block's token ids follow it
 * (block_tokens i32, padded with zeros to a multiple of 8 bytes), then its payload. */
typedef cache_value_hdr cache_disk_value_hdr;

typedef struct cache_disk cache_disk; /* opaque */

typedef struct cache_disk_opts {
    const char *dir;         /* created (mode 0700) if missing; its parent must exist */
    size_t max_bytes;        /* budget of stored values; 0: CACHE_DISK_DEFAULT_MAX (4 GiB) */
    uint8_t fingerprint[16]; /* the model's fingerprint (cache_opts.fingerprint) */
    int block_tokens;        /* B */
    size_t block_floats;     /* 4-byte words per block payload */
    int kv_type;             /* the K/V element type (cache_opts.kv_type): part of the geometry */
    int reset_incompatible;  /* 1: wipe a store of another format version / geometry */
    size_t test_map_bytes;   /* test hook: 0 normally; else the LMDB map size to use */
    int test_nosync;         /* test hook: 0 normally; 1: never fsync (for tests that do not
                                crash the process or the machine, to spare the disk) */
} cache_disk_opts;

/* One block to store: borrowed for the duration of cache_disk_put_batch(). */
typedef struct cache_disk_item {
    cache_key key;
    cache_key parent;
    const int32_t *tokens; /* block_tokens ids */
    const float *data;     /* block_floats floats */
} cache_disk_item;

/* Makes sure dir can hold a store that nobody else reads or replaces: creates it (mode 0700) if
 * it is missing (its parent must exist), then checks that it is a directory, writable, owned by
 * this process's effective uid and not writable by its group or others (as ssh and gpg check
 * their directories; a directory that fails is never repaired). Returns 0, or CACHE_EIO with a
 * message in msg naming dir and the problem. Any thread. */
int cache_disk_dir_check(const char *dir, char *msg, size_t msglen);

/* Takes the lock that lets one process at a time use the store in dir: an flock() on
 * DIR/prefixd.lock, which goes with the process (kill -9 included), so a stale file never blocks
 * a restart; the file holds the owner's pid, for the message. Checks dir first
 * (cache_disk_dir_check()); the lock file is opened without following a symbolic link and must
 * be a regular file of this uid. *fd_out receives the lock's descriptor (release: close() it;
 * -1 on failure). Returns 0; CACHE_EBUSY if another process holds the lock (msg: "disk dir '...':
 * in use by another prefixd (pid N)"); CACHE_EIO (the dir, or a lock file that is a symbolic
 * link, not a regular file or another user's: refused, nothing written), CACHE_EINVAL (path too
 * long). Any thread. */
int cache_disk_lock(const char *dir, int *fd_out, char *msg, size_t msglen);

/* Opens (creating if needed) the store in o->dir. out: owned by the caller, freed with
 * cache_disk_close(). Returns 0, or with a message in msg naming the directory and the problem:
 * CACHE_EINVAL (bad options), CACHE_EIO (directory missing, not creatable, not writable or not
 * private (cache_disk_dir_check()); data.mdb or lock.mdb a symbolic link, not a regular file,
 * another user's or readable by others; LMDB cannot open it; the errno / LMDB text is in the
 * message), CACHE_EVERSION (another format version or geometry, or a data.mdb that is not an
 * LMDB file of a version this build reads, and reset_incompatible is 0: nothing is changed),
 * CACHE_ENOMEM. With reset_incompatible, such a store is wiped (its files replaced) and opened
 * empty. A damaged store (an LMDB file cut short, or one whose pages fail the integrity walk)
 * is not an error: it is moved aside, the open goes on with an empty store and
 * cache_disk_notice() says so. If the store holds more than max_bytes (a smaller budget than its
 * last run's), the least recently used blocks are evicted during the open. One handle per
 * directory at a time, across processes: the handle caches the store's counters (the caller
 * holds cache_disk_lock()). Any thread; the handle then belongs to the thread that uses it.
 * Forks once (the integrity walk runs in a child process, which only reads). */
int cache_disk_open(const cache_disk_opts *o, cache_disk **out, char *msg, size_t msglen);

/* Applies queued LRU touches, syncs to disk and frees everything. Accepts NULL. */
void cache_disk_close(cache_disk *d);

/* Writes items[0..n) in ONE write transaction (plus queued LRU touches). Blocks already stored
 * (by any model) are only touched. Before each new block, the least recently used blocks are
 * evicted until it fits the budget; in a batch larger than the budget, its own first blocks are
 * evicted again by its last ones. If LMDB's map, the file system or the file size limit is full,
 * evicts more (in transactions of their own, which stay committed) and retries the transaction
 * once. *n_written (optional) receives the number of new blocks written by the transaction that
 * committed (0 if none did). Returns 0; CACHE_EFULL if not every block could be stored: a block
 * larger than the whole budget (the blocks before it are stored), or the map or the disk still
 * full after the retry (nothing of this batch stored); the caller logs once and keeps serving
 * from RAM. CACHE_EIO (or CACHE_ENOMEM) on another LMDB failure: nothing of this batch stored.
 * The message is in cache_disk_errmsg(). */
int cache_disk_put_batch(cache_disk *d, const cache_disk_item *items, size_t n, size_t *n_written);

/* Loads the block key, confirming its parent key, token ids (block_tokens) and the header
 * (magic, version, fingerprint, payload length, checksum), and copies the payload into
 * payload_out (block_floats floats, caller's memory) before the read transaction ends. Marks the
 * block recently used (queued; applied by the next write transaction or cache_disk_sync()).
 * Returns 0; CACHE_ENOTFOUND (absent, or stored under another fingerprint: kept, never served);
 * CACHE_ECORRUPT (a check failed, the reason in cache_disk_errmsg(): payload_out is undefined
 * and the value has been deleted, unless that write failed too, when the next get fails the same
 * way). A parent key or token ids that differ from the stored ones are such a failure: the
 * token ids are not covered by the checksum, so a flipped id and a hash collision look alike,
 * and either way the block is not served. CACHE_EIO. */
int cache_disk_get(cache_disk *d, cache_key key, cache_key parent, const int32_t *tokens,
                   float *payload_out);

/* 1 if a value is stored under key (unverified), 0 if not, or a negative CACHE_E* code. */
int cache_disk_contains(cache_disk *d, cache_key key);

/* Applies the queued LRU touches in a write transaction and flushes LMDB's buffers to disk.
 * Returns 0 or CACHE_EIO / CACHE_EFULL. */
int cache_disk_sync(cache_disk *d);

/* What the open did that the caller should log, else "": a damaged store moved aside ("disk dir
 * '...': data.mdb damaged (why): moved aside to '...'; the disk tier starts empty"), or an
 * integrity walk that could not run. Valid as long as the handle. */
const char *cache_disk_notice(const cache_disk *d);

/* The message of the last failure on this handle (LMDB's or the OS's text, with context);
 * "" if none. Valid until the next call on the handle. */
const char *cache_disk_errmsg(const cache_disk *d);

typedef struct cache_disk_stats {
    uint64_t puts;            /* blocks written (spills) */
    uint64_t bytes_written;   /* value bytes written */
    uint64_t gets;            /* cache_disk_get() calls (loads): hits + misses + those that
                                 returned CACHE_ECORRUPT or CACHE_EIO */
    uint64_t hits;            /* gets that returned a verified block */
    uint64_t misses;          /* gets that returned CACHE_ENOTFOUND */
    uint64_t corrupt_deleted; /* values that failed verification and were deleted */
    uint64_t evictions;       /* blocks evicted to keep the budget or make room */
    uint64_t full;            /* put_batch calls that returned CACHE_EFULL */
    uint64_t bytes_on_disk;   /* value bytes stored now (<= max_bytes); data.mdb is larger:
                                 LMDB's pages, its free pages (the file never shrinks) */
    uint64_t entries;         /* blocks stored now */
    uint64_t max_bytes;       /* the budget */
    double load_ms_total;     /* time spent in gets that hit */
} cache_disk_stats;

void cache_disk_get_stats(const cache_disk *d, cache_disk_stats *out);

/* Test hook, SQLite's fault injection: the k-th LMDB call from now (k >= 1) on any handle fails
 * with an I/O error, and so does every later one if sticky; k = 0 turns it off. Returns the
 * number of LMDB calls made since the last cache_disk_test_fail_at(). Not thread-safe. */
long cache_disk_test_fail_at(long k, int sticky);

#endif
