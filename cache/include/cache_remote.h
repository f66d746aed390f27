/* cache_remote.h — the remote tier of the K/V block cache: blocks in a Redis (or Valkey) server
 * that several daemons share, verified on every load exactly as the disk tier's are.
 *
 * Synchronous and single-threaded: one handle is used by one thread (the daemon's remote thread,
 * daemon/engine/remote_thread.h), which owns the connection; nothing here locks. hiredis makes
 * the connection (TCP or a Unix socket, with a timeout) and parses the server's small replies
 * (a GET's value is read straight into the caller's slot, bypassing it); the
 * handle writes its commands itself, with sendmsg() (an iovec; MSG_NOSIGNAL: a server that has
 * gone is an error, never SIGPIPE), so a block's payload goes from the pool slot to the socket
 * without a staging copy. The socket is non-blocking and each wait is a poll() bounded by the
 * timeout option (how long the server may stay silent) and by the exchange's hard deadline (20
 * timeouts, at least 1 s).
 *
 * Format: one Redis string per block, under the key "prefixd:v1:" followed by the block's
 * 128-bit key in 32 lower-case hex digits (hi, then lo). Beside it, B - 1 partial pointers:
 * "prefixd:v1:p:" and XXH3-128 of (parent key, the block's first t tokens) in hex, whose value is
 * the block's Redis key, so that a prompt which ends t tokens into the block finds it without
 * knowing its other tokens (cache_remote_get_partial()). The value is the tiers' shared value
 * (cache_value.h: header, token ids, payload), written with SET ... EX ttl so that Redis's own
 * eviction (maxmemory with allkeys-lru, or the TTL) manages space. The block key chains over the
 * root key, which folds in the model fingerprint, the K/V geometry and the namespace (the
 * client's uid, its cache_salt), so blocks of different models or namespaces never share a
 * Redis key; the header's fingerprint, key, parent and token ids are checked on top of that.
 *
 * Every value is untrusted: the server is shared, anyone who can reach it can write any key. A
 * value that fails verification (wrong length, magic, version, fingerprint, key, parent,
 * geometry, token ids, checksum) is a miss, is deleted (DEL) and is counted; it is never served.
 */
#ifndef PREFIXD_CACHE_REMOTE_H
#define PREFIXD_CACHE_REMOTE_H

#include <stddef.h>
#include <stdint.h>

#include "cache.h"

#define CACHE_REMOTE_KEY_PREFIX "prefixd:v1:"
#define CACHE_REMOTE_KEY_LEN (sizeof CACHE_REMOTE_KEY_PREFIX - 1 + 32) /* 43 */
#define CACHE_REMOTE_PARTIAL_PREFIX "prefixd:v1:p:"
#define CACHE_REMOTE_PARTIAL_KEY_LEN (sizeof CACHE_REMOTE_PARTIAL_PREFIX - 1 + 32) /* 45 */
#define CACHE_REMOTE_DEFAULT_TTL 86400             /* seconds: one day */
#define CACHE_REMOTE_DEFAULT_TIMEOUT 50.0          /* ms */
#define CACHE_REMOTE_BATCH_BYTES ((size_t)8 << 20) /* values per pipelined round trip */
#define CACHE_REMOTE_HIST 10                       /* latency histogram buckets */

typedef struct cache_remote cache_remote; /* opaque */

typedef struct cache_remote_opts {
    const char *url;         /* "redis://HOST:PORT[/DB]" (HOST a name, an IPv4 address or an
                                [IPv6] one; PORT default 6379) or "unix:/path/redis.sock" */
    const char *password;    /* AUTH with it after connecting; NULL or "": none. Copied. */
    uint8_t fingerprint[16]; /* the model's fingerprint (cache_opts.fingerprint) */
    int block_tokens;        /* B */
    size_t block_floats;     /* 4-byte words per block payload */
    int kv_type;             /* the K/V element type (cache_opts.kv_type), in every value */
    double timeout_ms;       /* how long the server may stay silent in an exchange; 0: 50 ms */
    uint32_t ttl_s;          /* expiry of every value written; 0: one day */
} cache_remote_opts;

/* One block to store: borrowed for the duration of cache_remote_put(). */
typedef struct cache_remote_item {
    cache_key key;
    cache_key parent;
    const int32_t *tokens; /* block_tokens ids */
    const float *data;     /* block_floats floats */
} cache_remote_item;

/* Checks a URL's form (see cache_remote_opts.url) without connecting. Returns 0, or
 * CACHE_EINVAL with a message in msg naming the URL and the problem. Any thread. */
int cache_remote_url_check(const char *url, char *msg, size_t msglen);

/* Makes a handle (not connected yet: cache_remote_connect()). out: owned by the caller, freed
 * with cache_remote_close(). Returns 0, CACHE_EINVAL (a bad URL or geometry; msg says which) or
 * CACHE_ENOMEM. The handle then belongs to the thread that uses it. */
int cache_remote_open(const cache_remote_opts *o, cache_remote **out, char *msg, size_t msglen);

/* Disconnects and frees everything. Accepts NULL. */
void cache_remote_close(cache_remote *r);

/* Connects (within max(timeout, 200 ms)), authenticates, selects the database and checks the server
 * answers (PING). Returns 0, or CACHE_EIO / CACHE_ETIMEDOUT with the reason (hiredis's or the
 * server's text) in cache_remote_errmsg(); the handle is then disconnected. */
int cache_remote_connect(cache_remote *r);

/* 1 if connected. A failed exchange disconnects (its replies cannot be told apart from the next
 * one's any more): connect again. */
int cache_remote_connected(const cache_remote *r);

/* Loads the chain keys[0..n) (keys[0]'s parent is parent, keys[i]'s is keys[i - 1]) in
 * pipelined batches of at most CACHE_REMOTE_BATCH_BYTES of values, one round trip each, copying
 * each verified payload into dst[i] (block_floats floats, caller's memory); tokens holds
 * n * block_tokens ids. Stops at the first block absent or bad: *n_loaded receives how many
 * leading blocks were loaded (their dst[] hold verified payloads; the others' are undefined).
 * Bad values are deleted. Returns 0 (whatever *n_loaded), or CACHE_ENOCONN (not connected),
 * CACHE_ETIMEDOUT (the server silent for the timeout, or a batch past 20 timeouts: at least 1 s)
 * or CACHE_EIO (the connection failed): the blocks before the failed batch stay loaded, the
 * handle is disconnected. */
int cache_remote_get(cache_remote *r, cache_key parent, const cache_key *keys,
                     const int32_t *tokens, float *const *dst, size_t n, size_t *n_loaded);

/* The partial block after a chain: the request's prompt goes on for n < B tokens after the block
 * whose key is parent (its last full block, or the last one loaded when the chain ended at a
 * block the server did not have: the prompt may diverge inside it). Looks up the partial
 * pointers written beside every block (cache_remote_put()) for tokens[0..t), t = n down to 1, in
 * one round trip, and loads the block the longest one names into dst (block_floats floats,
 * caller's memory), verified as any value (its parent must be parent). *k receives how many of its
 * first rows hold the K/V of tokens[0..k) (0: none; the other rows are another prompt's). Returns 0
 * (whatever *k), or as cache_remote_get(). */
int cache_remote_get_partial(cache_remote *r, cache_key parent, const int32_t *tokens, size_t n,
                             float *dst, size_t *k);

/* Stores items[0..n) with SET ... EX ttl, pipelined in one round trip. *n_stored (optional)
 * receives how many the server accepted. Returns 0; CACHE_EFULL if the server refused some
 * (out of memory: maxmemory with a noeviction policy; the connection stays up);
 * CACHE_ENOCONN, CACHE_ETIMEDOUT or CACHE_EIO as for cache_remote_get(). The reason is in
 * cache_remote_errmsg(). */
int cache_remote_put(cache_remote *r, const cache_remote_item *items, size_t n, size_t *n_stored);

/* The Redis key of block key k: CACHE_REMOTE_KEY_LEN characters and a NUL into out. */
void cache_remote_key_name(cache_key k, char *out);

/* The Redis key of the partial pointer for the first t tokens of a block after parent:
 * CACHE_REMOTE_PARTIAL_KEY_LEN characters and a NUL into out. */
void cache_remote_partial_key_name(cache_key parent, const int32_t *tokens, size_t t, char *out);

/* The URL given at open, for messages ("redis://host:6379/0", "unix:/path"). */
const char *cache_remote_url(const cache_remote *r);

/* The message of the last failure on this handle; "" if none. Valid until the next call. */
const char *cache_remote_errmsg(const cache_remote *r);

typedef struct cache_remote_stats {
    uint64_t connects;        /* connections made */
    uint64_t connect_fails;   /* attempts that failed */
    uint64_t gets;            /* blocks asked for (GETs sent) */
    uint64_t hits;            /* blocks loaded and verified */
    uint64_t misses;          /* GETs that found no value */
    uint64_t corrupt_deleted; /* values that failed verification (deleted) */
    uint64_t foreign;         /* of those, another model's (a well-formed value under our key) */
    uint64_t partial_hits;    /* partial blocks loaded (cache_remote_get_partial()) */
    uint64_t partial_tokens;  /* rows of them usable */
    uint64_t puts;            /* blocks stored */
    uint64_t put_refused;     /* SETs the server refused (out of memory, or another error) */
    uint64_t errors;          /* exchanges that failed: I/O errors, protocol errors */
    uint64_t timeouts;        /* exchanges ended by the timeout or the hard deadline */
    uint64_t bytes_in;        /* value bytes loaded (hits) */
    uint64_t bytes_out;       /* value bytes stored */
    uint64_t round_trips;     /* pipelined batches (gets and puts) */
    double get_ms;            /* time in get batches */
    double put_ms;            /* time in put batches */
    /* A Redis Cluster's (cache_remote_cluster.h; 0 for one server): */
    uint64_t moved;         /* MOVED redirections followed (the slot map refreshed) */
    uint64_t asked;         /* ASK redirections followed (a slot being migrated) */
    uint64_t map_refreshes; /* slot maps read (CLUSTER SLOTS) */
    uint32_t nodes;         /* primaries in the slot map */
    uint32_t nodes_up;      /* of those, connected now */
    /* Round trips by latency: < 1, 2, 5, 10, 20, 50, 100, 200, 500 ms, and the rest. */
    uint64_t latency_hist[CACHE_REMOTE_HIST];
} cache_remote_stats;

/* Upper bounds of the histogram's buckets in ms (the last is infinite). */
extern const double cache_remote_hist_ms[CACHE_REMOTE_HIST];

void cache_remote_get_stats(const cache_remote *r, cache_remote_stats *out);

#endif
