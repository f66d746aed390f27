/* remote_cluster.c — the remote tier on a Redis Cluster (cache_remote_cluster.h): a slot map read
 * with CLUSTER SLOTS, one remote.c connection per primary, batches grouped by node.
 *
 * Why this shape:
 * - hiredis 0.14 (Debian 12's) has no cluster client. The routing is small: a key's slot is
 *   CRC16 of the key mod 16384, the map says which primary holds each slot, and the servers
 *   correct a stale map themselves (MOVED, ASK). Everything below the routing is remote.c's: the
 *   commands, the deadlines, the reply parser that reads a payload straight into its slot, and
 *   the verification of every value (remote_int.h lends it cut in two halves).
 * - No hash tags: a tag per chain would put a whole prompt's blocks on one node (one round trip)
 *   but a shared prefix under different tags would be stored once per tag, and a tag per
 *   namespace would put a whole tenant on one node. Keys are hashed whole, so the blocks spread
 *   evenly and are the single server's keys; a batch is instead grouped by node and every
 *   node's share is sent before any reply is read: the round trips overlap, so a batch costs
 *   about one round trip (the slowest node's), as on one server.
 * - A node down costs its keys (misses: the chain stops at the first of them, the request
 *   computes the rest) and never the other nodes; it is retried with backoff, not on every
 *   request, and the map is read again in case its slots moved.
 */
#include "cache_remote_cluster.h"

#include "base.h"
#include "cache_value.h"
#include "remote_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BACKOFF_MIN_MS 100.0
#define BACKOFF_MAX_MS 5000.0
#define REDIRECT_ROUNDS 3    /* a key redirected more often in one batch is a miss */
#define REFRESH_MIN_MS 100.0 /* the map is read again at most this often */
#define HOST_MAX 256

typedef struct cnode {
    char host[HOST_MAX];
    int port;
    cache_remote *r; /* NULL until first needed */
    int primary;     /* holds slots in the current map */
    double next_try_ms, backoff_ms;
    int down_logged;         /* this outage has been logged */
    size_t seg_off, seg_len; /* this round's keys: idx[seg_off .. seg_off + seg_len) */
    int sent;                /* this round's commands went out */
} cnode;

struct cache_remote_cluster {
    cache_remote_opts o; /* o.url and o.password are ours (below) */
    char *seeds;         /* the seed list as given */
    char *label;         /* "cluster " + seeds */
    char *password;
    double hard_ms; /* one round's deadline */
    cnode nodes[CACHE_CLUSTER_NODES_MAX];
    int n_nodes;
    int16_t slot[CACHE_CLUSTER_SLOTS]; /* node index, or -1: unassigned */
    int16_t slot_new[CACHE_CLUSTER_SLOTS];
    int have_map, refresh_wanted;
    double refreshed_ms;
    /* A batch's scratch, sized for cap keys. */
    size_t cap;
    int16_t *node_of;
    uint8_t *asking, *pending, *out, *seg_ask, *seg_out;
    size_t *idx;
    cache__redirect *seg_redirect;
    cache_remote_stats st; /* the cluster's own counters (see get_stats) */
    char msg[512];
};

/* ---- slots ---- */

/* CRC16-CCITT (XMODEM): polynomial 0x1021, initial 0, no reflection: Redis Cluster's. */
static unsigned crc16(const char *p, size_t n)
{
    unsigned crc = 0;
    for (size_t i = 0; i < n; i++) {
        crc ^= (unsigned)(unsigned char)p[i] << 8;
        for (int b = 0; b < 8; b++)
            crc = crc & 0x8000 ? (crc << 1) ^ 0x1021 : crc << 1;
        crc &= 0xffff;
    }
    return crc;
}

unsigned cache_remote_cluster_key_slot(const char *key, size_t len)
{
    /* A {tag} with something inside hashes alone (the first '{' and the first '}' after it). */
    const char *l = memchr(key, '{', len);
    if (l) {
        const char *r = memchr(l + 1, '}', len - (size_t)(l + 1 - key));
        if (r && r > l + 1)
            return crc16(l + 1, (size_t)(r - l - 1)) & (CACHE_CLUSTER_SLOTS - 1);
    }
    return crc16(key, len) & (CACHE_CLUSTER_SLOTS - 1);
}

static int key_node(const cache_remote_cluster *c, cache_key k)
{
    char name[CACHE_REMOTE_KEY_LEN + 1];
    cache_remote_key_name(k, name);
    return c->slot[cache_remote_cluster_key_slot(name, CACHE_REMOTE_KEY_LEN)];
}

/* ---- seeds and nodes ---- */

/* Parses "HOST:PORT" or "[IPv6]:PORT" (s[0..n)) into host and port. */
static int hostport_parse(const char *s, size_t n, char *host, int *port, char *msg, size_t msglen)
{
    const char *e = s + n, *h0 = s, *h1, *colon;
    if (n > 0 && *s == '[') {
        h0 = s + 1;
        h1 = memchr(s, ']', n);
        if (!h1 || h1 + 1 >= e || h1[1] != ':') {
            snprintf(msg, msglen, "cluster seed '%.*s': expected [IPv6]:PORT", (int)n, s);
            return CACHE_EINVAL;
        }
        colon = h1 + 1;
    } else {
        colon = NULL;
        for (const char *p = s; p < e; p++)
            if (*p == ':')
                colon = p;
        h1 = colon;
    }
    if (!colon || h1 == h0) {
        snprintf(msg, msglen, "cluster seed '%.*s': expected HOST:PORT", (int)n, s);
        return CACHE_EINVAL;
    }
    if ((size_t)(h1 - h0) >= HOST_MAX) {
        snprintf(msg, msglen, "cluster seed '%.*s': host name too long", (int)n, s);
        return CACHE_EINVAL;
    }
    long v = 0;
    const char *p = colon + 1;
    for (; p < e && *p >= '0' && *p <= '9' && v <= 65535; p++)
        v = v * 10 + (*p - '0');
    if (p == colon + 1 || p != e || v < 1 || v > 65535) {
        snprintf(msg, msglen, "cluster seed '%.*s': the port must be 1..65535", (int)n, s);
        return CACHE_EINVAL;
    }
    if (host) {
        memcpy(host, h0, (size_t)(h1 - h0));
        host[h1 - h0] = 0;
    }
    *port = (int)v;
    return 0;
}

int cache_remote_cluster_seeds_check(const char *seeds, char *msg, size_t msglen)
{
    if (!seeds || !*seeds) {
        snprintf(msg, msglen, "cluster seed list is empty (expected HOST:PORT,...)");
        return CACHE_EINVAL;
    }
    int count = 0;
    for (const char *p = seeds;; count++) {
        size_t n = strcspn(p, ",");
        int port;
        if (n == 0) {
            snprintf(msg, msglen, "cluster seed list '%s': an empty entry", seeds);
            return CACHE_EINVAL;
        }
        if (count >= CACHE_CLUSTER_NODES_MAX) {
            snprintf(msg, msglen, "cluster seed list '%s': more than %d seeds", seeds,
                     CACHE_CLUSTER_NODES_MAX);
            return CACHE_EINVAL;
        }
        int rc = hostport_parse(p, n, NULL, &port, msg, msglen);
        if (rc)
            return rc;
        if (!p[n])
            return 0;
        p += n + 1;
    }
}

/* The node at host:port, added if new; -1 when the table is full. */
static int node_find_or_add(cache_remote_cluster *c, const char *host, int port)
{
    for (int k = 0; k < c->n_nodes; k++)
        if (c->nodes[k].port == port && strcmp(c->nodes[k].host, host) == 0)
            return k;
    if (c->n_nodes == CACHE_CLUSTER_NODES_MAX || strlen(host) >= HOST_MAX)
        return -1;
    cnode *nd = &c->nodes[c->n_nodes];
    memset(nd, 0, sizeof *nd);
    snprintf(nd->host, sizeof nd->host, "%s", host);
    nd->port = port;
    nd->backoff_ms = BACKOFF_MIN_MS;
    return c->n_nodes++;
}

/* The node's handle, made when first needed. */
static int node_open(cache_remote_cluster *c, cnode *nd)
{
    if (nd->r)
        return 0;
    char url[HOST_MAX + 32], msg[256];
    snprintf(url, sizeof url, strchr(nd->host, ':') ? "redis://[%s]:%d" : "redis://%s:%d", nd->host,
             nd->port);
    cache_remote_opts o = c->o;
    o.url = url;
    int rc = cache_remote_open(&o, &nd->r, msg, sizeof msg);
    if (rc)
        snprintf(c->msg, sizeof c->msg, "%s", msg);
    return rc;
}

static int node_up(const cnode *nd)
{
    return nd->r && cache_remote_connected(nd->r);
}

/* A node failed (why): its first failure in an outage is logged; it is tried again after the
 * backoff, and the map read again (its slots may have moved to a replica). */
static void node_down(cache_remote_cluster *c, cnode *nd, const char *why)
{
    double now = base_now_ms();
    if (!nd->down_logged) {
        nd->down_logged = 1;
        nd->backoff_ms = BACKOFF_MIN_MS;
        base_log(BASE_LOG_WARN,
                 "remote tier: cluster node %s:%d: %s; its blocks are misses until it is back "
                 "(retrying with backoff; the other nodes serve)",
                 nd->host, nd->port, why);
    }
    nd->next_try_ms = now + nd->backoff_ms;
    nd->backoff_ms = nd->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : nd->backoff_ms * 2;
    c->refresh_wanted = 1;
}

/* 1 if the node is connected, connecting first when its backoff allows (or force). */
static int node_ready(cache_remote_cluster *c, cnode *nd, int force)
{
    if (node_up(nd))
        return 1;
    if (!force && base_now_ms() < nd->next_try_ms)
        return 0;
    if (node_open(c, nd) != 0)
        return 0;
    if (cache_remote_connect(nd->r) != 0) {
        node_down(c, nd, cache_remote_errmsg(nd->r));
        return 0;
    }
    if (nd->down_logged)
        base_log(BASE_LOG_INFO, "remote tier: cluster node %s:%d is back", nd->host, nd->port);
    nd->down_logged = 0;
    nd->backoff_ms = BACKOFF_MIN_MS;
    return 1;
}

/* ---- the slot map ---- */

static int is_int(const redisReply *r)
{
    return r->type == REDIS_REPLY_INTEGER;
}

/* Reads CLUSTER SLOTS's reply into c->slot_new (primaries only); the nodes it names are added
 * (a host left empty or "?" is the asked node's). Returns 0, or CACHE_EIO with the reason in
 * c->msg. */
static int map_parse(cache_remote_cluster *c, const cnode *asked, const redisReply *rep)
{
    for (int s = 0; s < CACHE_CLUSTER_SLOTS; s++)
        c->slot_new[s] = -1;
    if (rep->type == REDIS_REPLY_ERROR) {
        snprintf(c->msg, sizeof c->msg,
                 "remote tier: cluster node %.100s:%d answers CLUSTER SLOTS with: %.200s (is it "
                 "started with --cluster-enabled yes?)",
                 asked->host, asked->port, rep->str);
        return CACHE_EIO;
    }
    if (rep->type != REDIS_REPLY_ARRAY)
        goto bad;
    for (size_t i = 0; i < rep->elements; i++) {
        const redisReply *e = rep->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 || !is_int(e->element[0]) ||
            !is_int(e->element[1]) || e->element[2]->type != REDIS_REPLY_ARRAY ||
            e->element[2]->elements < 2)
            goto bad;
        long long a = e->element[0]->integer, b = e->element[1]->integer;
        const redisReply *h = e->element[2]->element[0], *p = e->element[2]->element[1];
        if (a < 0 || b < a || b >= CACHE_CLUSTER_SLOTS || h->type != REDIS_REPLY_STRING ||
            !is_int(p) || p->integer < 1 || p->integer > 65535)
            goto bad;
        const char *host = h->len == 0 || strcmp(h->str, "?") == 0 ? asked->host : h->str;
        int k = node_find_or_add(c, host, (int)p->integer);
        if (k < 0) {
            snprintf(c->msg, sizeof c->msg, "remote tier: cluster has more than %d nodes",
                     CACHE_CLUSTER_NODES_MAX);
            return CACHE_EIO;
        }
        for (long long s = a; s <= b; s++)
            c->slot_new[s] = (int16_t)k;
    }
    return 0;
bad:
    snprintf(c->msg, sizeof c->msg,
             "remote tier: cluster node %.100s:%d: a CLUSTER SLOTS reply of an unknown shape",
             asked->host, asked->port);
    return CACHE_EIO;
}

/* Reads the map from the first node that answers: connected ones first, then the others (all of
 * them with force, else those whose backoff allows). */
static int map_refresh(cache_remote_cluster *c, int force)
{
    int rc = CACHE_EIO;
    c->refreshed_ms = base_now_ms();
    for (int pass = 0; pass < 2; pass++) {
        for (int k = 0; k < c->n_nodes; k++) {
            cnode *nd = &c->nodes[k];
            if (pass == 0 ? !node_up(nd) : node_up(nd) || !node_ready(c, nd, force))
                continue;
            const char *argv[] = {"CLUSTER", "SLOTS"};
            size_t argl[] = {7, 5};
            redisReply *rep;
            rc = cache__remote_command(nd->r, 2, argv, argl, &rep);
            if (rc) {
                snprintf(c->msg, sizeof c->msg, "%s", cache_remote_errmsg(nd->r));
                node_down(c, nd, cache_remote_errmsg(nd->r));
                continue;
            }
            rc = map_parse(c, nd, rep);
            freeReplyObject(rep);
            if (rc)
                continue;
            memcpy(c->slot, c->slot_new, sizeof c->slot);
            for (int j = 0; j < c->n_nodes; j++)
                c->nodes[j].primary = 0;
            for (int s = 0; s < CACHE_CLUSTER_SLOTS; s++)
                if (c->slot[s] >= 0)
                    c->nodes[c->slot[s]].primary = 1;
            c->have_map = 1;
            c->refresh_wanted = 0;
            c->st.map_refreshes++;
            return 0;
        }
    }
    if (!c->msg[0])
        snprintf(c->msg, sizeof c->msg, "remote tier: no cluster node of '%s' answers", c->seeds);
    return rc ? rc : CACHE_EIO;
}

/* ---- open, close, connect ---- */

int cache_remote_cluster_open(const cache_remote_opts *o, cache_remote_cluster **out, char *msg,
                              size_t msglen)
{
    *out = NULL;
    int rc = cache_remote_cluster_seeds_check(o->url, msg, msglen);
    if (rc)
        return rc;
    if (o->block_tokens < 1 || o->block_floats == 0) {
        snprintf(msg, msglen, "remote tier: no block geometry");
        return CACHE_EINVAL;
    }
    cache_remote_cluster *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(msg, msglen, "remote tier: out of memory");
        return CACHE_ENOMEM;
    }
    c->o = *o;
    c->seeds = strdup(o->url);
    c->label = malloc(strlen(o->url) + 9);
    c->password = o->password && o->password[0] ? strdup(o->password) : NULL;
    if (!c->seeds || !c->label || (o->password && o->password[0] && !c->password)) {
        cache_remote_cluster_close(c);
        snprintf(msg, msglen, "remote tier: out of memory");
        return CACHE_ENOMEM;
    }
    sprintf(c->label, "cluster %s", o->url);
    c->o.url = c->seeds;
    c->o.password = c->password;
    double t = o->timeout_ms > 0 ? o->timeout_ms : CACHE_REMOTE_DEFAULT_TIMEOUT;
    c->hard_ms = 20 * t < 1000 ? 1000 : 20 * t;
    for (int s = 0; s < CACHE_CLUSTER_SLOTS; s++)
        c->slot[s] = -1;
    for (const char *p = c->seeds;;) {
        size_t n = strcspn(p, ",");
        char host[HOST_MAX];
        int port;
        hostport_parse(p, n, host, &port, msg, msglen); /* checked above */
        node_find_or_add(c, host, port);
        if (!p[n])
            break;
        p += n + 1;
    }
    *out = c;
    return 0;
}

void cache_remote_cluster_close(cache_remote_cluster *c)
{
    if (!c)
        return;
    for (int k = 0; k < c->n_nodes; k++)
        cache_remote_close(c->nodes[k].r);
    if (c->password)
        memset(c->password, 0, strlen(c->password));
    free(c->password);
    free(c->seeds);
    free(c->label);
    free(c->node_of);
    free(c->asking);
    free(c->pending);
    free(c->out);
    free(c->seg_ask);
    free(c->seg_out);
    free(c->idx);
    free(c->seg_redirect);
    free(c);
}

int cache_remote_cluster_connect(cache_remote_cluster *c)
{
    c->msg[0] = 0;
    int rc = map_refresh(c, 1);
    if (rc)
        return rc;
    for (int k = 0; k < c->n_nodes; k++)
        if (c->nodes[k].primary)
            node_ready(c, &c->nodes[k], 1);
    c->msg[0] = 0;
    return cache_remote_cluster_connected(c) ? 0 : CACHE_EIO;
}

int cache_remote_cluster_connected(const cache_remote_cluster *c)
{
    if (!c->have_map)
        return 0;
    for (int k = 0; k < c->n_nodes; k++)
        if (node_up(&c->nodes[k]))
            return 1;
    return 0;
}

const char *cache_remote_cluster_url(const cache_remote_cluster *c)
{
    return c->label;
}

const char *cache_remote_cluster_errmsg(const cache_remote_cluster *c)
{
    return c ? c->msg : "";
}

void cache_remote_cluster_get_stats(const cache_remote_cluster *c, cache_remote_stats *out)
{
    *out = c->st;
    for (int k = 0; k < c->n_nodes; k++) {
        const cnode *nd = &c->nodes[k];
        if (nd->primary) {
            out->nodes++;
            out->nodes_up += (uint32_t)node_up(nd);
        }
        if (!nd->r)
            continue;
        cache_remote_stats s;
        cache_remote_get_stats(nd->r, &s);
        out->connects += s.connects;
        out->connect_fails += s.connect_fails;
        out->gets += s.gets;
        out->hits += s.hits;
        out->misses += s.misses;
        out->corrupt_deleted += s.corrupt_deleted;
        out->foreign += s.foreign;
        out->puts += s.puts;
        out->put_refused += s.put_refused;
        out->errors += s.errors;
        out->timeouts += s.timeouts;
        out->bytes_in += s.bytes_in;
        out->bytes_out += s.bytes_out;
    }
}

/* ---- batches ---- */

static int scratch(cache_remote_cluster *c, size_t n)
{
    if (n <= c->cap)
        return 0;
    size_t cap = n < 64 ? 64 : n;
#define GROW(f) ((c->f = realloc(c->f, cap * sizeof *c->f)) != NULL)
    if (!GROW(node_of) || !GROW(asking) || !GROW(pending) || !GROW(out) || !GROW(seg_ask) ||
        !GROW(seg_out) || !GROW(idx) || !GROW(seg_redirect))
        return CACHE_ENOMEM;
#undef GROW
    c->cap = cap;
    return 0;
}

/* Counts a batch: its time into *sum and the latency histogram. */
static void batch_done(cache_remote_cluster *c, double t0, double *sum)
{
    double ms = base_now_ms() - t0;
    *sum += ms;
    int i = 0;
    while (i < CACHE_REMOTE_HIST - 1 && ms >= cache_remote_hist_ms[i])
        i++;
    c->st.latency_hist[i]++;
    c->st.round_trips++;
}

/* Spreads the pending keys j < m (global index base + j) over the nodes' segments of c->idx;
 * keys of unassigned slots, or of nodes that cannot be reached, are done (NONE). */
static void group(cache_remote_cluster *c, size_t base, size_t m)
{
    size_t off = 0;
    for (int k = 0; k < c->n_nodes; k++) {
        cnode *nd = &c->nodes[k];
        nd->seg_off = off;
        nd->seg_len = 0;
        nd->sent = 0;
        for (size_t j = 0; j < m; j++) {
            if (!c->pending[j] || c->node_of[j] != k)
                continue;
            c->seg_ask[off] = c->asking[j];
            c->idx[off++] = base + j;
            nd->seg_len++;
        }
        if (nd->seg_len && !node_ready(c, nd, 0)) {
            for (size_t s = nd->seg_off; s < off; s++)
                c->pending[c->idx[s] - base] = 0; /* out stays NONE */
            nd->seg_len = 0;
            off = nd->seg_off;
        }
    }
    for (size_t j = 0; j < m; j++)
        if (c->pending[j] && c->node_of[j] < 0)
            c->pending[j] = 0;
}

/* Takes a node's outcomes: redirected keys stay pending at their new node. */
static void take_outcomes(cache_remote_cluster *c, cnode *nd, size_t base)
{
    for (size_t s = nd->seg_off; s < nd->seg_off + nd->seg_len; s++) {
        size_t j = c->idx[s] - base;
        uint8_t o = c->seg_out[s];
        c->out[j] = o;
        c->pending[j] = 0;
        if (o != CACHE__KEY_MOVED && o != CACHE__KEY_ASK)
            continue;
        c->out[j] = CACHE__KEY_NONE;
        unsigned slot;
        char addr[CACHE__REDIRECT_LEN], host[HOST_MAX], m[256];
        int port, k;
        const char *t = c->seg_redirect[s].text;
        if (sscanf(t + (o == CACHE__KEY_MOVED ? 6 : 4), "%u %95s", &slot, addr) != 2 ||
            slot >= CACHE_CLUSTER_SLOTS ||
            hostport_parse(addr, strlen(addr), host, &port, m, sizeof m) != 0 ||
            (k = node_find_or_add(c, host, port)) < 0)
            continue; /* a redirection we cannot follow: a miss */
        if (o == CACHE__KEY_MOVED) {
            c->slot[slot] = (int16_t)k;
            c->refresh_wanted = 1;
            c->st.moved++;
        } else {
            c->st.asked++;
        }
        c->node_of[j] = (int16_t)k;
        c->asking[j] = o == CACHE__KEY_ASK;
        c->pending[j] = 1;
    }
}

/* A node's exchange failed: its keys stay NONE; the failure is counted by remote.c. */
static void node_failed(cache_remote_cluster *c, cnode *nd, size_t base)
{
    for (size_t s = nd->seg_off; s < nd->seg_off + nd->seg_len; s++)
        c->pending[c->idx[s] - base] = 0;
    node_down(c, nd, cache_remote_errmsg(nd->r));
}

static int any_pending(const cache_remote_cluster *c, size_t m)
{
    for (size_t j = 0; j < m; j++)
        if (c->pending[j])
            return 1;
    return 0;
}

/* After a batch: the map read again if a redirection or a failure asked for it. */
static void after_batch(cache_remote_cluster *c)
{
    if (c->refresh_wanted && base_now_ms() - c->refreshed_ms >= REFRESH_MIN_MS) {
        char saved[sizeof c->msg];
        memcpy(saved, c->msg, sizeof saved);
        map_refresh(c, 0);
        memcpy(c->msg, saved, sizeof saved);
    }
}

/* Keys [base, base + m) of the chain: every node's GETs out, then every node's replies. */
static void get_batch(cache_remote_cluster *c, cache_key parent, const cache_key *keys,
                      const int32_t *tokens, float *const *dst, size_t base, size_t m)
{
    for (size_t j = 0; j < m; j++) {
        c->node_of[j] = (int16_t)key_node(c, keys[base + j]);
        c->asking[j] = 0;
        c->pending[j] = 1;
        c->out[j] = CACHE__KEY_NONE;
    }
    for (int round = 0; round < REDIRECT_ROUNDS && any_pending(c, m); round++) {
        group(c, base, m);
        double deadline = base_now_ms() + c->hard_ms;
        for (int k = 0; k < c->n_nodes; k++) {
            cnode *nd = &c->nodes[k];
            if (!nd->seg_len)
                continue;
            if (cache__remote_get_send(nd->r, keys, c->idx + nd->seg_off, c->seg_ask + nd->seg_off,
                                       nd->seg_len, deadline) != 0)
                node_failed(c, nd, base);
            else
                nd->sent = 1;
        }
        for (int k = 0; k < c->n_nodes; k++) {
            cnode *nd = &c->nodes[k];
            if (!nd->sent)
                continue;
            memset(c->seg_out + nd->seg_off, CACHE__KEY_NONE, nd->seg_len);
            int rc = cache__remote_get_recv(
                nd->r, parent, keys, tokens, dst, c->idx + nd->seg_off, c->seg_ask + nd->seg_off,
                nd->seg_len, c->seg_out + nd->seg_off, c->seg_redirect + nd->seg_off, deadline);
            if (rc) {
                node_failed(c, nd, base);
                continue;
            }
            if (cache_remote_errmsg(nd->r)[0]) /* a bad value (deleted), or an error reply */
                snprintf(c->msg, sizeof c->msg, "%s", cache_remote_errmsg(nd->r));
            take_outcomes(c, nd, base);
        }
    }
}

int cache_remote_cluster_get(cache_remote_cluster *c, cache_key parent, const cache_key *keys,
                             const int32_t *tokens, float *const *dst, size_t n, size_t *n_loaded)
{
    *n_loaded = 0;
    c->msg[0] = 0;
    if (!cache_remote_cluster_connected(c))
        return CACHE_ENOCONN;
    cache_value_fmt f;
    cache_value_fmt_init(&f, c->o.fingerprint, c->o.block_tokens, c->o.block_floats, c->o.kv_type);
    size_t per = CACHE_REMOTE_BATCH_BYTES / f.val_bytes;
    if (per < 1)
        per = 1;
    if (scratch(c, per < n ? per : n) != 0) {
        snprintf(c->msg, sizeof c->msg, "remote tier: out of memory");
        return CACHE_ENOMEM;
    }
    for (size_t start = 0; start < n;) {
        size_t m = n - start < per ? n - start : per, j = 0;
        double t0 = base_now_ms();
        get_batch(c, parent, keys, tokens, dst, start, m);
        batch_done(c, t0, &c->st.get_ms);
        while (j < m && c->out[j] == CACHE__KEY_OK)
            j++;
        *n_loaded = start + j;
        if (j < m)
            break;
        start += m;
    }
    after_batch(c);
    return cache_remote_cluster_connected(c) ? 0 : CACHE_EIO;
}

int cache_remote_cluster_put(cache_remote_cluster *c, const cache_remote_item *items, size_t n,
                             size_t *n_stored)
{
    if (n_stored)
        *n_stored = 0;
    c->msg[0] = 0;
    if (!cache_remote_cluster_connected(c))
        return CACHE_ENOCONN;
    if (scratch(c, n) != 0) {
        snprintf(c->msg, sizeof c->msg, "remote tier: out of memory");
        return CACHE_ENOMEM;
    }
    double t0 = base_now_ms();
    char m[256];
    for (size_t j = 0; j < n; j++) {
        cache_remote_key_name(items[j].key, m);
        c->node_of[j] = c->slot[cache_remote_cluster_key_slot(m, CACHE_REMOTE_KEY_LEN)];
        c->asking[j] = 0;
        c->pending[j] = 1;
        c->out[j] = CACHE__KEY_NONE;
    }
    size_t refused = 0;
    for (int round = 0; round < REDIRECT_ROUNDS && any_pending(c, n); round++) {
        group(c, 0, n);
        double deadline = base_now_ms() + c->hard_ms;
        for (int k = 0; k < c->n_nodes; k++) {
            cnode *nd = &c->nodes[k];
            if (!nd->seg_len)
                continue;
            if (cache__remote_put_send(nd->r, items, c->idx + nd->seg_off, c->seg_ask + nd->seg_off,
                                       nd->seg_len, deadline) != 0)
                node_failed(c, nd, 0);
            else
                nd->sent = 1;
        }
        for (int k = 0; k < c->n_nodes; k++) {
            cnode *nd = &c->nodes[k];
            if (!nd->sent)
                continue;
            memset(c->seg_out + nd->seg_off, CACHE__KEY_NONE, nd->seg_len);
            if (cache__remote_put_recv(nd->r, c->seg_ask + nd->seg_off, nd->seg_len,
                                       c->seg_out + nd->seg_off, c->seg_redirect + nd->seg_off,
                                       deadline) != 0) {
                node_failed(c, nd, 0);
                continue;
            }
            if (cache_remote_errmsg(nd->r)[0] && !c->msg[0])
                snprintf(c->msg, sizeof c->msg, "%s", cache_remote_errmsg(nd->r));
            take_outcomes(c, nd, 0);
        }
    }
    size_t ok = 0;
    for (size_t j = 0; j < n; j++) {
        ok += c->out[j] == CACHE__KEY_OK;
        refused += c->out[j] == CACHE__KEY_ERROR;
    }
    batch_done(c, t0, &c->st.put_ms);
    if (n_stored)
        *n_stored = ok;
    after_batch(c);
    if (refused)
        return CACHE_EFULL;
    return cache_remote_cluster_connected(c) ? 0 : CACHE_EIO;
}
