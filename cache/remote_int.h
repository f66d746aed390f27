/* remote_int.h — what remote.c lends remote_cluster.c (module-internal, cache__ prefix): one
 * node's exchange cut in two halves, so that the cluster can send a batch to every node before
 * it reads any node's replies (the round trips overlap), with a per-key outcome instead of a
 * chain that stops, and the server's redirections (MOVED, ASK) handed back rather than counted
 * as errors. The verification of every value is remote.c's, the same as for one server.
 *
 * Every function here is used by the thread that owns the handle; each takes the exchange's
 * deadline (base_now_ms() + cache__remote_hard_ms()); a failed exchange disconnects the node as
 * cache_remote_get() does and returns CACHE_EIO, CACHE_ETIMEDOUT or CACHE_ENOMEM. */
#ifndef PREFIXD_CACHE_REMOTE_INT_H
#define PREFIXD_CACHE_REMOTE_INT_H

#include "cache_remote.h"

#include <hiredis/hiredis.h>

/* What became of one key in an exchange. */
enum {
    CACHE__KEY_NONE,  /* not answered: the node failed or was not reachable */
    CACHE__KEY_OK,    /* loaded and verified (a GET), or stored (a SET) */
    CACHE__KEY_MISS,  /* no value */
    CACHE__KEY_BAD,   /* a value that failed verification (deleted) */
    CACHE__KEY_ERROR, /* an error reply (a SET refused: out of memory) */
    CACHE__KEY_SKIP,  /* not looked at: the node's earlier key in the chain was missing */
    CACHE__KEY_MOVED, /* the slot lives elsewhere now (redirect text) */
    CACHE__KEY_ASK    /* the slot is migrating; ask the other node once (redirect text) */
};

#define CACHE__REDIRECT_LEN 96
typedef struct cache__redirect {
    char text[CACHE__REDIRECT_LEN]; /* "MOVED 3999 127.0.0.1:6381" or "ASK ...", NUL-ended */
} cache__redirect;

/* The hard deadline of one exchange on r (20 timeouts, at least 1 s), in ms. */
double cache__remote_hard_ms(const cache_remote *r);

/* Sends GETs for keys[idx[j]], j < m, in one write; asking[j] (optional) puts ASKING first. */
int cache__remote_get_send(cache_remote *r, const cache_key *keys, const size_t *idx,
                           const uint8_t *asking, size_t m, double deadline);

/* Reads the replies of that send in order. The chain is (parent, keys, tokens, dst) as for
 * cache_remote_get(); key i = idx[j] (idx ascending) is verified against keys[i - 1] (or parent)
 * and its payload lands in dst[i]. out[j] receives its CACHE__KEY_*; redirect[j] the text of a
 * MOVED or ASK. After a miss, a bad value or an error, the node's later keys are SKIP (their
 * bytes are dropped unread). Bad values are deleted before returning. */
int cache__remote_get_recv(cache_remote *r, cache_key parent, const cache_key *keys,
                           const int32_t *tokens, float *const *dst, const size_t *idx,
                           const uint8_t *asking, size_t m, uint8_t *out, cache__redirect *redirect,
                           double deadline);

/* Sends SETs of items[idx[j]], j < m (ASKING first where asking[j]), without a staging copy. */
int cache__remote_put_send(cache_remote *r, const cache_remote_item *items, const size_t *idx,
                           const uint8_t *asking, size_t m, double deadline);

/* Reads their replies: out[j] OK, ERROR (refused: counted; the first reason in the errmsg),
 * MOVED or ASK (redirect[j]). */
int cache__remote_put_recv(cache_remote *r, const uint8_t *asking, size_t m, uint8_t *out,
                           cache__redirect *redirect, double deadline);

/* One command and its reply (free it with freeReplyObject()); an error reply is returned as
 * such, not as a failure. For CLUSTER SLOTS. */
int cache__remote_command(cache_remote *r, int argc, const char *const *argv, const size_t *argl,
                          redisReply **out);

#endif
