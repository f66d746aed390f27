/* remote_thread.c — the remote thread (remote_thread.h): write-behind in pipelined batches,
 * loads first, reconnection with backoff.
 *
 * The write queue is a ring of fixed entries (owner and item), allocated at open, with three
 * counters that only grow: head (the engine queued up to here), sent (the remote thread is done
 * with everything before it: sent, refused or dropped) and taken (the engine took the owners
 * back). The engine writes entries in [head, taken + cap) and the remote thread reads those in
 * [sent, head) without the lock: each side only moves its own counter, under the lock.
 *
 * Each turn of the remote thread: (re)connect if it is time, serve every queued load, then send
 * one batch of writes (at most CACHE_REMOTE_BATCH_BYTES of values), then look again.
 */
#include "remote_thread.h"

#include "base.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define REMOTE_DEFAULT_QUEUE ((size_t)256 << 20)
#define REMOTE_BACKOFF_MIN_MS 100.0
#define REMOTE_BACKOFF_MAX_MS 5000.0
#define REMOTE_BATCH_MAX 256

typedef struct wentry {
    void *owner;
    cache_remote_item item;
} wentry;

struct remote_thread {
    remote_thread_opts o;
    cache_remote *r;          /* one server, or */
    cache_remote_cluster *cl; /* a cluster */
    size_t val_bytes;
    pthread_t thread;
    int started;
    pthread_mutex_t mu;
    pthread_cond_t work_cv; /* the remote thread waits here for work */
    pthread_cond_t done_cv; /* callers wait here for loads */
    wentry *ring;
    size_t cap;
    uint64_t head, sent, taken;
    remote_thread_load *load_head, *load_tail;
    remote_thread_load *done_head, *done_tail;
    int stop;
    remote_thread_stats st;
    /* the remote thread's own */
    double next_try_ms, backoff_ms;
    int ever_connected, logged_down;
    double full_logged_ms; /* when a refused write was last logged (at most once a minute) */
    uint64_t refused_unlogged;
};

/* ---- The store: one server or a cluster, behind the same calls ----------------------------- */

static int store_connect(remote_thread *w)
{
    return w->cl ? cache_remote_cluster_connect(w->cl) : cache_remote_connect(w->r);
}

static int store_connected(const remote_thread *w)
{
    return w->cl ? cache_remote_cluster_connected(w->cl) : cache_remote_connected(w->r);
}

static const char *store_errmsg(const remote_thread *w)
{
    return w->cl ? cache_remote_cluster_errmsg(w->cl) : cache_remote_errmsg(w->r);
}

static const char *store_url(const remote_thread *w)
{
    return w->cl ? cache_remote_cluster_url(w->cl) : cache_remote_url(w->r);
}

static int store_get(remote_thread *w, remote_thread_load *j)
{
    return w->cl
               ? cache_remote_cluster_get(w->cl, j->parent, j->keys, j->tokens, j->dst, j->n,
                                          &j->n_loaded)
               : cache_remote_get(w->r, j->parent, j->keys, j->tokens, j->dst, j->n, &j->n_loaded);
}

static int store_put(remote_thread *w, const cache_remote_item *items, size_t n, size_t *stored)
{
    return w->cl ? cache_remote_cluster_put(w->cl, items, n, stored)
                 : cache_remote_put(w->r, items, n, stored);
}

static void store_stats(const remote_thread *w, cache_remote_stats *out)
{
    if (w->cl)
        cache_remote_cluster_get_stats(w->cl, out);
    else
        cache_remote_get_stats(w->r, out);
}

/* ---- The engine thread's side --------------------------------------------------------------- */

int remote_thread_write(remote_thread *w, void *owner, const cache_remote_item *item)
{
    pthread_mutex_lock(&w->mu);
    if (w->head - w->taken >= w->cap) {
        w->st.writes_dropped++;
        pthread_mutex_unlock(&w->mu);
        return -1;
    }
    wentry *e = &w->ring[w->head % w->cap];
    e->owner = owner;
    e->item = *item;
    w->head++;
    w->st.writes_queued++;
    w->st.write_pending++;
    pthread_cond_signal(&w->work_cv);
    pthread_mutex_unlock(&w->mu);
    return 0;
}

size_t remote_thread_take_written(remote_thread *w, void **owners, size_t cap)
{
    size_t n = 0;
    pthread_mutex_lock(&w->mu);
    while (w->taken < w->sent && n < cap)
        owners[n++] = w->ring[w->taken++ % w->cap].owner;
    pthread_mutex_unlock(&w->mu);
    return n;
}

void remote_thread_load_async(remote_thread *w, remote_thread_load *job)
{
    job->next = NULL;
    job->n_loaded = 0;
    job->partial_loaded = 0;
    job->t_queued = base_now_ms();
    pthread_mutex_lock(&w->mu);
    if (w->load_tail)
        w->load_tail->next = job;
    else
        w->load_head = job;
    w->load_tail = job;
    pthread_cond_signal(&w->work_cv);
    pthread_mutex_unlock(&w->mu);
}

remote_thread_load *remote_thread_poll(remote_thread *w)
{
    pthread_mutex_lock(&w->mu);
    remote_thread_load *l = w->done_head;
    w->done_head = w->done_tail = NULL;
    pthread_mutex_unlock(&w->mu);
    return l;
}

int remote_thread_has_done(remote_thread *w)
{
    pthread_mutex_lock(&w->mu);
    int r = w->done_head != NULL;
    pthread_mutex_unlock(&w->mu);
    return r;
}

static void deadline_in(struct timespec *ts, double ms)
{
    clock_gettime(CLOCK_REALTIME, ts);
    long long ns = (long long)ts->tv_nsec + (long long)(ms * 1e6);
    ts->tv_sec += (time_t)(ns / 1000000000);
    ts->tv_nsec = (long)(ns % 1000000000);
}

void remote_thread_wait(remote_thread *w, double timeout_ms)
{
    struct timespec ts;
    deadline_in(&ts, timeout_ms);
    pthread_mutex_lock(&w->mu);
    while (!w->done_head) {
        if (pthread_cond_timedwait(&w->done_cv, &w->mu, &ts) == ETIMEDOUT)
            break;
    }
    pthread_mutex_unlock(&w->mu);
}

void remote_thread_get_stats(remote_thread *w, remote_thread_stats *out)
{
    pthread_mutex_lock(&w->mu);
    *out = w->st;
    pthread_mutex_unlock(&w->mu);
}

/* ---- The remote thread ---------------------------------------------------------------------- */

/* The connection failed (or could not be made): try again after the backoff. The first failure
 * of an outage is logged as a warning, the retries only at debug level. */
static void went_down(remote_thread *w, const char *what)
{
    double now = base_now_ms();
    if (!w->logged_down) {
        w->logged_down = 1;
        base_log(BASE_LOG_WARN,
                 "remote tier: %s; retrying with backoff (requests compute what they do not find "
                 "meanwhile)",
                 what);
        w->backoff_ms = REMOTE_BACKOFF_MIN_MS;
        w->next_try_ms = now; /* a dropped connection: reconnect at once, once */
        return;
    }
    base_log(BASE_LOG_DEBUG, "remote tier: %s; next try in %.1f s", what, w->backoff_ms / 1e3);
    w->next_try_ms = now + w->backoff_ms;
    w->backoff_ms *= 2;
    if (w->backoff_ms > REMOTE_BACKOFF_MAX_MS)
        w->backoff_ms = REMOTE_BACKOFF_MAX_MS;
}

static void try_connect(remote_thread *w)
{
    if (store_connect(w) != 0) {
        went_down(w, store_errmsg(w));
        return;
    }
    base_log(BASE_LOG_INFO, "remote tier: connected to %s%s", store_url(w),
             w->ever_connected ? " again" : "");
    w->ever_connected = 1;
    w->logged_down = 0;
    w->backoff_ms = REMOTE_BACKOFF_MIN_MS;
}

/* After an exchange: a dropped connection schedules a reconnect. */
static void after_exchange(remote_thread *w, int rc)
{
    if (rc == CACHE_ETIMEDOUT || rc == CACHE_EIO || rc == CACHE_ENOMEM)
        went_down(w, store_errmsg(w));
}

static void serve_load(remote_thread *w, remote_thread_load *job, uint64_t *unavailable)
{
    if (!store_connected(w)) {
        ++*unavailable;
        return;
    }
    int rc = store_get(w, job);
    if (rc == 0 && store_errmsg(w)[0]) /* a bad value (deleted), or an error reply */
        base_log(BASE_LOG_WARN, "%s", store_errmsg(w));
    /* The block the chain ends before (a miss: the prompt diverges inside it), or the one
     * after the chain: its first rows may be another prompt's, with the same tokens. */
    size_t at = job->n_loaded, B = (size_t)w->o.remote.block_tokens;
    const int32_t *ptok = at < job->n ? job->tokens + at * B : job->partial_tokens;
    size_t pn = at < job->n ? B - 1 : job->partial_n;
    float *pdst = at < job->n ? job->dst[at] : job->partial_dst;
    if (rc == 0 && !w->cl && pn > 0 && cache_remote_connected(w->r)) {
        rc = cache_remote_get_partial(w->r, at ? job->keys[at - 1] : job->parent, ptok, pn, pdst,
                                      &job->partial_loaded);
        if (rc == 0 && store_errmsg(w)[0])
            base_log(BASE_LOG_WARN, "%s", store_errmsg(w));
    }
    after_exchange(w, rc);
}

/* Sends entries [from, from + n) of the ring; returns how many failed. */
static uint64_t write_batch(remote_thread *w, uint64_t from, size_t n)
{
    cache_remote_item items[REMOTE_BATCH_MAX];
    for (size_t i = 0; i < n; i++)
        items[i] = w->ring[(from + i) % w->cap].item;
    if (!store_connected(w))
        return n;
    size_t stored = 0;
    int rc = store_put(w, items, n, &stored);
    if (rc == CACHE_EFULL) {
        /* A server at its maxmemory refuses some writes and takes others as its memory moves:
         * logged at most once a minute, with the count since. */
        w->refused_unlogged += n - stored;
        double now = base_now_ms();
        if (w->full_logged_ms == 0 || now - w->full_logged_ms > 60e3) {
            base_log(BASE_LOG_WARN,
                     "remote tier: %s (%llu writes refused since the last message; counted, "
                     "serving continues)",
                     store_errmsg(w), (unsigned long long)w->refused_unlogged);
            w->full_logged_ms = now;
            w->refused_unlogged = 0;
        }
    }
    after_exchange(w, rc);
    return n - stored;
}

static void *remote_main(void *arg)
{
    remote_thread *w = arg;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        for (;;) {
            int work = w->load_head || w->sent < w->head;
            if (work || (w->stop && !work))
                break;
            if (store_connected(w)) {
                pthread_cond_wait(&w->work_cv, &w->mu);
                continue;
            }
            double left = w->next_try_ms - base_now_ms();
            if (left <= 0)
                break;
            struct timespec ts;
            deadline_in(&ts, left);
            pthread_cond_timedwait(&w->work_cv, &w->mu, &ts);
        }
        if (w->stop && !w->load_head && w->sent == w->head)
            break;
        remote_thread_load *loads = w->load_head;
        w->load_head = w->load_tail = NULL;
        uint64_t from = w->sent;
        size_t n = 0, bytes = 0;
        while (from + n < w->head && n < REMOTE_BATCH_MAX &&
               (n == 0 || bytes + w->val_bytes <= CACHE_REMOTE_BATCH_BYTES)) {
            n++;
            bytes += w->val_bytes;
        }
        int stopping = w->stop;
        pthread_mutex_unlock(&w->mu);

        /* Connecting when it is time (never while stopping: shutdown does not wait for it). */
        if (!store_connected(w) && !stopping && base_now_ms() >= w->next_try_ms)
            try_connect(w);
        /* Loads first: requests are waiting for them. */
        uint64_t blocks = 0, n_loads = 0, unavailable = 0;
        double t0 = base_now_ms();
        for (remote_thread_load *l = loads; l; l = l->next) {
            serve_load(w, l, &unavailable);
            blocks += l->n_loaded;
            n_loads++;
        }
        double t1 = base_now_ms();
        for (remote_thread_load *l = loads; l; l = l->next)
            l->ms = t1 - l->t_queued;
        uint64_t failed = n ? write_batch(w, from, n) : 0;

        pthread_mutex_lock(&w->mu);
        w->sent += n;
        w->st.write_pending -= n;
        w->st.writes_failed += failed;
        w->st.loads += n_loads;
        w->st.load_blocks += blocks;
        w->st.loads_unavailable += unavailable;
        w->st.load_ms += t1 - t0;
        w->st.connected = store_connected(w);
        store_stats(w, &w->st.remote);
        if (loads) {
            remote_thread_load *tail = loads;
            while (tail->next)
                tail = tail->next;
            if (w->done_tail)
                w->done_tail->next = loads;
            else
                w->done_head = loads;
            w->done_tail = tail;
        }
        pthread_cond_broadcast(&w->done_cv);
        if ((loads || n) && w->o.wake) {
            pthread_mutex_unlock(&w->mu);
            w->o.wake(w->o.wake_arg);
            pthread_mutex_lock(&w->mu);
        }
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

/* ---- Open and close ------------------------------------------------------------------------- */

int remote_thread_open(const remote_thread_opts *o, remote_thread **out, char *msg, size_t msglen)
{
    *out = NULL;
    remote_thread *w = calloc(1, sizeof *w);
    if (!w) {
        snprintf(msg, msglen, "remote tier: out of memory");
        return CACHE_ENOMEM;
    }
    w->o = *o;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->work_cv, NULL);
    pthread_cond_init(&w->done_cv, NULL);
    int rc = o->cluster ? cache_remote_cluster_open(&o->remote, &w->cl, msg, msglen)
                        : cache_remote_open(&o->remote, &w->r, msg, msglen);
    if (rc != 0) {
        remote_thread_free(w);
        return rc;
    }
    w->o.remote.password = NULL; /* the handle has its own copy; the caller's may go */
    size_t block_bytes = o->remote.block_floats * sizeof(float);
    w->val_bytes = block_bytes + 256; /* header and token ids: a bound for batching */
    size_t q = o->queue_bytes ? o->queue_bytes : REMOTE_DEFAULT_QUEUE;
    w->cap = q / block_bytes;
    if (w->cap < 4)
        w->cap = 4;
    w->ring = calloc(w->cap, sizeof *w->ring);
    if (!w->ring) {
        snprintf(msg, msglen, "remote tier: out of memory");
        remote_thread_free(w);
        return CACHE_ENOMEM;
    }
    w->backoff_ms = REMOTE_BACKOFF_MIN_MS;
    if (pthread_create(&w->thread, NULL, remote_main, w) != 0) {
        snprintf(msg, msglen, "remote tier: cannot start the remote thread");
        remote_thread_free(w);
        return CACHE_ENOMEM;
    }
    w->started = 1;
    *out = w;
    return 0;
}

void remote_thread_stop(remote_thread *w)
{
    if (!w || !w->started)
        return;
    pthread_mutex_lock(&w->mu);
    w->stop = 1;
    pthread_cond_signal(&w->work_cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->thread, NULL);
    w->started = 0;
}

void remote_thread_free(remote_thread *w)
{
    if (!w)
        return;
    remote_thread_stop(w);
    cache_remote_close(w->r);
    cache_remote_cluster_close(w->cl);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->work_cv);
    pthread_cond_destroy(&w->done_cv);
    free(w->ring);
    free(w);
}
