/* disk_thread.c — the disk thread (disk_thread.h): spills in batched write transactions, loads
 * first.
 *
 * The spill buffer is one arena of fixed slots (key, parent, token ids, payload), allocated at
 * open. A slot moves free -> filled by the engine thread (outside the lock: the slot is the
 * engine's until it is queued) -> queued (FIFO, under the lock) -> in flight (the disk thread
 * took it for a write transaction) -> free again. Only the disk thread takes slots off the queue
 * and frees them, so it may read a queued slot's contents without the lock.
 *
 * Each turn of the disk thread serves every queued load, then writes one batch of spills (at most
 * DISK_THREAD_BATCH_BYTES), then looks again: a load waits for at most one batch's transaction.
 */
#include "disk_thread.h"

#include "base.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* A load waits for at most one write transaction: with synced commits at ~100 MB/s on this
 * machine's disk, 8 MiB is ~80 ms; smaller batches cost a commit (a few ms) each. */
#define DISK_THREAD_BATCH_BYTES ((size_t)8 << 20)
#define DISK_THREAD_BATCH_MAX 256
#define DISK_THREAD_DEFAULT_SPILL ((size_t)256 << 20)

typedef struct spill_slot {
    int32_t next; /* free list or queue link, -1 at the end */
    cache_key key;
    cache_key parent;
    int32_t *tok;
    float *data;
} spill_slot;

struct disk_thread {
    disk_thread_opts o;
    cache_disk *d;
    int lock_fd;   /* DIR/prefixd.lock, flock()ed while open: one daemon per directory */
    size_t B;      /* tokens per block */
    size_t floats; /* floats per payload */
    pthread_t thread;
    int started;
    pthread_mutex_t mu;
    pthread_cond_t work_cv; /* the disk thread waits here for work */
    pthread_cond_t done_cv; /* callers wait here for loads, free slots, flushes */
    /* the spill buffer */
    spill_slot *slots;
    size_t n_slots;
    float *arena;
    int32_t *tok_arena;
    int32_t free_head;
    int32_t q_head, q_tail;
    uint64_t spills_in, spills_out; /* queued so far, written or failed so far (flush) */
    /* loads */
    disk_thread_load *load_head, *load_tail;
    disk_thread_load *done_head, *done_tail;
    int stop;
    disk_thread_stats st;
    /* the disk thread's own */
    int logged_full, logged_io;
};

static void slots_push_free_locked(disk_thread *w, int32_t s)
{
    w->slots[s].next = w->free_head;
    w->free_head = s;
}

/* ---- The engine thread's side --------------------------------------------------------------- */

static void slot_fill(disk_thread *w, int32_t s, const cache_evicted *ev)
{
    spill_slot *sl = &w->slots[s];
    sl->key = ev->key;
    sl->parent = ev->parent;
    memcpy(sl->tok, ev->tokens, w->B * sizeof(int32_t));
    memcpy(sl->data, ev->data, w->floats * sizeof(float));
}

static void slot_queue(disk_thread *w, int32_t s, double copy_ms)
{
    pthread_mutex_lock(&w->mu);
    w->st.spill_copy_ms += copy_ms;
    w->slots[s].next = -1;
    if (w->q_tail >= 0)
        w->slots[w->q_tail].next = s;
    else
        w->q_head = s;
    w->q_tail = s;
    w->spills_in++;
    w->st.spills_queued++;
    w->st.spill_pending++;
    pthread_cond_signal(&w->work_cv);
    pthread_mutex_unlock(&w->mu);
}

int disk_thread_spill(disk_thread *w, const cache_evicted *ev)
{
    pthread_mutex_lock(&w->mu);
    int32_t s = w->free_head;
    if (s < 0) {
        w->st.spills_dropped++;
        pthread_mutex_unlock(&w->mu);
        return -1;
    }
    w->free_head = w->slots[s].next;
    pthread_mutex_unlock(&w->mu);
    double t0 = base_now_ms();
    slot_fill(w, s, ev); /* the slot is ours until queued: copy without the lock */
    slot_queue(w, s, base_now_ms() - t0);
    return 0;
}

void disk_thread_spill_wait(disk_thread *w, const cache_evicted *ev)
{
    pthread_mutex_lock(&w->mu);
    while (w->free_head < 0)
        pthread_cond_wait(&w->done_cv, &w->mu);
    int32_t s = w->free_head;
    w->free_head = w->slots[s].next;
    pthread_mutex_unlock(&w->mu);
    double t0 = base_now_ms();
    slot_fill(w, s, ev);
    slot_queue(w, s, base_now_ms() - t0);
}

void disk_thread_load_async(disk_thread *w, disk_thread_load *job)
{
    job->next = NULL;
    job->n_loaded = 0;
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

disk_thread_load *disk_thread_poll(disk_thread *w)
{
    pthread_mutex_lock(&w->mu);
    disk_thread_load *l = w->done_head;
    w->done_head = w->done_tail = NULL;
    pthread_mutex_unlock(&w->mu);
    return l;
}

int disk_thread_has_done(disk_thread *w)
{
    pthread_mutex_lock(&w->mu);
    int r = w->done_head != NULL;
    pthread_mutex_unlock(&w->mu);
    return r;
}

void disk_thread_wait(disk_thread *w, double timeout_ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    long long ns = (long long)ts.tv_nsec + (long long)(timeout_ms * 1e6);
    ts.tv_sec += (time_t)(ns / 1000000000);
    ts.tv_nsec = (long)(ns % 1000000000);
    pthread_mutex_lock(&w->mu);
    while (!w->done_head) {
        if (pthread_cond_timedwait(&w->done_cv, &w->mu, &ts) == ETIMEDOUT)
            break;
    }
    pthread_mutex_unlock(&w->mu);
}

void disk_thread_flush(disk_thread *w)
{
    pthread_mutex_lock(&w->mu);
    uint64_t target = w->spills_in;
    while (w->spills_out < target)
        pthread_cond_wait(&w->done_cv, &w->mu);
    pthread_mutex_unlock(&w->mu);
}

void disk_thread_get_stats(disk_thread *w, disk_thread_stats *out)
{
    pthread_mutex_lock(&w->mu);
    *out = w->st;
    pthread_mutex_unlock(&w->mu);
}

/* ---- The disk thread ------------------------------------------------------------------------ */

/* A spilled block still in the buffer (queued, or in this turn's batch), or -1. */
static int32_t pending_find(disk_thread *w, cache_key key, const int32_t *batch, size_t n_batch)
{
    for (size_t i = 0; i < n_batch; i++)
        if (cache_key_eq(w->slots[batch[i]].key, key))
            return batch[i];
    pthread_mutex_lock(&w->mu);
    int32_t s = w->q_head;
    while (s >= 0 && !cache_key_eq(w->slots[s].key, key))
        s = w->slots[s].next;
    pthread_mutex_unlock(&w->mu);
    return s;
}

static void serve_load(disk_thread *w, disk_thread_load *job, const int32_t *batch, size_t n_batch,
                       uint64_t *pending_hits)
{
    cache_key parent = job->parent;
    for (size_t i = 0; i < job->n; i++) {
        const int32_t *tok = job->tokens + i * w->B;
        int32_t s = pending_find(w, job->keys[i], batch, n_batch);
        if (s >= 0) {
            /* Hit while its write is pending: the same checks as a hit on disk, then a copy. The
             * slot cannot be freed meanwhile: only this thread frees slots. */
            const spill_slot *sl = &w->slots[s];
            if (!cache_key_eq(sl->parent, parent) ||
                memcmp(sl->tok, tok, w->B * sizeof(int32_t)) != 0)
                break;
            memcpy(job->dst[i], sl->data, w->floats * sizeof(float));
            ++*pending_hits;
        } else {
            int rc = cache_disk_get(w->d, job->keys[i], parent, tok, job->dst[i]);
            if (rc == CACHE_ECORRUPT) {
                base_log(BASE_LOG_WARN, "%s", cache_disk_errmsg(w->d));
                break;
            }
            if (rc == CACHE_EIO && !w->logged_io) {
                w->logged_io = 1;
                base_log(BASE_LOG_ERROR, "disk tier: %s (serving from RAM only until it recovers)",
                         cache_disk_errmsg(w->d));
            }
            if (rc != 0)
                break;
        }
        job->n_loaded = i + 1;
        parent = job->keys[i];
    }
}

static void write_batch(disk_thread *w, const int32_t *batch, size_t n, uint64_t *written_bytes,
                        uint64_t *failed)
{
    cache_disk_item items[DISK_THREAD_BATCH_MAX];
    for (size_t i = 0; i < n; i++) {
        const spill_slot *sl = &w->slots[batch[i]];
        items[i] = (cache_disk_item){sl->key, sl->parent, sl->tok, sl->data};
    }
    size_t done = 0;
    int rc = cache_disk_put_batch(w->d, items, n, &done);
    *written_bytes = (uint64_t)done * w->floats * sizeof(float);
    /* `done` counts new blocks only (one already stored is just touched): on success none failed,
     * on a failure the ones not written are counted as failed, stored before or not. */
    *failed = rc == 0 ? 0 : n - done;
    if (rc == 0) {
        if (w->logged_full || w->logged_io)
            base_log(BASE_LOG_INFO, "disk tier: writing again");
        w->logged_full = w->logged_io = 0;
        return;
    }
    /* Logged once until writes succeed again; the daemon keeps serving from RAM. */
    int *logged = rc == CACHE_EFULL ? &w->logged_full : &w->logged_io;
    if (!*logged) {
        *logged = 1;
        base_log(rc == CACHE_EFULL ? BASE_LOG_WARN : BASE_LOG_ERROR,
                 "disk tier: %s (blocks that do not fit are not spilled; serving continues)",
                 cache_disk_errmsg(w->d));
    }
}

static void *diskw_main(void *arg)
{
    disk_thread *w = arg;
    int32_t batch[DISK_THREAD_BATCH_MAX];
    size_t block_bytes = w->floats * sizeof(float);
    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (!w->stop && !w->load_head && w->q_head < 0)
            pthread_cond_wait(&w->work_cv, &w->mu);
        if (w->stop && !w->load_head && w->q_head < 0)
            break;
        disk_thread_load *loads = w->load_head;
        w->load_head = w->load_tail = NULL;
        size_t n = 0, bytes = 0;
        while (w->q_head >= 0 && n < DISK_THREAD_BATCH_MAX &&
               (n == 0 || bytes < DISK_THREAD_BATCH_BYTES)) {
            int32_t s = w->q_head;
            w->q_head = w->slots[s].next;
            if (w->q_head < 0)
                w->q_tail = -1;
            batch[n++] = s;
            bytes += block_bytes;
        }
        pthread_mutex_unlock(&w->mu);

        /* Loads first: requests are waiting for them. */
        uint64_t pending_hits = 0, blocks = 0, n_loads = 0;
        double t0 = base_now_ms();
        for (disk_thread_load *l = loads; l; l = l->next) {
            serve_load(w, l, batch, n, &pending_hits);
            blocks += l->n_loaded;
            n_loads++;
        }
        double t1 = base_now_ms();
        for (disk_thread_load *l = loads; l; l = l->next)
            l->ms = t1 - l->t_queued;
        uint64_t written = 0, failed = 0;
        if (n)
            write_batch(w, batch, n, &written, &failed);
        double t2 = base_now_ms();

        pthread_mutex_lock(&w->mu);
        for (size_t i = 0; i < n; i++)
            slots_push_free_locked(w, batch[i]);
        w->spills_out += n;
        w->st.spill_pending -= n;
        w->st.spills_failed += failed;
        w->st.spill_bytes_written += written;
        if (n)
            w->st.spill_ms += t2 - t1;
        w->st.loads += n_loads;
        w->st.load_blocks += blocks;
        w->st.load_pending_hits += pending_hits;
        w->st.load_ms += t1 - t0;
        cache_disk_get_stats(w->d, &w->st.disk);
        if (loads) {
            disk_thread_load *tail = loads;
            while (tail->next)
                tail = tail->next;
            if (w->done_tail)
                w->done_tail->next = loads;
            else
                w->done_head = loads;
            w->done_tail = tail;
        }
        pthread_cond_broadcast(&w->done_cv);
        if (loads && w->o.wake) {
            pthread_mutex_unlock(&w->mu);
            w->o.wake(w->o.wake_arg);
            pthread_mutex_lock(&w->mu);
        }
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

/* ---- Open and close ------------------------------------------------------------------------- */

/* One daemon per directory: the store's counters (bytes used, the LRU's sequence) live in the
 * process that writes it. cache_disk_lock() takes it (an flock() that goes with the process,
 * kill -9 included) after checking that the directory is ours alone; its lock file is never
 * opened through a symbolic link. */
static int dir_lock(disk_thread *w, const char *dir, char *msg, size_t msglen)
{
    return cache_disk_lock(dir, &w->lock_fd, msg, msglen);
}

int disk_thread_open(const disk_thread_opts *o, disk_thread **out, char *msg, size_t msglen)
{
    *out = NULL;
    disk_thread *w = calloc(1, sizeof *w);
    if (!w) {
        snprintf(msg, msglen, "disk tier: out of memory");
        return CACHE_ENOMEM;
    }
    w->o = *o;
    w->B = (size_t)o->disk.block_tokens;
    w->floats = o->disk.block_floats;
    w->free_head = w->q_head = w->q_tail = -1;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->work_cv, NULL);
    pthread_cond_init(&w->done_cv, NULL);
    w->lock_fd = -1;
    int rc = dir_lock(w, o->disk.dir, msg, msglen);
    if (rc == 0)
        rc = cache_disk_open(&o->disk, &w->d, msg, msglen);
    if (rc == 0 && cache_disk_notice(w->d)[0]) /* a damaged store moved aside */
        base_log(BASE_LOG_WARN, "%s", cache_disk_notice(w->d));
    if (rc != 0) {
        disk_thread_close(w);
        return rc;
    }
    size_t spill = o->spill_bytes ? o->spill_bytes : DISK_THREAD_DEFAULT_SPILL;
    size_t block_bytes = w->floats * sizeof(float);
    w->n_slots = spill / block_bytes;
    if (w->n_slots < 4)
        w->n_slots = 4;
    w->slots = calloc(w->n_slots, sizeof *w->slots);
    /* In 2 MiB pages where the kernel allows, and touched now: the engine thread copies evicted
     * blocks in here on a request's admission, where a page fault per 4 KiB would add to that
     * request's time to first token (measured: 100-800 ms for a 1,500-token prefix's blocks on
     * a busy machine, against ~25 ms for the copy itself). */
    w->arena = base_huge_alloc(w->n_slots * block_bytes, 1);
    w->tok_arena = malloc(w->n_slots * w->B * sizeof(int32_t));
    if (!w->slots || !w->arena || !w->tok_arena) {
        snprintf(msg, msglen, "disk tier: cannot allocate a spill buffer of %zu blocks (%zu MB)",
                 w->n_slots, w->n_slots * block_bytes >> 20);
        disk_thread_close(w);
        return CACHE_ENOMEM;
    }
    for (size_t i = w->n_slots; i-- > 0;) {
        w->slots[i].data = w->arena + i * w->floats;
        w->slots[i].tok = w->tok_arena + i * w->B;
        slots_push_free_locked(w, (int32_t)i);
    }
    cache_disk_get_stats(w->d, &w->st.disk);
    if (pthread_create(&w->thread, NULL, diskw_main, w) != 0) {
        snprintf(msg, msglen, "disk tier: cannot start the disk thread");
        disk_thread_close(w);
        return CACHE_ENOMEM;
    }
    w->started = 1;
    *out = w;
    return 0;
}

void disk_thread_close(disk_thread *w)
{
    if (!w)
        return;
    if (w->started) {
        pthread_mutex_lock(&w->mu);
        w->stop = 1;
        pthread_cond_signal(&w->work_cv);
        pthread_mutex_unlock(&w->mu);
        pthread_join(w->thread, NULL);
    }
    cache_disk_close(w->d); /* applies queued LRU touches and syncs */
    if (w->lock_fd >= 0)
        close(w->lock_fd);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->work_cv);
    pthread_cond_destroy(&w->done_cv);
    free(w->slots);
    base_huge_free(w->arena);
    free(w->tok_arena);
    free(w);
}
