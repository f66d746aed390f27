/* server.c — the daemon's two threads: the libuv loop (connections, framing, writes, signals)
 * and the engine thread (the scheduler and the forward pass).
 *
 * The loop thread only moves bytes: it decodes frames, checks what is cheap to check (namespace
 * names, UTF-8), and hands requests to the engine thread through a queue; the engine thread
 * tokenizes, schedules, computes, and encodes every outgoing frame itself, handing the bytes back
 * through a second queue and uv_async_send (which coalesces: the loop drains the whole queue at
 * once). A message pushed on a queue belongs to its consumer. Connections are known to the engine
 * thread only by a 32-bit id, never by pointer: frames for a connection that has gone are dropped.
 */
#include "server.h"

#include "diskw.h"
#include "engine.h"

#include <cJSON.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))
#define MAX_CONNS 4096
#define MAX_REQS_PER_CONN 64
#define FRAMES_PER_READ 64

/* ---- Logging -------------------------------------------------------------------------------- */

static int log_level = SRV_LOG_INFO;

void srv_log_set_level(int level)
{
    log_level = level;
}

void srv_log(int level, const char *fmt, ...)
{
    if (level > log_level)
        return;
    static const char *names[] = {"error", "warn", "info", "debug"};
    char ts[32];
    time_t t = time(NULL);
    struct tm tm;
    localtime_r(&t, &tm);
    strftime(ts, sizeof ts, "%Y-%m-%d %H:%M:%S", &tm);
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s prefixd %s: ", ts, names[level]);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* ---- Queues --------------------------------------------------------------------------------- */

typedef enum cmd_type {
    CMD_SUBMIT,
    CMD_CANCEL,
    CMD_CANCEL_CONN, /* every request of a connection (it closed) */
    CMD_STATS,
    CMD_TOKENIZE,
    CMD_DETOKENIZE,
    CMD_STOP /* end the engine thread (after the loop saw no live request, or gave up) */
} cmd_type;

typedef struct cmd {
    struct cmd *next;
    cmd_type type;
    uint32_t conn;
    uint32_t req;
    srv_request r; /* SUBMIT: pointers into data */
    char *data;    /* owned: text / ids / namespace bytes */
    size_t len;
} cmd;

typedef struct out {
    struct out *next;
    uint32_t conn;
    uint32_t req;
    int ends; /* the request's last frame */
    size_t len;
    uint8_t bytes[]; /* one encoded frame */
} out;

/* ---- Connections ---------------------------------------------------------------------------- */

typedef enum conn_state { CONN_AWAIT_HELLO, CONN_READY, CONN_CLOSING } conn_state;

typedef struct conn {
    uv_pipe_t pipe;
    struct server *srv;
    uint32_t id;
    uid_t uid;
    conn_state state;
    uint8_t *buf;
    size_t len, cap;
    uint32_t reqs[MAX_REQS_PER_CONN]; /* live request ids */
    int n_reqs;
    int slow; /* output bound hit: its requests were cancelled */
} conn;

typedef struct server {
    srv_opts o;
    uv_loop_t *loop;
    uv_pipe_t listener;
    uv_async_t wake;
    uv_signal_t sigint, sigterm;
    uv_timer_t drain_timer;
    conn *conns[MAX_CONNS];
    uint32_t next_id;
    int draining;
    double drain_start;
    int listener_open;
    /* engine thread */
    const model *m;
    const model_tokenizer *tok;
    srv_engine *engine;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    cmd *in_head, *in_tail;   /* loop -> engine */
    out *out_head, *out_tail; /* engine -> loop */
    int live;                 /* engine's live requests, read by the loop under mu */
    int engine_stopped;
    /* counters (written by the loop thread, read by the engine thread for STATS) */
    _Atomic uint64_t connections, frames_in, frames_out, bad_frames;
} server;

static void conn_set_state(conn *c, conn_state s)
{
    /* Legal: AWAIT_HELLO -> READY, and anything -> CLOSING (once). */
    if (!((c->state == CONN_AWAIT_HELLO && s == CONN_READY) ||
          (c->state != CONN_CLOSING && s == CONN_CLOSING))) {
        srv_log(SRV_LOG_ERROR, "connection %u: illegal state change %d -> %d", c->id, c->state, s);
        abort();
    }
    c->state = s;
}

static conn *conn_find(server *s, uint32_t id)
{
    conn *c = s->conns[id % MAX_CONNS];
    return c && c->id == id ? c : NULL;
}

static void push_cmd(server *s, cmd *c)
{
    c->next = NULL;
    pthread_mutex_lock(&s->mu);
    if (s->in_tail)
        s->in_tail->next = c;
    else
        s->in_head = c;
    s->in_tail = c;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

static cmd *cmd_new(cmd_type type, uint32_t conn_id, uint32_t req, size_t data_len)
{
    cmd *c = calloc(1, sizeof *c);
    if (!c)
        abort(); /* a small control object */
    c->type = type;
    c->conn = conn_id;
    c->req = req;
    if (data_len) {
        c->data = malloc(data_len);
        if (!c->data)
            abort();
        c->len = data_len;
    }
    return c;
}

static void write_cb(uv_write_t *w, int status)
{
    (void)status; /* a failed write shows up as a read error or EOF on that connection */
    free(w->data);
    free(w);
}

/* Queues bytes (copied) on a connection. */
static void conn_write(conn *c, const uint8_t *bytes, size_t len)
{
    if (c->state == CONN_CLOSING)
        return;
    uv_write_t *w = malloc(sizeof *w);
    uint8_t *copy = malloc(len);
    if (!w || !copy)
        abort();
    memcpy(copy, bytes, len);
    w->data = copy;
    uv_buf_t b = uv_buf_init((char *)copy, (unsigned)len);
    if (uv_write(w, (uv_stream_t *)&c->pipe, &b, 1, write_cb) != 0) {
        free(copy);
        free(w);
    }
    c->srv->frames_out++;
}

static void conn_send_error(conn *c, uint32_t req, int code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    proto_msg m = {0};
    m.type = PROTO_ERROR;
    m.id = req;
    m.u.error.code = (uint32_t)code;
    m.u.error.msg = (proto_str){msg, (uint32_t)strlen(msg)};
    uint8_t buf[1024];
    size_t n = proto_encode(&m, buf, sizeof buf);
    conn_write(c, buf, n);
}

static int conn_has_req(const conn *c, uint32_t req)
{
    for (int i = 0; i < c->n_reqs; i++)
        if (c->reqs[i] == req)
            return 1;
    return 0;
}

static void conn_drop_req(conn *c, uint32_t req)
{
    for (int i = 0; i < c->n_reqs; i++)
        if (c->reqs[i] == req) {
            c->reqs[i] = c->reqs[--c->n_reqs];
            return;
        }
}

static void conn_close_cb(uv_handle_t *h)
{
    conn *c = container_of((uv_pipe_t *)h, conn, pipe);
    free(c->buf);
    free(c);
}

static void conn_close(conn *c)
{
    if (c->state == CONN_CLOSING)
        return;
    server *s = c->srv;
    if (c->n_reqs > 0)
        push_cmd(s, cmd_new(CMD_CANCEL_CONN, c->id, 0, 0));
    conn_set_state(c, CONN_CLOSING);
    s->conns[c->id % MAX_CONNS] = NULL;
    srv_log(SRV_LOG_DEBUG, "connection %u closed", c->id);
    uv_close((uv_handle_t *)&c->pipe, conn_close_cb);
}

/* ---- Frames from clients -------------------------------------------------------------------- */

static void handle_generate(conn *c, const proto_msg *m)
{
    server *s = c->srv;
    const proto_generate *g = &m->u.gen;
    if (s->draining) {
        conn_send_error(c, m->id, PROTO_ERR_SHUTTING_DOWN, "daemon is shutting down");
        return;
    }
    if (m->id == 0) {
        conn_send_error(c, 0, PROTO_ERR_BAD_REQUEST, "request id 0 is reserved");
        return;
    }
    if (conn_has_req(c, m->id)) {
        conn_send_error(c, m->id, PROTO_ERR_DUPLICATE_ID,
                        "request id %u is already in use on this connection", m->id);
        return;
    }
    if (c->n_reqs >= MAX_REQS_PER_CONN) {
        conn_send_error(c, m->id, PROTO_ERR_BUSY, "too many requests on one connection (%d)",
                        MAX_REQS_PER_CONN);
        return;
    }
    if (!proto_namespace_valid(g->ns)) {
        conn_send_error(c, m->id, PROTO_ERR_BAD_NAMESPACE,
                        "namespace '%.*s': at most %d bytes of letters, digits, '.', '_', '-'",
                        (int)(g->ns.len > 80 ? 80 : g->ns.len), g->ns.p, PROTO_MAX_NAMESPACE);
        return;
    }
    int by_ids = (m->flags & PROTO_GEN_TOKENS) != 0;
    if (!by_ids) {
        size_t bad = proto_utf8_check(g->text.p, g->text.len);
        if (bad != g->text.len) {
            conn_send_error(c, m->id, PROTO_ERR_BAD_UTF8,
                            "prompt is not valid UTF-8: bad byte 0x%02x at offset %zu",
                            (unsigned char)g->text.p[bad], bad);
            return;
        }
    }
    if (!(g->temp >= 0.0f) || !(g->top_p >= 0.0f)) {
        conn_send_error(c, m->id, PROTO_ERR_BAD_REQUEST,
                        "temperature and top-p must be >= 0 (got %g and %g)", g->temp, g->top_p);
        return;
    }
    char nsbuf[128];
    int nslen = s->o.share_across_users
                    ? snprintf(nsbuf, sizeof nsbuf, "shared/%.*s", (int)g->ns.len, g->ns.p)
                    : snprintf(nsbuf, sizeof nsbuf, "uid:%u/%.*s", (unsigned)c->uid, (int)g->ns.len,
                               g->ns.p);
    /* One allocation: the namespace, then the ids (4-byte aligned) or the text. */
    size_t off = ((size_t)nslen + 3) / 4 * 4;
    size_t payload = by_ids ? (size_t)g->ids.n * sizeof(int32_t) : g->text.len;
    cmd *k = cmd_new(CMD_SUBMIT, c->id, m->id, off + payload + 1);
    memcpy(k->data, nsbuf, (size_t)nslen);
    srv_request *r = &k->r;
    r->handle = (uint64_t)c->id << 32 | m->id;
    r->kind = m->type == PROTO_WARM ? SRV_REQ_WARM : SRV_REQ_GENERATE;
    if (by_ids) {
        int32_t *ids = (int32_t *)(void *)(k->data + off);
        for (uint32_t i = 0; i < g->ids.n; i++)
            ids[i] = proto_ids_get(g->ids, i);
        r->tokens = ids;
        r->n_tokens = g->ids.n;
    } else {
        memcpy(k->data + off, g->text.p, g->text.len);
        r->text = k->data + off;
        r->text_len = g->text.len;
    }
    r->ns = k->data;
    r->ns_len = (size_t)nslen;
    r->max_new = g->max_new;
    r->temp = g->temp;
    r->top_p = g->top_p;
    r->seed = g->seed;
    r->pin = (m->flags & PROTO_GEN_PIN) != 0;
    r->t_received_ms = srv_now_ms();
    c->reqs[c->n_reqs++] = m->id;
    push_cmd(s, k);
}

static void handle_frame(conn *c, const proto_msg *m)
{
    server *s = c->srv;
    s->frames_in++;
    if (m->type == PROTO_TYPE_INVALID) {
        s->bad_frames++;
        conn_send_error(c, m->id, (int)m->u.error.code, "%.*s", (int)m->u.error.msg.len,
                        m->u.error.msg.p);
        return;
    }
    if (c->state == CONN_AWAIT_HELLO) {
        if (m->type != PROTO_HELLO) {
            conn_send_error(c, m->id, PROTO_ERR_NO_HELLO, "HELLO must come first");
            conn_close(c);
            return;
        }
        if (m->u.hello.version != PROTO_VERSION) {
            conn_send_error(c, m->id, PROTO_ERR_BAD_VERSION,
                            "protocol version %u is not supported (this daemon speaks %d)",
                            m->u.hello.version, PROTO_VERSION);
            conn_close(c);
            return;
        }
        const model_config *mc = model_get_config(s->m);
        proto_msg r = {0};
        r.type = PROTO_HELLO_OK;
        r.id = m->id;
        r.u.hello_ok.version = PROTO_VERSION;
        r.u.hello_ok.caps = PROTO_CAP_TOKEN_PROMPT | PROTO_CAP_WARM | PROTO_CAP_PIN;
        if (c->srv->o.disk_dir)
            r.u.hello_ok.caps |= PROTO_CAP_DISK;
        r.u.hello_ok.vocab_size = (uint32_t)mc->vocab_size;
        r.u.hello_ok.seq_len = (uint32_t)mc->seq_len;
        r.u.hello_ok.block_tokens = (uint32_t)s->o.block_tokens;
        r.u.hello_ok.max_frame = (uint32_t)s->o.max_frame;
        const char *base = strrchr(s->o.model_path, '/');
        base = base ? base + 1 : s->o.model_path;
        r.u.hello_ok.model = (proto_str){base, (uint32_t)strlen(base)};
        uint8_t buf[512];
        size_t n = proto_encode(&r, buf, sizeof buf);
        conn_set_state(c, CONN_READY);
        conn_write(c, buf, n);
        return;
    }
    switch (m->type) {
    case PROTO_GENERATE:
    case PROTO_WARM:
        handle_generate(c, m);
        break;
    case PROTO_CANCEL:
        if (conn_has_req(c, m->id))
            push_cmd(s, cmd_new(CMD_CANCEL, c->id, m->id, 0));
        break;
    case PROTO_STATS:
        push_cmd(s, cmd_new(CMD_STATS, c->id, m->id, 0));
        break;
    case PROTO_TOKENIZE: {
        size_t bad = proto_utf8_check(m->u.text.p, m->u.text.len);
        if (bad != m->u.text.len) {
            conn_send_error(c, m->id, PROTO_ERR_BAD_UTF8,
                            "text is not valid UTF-8: bad byte at offset %zu", bad);
            break;
        }
        cmd *k = cmd_new(CMD_TOKENIZE, c->id, m->id, m->u.text.len + 1); /* never 0 bytes */
        memcpy(k->data, m->u.text.p, m->u.text.len);
        k->len = m->u.text.len;
        push_cmd(s, k);
        break;
    }
    case PROTO_DETOKENIZE: {
        cmd *k = cmd_new(CMD_DETOKENIZE, c->id, m->id, (size_t)m->u.ids.n * 4 + 4);
        int32_t *ids = (int32_t *)(void *)k->data;
        for (uint32_t i = 0; i < m->u.ids.n; i++)
            ids[i] = proto_ids_get(m->u.ids, i);
        k->len = m->u.ids.n;
        push_cmd(s, k);
        break;
    }
    case PROTO_HELLO:
        conn_send_error(c, m->id, PROTO_ERR_BAD_REQUEST, "HELLO was already received");
        break;
    default:
        conn_send_error(c, m->id, PROTO_ERR_BAD_REQUEST,
                        "message type %u is not a request a client may send", m->type);
        break;
    }
}

static void conn_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    conn *c = container_of((uv_pipe_t *)h, conn, pipe);
    size_t want = c->len + 65536;
    size_t limit = c->srv->o.max_frame + 65536;
    if (want > limit)
        want = limit;
    if (c->cap < want) {
        uint8_t *nb = realloc(c->buf, want);
        if (!nb) {
            *buf = uv_buf_init(NULL, 0);
            return;
        }
        c->buf = nb;
        c->cap = want;
    }
    *buf = uv_buf_init((char *)c->buf + c->len, (unsigned)(c->cap - c->len));
}

static void conn_read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    (void)buf;
    conn *c = container_of((uv_pipe_t *)st, conn, pipe);
    if (nread < 0) {
        if (nread != UV_EOF)
            srv_log(SRV_LOG_DEBUG, "connection %u: read: %s", c->id, uv_strerror((int)nread));
        conn_close(c);
        return;
    }
    c->len += (size_t)nread;
    size_t off = 0;
    for (int frames = 0; frames < FRAMES_PER_READ && c->state != CONN_CLOSING; frames++) {
        proto_msg m;
        long r = proto_decode(c->buf + off, c->len - off, c->srv->o.max_frame, &m);
        if (r == PROTO_NEED_MORE)
            break;
        if (r < 0) {
            c->srv->bad_frames++;
            conn_send_error(c, 0, (int)-r, "%s: the connection cannot continue",
                            r == -PROTO_ERR_TOO_BIG ? "frame larger than the maximum"
                                                    : "malformed frame header");
            conn_close(c);
            return;
        }
        handle_frame(c, &m);
        off += (size_t)r;
    }
    if (c->state == CONN_CLOSING)
        return;
    memmove(c->buf, c->buf + off, c->len - off);
    c->len -= off;
    if (c->len >= c->cap) {
        /* A full buffer with no complete frame can only be a frame past the maximum. */
        conn_send_error(c, 0, PROTO_ERR_TOO_BIG, "frame larger than the maximum");
        conn_close(c);
    }
}

static uid_t peer_uid(uv_pipe_t *p)
{
    uv_os_fd_t fd;
    struct ucred cred;
    socklen_t len = sizeof cred;
    if (uv_fileno((uv_handle_t *)p, &fd) != 0 ||
        getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0)
        return (uid_t)-1;
    return cred.uid;
}

static void listener_cb(uv_stream_t *ls, int status)
{
    server *s = container_of((uv_pipe_t *)ls, server, listener);
    if (status < 0) {
        srv_log(SRV_LOG_WARN, "accept: %s", uv_strerror(status));
        return;
    }
    conn *c = calloc(1, sizeof *c);
    if (!c)
        abort();
    c->srv = s;
    uv_pipe_init(s->loop, &c->pipe, 0);
    if (uv_accept(ls, (uv_stream_t *)&c->pipe) != 0) {
        uv_close((uv_handle_t *)&c->pipe, conn_close_cb);
        return;
    }
    /* Ids are unique among live connections: skip slots still taken. */
    for (int tries = 0; tries < MAX_CONNS; tries++) {
        uint32_t id = ++s->next_id;
        if (id == 0)
            continue;
        if (!s->conns[id % MAX_CONNS]) {
            c->id = id;
            break;
        }
    }
    if (c->id == 0) {
        srv_log(SRV_LOG_WARN, "too many connections (%d)", MAX_CONNS);
        uv_close((uv_handle_t *)&c->pipe, conn_close_cb);
        return;
    }
    c->uid = peer_uid(&c->pipe);
    s->conns[c->id % MAX_CONNS] = c;
    s->connections++;
    srv_log(SRV_LOG_DEBUG, "connection %u from uid %u", c->id, (unsigned)c->uid);
    uv_read_start((uv_stream_t *)&c->pipe, conn_alloc_cb, conn_read_cb);
}

/* ---- Frames to clients ---------------------------------------------------------------------- */

static void wake_cb(uv_async_t *a)
{
    server *s = container_of(a, server, wake);
    pthread_mutex_lock(&s->mu);
    out *o = s->out_head;
    s->out_head = s->out_tail = NULL;
    pthread_mutex_unlock(&s->mu);
    while (o) {
        out *next = o->next;
        conn *c = conn_find(s, o->conn);
        if (c) {
            if (o->req == 0 || conn_has_req(c, o->req))
                conn_write(c, o->bytes, o->len);
            if (o->ends && o->req)
                conn_drop_req(c, o->req);
            /* A client that does not read: past the bound, its requests are cancelled. */
            size_t queued = uv_stream_get_write_queue_size((uv_stream_t *)&c->pipe);
            if (c->slow && queued < s->o.max_output / 2)
                c->slow = 0;
            if (!c->slow && queued > s->o.max_output && c->n_reqs > 0) {
                c->slow = 1;
                srv_log(SRV_LOG_WARN,
                        "connection %u: %zu bytes unread (--max-output %zu): cancelling its "
                        "%d requests",
                        c->id, queued, s->o.max_output, c->n_reqs);
                for (int i = 0; i < c->n_reqs; i++)
                    conn_send_error(c, c->reqs[i], PROTO_ERR_SLOW_READER,
                                    "client not reading: %zu bytes of output pending", queued);
                c->n_reqs = 0;
                push_cmd(s, cmd_new(CMD_CANCEL_CONN, c->id, 0, 0));
            }
        }
        free(o);
        o = next;
    }
}

/* ---- The engine thread ---------------------------------------------------------------------- */

static void push_out(server *s, uint32_t conn_id, uint32_t req, int ends, const proto_msg *m)
{
    uint8_t small[1024];
    size_t n = proto_encode(m, small, sizeof small);
    out *o = malloc(sizeof *o + n);
    if (!o)
        abort();
    o->conn = conn_id;
    o->req = req;
    o->ends = ends;
    o->len = n;
    if (n <= sizeof small)
        memcpy(o->bytes, small, n);
    else
        proto_encode(m, o->bytes, n);
    pthread_mutex_lock(&s->mu);
    o->next = NULL;
    if (s->out_tail)
        s->out_tail->next = o;
    else
        s->out_head = o;
    s->out_tail = o;
    pthread_mutex_unlock(&s->mu);
    uv_async_send(&s->wake);
}

static const char *finish_name(int f)
{
    return f == PROTO_FINISH_STOP ? "stop" : f == PROTO_FINISH_LENGTH ? "length" : "cancelled";
}

static void engine_emit_cb(void *arg, const srv_event *ev)
{
    server *s = arg;
    uint32_t conn_id = (uint32_t)(ev->handle >> 32), req = (uint32_t)ev->handle;
    proto_msg m = {0};
    m.id = req;
    switch (ev->type) {
    case SRV_EV_TOKEN:
        m.type = PROTO_TOKEN;
        m.u.token.id = ev->token;
        m.u.token.piece = (proto_str){ev->piece, (uint32_t)ev->piece_len};
        push_out(s, conn_id, req, 0, &m);
        break;
    case SRV_EV_DONE:
        m.type = PROTO_DONE;
        m.u.done = ev->done;
        srv_log(SRV_LOG_INFO,
                "request %u:%u: prompt %u tokens, cached %u (disk %u), TTFT %.1f ms, %u new "
                "tokens, %.1f ms, finish %s",
                conn_id, req, ev->done.prompt_tokens, ev->done.cached_tokens,
                ev->done.cached_tokens_disk, ev->done.ttft_ms, ev->done.new_tokens,
                ev->done.total_ms, finish_name(ev->done.finish));
        push_out(s, conn_id, req, 1, &m);
        break;
    case SRV_EV_ERROR:
        m.type = PROTO_ERROR;
        m.u.error.code = (uint32_t)ev->code;
        m.u.error.msg = (proto_str){ev->msg, (uint32_t)strlen(ev->msg)};
        srv_log(SRV_LOG_INFO, "request %u:%u: error: %s", conn_id, req, ev->msg);
        push_out(s, conn_id, req, 1, &m);
        break;
    }
}

/* The counters as one JSON object (cJSON), for STATS. */
static char *stats_json(server *s)
{
    srv_engine_stats es;
    srv_engine_get_stats(s->engine, &es);
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "requests", (double)es.requests);
    cJSON_AddNumberToObject(j, "requests_done", (double)es.requests_done);
    cJSON_AddNumberToObject(j, "requests_cancelled", (double)es.requests_cancelled);
    cJSON_AddNumberToObject(j, "requests_failed", (double)es.requests_failed);
    cJSON_AddNumberToObject(j, "requests_running", es.running);
    cJSON_AddNumberToObject(j, "requests_waiting", es.waiting);
    cJSON_AddNumberToObject(j, "prompt_tokens", (double)es.prompt_tokens);
    cJSON_AddNumberToObject(j, "cached_tokens", (double)es.cached_tokens);
    cJSON_AddNumberToObject(j, "cached_tokens_disk", (double)es.cached_tokens_disk);
    cJSON_AddNumberToObject(j, "prefill_tokens", (double)es.prefill_tokens);
    cJSON_AddNumberToObject(j, "generated_tokens", (double)es.generated_tokens);
    cJSON_AddNumberToObject(j, "prefill_ms", es.prefill_ms);
    cJSON_AddNumberToObject(j, "decode_ms", es.decode_ms);
    cache *c = srv_engine_cache(s->engine);
    if (c) {
        cache_stats cs;
        cache_get_stats(c, &cs);
        cJSON_AddNumberToObject(j, "cache_lookups", (double)cs.lookups);
        cJSON_AddNumberToObject(j, "cache_hit_blocks", (double)cs.hit_blocks);
        cJSON_AddNumberToObject(j, "cache_hit_tokens", (double)cs.hit_tokens);
        cJSON_AddNumberToObject(j, "cache_miss_blocks", (double)cs.miss_blocks);
        cJSON_AddNumberToObject(j, "cache_inserts", (double)cs.inserts);
        cJSON_AddNumberToObject(j, "cache_dedups", (double)cs.dedups);
        cJSON_AddNumberToObject(j, "cache_collisions", (double)cs.collisions);
        cJSON_AddNumberToObject(j, "cache_evictions", (double)cs.evictions);
        cJSON_AddNumberToObject(j, "cache_blocks_total", (double)cs.slots_total);
        cJSON_AddNumberToObject(j, "cache_blocks_used", (double)cs.slots_used);
        cJSON_AddNumberToObject(j, "cache_blocks_cached", (double)cs.slots_cached);
        cJSON_AddNumberToObject(j, "cache_blocks_pinned", (double)cs.slots_pinned);
        cJSON_AddNumberToObject(j, "cache_bytes_total", (double)cs.bytes_total);
        cJSON_AddNumberToObject(j, "cache_bytes_in_use", (double)cs.bytes_in_use);
    }
    srv_diskw_stats ds;
    if (srv_engine_disk_stats(s->engine, &ds) == 0) {
        cJSON_AddNumberToObject(j, "disk_hit_blocks", (double)ds.load_blocks);
        cJSON_AddNumberToObject(j, "disk_hit_tokens", (double)ds.load_blocks * s->o.block_tokens);
        cJSON_AddNumberToObject(j, "disk_loads", (double)ds.loads);
        cJSON_AddNumberToObject(j, "disk_load_ms", ds.load_ms);
        cJSON_AddNumberToObject(j, "disk_load_pending_hits", (double)ds.load_pending_hits);
        cJSON_AddNumberToObject(j, "disk_spills", (double)ds.disk.puts);
        cJSON_AddNumberToObject(j, "disk_spills_queued", (double)ds.spills_queued);
        cJSON_AddNumberToObject(j, "disk_spills_dropped", (double)ds.spills_dropped);
        cJSON_AddNumberToObject(j, "disk_spills_failed", (double)ds.spills_failed);
        cJSON_AddNumberToObject(j, "disk_spill_bytes", (double)ds.spill_bytes_written);
        cJSON_AddNumberToObject(j, "disk_spill_ms", ds.spill_ms);
        cJSON_AddNumberToObject(j, "disk_spill_copy_ms", ds.spill_copy_ms);
        cJSON_AddNumberToObject(j, "disk_evictions", (double)ds.disk.evictions);
        cJSON_AddNumberToObject(j, "disk_corrupt_deleted", (double)ds.disk.corrupt_deleted);
        cJSON_AddNumberToObject(j, "disk_blocks", (double)ds.disk.entries);
        cJSON_AddNumberToObject(j, "disk_bytes", (double)ds.disk.bytes_on_disk);
        cJSON_AddNumberToObject(j, "disk_bytes_max", (double)ds.disk.max_bytes);
    }
    cJSON_AddNumberToObject(j, "connections", (double)s->connections);
    cJSON_AddNumberToObject(j, "frames_in", (double)s->frames_in);
    cJSON_AddNumberToObject(j, "frames_out", (double)s->frames_out);
    cJSON_AddNumberToObject(j, "bad_frames", (double)s->bad_frames);
    cJSON_AddNumberToObject(j, "block_tokens", s->o.block_tokens);
    char *text = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    return text;
}

static void run_cmd(server *s, cmd *k)
{
    proto_msg m = {0};
    m.id = k->req;
    switch (k->type) {
    case CMD_SUBMIT:
        srv_engine_submit(s->engine, &k->r);
        break;
    case CMD_CANCEL:
        srv_engine_cancel(s->engine, (uint64_t)k->conn << 32 | k->req);
        break;
    case CMD_CANCEL_CONN:
        srv_engine_cancel_matching(s->engine, (uint64_t)k->conn << 32, 0xffffffff00000000ull);
        break;
    case CMD_STATS: {
        char *text = stats_json(s);
        m.type = PROTO_STATS_REPLY;
        m.u.json = (proto_str){text, (uint32_t)strlen(text)};
        push_out(s, k->conn, 0, 0, &m);
        free(text);
        break;
    }
    case CMD_TOKENIZE: {
        int32_t *ids = malloc((k->len + 2) * sizeof(int32_t));
        size_t n = 0;
        uint8_t *le = malloc((k->len + 2) * 4);
        if (!ids || !le || model_encode(s->tok, k->data, k->len, 1, ids, k->len + 2, &n) != 0)
            abort();
        for (size_t i = 0; i < n; i++)
            for (int b = 0; b < 4; b++)
                le[4 * i + (size_t)b] = (uint8_t)((uint32_t)ids[i] >> (8 * b));
        m.type = PROTO_TOKENS;
        m.u.ids = (proto_ids){le, (uint32_t)n};
        push_out(s, k->conn, 0, 0, &m);
        free(ids);
        free(le);
        break;
    }
    case CMD_DETOKENIZE: {
        const int32_t *ids = (const int32_t *)(const void *)k->data;
        size_t n = k->len, cap = 64, len = 0;
        char *text = malloc(cap);
        int bad = -1;
        for (size_t i = 0; i < n && text; i++) {
            if (ids[i] < 0 || ids[i] >= model_get_config(s->m)->vocab_size) {
                bad = (int)i;
                break;
            }
            size_t pl;
            const char *p = model_decode_piece(s->tok, i ? ids[i - 1] : MODEL_TOK_BOS, ids[i], &pl);
            if (len + pl > cap) {
                cap = (len + pl) * 2;
                text = realloc(text, cap);
                if (!text)
                    abort();
            }
            memcpy(text + len, p, pl);
            len += pl;
        }
        if (bad >= 0) {
            char msg[160];
            snprintf(msg, sizeof msg, "token id %d at index %d is out of range [0, %d)", ids[bad],
                     bad, model_get_config(s->m)->vocab_size);
            m.type = PROTO_ERROR;
            m.u.error.code = PROTO_ERR_BAD_TOKEN;
            m.u.error.msg = (proto_str){msg, (uint32_t)strlen(msg)};
        } else {
            m.type = PROTO_TEXT;
            m.u.text = (proto_str){text ? text : "", (uint32_t)len};
        }
        push_out(s, k->conn, 0, 0, &m);
        free(text);
        break;
    }
    case CMD_STOP:
        break;
    }
}

/* The disk thread finished a load: the engine thread may have work again. */
static void engine_wake_cb(void *arg)
{
    server *s = arg;
    pthread_mutex_lock(&s->mu);
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

static void *engine_main(void *arg)
{
    server *s = arg;
    for (;;) {
        pthread_mutex_lock(&s->mu);
        /* Sleep while there is nothing to compute: no command, and no live request that can
         * run (requests waiting for the disk tier wake us through engine_wake_cb). */
        while (!s->in_head && !srv_engine_runnable(s->engine))
            pthread_cond_wait(&s->cv, &s->mu);
        cmd *k = s->in_head;
        s->in_head = s->in_tail = NULL;
        pthread_mutex_unlock(&s->mu);
        int stop = 0;
        while (k) {
            cmd *next = k->next;
            stop |= k->type == CMD_STOP;
            run_cmd(s, k);
            free(k->data);
            free(k);
            k = next;
        }
        if (stop) {
            srv_engine_cancel_matching(s->engine, 0, 0);
            break;
        }
        if (srv_engine_live(s->engine) > 0)
            srv_engine_step(s->engine);
        pthread_mutex_lock(&s->mu);
        s->live = srv_engine_live(s->engine);
        pthread_mutex_unlock(&s->mu);
    }
    return NULL;
}

/* ---- Start, signals, shutdown --------------------------------------------------------------- */

static void close_walk_cb(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (uv_is_closing(h))
        return;
    if (h->type == UV_NAMED_PIPE && h->data == NULL) {
        conn *c = container_of((uv_pipe_t *)h, conn, pipe);
        if (c->srv)
            conn_close(c);
        else
            uv_close(h, NULL);
        return;
    }
    uv_close(h, NULL);
}

static void stop_listening(server *s)
{
    if (s->listener_open) {
        uv_close((uv_handle_t *)&s->listener, NULL);
        s->listener_open = 0;
        unlink(s->o.socket_path);
    }
}

static void finish_shutdown(server *s)
{
    if (s->engine_stopped)
        return;
    uv_timer_stop(&s->drain_timer);
    push_cmd(s, cmd_new(CMD_STOP, 0, 0, 0));
    pthread_join(s->thread, NULL);
    s->engine_stopped = 1;
    wake_cb(&s->wake); /* deliver the last frames */
    uv_walk(s->loop, close_walk_cb, NULL);
}

static void drain_timer_cb(uv_timer_t *t)
{
    server *s = container_of(t, server, drain_timer);
    pthread_mutex_lock(&s->mu);
    int live = s->live || s->in_head;
    pthread_mutex_unlock(&s->mu);
    if (!live) {
        srv_log(SRV_LOG_INFO, "no request left running: exiting");
        finish_shutdown(s);
    } else if (srv_now_ms() - s->drain_start > s->o.grace_ms) {
        srv_log(SRV_LOG_WARN, "grace period over: cancelling the requests still running");
        finish_shutdown(s);
    }
}

static void signal_cb(uv_signal_t *h, int signum)
{
    server *s = h->data;
    if (s->draining) {
        srv_log(SRV_LOG_WARN, "second signal: cancelling everything now");
        finish_shutdown(s);
        return;
    }
    srv_log(SRV_LOG_INFO, "%s: no new connections; finishing running requests (up to %.0f s)",
            signum == SIGINT ? "SIGINT" : "SIGTERM", s->o.grace_ms / 1e3);
    s->draining = 1;
    s->drain_start = srv_now_ms();
    stop_listening(s);
    uv_timer_start(&s->drain_timer, drain_timer_cb, 0, 50);
}

/* Binds the socket: a live daemon on the path is an error, a stale file is replaced. */
static int bind_socket(server *s)
{
    const char *path = s->o.socket_path;
    struct sockaddr_un sa;
    if (strlen(path) >= sizeof sa.sun_path) {
        srv_log(SRV_LOG_ERROR, "socket path '%s' is too long (%zu bytes, at most %zu)", path,
                strlen(path), sizeof sa.sun_path - 1);
        return 2;
    }
    struct stat st;
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            srv_log(SRV_LOG_ERROR, "'%s' exists and is not a socket: not replacing it", path);
            return 2;
        }
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        memset(&sa, 0, sizeof sa);
        sa.sun_family = AF_UNIX;
        memcpy(sa.sun_path, path, strlen(path) + 1);
        int live = fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
        if (fd >= 0)
            close(fd);
        if (live) {
            srv_log(SRV_LOG_ERROR, "another daemon is serving on '%s'", path);
            return 2;
        }
        srv_log(SRV_LOG_INFO, "replacing stale socket file '%s'", path);
        unlink(path);
    }
    uv_pipe_init(s->loop, &s->listener, 0);
    mode_t old = umask(0177); /* created owner-only, opened up below if asked */
    int rc = uv_pipe_bind(&s->listener, path);
    umask(old);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&s->listener, 128, listener_cb);
    if (rc != 0) {
        srv_log(SRV_LOG_ERROR, "cannot listen on '%s': %s", path, uv_strerror(rc));
        uv_close((uv_handle_t *)&s->listener, NULL);
        return 2;
    }
    s->listener_open = 1;
    if (chmod(path, s->o.socket_mode) != 0) {
        srv_log(SRV_LOG_ERROR, "chmod '%s' %o: %s", path, s->o.socket_mode, strerror(errno));
        return 1;
    }
    return 0;
}

int srv_run(const srv_opts *o, const model *m, const model_tokenizer *tok)
{
    log_level = o->log_level;
    server *s = calloc(1, sizeof *s);
    if (!s)
        return 1;
    s->o = *o;
    s->m = m;
    s->tok = tok;
    s->loop = uv_default_loop();
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    char msg[512];
    srv_engine_opts eo = {0};
    eo.block_tokens = o->block_tokens;
    eo.cache_mem = o->cache_mem;
    eo.pin_max = o->pin_max;
    eo.no_cache = o->no_cache;
    eo.max_batch = o->max_batch;
    eo.max_queue = o->max_queue;
    eo.threads = o->threads;
    eo.emit = engine_emit_cb;
    eo.emit_arg = s;
    eo.disk_dir = o->disk_dir;
    eo.disk_max = o->disk_max;
    eo.disk_reset = o->disk_reset;
    eo.wake = engine_wake_cb;
    eo.wake_arg = s;
    int erc = srv_engine_new(m, tok, &eo, &s->engine, msg, sizeof msg);
    if (erc == CACHE_EBUSY && o->disk_is_default) {
        /* The default directory belongs to another daemon: serve without a disk tier. */
        srv_log(SRV_LOG_WARN, "%s: disk tier off (give this daemon its own --disk-dir)", msg);
        eo.disk_dir = NULL;
        erc = srv_engine_new(m, tok, &eo, &s->engine, msg, sizeof msg);
    }
    s->o.disk_dir = eo.disk_dir; /* what is in force (HELLO_OK's capabilities) */
    if (erc != 0) {
        srv_log(SRV_LOG_ERROR, "%s", msg);
        free(s);
        /* A disk dir that cannot be used is bad configuration (exit 2), like a bad model. */
        return erc == CACHE_EIO || erc == CACHE_EVERSION || erc == CACHE_EBUSY ||
                       erc == CACHE_EINVAL
                   ? 2
                   : 1;
    }
    s->o.block_tokens = srv_engine_get_opts(s->engine)->block_tokens;
    int rc = bind_socket(s);
    if (rc != 0) {
        uv_run(s->loop, UV_RUN_NOWAIT);
        srv_engine_free(s->engine);
        free(s);
        return rc;
    }
    /* A write to a client that has gone must fail with EPIPE on that connection, not kill the
     * daemon: the peer's close is seen as a read error or EOF and the connection is closed. */
    signal(SIGPIPE, SIG_IGN);
    uv_async_init(s->loop, &s->wake, wake_cb);
    uv_signal_init(s->loop, &s->sigint);
    uv_signal_init(s->loop, &s->sigterm);
    s->sigint.data = s->sigterm.data = s;
    uv_signal_start(&s->sigint, signal_cb, SIGINT);
    uv_signal_start(&s->sigterm, signal_cb, SIGTERM);
    uv_timer_init(s->loop, &s->drain_timer);
    /* Handles that are not connections are marked by a non-NULL data pointer. */
    s->listener.data = s;
    s->wake.data = s;
    s->drain_timer.data = s;
    pthread_create(&s->thread, NULL, engine_main, s);
    const srv_engine_opts *eff = srv_engine_get_opts(s->engine);
    cache_stats cs = {0};
    if (srv_engine_cache(s->engine))
        cache_get_stats(srv_engine_cache(s->engine), &cs);
    srv_log(SRV_LOG_INFO,
            "serving on %s (mode %04o): blocks of %d tokens, cache %llu blocks (%.0f MB)%s, "
            "max batch %d, queue %d",
            o->socket_path, o->socket_mode, eff->block_tokens, (unsigned long long)cs.slots_total,
            cs.bytes_total / 1e6, o->no_cache ? " [sharing off: --no-cache]" : "", eff->max_batch,
            eff->max_queue);
    srv_diskw_stats ds;
    if (srv_engine_disk_stats(s->engine, &ds) == 0)
        srv_log(SRV_LOG_INFO, "disk tier %s: %llu blocks (%.0f MB) of %.0f MB", eo.disk_dir,
                (unsigned long long)ds.disk.entries, ds.disk.bytes_on_disk / 1e6,
                ds.disk.max_bytes / 1e6);
    else if (!o->no_cache)
        srv_log(SRV_LOG_INFO, "disk tier off: blocks leaving RAM are dropped");
    uv_run(s->loop, UV_RUN_DEFAULT);
    if (!s->engine_stopped) {
        push_cmd(s, cmd_new(CMD_STOP, 0, 0, 0));
        pthread_join(s->thread, NULL);
    }
    stop_listening(s);
    uv_walk(s->loop, close_walk_cb, NULL);
    uv_run(s->loop, UV_RUN_DEFAULT);
    uv_loop_close(s->loop);
    /* Whatever is left in the queues. */
    for (cmd *k = s->in_head; k;) {
        cmd *n = k->next;
        free(k->data);
        free(k);
        k = n;
    }
    for (out *q = s->out_head; q;) {
        out *n = q->next;
        free(q);
        q = n;
    }
    if (srv_engine_disk_stats(s->engine, &ds) == 0) {
        /* What is only in RAM goes to disk, so a restart finds it. The loop is closed, so a
         * further SIGINT/SIGTERM ends the process at once: the store stays consistent (what
         * a kill -9 leaves), only the blocks not written yet are lost. */
        srv_log(SRV_LOG_INFO, "disk tier: writing the blocks only in RAM (signal again to skip)");
        double t0 = srv_now_ms();
        size_t n = srv_engine_flush_disk(s->engine);
        srv_engine_disk_stats(s->engine, &ds);
        srv_log(SRV_LOG_INFO,
                "disk tier: wrote %zu blocks from RAM in %.0f ms; %llu blocks (%.0f MB) on disk", n,
                srv_now_ms() - t0, (unsigned long long)ds.disk.entries,
                ds.disk.bytes_on_disk / 1e6);
    }
    srv_engine_free(s->engine);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
    srv_log(SRV_LOG_INFO, "stopped");
    return 0;
}
