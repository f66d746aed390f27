/* diskw.h — the disk thread: the one thread that owns the LMDB disk tier (cache_disk.h).
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
 * Threads: srv_diskw_open/close and everything else from the engine thread (one caller thread);
 * the wake callback runs on the disk thread.
 */
#ifndef PREFIXD_DISKW_H
#define PREFIXD_DISKW_H

#include <stddef.h>
#include <stdint.h>

#include "cache.h"
#include "cache_disk.h"

typedef struct srv_diskw srv_diskw;

typedef struct srv_diskw_opts {
    cache_disk_opts disk;    /* the store (see cache_disk.h) */
    size_t spill_bytes;      /* spill buffer; 0: 256 MiB; at least 4 blocks */
    void (*wake)(void *arg); /* optional: called on the disk thread when a load ends */
    void *wake_arg;          /* ... its argument */
} srv_diskw_opts;

/* One load: the blocks after `parent` (a key), in chain order. Owned by the caller; it must stay
 * valid (and dst[] untouched by anyone else) until srv_diskw_poll() returns it. */
typedef struct srv_diskw_load {
    struct srv_diskw_load *next; /* used by the worker */
    void *owner;                 /* the caller's */
    cache_key parent;            /* key of the block before keys[0] (or the root key) */
    const cache_key *keys;       /* n chained keys */
    const int32_t *tokens;       /* n * block_tokens ids */
    float *const *dst;           /* n payload destinations (block_floats floats each) */
    size_t n;
    size_t n_loaded; /* out: blocks [0, n_loaded) were loaded and verified */
    double ms;       /* out: time from queueing to completion */
    double t_queued; /* used by the worker */
} srv_diskw_load;

/* Opens the store and starts the thread. Returns 0, or a CACHE_E* code with a message naming
 * the directory and the problem (see cache_disk_open()). */
int srv_diskw_open(const srv_diskw_opts *o, srv_diskw **out, char *msg, size_t msglen);

/* Writes every spill still queued, syncs, stops the thread, closes the store. Loads still
 * queued are finished first (their owners must be done with them: call after the last poll).
 * Accepts NULL. */
void srv_diskw_close(srv_diskw *w);

/* Queues a copy of an evicted block for writing. Never blocks. Returns 0 if queued, -1 if the
 * spill buffer is full (dropped; counted). Meant as the cache's on_evict callback's body. */
int srv_diskw_spill(srv_diskw *w, const cache_evicted *ev);

/* As srv_diskw_spill(), but waits for room in the spill buffer instead of dropping (shutdown's
 * flush of RAM blocks to disk). */
void srv_diskw_spill_wait(srv_diskw *w, const cache_evicted *ev);

/* Queues a load. The result comes back through srv_diskw_poll(). */
void srv_diskw_load_async(srv_diskw *w, srv_diskw_load *job);

/* Finished loads since the last poll, as a list through ->next (oldest first), or NULL. */
srv_diskw_load *srv_diskw_poll(srv_diskw *w);

/* 1 if finished loads are waiting to be polled. */
int srv_diskw_has_done(srv_diskw *w);

/* Waits until a load has finished (or timeout_ms passes). */
void srv_diskw_wait(srv_diskw *w, double timeout_ms);

/* Waits until every spill queued so far is written (or dropped on a write error). */
void srv_diskw_flush(srv_diskw *w);

typedef struct srv_diskw_stats {
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
} srv_diskw_stats;

void srv_diskw_get_stats(srv_diskw *w, srv_diskw_stats *out);

#endif
