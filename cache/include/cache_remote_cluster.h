/* cache_remote_cluster.h — the remote tier on a Redis Cluster (or Valkey cluster): the same
 * blocks, keys and verified values as on one server (cache_remote.h), spread over the cluster's
 * primaries by the key's hash slot. hiredis 0.14 has no cluster client, so the routing is here.
 *
 * The slot map comes from CLUSTER SLOTS, asked of any node that answers (the seeds given first,
 * then every node seen); each primary has its own connection (a cache_remote handle: the same
 * AUTH with the same password, the same deadlines and verification). A key's slot is CRC16 of
 * the whole key ("prefixd:v1:" and 32 hex digits, no hash tag) modulo 16384, so a chain's blocks
 * spread evenly over the primaries, and the keys are those of a single server (a tier can move
 * between the two). A batch of a chain is grouped by node: the GETs go to every node before any
 * reply is read, so the nodes' round trips overlap, and the chain is judged in order at the end
 * (stopping at the first block not loaded).
 *
 * Redirections: a MOVED reply (the slot lives elsewhere now: a resharding, a failover) updates
 * that slot, retries the key on the named node and has the whole map read again after the
 * batch; an ASK (the slot is being migrated) retries the key once on the named node with ASKING
 * before it, the map unchanged. At most 3 rounds per batch.
 *
 * A node down: its keys are misses and its writes fail (counted); the other nodes go on
 * serving. The node is tried again after a backoff (0.1 s doubling to 5 s) and the map read
 * again (a replica may have taken its slots over); its first failure is logged, and its return.
 * The handle counts as connected while it has a map and one node is connected; when none is,
 * the caller reconnects (cache_remote_cluster_connect()) with its own backoff.
 *
 * Threads: as cache_remote.h: one handle, one thread; nothing locks.
 */
#ifndef PREFIXD_CACHE_REMOTE_CLUSTER_H
#define PREFIXD_CACHE_REMOTE_CLUSTER_H

#include "cache_remote.h"

#define CACHE_CLUSTER_SLOTS 16384
#define CACHE_CLUSTER_NODES_MAX 64 /* primaries and seeds a handle keeps connections for */

typedef struct cache_remote_cluster cache_remote_cluster; /* opaque */

/* Checks a seed list ("HOST:PORT,HOST:PORT,...", HOST a name, an IPv4 address or an [IPv6]
 * one; PORT required) without connecting. Returns 0 or CACHE_EINVAL with msg naming the entry
 * and the problem. Any thread. */
int cache_remote_cluster_seeds_check(const char *seeds, char *msg, size_t msglen);

/* Makes a handle for the cluster whose seeds are o->url (a seed list as above; o->password is
 * every node's). Not connected yet. Returns 0, CACHE_EINVAL (msg says why) or CACHE_ENOMEM. */
int cache_remote_cluster_open(const cache_remote_opts *o, cache_remote_cluster **out, char *msg,
                              size_t msglen);

/* Disconnects every node and frees everything. Accepts NULL. */
void cache_remote_cluster_close(cache_remote_cluster *c);

/* Reads the slot map from the first node that answers and connects to every primary in it.
 * Returns 0 (some primaries may still be down: their keys are misses until they come back), or
 * CACHE_EIO / CACHE_ETIMEDOUT when no node gave a map (the reason in the errmsg). */
int cache_remote_cluster_connect(cache_remote_cluster *c);

/* 1 if the handle has a slot map and at least one node connected. */
int cache_remote_cluster_connected(const cache_remote_cluster *c);

/* As cache_remote_get(): the chain keys[0..n) into dst[], stopping at the first block not
 * loaded (absent, bad, or on a node that is down). Returns 0 whatever *n_loaded, CACHE_ENOCONN
 * (not connected), or CACHE_EIO when every node failed in the exchange. */
int cache_remote_cluster_get(cache_remote_cluster *c, cache_key parent, const cache_key *keys,
                             const int32_t *tokens, float *const *dst, size_t n, size_t *n_loaded);

/* As cache_remote_put(): *n_stored (optional) receives how many were stored; the others were
 * refused (CACHE_EFULL) or their node was down (0, or CACHE_EIO when every node failed). */
int cache_remote_cluster_put(cache_remote_cluster *c, const cache_remote_item *items, size_t n,
                             size_t *n_stored);

/* The slot of a Redis key (CRC16-CCITT/XMODEM of the key, or of its {hash tag}, mod 16384). */
unsigned cache_remote_cluster_key_slot(const char *key, size_t len);

/* "cluster HOST:PORT,..." (the seeds), for messages. */
const char *cache_remote_cluster_url(const cache_remote_cluster *c);

/* The message of the last failure; "" if none. Valid until the next call. */
const char *cache_remote_cluster_errmsg(const cache_remote_cluster *c);

/* Every node's counters summed, with the cluster's own (round trips and their latency are the
 * cluster's: one per batch, whatever number of nodes it went to). */
void cache_remote_cluster_get_stats(const cache_remote_cluster *c, cache_remote_stats *out);

#endif
