/* engine_thread.c — the engine thread: it takes tasks from the loop thread, runs the engine
 * (engine.h) step by step, and turns the engine's events into encoded frames for the loop.
 *
 * This is where the engine's own results (engine_event, engine_done, ENGINE_E* codes) become
 * the native protocol's (proto_done, PROTO_ERR_*): the engine knows no wire format. Frames are
 * encoded here, off the loop thread, and queued whole; the loop only writes them.
 *
 * The thread sleeps on a condition variable while there is no task and the engine has nothing
 * runnable (requests waiting for the disk tier wake it through srv__engine_wake_cb()).
 */
#include "server_int.h"

#include "http_api.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- Tasks (loop -> engine) ----------------------------------------------------------------- */

srv_task *srv__task_new(srv_task_type type, uint32_t conn_id, uint32_t req, size_t data_len)
{
    srv_task *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->type = type;
    t->conn = conn_id;
    t->req = req;
    t->len = data_len;
    /* Never a zero-byte buffer: text of length 0 is still a valid pointer. */
    t->data = malloc(data_len ? data_len : 1);
    if (!t->data) {
        free(t);
        return NULL;
    }
    return t;
}

void srv__task_free(srv_task *t)
{
    oai_out_free(t->oai);
    free(t->data);
    free(t);
}

void srv__task_push(server *s, srv_task *t)
{
    pthread_mutex_lock(&s->mu);
    base_queue_push(&s->tasks, &t->node);
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

void srv__queues_free(server *s)
{
    for (base_qnode *n = base_queue_take_all(&s->tasks); n;) {
        srv_task *t = container_of(n, srv_task, node);
        n = n->next;
        srv__task_free(t);
    }
    for (base_qnode *n = base_queue_take_all(&s->frames); n;) {
        srv_frame *f = container_of(n, srv_frame, node);
        n = n->next;
        free(f);
    }
}

/* ---- Frames (engine -> loop) ---------------------------------------------------------------- */

/* Encodes m and queues it for connection conn_id. A frame is small (a token, a DONE, an error)
 * or bounded by what the client sent (TOKENS, TEXT); when it cannot be allocated the request
 * gets an ERROR frame of fixed size instead, and the daemon keeps serving. */
static void push_frame(server *s, uint32_t conn_id, uint32_t req, int ends, const proto_msg *m)
{
    uint8_t small[1024];
    size_t n = proto_encode(m, small, sizeof small);
    srv_frame *f = malloc(sizeof *f + n);
    if (!f) {
        static const char oom[] = "out of memory encoding the reply";
        proto_msg e = {.type = PROTO_ERROR, .id = m->id};
        e.u.error.code = PROTO_ERR_INTERNAL;
        e.u.error.msg = (proto_str){oom, sizeof oom - 1};
        n = proto_encode(&e, small, sizeof small);
        if (!(f = malloc(sizeof *f + n))) {
            base_log(BASE_LOG_ERROR, "connection %u: out of memory: a frame is lost", conn_id);
            return;
        }
        ends = 1;
        memcpy(f->bytes, small, n);
    } else if (n <= sizeof small) {
        memcpy(f->bytes, small, n);
    } else {
        proto_encode(m, f->bytes, n);
    }
    f->conn = conn_id;
    f->req = req;
    f->ends = ends;
    f->len = n;
    pthread_mutex_lock(&s->mu);
    base_queue_push(&s->frames, &f->node);
    pthread_mutex_unlock(&s->mu);
    uv_async_send(&s->wake);
}

/* An ERROR frame for request id `id`. route is the id the loop tracks the request by (it drops
 * frames of requests it no longer tracks), or 0 for replies to untracked frames (TOKENIZE,
 * DETOKENIZE, STATS), which are always written. */
static void push_error(server *s, uint32_t conn_id, uint32_t route, uint32_t id, int code,
                       const char *msg)
{
    proto_msg m = {.type = PROTO_ERROR, .id = id};
    m.u.error.code = (uint32_t)code;
    m.u.error.msg = (proto_str){msg, (uint32_t)strlen(msg)};
    push_frame(s, conn_id, route, 1, &m);
}

/* The engine's codes in the native protocol. */
static int proto_code(int engine_code)
{
    switch (engine_code) {
    case ENGINE_EINVAL:
        return PROTO_ERR_BAD_REQUEST;
    case ENGINE_ETOOLONG:
        return PROTO_ERR_PROMPT_TOO_LONG;
    case ENGINE_EBADTOKEN:
        return PROTO_ERR_BAD_TOKEN;
    case ENGINE_EBUSY:
        return PROTO_ERR_BUSY;
    case ENGINE_ENOSPC:
        return PROTO_ERR_NO_SPACE;
    case ENGINE_EPINMAX:
        return PROTO_ERR_PIN_BUDGET;
    default:
        return PROTO_ERR_INTERNAL;
    }
}

static const char *finish_name(engine_finish f)
{
    return f == ENGINE_FINISH_STOP ? "stop" : f == ENGINE_FINISH_LENGTH ? "length" : "cancelled";
}

static uint8_t proto_finish_of(engine_finish f)
{
    return f == ENGINE_FINISH_STOP     ? PROTO_FINISH_STOP
           : f == ENGINE_FINISH_LENGTH ? PROTO_FINISH_LENGTH
                                       : PROTO_FINISH_CANCELLED;
}

srv_user_stats *srv__user_stats(server *s, uint32_t uid)
{
    uint32_t h = uid * 2654435761u;
    for (int i = 0; i < SRV_MAX_USERS - 1; i++) {
        srv_user_stats *u = &s->users[(h + (uint32_t)i) % (SRV_MAX_USERS - 1)];
        if (!u->used) {
            u->used = 1;
            u->uid = uid;
        }
        if (u->uid == uid)
            return u;
    }
    srv_user_stats *rest = &s->users[SRV_MAX_USERS - 1];
    rest->used = 1;
    rest->uid = UINT32_MAX;
    return rest;
}

static void count_event(server *s, const engine_event *ev)
{
    if (ev->type == ENGINE_EV_TOKEN)
        return;
    srv_user_stats *u = srv__user_stats(s, ev->owner);
    u->requests++;
    if (ev->type == ENGINE_EV_ERROR) {
        u->requests_failed++;
        return;
    }
    const engine_done *d = &ev->done;
    if (d->finish == ENGINE_FINISH_CANCELLED)
        u->requests_cancelled++;
    else
        u->requests_done++;
    u->prompt_tokens += d->prompt_tokens;
    u->cached_tokens += d->cached_tokens;
    u->cached_tokens_disk += d->cached_tokens_disk;
    u->cached_tokens_remote += d->cached_tokens_remote;
    u->generated_tokens += d->new_tokens;
}

void srv__engine_emit_cb(void *arg, const engine_event *ev)
{
    server *s = arg;
    uint32_t conn_id = (uint32_t)(ev->handle >> 32), req = (uint32_t)ev->handle;
    count_event(s, ev);
    srv__metrics_observe(s, ev);
    if (conn_id & SRV_CONN_HTTP) {
        srv__http_emit(s, ev);
        return;
    }
    proto_msg m = {0};
    m.id = req;
    switch (ev->type) {
    case ENGINE_EV_TOKEN:
        m.type = PROTO_TOKEN;
        m.u.token.id = ev->token;
        m.u.token.piece = (proto_str){ev->piece, (uint32_t)ev->piece_len};
        push_frame(s, conn_id, req, 0, &m);
        break;
    case ENGINE_EV_DONE: {
        const engine_done *d = &ev->done;
        m.type = PROTO_DONE;
        m.u.done = (proto_done){.finish = proto_finish_of(d->finish),
                                .prompt_tokens = d->prompt_tokens,
                                .cached_tokens = d->cached_tokens,
                                .cached_tokens_disk = d->cached_tokens_disk,
                                .new_tokens = d->new_tokens,
                                .ttft_ms = d->ttft_ms,
                                .prefill_ms = d->prefill_ms,
                                .decode_tokens_per_s = d->decode_tokens_per_s,
                                .total_ms = d->total_ms};
        if (atomic_load_explicit(&s->done_remote[conn_id % SRV_MAX_CONNS], memory_order_relaxed) ==
            conn_id) {
            m.flags = PROTO_DONE_REMOTE;
            m.u.done.cached_tokens_remote = d->cached_tokens_remote;
        }
        base_log(BASE_LOG_INFO,
                 "request %u:%u: prompt %u tokens, cached %u (disk %u, remote %u), TTFT %.1f ms, "
                 "%u new tokens, %.1f ms, finish %s",
                 conn_id, req, d->prompt_tokens, d->cached_tokens, d->cached_tokens_disk,
                 d->cached_tokens_remote, d->ttft_ms, d->new_tokens, d->total_ms,
                 finish_name(d->finish));
        push_frame(s, conn_id, req, 1, &m);
        break;
    }
    case ENGINE_EV_ERROR:
        base_log(BASE_LOG_INFO, "request %u:%u: error: %s", conn_id, req, ev->msg);
        push_error(s, conn_id, req, req, proto_code(ev->code), ev->msg);
        break;
    }
}

/* ---- Tasks the engine thread runs ----------------------------------------------------------- */

static void run_task(server *s, srv_task *t)
{
    switch (t->type) {
    case SRV_TASK_SUBMIT:
        if (t->oai)
            srv__http_register(s, t);
        engine_submit(s->engine, &t->r);
        break;
    case SRV_TASK_METRICS:
        srv__metrics_reply(s, t);
        break;
    case SRV_TASK_CANCEL:
        engine_cancel(s->engine, (uint64_t)t->conn << 32 | t->req);
        break;
    case SRV_TASK_CANCEL_CONN:
        engine_cancel_matching(s->engine, (uint64_t)t->conn << 32, 0xffffffff00000000ull);
        break;
    case SRV_TASK_STATS: {
        char *text = srv__stats_json(s, t->uid);
        if (!text) {
            push_error(s, t->conn, 0, t->req, PROTO_ERR_INTERNAL, "out of memory rendering stats");
            break;
        }
        proto_msg m = {.type = PROTO_STATS_REPLY, .id = t->req};
        m.u.json = (proto_str){text, (uint32_t)strlen(text)};
        push_frame(s, t->conn, 0, 0, &m);
        free(text);
        break;
    }
    case SRV_TASK_STOP: /* handled by the thread's loop */
        break;
    }
}

/* ---- The thread ----------------------------------------------------------------------------- */

/* The disk thread finished a load: the engine thread may have work again. */
void srv__engine_wake_cb(void *arg)
{
    server *s = arg;
    pthread_mutex_lock(&s->mu);
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

static void *engine_thread_main(void *arg)
{
    server *s = arg;
    for (;;) {
        pthread_mutex_lock(&s->mu);
        /* Sleep while there is nothing to compute: no task, and no live request that can run
         * (requests waiting for the disk tier wake us through srv__engine_wake_cb). */
        while (base_queue_empty(&s->tasks) && !engine_runnable(s->engine))
            pthread_cond_wait(&s->cv, &s->mu);
        base_qnode *n = base_queue_take_all(&s->tasks);
        pthread_mutex_unlock(&s->mu);
        int stop = 0;
        while (n) {
            srv_task *t = container_of(n, srv_task, node);
            n = n->next;
            if (t->type == SRV_TASK_STOP) {
                stop = 1; /* the stopper's own node: not ours to free */
                continue;
            }
            run_task(s, t);
            srv__task_free(t);
        }
        if (stop) {
            engine_cancel_matching(s->engine, 0, 0);
            break;
        }
        /* Live requests, or background work alone (the rest of a long reply's history
         * recompute): a runnable engine is stepped, or this loop would spin without progress. */
        if (engine_live(s->engine) > 0 || engine_runnable(s->engine))
            engine_step(s->engine);
        pthread_mutex_lock(&s->mu);
        s->live = engine_live(s->engine);
        pthread_mutex_unlock(&s->mu);
    }
    return NULL;
}

int srv__engine_thread_start(server *s)
{
    if (pthread_create(&s->thread, NULL, engine_thread_main, s) != 0)
        return ENGINE_ETHREAD;
    s->thread_started = 1;
    return 0;
}

void srv__engine_thread_stop(server *s)
{
    if (!s->thread_started)
        return;
    /* The stop task lives on this stack: the engine thread only reads its type and never frees
     * it, and this thread waits for the join below (so stopping needs no allocation). */
    srv_task stop = {.type = SRV_TASK_STOP};
    pthread_mutex_lock(&s->mu);
    base_queue_push(&s->tasks, &stop.node);
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->thread, NULL);
    s->thread_started = 0;
}
