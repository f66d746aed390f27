/* conn.c — connections on the loop thread: accept, read and frame, answer what is cheap to
 * answer, hand requests to the engine thread, write the frames it makes.
 *
 * The loop thread only moves bytes: it decodes frames, checks what is cheap to check (namespace
 * names, UTF-8, ids, sampling values) and hands requests to the engine thread as tasks; the
 * engine thread encodes every outgoing frame itself and queues the bytes back (srv_frame), which
 * srv__deliver_cb() writes. A connection changes state only through conn_set_state(), which
 * asserts the legal transitions, and is freed only in its close callback.
 */
#include "server_int.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static void conn_set_state(conn *c, conn_state s)
{
    /* Legal: AWAIT_HELLO -> READY, and anything -> CLOSING (once). */
    if (!((c->state == CONN_AWAIT_HELLO && s == CONN_READY) ||
          (c->state != CONN_CLOSING && s == CONN_CLOSING))) {
        base_log(BASE_LOG_ERROR, "connection %u: illegal state change %d -> %d", c->id, c->state,
                 s);
        abort();
    }
    c->state = s;
}

conn *srv__conn_find(server *s, uint32_t id)
{
    conn *c = s->conns[id % SRV_MAX_CONNS];
    return c && c->id == id ? c : NULL;
}

/* Hands a task to the engine thread; when it cannot be allocated, the request gets an error
 * and the daemon keeps serving. Returns 0, or -1 (answered). */
static void conn_send_error(conn *c, uint32_t req, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int conn_push_task(conn *c, srv_task_type type, uint32_t req, const void *data, size_t len)
{
    srv_task *t = srv__task_new(type, c->id, req, len);
    if (!t) {
        conn_send_error(c, req, PROTO_ERR_INTERNAL, "out of memory for a request of %zu bytes",
                        len);
        return -1;
    }
    if (data && len)
        memcpy(t->data, data, len);
    t->uid = (uint32_t)c->uid;
    srv__task_push(c->srv, t);
    return 0;
}

/* Cancels every request of a connection. Should the small task not be allocated, the requests
 * run to their end and their frames are dropped (they name a connection that is gone). */
static void cancel_conn(server *s, uint32_t conn_id)
{
    srv_task *t = srv__task_new(SRV_TASK_CANCEL_CONN, conn_id, 0, 0);
    if (t)
        srv__task_push(s, t);
    else
        base_log(BASE_LOG_ERROR, "connection %u: out of memory cancelling its requests", conn_id);
}

static void conn_unhold(conn *c);

static void write_cb(uv_write_t *w, int status)
{
    /* A failed write shows up as a read error or EOF on that connection. */
    conn *c = status == 0 ? container_of((uv_pipe_t *)w->handle, conn, pipe) : NULL;
    free(w->data);
    free(w);
    if (c && c->held && c->state != CONN_CLOSING)
        conn_unhold(c);
}

/* Queues bytes (copied) on a connection. */
void srv__conn_write(conn *c, const uint8_t *bytes, size_t len)
{
    if (c->state == CONN_CLOSING)
        return;
    uv_write_t *w = malloc(sizeof *w);
    uint8_t *copy = malloc(len);
    if (!w || !copy) {
        /* The stream would lose a frame: the client could never tell. Close it instead. */
        free(w);
        free(copy);
        base_log(BASE_LOG_ERROR, "connection %u: out of memory writing %zu bytes: closing", c->id,
                 len);
        srv__conn_close(c);
        return;
    }
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
    srv__conn_write(c, buf, n);
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
    if (c->srv)
        c->srv->input_bytes -= c->cap;
    free(c->buf);
    free(c);
}

void srv__conn_close(conn *c)
{
    if (c->state == CONN_CLOSING)
        return;
    server *s = c->srv;
    if (c->n_reqs > 0)
        cancel_conn(s, c->id);
    conn_set_state(c, CONN_CLOSING);
    s->conns[c->id % SRV_MAX_CONNS] = NULL;
    base_log(BASE_LOG_DEBUG, "connection %u closed", c->id);
    uv_close((uv_handle_t *)&c->pipe, conn_close_cb);
}

void srv__conn_reply_error(conn *c, uint32_t req, int code, const char *msg)
{
    conn_send_error(c, req, code, "%s", msg);
}

void srv__conn_end_request(conn *c, uint32_t req, int code, const char *msg)
{
    conn_send_error(c, req, code, "%s", msg);
    conn_drop_req(c, req);
}

void srv__conn_send_done_cancelled(conn *c, uint32_t req)
{
    proto_msg m = {.type = PROTO_DONE, .id = req};
    m.u.done.finish = PROTO_FINISH_CANCELLED;
    uint8_t buf[128];
    size_t n = proto_encode(&m, buf, sizeof buf);
    srv__conn_write(c, buf, n);
    conn_drop_req(c, req);
}

/* ---- Frames from clients -------------------------------------------------------------------- */

/* The checks every new request passes (GENERATE, WARM, CHAT): the daemon takes requests, the id
 * is free, the connection has room, the namespace and sampling parameters are valid. Returns 0,
 * or -1 after answering with the ERROR. */
static int check_request(conn *c, uint32_t id, proto_str ns, float temp, float top_p)
{
    server *s = c->srv;
    if (s->draining) {
        conn_send_error(c, id, PROTO_ERR_SHUTTING_DOWN, "daemon is shutting down");
        return -1;
    }
    if (id == 0) {
        conn_send_error(c, 0, PROTO_ERR_BAD_REQUEST, "request id 0 is reserved");
        return -1;
    }
    if (conn_has_req(c, id)) {
        conn_send_error(c, id, PROTO_ERR_DUPLICATE_ID,
                        "request id %u is already in use on this connection", id);
        return -1;
    }
    if (c->n_reqs >= SRV_MAX_REQS_PER_CONN) {
        conn_send_error(c, id, PROTO_ERR_BUSY, "too many requests on one connection (%d)",
                        SRV_MAX_REQS_PER_CONN);
        return -1;
    }
    if (!proto_namespace_valid(ns)) {
        conn_send_error(c, id, PROTO_ERR_BAD_NAMESPACE,
                        "namespace '%.*s': at most %d bytes of letters, digits, '.', '_', '-'",
                        (int)(ns.len > 80 ? 80 : ns.len), ns.p, PROTO_MAX_NAMESPACE);
        return -1;
    }
    /* NaN fails every comparison; infinity is refused too (logits / inf is no distribution). */
    if (!(temp >= 0.0f && temp <= 1e6f) || !(top_p >= 0.0f && top_p <= 1e6f)) {
        conn_send_error(c, id, PROTO_ERR_BAD_REQUEST,
                        "temperature and top-p must be finite numbers >= 0 (got %g and %g)", temp,
                        top_p);
        return -1;
    }
    return 0;
}

/* The request's namespace inside the client's uid (or shared/) into buf. Returns its length. */
static int scoped_namespace(const conn *c, proto_str ns, char *buf, size_t cap)
{
    return c->srv->o.share_across_users
               ? snprintf(buf, cap, "shared/%.*s", (int)ns.len, ns.p)
               : snprintf(buf, cap, "uid:%u/%.*s", (unsigned)c->uid, (int)ns.len, ns.p);
}

static void handle_generate(conn *c, const proto_msg *m)
{
    server *s = c->srv;
    const proto_generate *g = &m->u.gen;
    if (check_request(c, m->id, g->ns, g->temp, g->top_p) != 0)
        return;
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
    if (!by_ids && g->text.len > s->o.max_text) {
        conn_send_error(c, m->id, PROTO_ERR_BAD_REQUEST,
                        "prompt text of %u bytes is larger than the daemon's maximum (%zu, "
                        "--max-text)",
                        g->text.len, s->o.max_text);
        return;
    }
    char nsbuf[128];
    int nslen = scoped_namespace(c, g->ns, nsbuf, sizeof nsbuf);
    /* One allocation: the namespace, then the ids (4-byte aligned) or the text. */
    size_t off = ((size_t)nslen + 3) / 4 * 4;
    size_t payload = by_ids ? (size_t)g->ids.n * sizeof(int32_t) : g->text.len;
    srv_task *k = srv__task_new(SRV_TASK_SUBMIT, c->id, m->id, off + payload + 1);
    if (!k) {
        conn_send_error(c, m->id, PROTO_ERR_INTERNAL, "out of memory for a prompt of %zu bytes",
                        payload);
        return;
    }
    memcpy(k->data, nsbuf, (size_t)nslen);
    engine_request *r = &k->r;
    r->handle = (uint64_t)c->id << 32 | m->id;
    r->kind = m->type == PROTO_WARM ? ENGINE_REQ_WARM : ENGINE_REQ_GENERATE;
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
    r->owner = (uint32_t)c->uid;
    r->t_received_ms = base_now_ms();
    if (!by_ids && s->tok) {
        /* The text is tokenized on a worker, then submitted as ids (tokenize.c). */
        if (srv__tokenize_prompt(c, k, (size_t)nslen) != 0) {
            free(k->data);
            free(k);
            conn_send_error(c, m->id, PROTO_ERR_INTERNAL, "out of memory queueing a prompt");
            return;
        }
    } else {
        srv__task_push(s, k);
    }
    c->reqs[c->n_reqs++] = m->id;
}

static int chat_role_valid(proto_str r)
{
    static const char *const roles[] = {"system", "user", "assistant"};
    for (size_t i = 0; i < sizeof roles / sizeof *roles; i++)
        if (r.len == strlen(roles[i]) && memcmp(r.p, roles[i], r.len) == 0)
            return 1;
    return 0;
}

/* Checks a CHAT's messages (and system prompt): count, roles, UTF-8, total size. Returns 0, or
 * -1 after answering with the ERROR naming the field. */
static int check_chat(conn *c, uint32_t id, const proto_chat *ch)
{
    server *s = c->srv;
    if (ch->n_msgs == 0) {
        conn_send_error(c, id, PROTO_ERR_BAD_REQUEST, "a chat needs at least one message");
        return -1;
    }
    if (ch->n_msgs + (ch->system.len > 0) > PROTO_MAX_CHAT_MESSAGES) {
        conn_send_error(c, id, PROTO_ERR_BAD_REQUEST, "%u messages: at most %d are taken",
                        ch->n_msgs, PROTO_MAX_CHAT_MESSAGES);
        return -1;
    }
    size_t bad = proto_utf8_check(ch->system.p, ch->system.len), total = ch->system.len;
    if (bad != ch->system.len) {
        conn_send_error(c, id, PROTO_ERR_BAD_UTF8,
                        "system is not valid UTF-8: bad byte 0x%02x at offset %zu",
                        (unsigned char)ch->system.p[bad], bad);
        return -1;
    }
    size_t at = 0;
    proto_chat_msg msg;
    for (uint32_t i = 0; proto_chat_next(ch, &at, &msg); i++) {
        if (!chat_role_valid(msg.role)) {
            size_t ok = proto_utf8_check(msg.role.p, msg.role.len);
            conn_send_error(c, id, PROTO_ERR_BAD_REQUEST,
                            "messages[%u].role '%.*s' is not one of system, user, assistant", i,
                            (int)(ok > 40 ? 40 : ok), msg.role.p);
            return -1;
        }
        if ((bad = proto_utf8_check(msg.content.p, msg.content.len)) != msg.content.len) {
            conn_send_error(c, id, PROTO_ERR_BAD_UTF8,
                            "messages[%u].content is not valid UTF-8: bad byte 0x%02x at offset "
                            "%zu",
                            i, (unsigned char)msg.content.p[bad], bad);
            return -1;
        }
        total += msg.content.len;
    }
    if (total > s->o.max_text) {
        conn_send_error(c, id, PROTO_ERR_BAD_REQUEST,
                        "the chat's texts hold %zu bytes, more than the daemon's maximum (%zu, "
                        "--max-text)",
                        total, s->o.max_text);
        return -1;
    }
    return 0;
}

/* A str as on the wire (u32 little-endian length, then the bytes) at p. */
static void put_str(uint8_t *p, const char *b, uint32_t len)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(len >> (8 * i));
    memcpy(p + 4, b, len);
}

/* CHAT: checked here, rendered and tokenized on a worker (tokenize.c), then run as GENERATE. */
static void handle_chat(conn *c, const proto_msg *m)
{
    server *s = c->srv;
    const proto_chat *ch = &m->u.chat;
    if (check_request(c, m->id, ch->ns, ch->temp, ch->top_p) != 0)
        return;
    if (!s->chat || !s->tok) {
        conn_send_error(c, m->id, PROTO_ERR_NO_TEMPLATE, "%s", s->chat_why);
        return;
    }
    if (check_chat(c, m->id, ch) != 0)
        return;
    char nsbuf[128];
    int nslen = scoped_namespace(c, ch->ns, nsbuf, sizeof nsbuf);
    /* One allocation: the namespace, then the messages as CHAT's list, the system prompt made
     * the first message. */
    static const char sys_role[] = "system";
    size_t sys = ch->system.len ? 8 + sizeof sys_role - 1 + ch->system.len : 0;
    size_t off = ((size_t)nslen + 3) / 4 * 4, payload = sys + ch->list_len;
    srv_task *k = srv__task_new(SRV_TASK_SUBMIT, c->id, m->id, off + payload + 1);
    if (!k) {
        conn_send_error(c, m->id, PROTO_ERR_INTERNAL, "out of memory for a chat of %zu bytes",
                        payload);
        return;
    }
    memcpy(k->data, nsbuf, (size_t)nslen);
    uint8_t *p = (uint8_t *)k->data + off;
    if (sys) {
        put_str(p, sys_role, sizeof sys_role - 1);
        put_str(p + 4 + sizeof sys_role - 1, ch->system.p, ch->system.len);
    }
    memcpy(p + sys, ch->list, ch->list_len);
    engine_request *r = &k->r;
    r->handle = (uint64_t)c->id << 32 | m->id;
    r->kind = ENGINE_REQ_GENERATE;
    r->text = (const char *)p;
    r->text_len = payload;
    r->ns = k->data;
    r->ns_len = (size_t)nslen;
    r->max_new = ch->max_new;
    r->temp = ch->temp;
    r->top_p = ch->top_p;
    r->seed = ch->seed;
    r->owner = (uint32_t)c->uid;
    r->t_received_ms = base_now_ms();
    if (srv__tokenize_chat_id(s, c->id, k, (size_t)nslen, ch->n_msgs + (sys > 0)) != 0) {
        srv__task_free(k);
        conn_send_error(c, m->id, PROTO_ERR_INTERNAL, "out of memory queueing a chat");
        return;
    }
    c->reqs[c->n_reqs++] = m->id;
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
            srv__conn_close(c);
            return;
        }
        if (m->u.hello.version != PROTO_VERSION) {
            conn_send_error(c, m->id, PROTO_ERR_BAD_VERSION,
                            "protocol version %u is not supported (this daemon speaks %d)",
                            m->u.hello.version, PROTO_VERSION);
            srv__conn_close(c);
            return;
        }
        const model_config *mc = model_get_config(s->m);
        proto_msg r = {0};
        r.type = PROTO_HELLO_OK;
        r.id = m->id;
        r.u.hello_ok.version = PROTO_VERSION;
        r.u.hello_ok.caps = PROTO_CAP_TOKEN_PROMPT | PROTO_CAP_WARM | PROTO_CAP_PIN;
        if (c->srv->o.engine.disk_dir)
            r.u.hello_ok.caps |= PROTO_CAP_DISK;
        if (s->chat && s->tok)
            r.u.hello_ok.caps |= PROTO_CAP_CHAT;
        if (c->srv->o.engine.remote_url && !c->srv->o.engine.no_cache)
            r.u.hello_ok.caps |= PROTO_CAP_REMOTE;
        /* The engine thread reads this when it sends this connection's DONE frames. */
        atomic_store_explicit(&s->done_remote[c->id % SRV_MAX_CONNS],
                              m->u.hello.caps & PROTO_CAP_REMOTE ? c->id : 0, memory_order_relaxed);
        r.u.hello_ok.vocab_size = (uint32_t)mc->vocab_size;
        r.u.hello_ok.seq_len = (uint32_t)mc->seq_len;
        r.u.hello_ok.block_tokens = (uint32_t)s->o.engine.block_tokens;
        r.u.hello_ok.max_frame = (uint32_t)s->o.max_frame;
        const char *base = strrchr(s->o.model_path, '/');
        base = base ? base + 1 : s->o.model_path;
        r.u.hello_ok.model = (proto_str){base, (uint32_t)strlen(base)};
        uint8_t buf[512];
        size_t n = proto_encode(&r, buf, sizeof buf);
        conn_set_state(c, CONN_READY);
        srv__conn_write(c, buf, n);
        return;
    }
    switch (m->type) {
    case PROTO_GENERATE:
    case PROTO_WARM:
        handle_generate(c, m);
        break;
    case PROTO_CHAT:
        handle_chat(c, m);
        break;
    case PROTO_CANCEL:
        /* A prompt still being tokenized ends when its worker is done; else the engine
         * cancels it. */
        if (conn_has_req(c, m->id) && !srv__tokenize_cancel(s, c->id, m->id))
            conn_push_task(c, SRV_TASK_CANCEL, m->id, NULL, 0);
        break;
    case PROTO_STATS:
        if (conn_push_task(c, SRV_TASK_STATS, m->id, NULL, 0) == 0)
            c->owed++;
        break;
    case PROTO_TOKENIZE: {
        size_t bad = proto_utf8_check(m->u.text.p, m->u.text.len);
        if (bad != m->u.text.len) {
            conn_send_error(c, m->id, PROTO_ERR_BAD_UTF8,
                            "text is not valid UTF-8: bad byte at offset %zu", bad);
            break;
        }
        if (m->u.text.len > s->o.max_text) {
            conn_send_error(c, m->id, PROTO_ERR_BAD_REQUEST,
                            "text of %u bytes is larger than the daemon's maximum (%zu, "
                            "--max-text)",
                            m->u.text.len, s->o.max_text);
            break;
        }
        if (srv__tokenize_reply(c, m->id, 0, m->u.text.p, m->u.text.len) != 0)
            conn_send_error(c, m->id, PROTO_ERR_INTERNAL, "out of memory queueing a text");
        else
            c->owed++;
        break;
    }
    case PROTO_DETOKENIZE:
        /* The ids as they came: little-endian int32, read by the worker. */
        if (srv__tokenize_reply(c, m->id, 1, m->u.ids.le, (size_t)m->u.ids.n * 4) != 0)
            conn_send_error(c, m->id, PROTO_ERR_INTERNAL, "out of memory queueing ids");
        else
            c->owed++;
        break;
    case PROTO_HELLO:
        conn_send_error(c, m->id, PROTO_ERR_BAD_REQUEST, "HELLO was already received");
        break;
    default:
        conn_send_error(c, m->id, PROTO_ERR_BAD_REQUEST,
                        "message type %u is not a request a client may send", m->type);
        break;
    }
}

/* ---- Reading -------------------------------------------------------------------------------
 * A connection's input buffer holds at most one frame being received plus what follows it in
 * the same reads: it is sized to the frame's announced length (up to --max-frame) as soon as
 * its 4-byte length field is in, so a large frame sent in one write is read whole. All input
 * buffers together stay under --max-input-mem; a connection whose frame would pass that budget
 * gets an error and is closed. A buffer is freed when it holds nothing, so an idle connection
 * costs no input memory.
 *
 * At most SRV_FRAMES_PER_READ frames are handled per connection and loop turn. A connection
 * with more complete frames buffered stops reading and is put on the resume list; an idle
 * handle handles the next frames on the next loop turn, fairly with every other connection,
 * and reading starts again when its buffered frames are done. */

#define SRV_READ_CHUNK ((size_t)64 << 10)

static void input_resize(conn *c, uint8_t *nb, size_t cap)
{
    server *s = c->srv;
    s->input_bytes = s->input_bytes - c->cap + cap;
    c->buf = nb;
    c->cap = cap;
}

static void conn_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    conn *c = container_of((uv_pipe_t *)h, conn, pipe);
    server *s = c->srv;
    /* Room for the frame being received (its announced size, when known) and a chunk more. */
    long fsize = proto_frame_size(c->buf, c->len);
    size_t want = (fsize > 0 && (size_t)fsize > c->len ? (size_t)fsize : c->len) + SRV_READ_CHUNK;
    size_t limit = s->o.max_frame + SRV_READ_CHUNK;
    if (want > limit)
        want = limit;
    *buf = uv_buf_init(NULL, 0);
    if (c->cap >= want) {
        *buf = uv_buf_init((char *)c->buf + c->len, (unsigned)(c->cap - c->len));
        return;
    }
    if (s->input_bytes - c->cap + want > s->o.max_input_mem && want > SRV_READ_CHUNK) {
        c->over_budget = 1; /* read_cb sees UV_ENOBUFS and says why */
        return;
    }
    uint8_t *nb = realloc(c->buf, want);
    if (!nb)
        return; /* UV_ENOBUFS */
    input_resize(c, nb, want);
    *buf = uv_buf_init((char *)c->buf + c->len, (unsigned)(c->cap - c->len));
}

static void resume_idle_cb(uv_idle_t *h);

/* Handles up to SRV_FRAMES_PER_READ buffered frames. Returns 1 if complete frames may remain
 * (the caller parks the connection on the resume list), 0 if the buffer holds no complete
 * frame, -1 if the connection was closed. */
/* 1 while the connection owes reading: too many replies still owed to it, or more unread
 * output than --max-output queued. Its frames then wait (backpressure), so a client that never
 * reads makes the daemon hold a bounded amount of memory. */
static int conn_must_hold(const conn *c)
{
    return c->owed >= SRV_MAX_OWED ||
           uv_stream_get_write_queue_size((const uv_stream_t *)&c->pipe) > c->srv->o.max_output;
}

static int conn_process(conn *c)
{
    server *s = c->srv;
    size_t off = 0;
    int more = 0;
    if (c->len == 0) /* nothing buffered (and maybe no buffer: it is freed when empty) */
        return c->state == CONN_CLOSING ? -1 : 0;
    for (int frames = 0; c->state != CONN_CLOSING; frames++) {
        if (frames == SRV_FRAMES_PER_READ) {
            more = 1;
            break;
        }
        if (conn_must_hold(c)) {
            more = 2;
            break;
        }
        proto_msg m;
        long r = proto_decode(c->buf + off, c->len - off, s->o.max_frame, &m);
        if (r == PROTO_NEED_MORE)
            break;
        if (r < 0) {
            s->bad_frames++;
            if (r == -PROTO_ERR_TOO_BIG)
                conn_send_error(c, 0, (int)-r,
                                "frame of %ld bytes is larger than the maximum (%zu, --max-frame): "
                                "the connection cannot continue",
                                proto_frame_size(c->buf + off, c->len - off), s->o.max_frame);
            else
                conn_send_error(c, 0, (int)-r,
                                "malformed frame header: the connection cannot continue");
            srv__conn_close(c);
            return -1;
        }
        c->t_last = base_now_ms();
        handle_frame(c, &m);
        off += (size_t)r;
    }
    if (c->state == CONN_CLOSING)
        return -1;
    if (off > 0) {
        memmove(c->buf, c->buf + off, c->len - off);
        c->len -= off;
    }
    if (c->len == 0 && c->cap > 0) {
        free(c->buf);
        input_resize(c, NULL, 0);
    }
    return more;
}

/* After conn_process(): park the connection (stop reading) while frames remain, or read on. */
static void conn_after_process(conn *c, int more)
{
    server *s = c->srv;
    if (more == 2) { /* held: resumed by conn_unhold() once it has read its replies */
        if (!c->paused) {
            uv_read_stop((uv_stream_t *)&c->pipe);
            c->paused = 1;
        }
        c->held = 1;
    } else if (more > 0) {
        if (!c->paused) {
            uv_read_stop((uv_stream_t *)&c->pipe);
            c->paused = 1;
        }
        if (!c->resume_queued) {
            c->resume_queued = 1;
            s->resume[s->n_resume++] = c->id;
            uv_idle_start(&s->resume_idle, resume_idle_cb);
        }
    } else if (more == 0 && c->paused) {
        c->paused = 0;
        srv__conn_read_start(c);
    }
}

/* A held connection whose replies were read (or queued) goes back on the resume list. */
static void conn_unhold(conn *c)
{
    if (!c->held || conn_must_hold(c))
        return;
    c->held = 0;
    if (!c->resume_queued) {
        server *s = c->srv;
        c->resume_queued = 1;
        s->resume[s->n_resume++] = c->id;
        uv_idle_start(&s->resume_idle, resume_idle_cb);
    }
}

void srv__conn_owed_done(conn *c)
{
    if (c->owed > 0)
        c->owed--;
    conn_unhold(c);
}

static void resume_idle_cb(uv_idle_t *h)
{
    server *s = container_of(h, server, resume_idle);
    /* This turn's list: connections parked now go on the next turn's. */
    uint32_t ids[SRV_MAX_CONNS];
    int n = s->n_resume;
    memcpy(ids, s->resume, (size_t)n * sizeof *ids);
    s->n_resume = 0;
    for (int i = 0; i < n; i++) {
        conn *c = srv__conn_find(s, ids[i]);
        if (!c)
            continue;
        c->resume_queued = 0;
        conn_after_process(c, conn_process(c));
    }
    if (s->n_resume == 0)
        uv_idle_stop(&s->resume_idle);
}

static void conn_read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    (void)buf;
    conn *c = container_of((uv_pipe_t *)st, conn, pipe);
    if (nread == UV_ENOBUFS) {
        server *s = c->srv;
        long fsize = proto_frame_size(c->buf, c->len);
        if (c->over_budget)
            conn_send_error(c, 0, PROTO_ERR_BUSY,
                            "daemon input memory budget exceeded: a frame of %ld bytes does not "
                            "fit beside the %zu bytes buffered for all connections "
                            "(--max-input-mem %zu)",
                            fsize, s->input_bytes, s->o.max_input_mem);
        else
            conn_send_error(c, 0, PROTO_ERR_INTERNAL, "out of memory for a frame of %ld bytes",
                            fsize);
        base_log(BASE_LOG_WARN, "connection %u: input of %ld bytes refused: %s", c->id, fsize,
                 c->over_budget ? "over --max-input-mem" : "out of memory");
        srv__conn_close(c);
        return;
    }
    if (nread < 0) {
        if (nread != UV_EOF)
            base_log(BASE_LOG_DEBUG, "connection %u: read: %s", c->id, uv_strerror((int)nread));
        srv__conn_close(c);
        return;
    }
    c->len += (size_t)nread;
    conn_after_process(c, conn_process(c));
}

void srv__conn_read_start(conn *c)
{
    int rc = uv_read_start((uv_stream_t *)&c->pipe, conn_alloc_cb, conn_read_cb);
    if (rc != 0) {
        base_log(BASE_LOG_WARN, "connection %u: read: %s", c->id, uv_strerror(rc));
        srv__conn_close(c);
    }
}

/* Closes connections that never said HELLO within --hello-timeout, and connections with no
 * live request and no complete frame for --idle-timeout (0: never). Runs every second. */
void srv__sweep_cb(uv_timer_t *t)
{
    server *s = container_of(t, server, sweep_timer);
    double now = base_now_ms();
    for (int i = 0; i < SRV_MAX_CONNS; i++) {
        conn *c = s->conns[i];
        if (!c || c->state == CONN_CLOSING)
            continue;
        if (c->state == CONN_AWAIT_HELLO && s->o.hello_timeout_ms > 0 &&
            now - c->t_last > s->o.hello_timeout_ms) {
            conn_send_error(c, 0, PROTO_ERR_NO_HELLO,
                            "no HELLO within %.0f s (--hello-timeout): closing",
                            s->o.hello_timeout_ms / 1e3);
            srv__conn_close(c);
        } else if (c->state == CONN_READY && c->n_reqs == 0 && s->o.idle_timeout_ms > 0 &&
                   now - c->t_last > s->o.idle_timeout_ms) {
            base_log(BASE_LOG_DEBUG, "connection %u: idle for %.0f s: closing", c->id,
                     (now - c->t_last) / 1e3);
            srv__conn_close(c);
        }
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

void srv__accept_cb(uv_stream_t *ls, int status)
{
    server *s = container_of((uv_pipe_t *)ls, server, listener);
    if (status < 0) {
        base_log(BASE_LOG_WARN, "accept: %s", uv_strerror(status));
        return;
    }
    conn *c = calloc(1, sizeof *c);
    if (!c) {
        base_log(BASE_LOG_ERROR, "accept: out of memory");
        return;
    }
    c->srv = s;
    int rc = uv_pipe_init(s->loop, &c->pipe, 0);
    if (rc != 0) {
        base_log(BASE_LOG_ERROR, "accept: uv_pipe_init: %s", uv_strerror(rc));
        free(c);
        return;
    }
    if (uv_accept(ls, (uv_stream_t *)&c->pipe) != 0) {
        uv_close((uv_handle_t *)&c->pipe, conn_close_cb);
        return;
    }
    /* Ids are unique among live connections: skip slots still taken. */
    for (int tries = 0; tries < SRV_MAX_CONNS; tries++) {
        uint32_t id = ++s->next_id & ~SRV_CONN_HTTP; /* the bit marks HTTP connections */
        if (id == 0)
            continue;
        if (!s->conns[id % SRV_MAX_CONNS]) {
            c->id = id;
            break;
        }
    }
    if (c->id == 0) {
        base_log(BASE_LOG_WARN, "too many connections (%d)", SRV_MAX_CONNS);
        uv_close((uv_handle_t *)&c->pipe, conn_close_cb);
        return;
    }
    c->uid = peer_uid(&c->pipe);
    c->t_last = base_now_ms();
    if (s->o.max_conns_per_user > 0) {
        int mine = 0;
        for (int i = 0; i < SRV_MAX_CONNS; i++)
            mine += s->conns[i] && s->conns[i]->uid == c->uid;
        if (mine >= s->o.max_conns_per_user) {
            /* Answer, so the client can tell why; the id stays free. */
            base_log(BASE_LOG_WARN, "uid %u: %d connections (--max-conns-per-user): refusing one",
                     (unsigned)c->uid, mine);
            s->conns[c->id % SRV_MAX_CONNS] = c;
            conn_send_error(c, 0, PROTO_ERR_BUSY,
                            "too many connections from uid %u (%d, --max-conns-per-user)",
                            (unsigned)c->uid, mine);
            srv__conn_close(c);
            return;
        }
    }
    s->conns[c->id % SRV_MAX_CONNS] = c;
    s->connections++;
    base_log(BASE_LOG_DEBUG, "connection %u from uid %u", c->id, (unsigned)c->uid);
    srv__conn_read_start(c);
}

/* ---- Frames to clients ---------------------------------------------------------------------- */

void srv__deliver_cb(uv_async_t *a)
{
    server *s = container_of(a, server, wake);
    pthread_mutex_lock(&s->mu);
    base_qnode *n = base_queue_take_all(&s->frames);
    pthread_mutex_unlock(&s->mu);
    while (n) {
        srv_frame *o = container_of(n, srv_frame, node);
        n = n->next;
        if (o->conn & SRV_CONN_HTTP) {
            srv__http_deliver(s, o);
            free(o);
            continue;
        }
        conn *c = srv__conn_find(s, o->conn);
        if (c) {
            if (o->req == 0 || conn_has_req(c, o->req))
                srv__conn_write(c, o->bytes, o->len);
            if (o->req == 0) /* a STATS reply */
                srv__conn_owed_done(c);
            if (o->ends && o->req)
                conn_drop_req(c, o->req);
            /* A client that does not read: past the bound, its requests are cancelled. */
            size_t queued = uv_stream_get_write_queue_size((uv_stream_t *)&c->pipe);
            if (c->slow && queued < s->o.max_output / 2)
                c->slow = 0;
            if (!c->slow && queued > s->o.max_output && c->n_reqs > 0) {
                c->slow = 1;
                base_log(BASE_LOG_WARN,
                         "connection %u: %zu bytes unread (--max-output %zu): cancelling its "
                         "%d requests",
                         c->id, queued, s->o.max_output, c->n_reqs);
                for (int i = 0; i < c->n_reqs; i++)
                    conn_send_error(c, c->reqs[i], PROTO_ERR_SLOW_READER,
                                    "client not reading: %zu bytes of output pending", queued);
                c->n_reqs = 0;
                cancel_conn(s, c->id);
            }
        }
        free(o);
    }
}
