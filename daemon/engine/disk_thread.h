/* disk_thread.h — the disk thread: the one thread that owns the LMDB disk tier (cache_disk.h).
 *
 * The engine thread never waits for the disk. It hands the disk thread two kinds of work:
 * - spills: a block leaving RAM is copied into one slot of a fixed spill buffer (sized once at
 *   open, so nothing is allocated per block) and queued; the disk thread writes queued spills in
 *   batched transactions. When the buffer is full the spill is dropped and counted: the block is
 *   only recomputed later, nothing waits.
 * - loads: a request whose prompt continues past its RAM hits asks for the next blocks of its
 *   chain (keys are chained, so every next key is known); the disk thread copies each verified
 *   payload straight into the request's own private pool slots and stops at the first miss. The
 *   request waits; the engine keeps decoding the others meanwhile.
 * Loads go before writes: a load never waits behind a batch of spills being written. A block
 *   that is hit while its write is still pending (still in the spill buffer, queued or being
 *   written) is served from the spill buffer itself, after the same key, parent and token
 *   comparison as any hit, so it is never missed for being in flight.
 *
 * Threads: disk_thread_open/close and everything else from the engine thread (one caller thread);
 * the wake callback runs on the disk thread.
 */
#ifndef PREFIXD_DISK_THREAD_H
#define PREFIXD_DISK_THREAD_H

#include <stddef.h>
#include <stdint.h>

#include "cache.h"
#include "cache_disk.h"

typedef struct disk_thread disk_thread;

typedef struct disk_thread_opts {
    cache_disk_opts disk;    /* the store (see cache_disk.h) */
    size_t spill_bytes;      /* spill buffer; 0: 256 MiB; at least 4 blocks */
    void (*wake)(void *arg); /* optional: called on the disk thread when a load ends */
    void *wake_arg;          /* ... its argument */
} disk_thread_opts;

/* One load: the blocks after `parent` (a key), in chain order. Owned by the caller; it must stay
 * valid (and dst[] untouched by anyone else) until disk_thread_poll() returns it. */
typedef struct disk_thread_load {
    struct disk_thread_load *next; /* used by the worker */
    void *owner;                   /* the caller's */
    cache_key parent;              /* key of the block before keys[0] (or the root key) */
    const cache_key *keys;         /* n chained keys */
    const int32_t *tokens;         /* n * block_tokens ids */
    float *const *dst;             /* n payload destinations (block_floats floats each) */
    size_t n;
    size_t n_loaded; /* out: blocks [0, n_loaded) were loaded and verified */
    double ms;       /* out: time from queueing to completion */
    double t_queued; /* used by the worker */
} disk_thread_load;

/* Opens the store and starts the thread. Returns 0, or a CACHE_E* code with a message naming
 * the directory and the problem (see cache_disk_open()). */
int disk_thread_open(const disk_thread_opts *o, disk_thread **out, char *msg, size_t msglen);

/* Writes every spill still queued, syncs, stops the thread, closes the store. Loads still
 * queued are finished first (their owners must be done with them: call after the last poll).
 * Accepts NULL. */
void disk_thread_close(disk_thread *w);

/* Queues a copy of an evicted block for writing. Never blocks. Returns 0 if queued, -1 if the
 * spill buffer is full (dropped; counted). Meant as the cache's on_evict callback's body. */
int disk_thread_spill(disk_thread *w, const cache_evicted *ev);

/* As disk_thread_spill(), but waits for room in the spill buffer instead of dropping (shutdown's
 * flush of RAM blocks to disk). */
void disk_thread_spill_wait(disk_thread *w, const cache_evicted *ev);

/* Queues a load. The result comes back through disk_thread_poll(). */
void disk_thread_load_async(disk_thread *w, disk_thread_load *job);

/* Finished loads since the last poll, as a list through ->next (oldest first), or NULL. */
disk_thread_load *disk_thread_poll(disk_thread *w);

/* 1 if finished loads are waiting to be polled. */
int disk_thread_has_done(disk_thread *w);

/* Waits until a load has finished (or timeout_ms passes). */
void disk_thread_wait(disk_thread *w, double timeout_ms);

/* Waits until every spill queued so far is written (or dropped on a write error). */
void disk_thread_flush(disk_thread *w);

typedef struct disk_thread_stats {
    cache_disk_stats disk;        /* the store's counters (as of the last batch) */
    uint64_t spills_queued;       /* blocks copied into the spill buffer */
    uint64_t spills_dropped;      /* spills refused: buffer full */
    uint64_t spills_failed;       /* spills not stored: disk full or an I/O error */
    uint64_t spill_bytes_written; /* payload bytes stored by spills */
    double spill_ms;              /* time in write transactions */
    uint64_t loads;               /* load jobs */
    uint64_t load_blocks;         /* blocks loaded (from the store or the spill buffer) */
    uint64_t load_pending_hits;   /* of those, served from the spill buffer */
    double load_ms;               /* time in load jobs on the disk thread */
    uint64_t spill_pending;       /* blocks in the spill buffer now */
    double spill_copy_ms;         /* the engine thread's time copying blocks into the buffer */
} disk_thread_stats;

void disk_thread_get_stats(disk_thread *w, disk_thread_stats *out);

#endif
