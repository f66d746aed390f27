/* remote_thread.h — the remote thread: the one thread that owns the connection to the remote
 * tier (cache_remote.h, Redis/Valkey), modelled on the disk thread (disk_thread.h).
 *
 * The engine thread never waits for the network. It hands the remote thread two kinds of work:
 * - writes (write-behind): a block newly published in RAM is queued by reference: the engine
 *   holds a reference on the block (published blocks are immutable, so the remote thread may
 *   read its payload meanwhile) until the write has been sent or dropped, then takes it back
 *   (remote_thread_take_written()) and drops the reference. The queue is bounded (entries and
 *   bytes, fixed at open): when it is full the write is dropped and counted, nothing waits.
 *   Queued writes go out in pipelined batches (one round trip each) with a TTL.
 * - loads: a request whose prompt continues past its RAM (and disk) hits asks for the next blocks
 *   of its chain; the remote thread fetches them in pipelined batches, one round trip per
 *   batch, verifies each value (cache_value.h) and copies its payload straight into the
 *   request's own private pool slots, stopping at the first miss. The server may stay silent
 *   for at most the timeout (--remote-timeout) and a batch may take at most 20 of them (at
 *   least 1 s): past either the load ends with what it has and the request computes the rest.
 *   The request waits; the engine keeps decoding the others meanwhile.
 * Loads go before writes: a load waits for at most one batch of writes.
 *
 * The connection: made by the remote thread itself (engine_new never waits for the network).
 * When the server cannot be reached, or an exchange fails or runs late, the thread reconnects
 * with backoff (0.1 s, doubling, up to 5 s), logging the first failure and the recovery; while
 * it is down, loads come back at once with nothing loaded and writes are dropped (counted).
 *
 * Threads: remote_thread_open/close and everything else from the engine thread (one caller
 * thread); the wake callback runs on the remote thread.
 */
#ifndef PREFIXD_REMOTE_THREAD_H
#define PREFIXD_REMOTE_THREAD_H

#include <stddef.h>
#include <stdint.h>

#include "cache.h"
#include "cache_remote.h"
#include "cache_remote_cluster.h"

typedef struct remote_thread remote_thread;

typedef struct remote_thread_opts {
    cache_remote_opts remote; /* the store (see cache_remote.h) */
    int cluster;              /* 1: remote.url is a Redis Cluster seed list
                                 (cache_remote_cluster.h) */
    size_t queue_bytes;       /* write-behind queue, in bytes of values; 0: 256 MiB; at least
                                 4 blocks */
    void (*wake)(void *arg);  /* optional: called on the remote thread when a load has ended or
                                 writes can be taken back */
    void *wake_arg;           /* ... its argument */
} remote_thread_opts;

/* One load: the blocks after `parent` (a key), in chain order. Owned by the caller; it must stay
 * valid (and dst[] untouched by anyone else) until remote_thread_poll() returns it. */
typedef struct remote_thread_load {
    struct remote_thread_load *next; /* used by the worker */
    void *owner;                     /* the caller's */
    cache_key parent;                /* key of the block before keys[0] (or the root key) */
    const cache_key *keys;           /* n chained keys */
    const int32_t *tokens;           /* n * block_tokens ids */
    float *const *dst;               /* n payload destinations (block_floats floats each) */
    size_t n;
    /* Optional (one server only, not a cluster): the partial block after keys[n - 1]
     * (cache_remote_get_partial()): the prompt's partial_n < B tokens after the chain, and the
     * slot for their block. When the chain ends before keys[n - 1], the block where it ended is
     * tried the same way (its first B - 1 tokens, into its dst[]). */
    const int32_t *partial_tokens;
    size_t partial_n;
    float *partial_dst;
    size_t n_loaded;       /* out: blocks [0, n_loaded) were loaded and verified */
    size_t partial_loaded; /* out: the first partial_loaded rows of the block after the
                              n_loaded loaded ones hold the K/V of its first tokens */
    double ms;             /* out: time from queueing to completion */
    double t_queued;       /* used by the worker */
} remote_thread_load;

/* Makes the handle (checking the URL) and starts the thread, which connects in the background.
 * Returns 0, or a CACHE_E* code with a message naming the problem: CACHE_EINVAL (a bad URL),
 * CACHE_ENOMEM (also: the thread cannot start). */
int remote_thread_open(const remote_thread_opts *o, remote_thread **out, char *msg, size_t msglen);

/* Sends the writes still queued (if connected; each batch under the timeouts), stops the thread
 * and disconnects. Loads still queued are finished first (their owners must be done with them:
 * call after the last poll). The owners of queued writes must then be taken back with
 * remote_thread_take_written() before freeing the handle: remote_thread_free(). */
void remote_thread_stop(remote_thread *w);

/* Frees a stopped handle. Accepts NULL. */
void remote_thread_free(remote_thread *w);

/* Queues a write of item (its tokens and data must stay valid, unchanged, until the owner comes
 * back from remote_thread_take_written()). Never blocks. Returns 0 if queued, -1 if the queue is
 * full (dropped; counted). */
int remote_thread_write(remote_thread *w, void *owner, const cache_remote_item *item);

/* Takes back the owners of writes that are done (sent, refused or dropped), at most cap, into
 * owners[]. Returns how many. */
size_t remote_thread_take_written(remote_thread *w, void **owners, size_t cap);

/* Queues a load. The result comes back through remote_thread_poll(). */
void remote_thread_load_async(remote_thread *w, remote_thread_load *job);

/* Finished loads since the last poll, as a list through ->next (oldest first), or NULL. */
remote_thread_load *remote_thread_poll(remote_thread *w);

/* 1 if finished loads are waiting to be polled. */
int remote_thread_has_done(remote_thread *w);

/* Waits until a load has finished (or timeout_ms passes). */
void remote_thread_wait(remote_thread *w, double timeout_ms);

typedef struct remote_thread_stats {
    cache_remote_stats remote;  /* the store's counters (as of the last turn) */
    int connected;              /* 1 while connected */
    uint64_t loads;             /* load jobs */
    uint64_t load_blocks;       /* blocks loaded */
    uint64_t loads_unavailable; /* load jobs answered empty: not connected */
    double load_ms;             /* time in load jobs on the remote thread */
    uint64_t writes_queued;     /* blocks queued for writing */
    uint64_t writes_dropped;    /* refused: queue full */
    uint64_t writes_failed;     /* not stored: not connected, an error, or refused by the server
                                   (out of memory) */
    uint64_t write_pending;     /* blocks queued now */
} remote_thread_stats;

void remote_thread_get_stats(remote_thread *w, remote_thread_stats *out);

#endif
