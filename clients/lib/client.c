/* client.c — libprefixd: blocking socket I/O around proto/'s encoder and decoder.
 *
 * Before it sends a byte, pfx_connect() asks the kernel who serves the socket (SO_PEERCRED: the
 * uid of the process that called listen()) and talks only to its own uid or root: a socket path
 * in a shared directory can be bound by another user first, and that user would read our prompts.
 *
 * One connection may carry several requests (pfx_send()), so a blocking call that waits for its
 * own reply (pfx_generate(), pfx_wait(), pfx_stats(), ...) may read other requests' frames first.
 * Those are copied, as the bytes they came in, onto a FIFO queue that pfx_next() and pfx_wait()
 * serve before the socket, so no frame is lost and the frames of one request keep their order.
 * The queue is bounded (pfx_set_pending_max()): a frame that would overflow it is left unread in
 * the input buffer and the blocking call returns PFX_EFULL, so even then nothing is dropped.
 */
#include "prefixd_client.h"

#include "base.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* A frame of another request, read while a blocking call waited for its own: its wire bytes. */
typedef struct pending_frame {
    struct pending_frame *next;
    uint32_t id;
    size_t len;
    uint8_t bytes[];
} pending_frame;

struct pfx_conn {
    int fd;                                                 /* -1 after a failed pfx_reconnect() */
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)]; /* for pfx_reconnect() */
    volatile sig_atomic_t *cancel_flag;                     /* pfx_set_cancel_flag(), or NULL */
    int server_code; /* PROTO_ERR_* of the last ERROR frame answering this connection's call */
    uint8_t *buf;
    size_t len, cap, consumed; /* consumed: bytes of the frame last returned by pfx_next */
    uint32_t next_id;
    pending_frame *q_head, *q_tail; /* frames kept for other requests, in arrival order */
    size_t q_frames, q_bytes;       /* q_bytes counts each frame's bytes and its node */
    size_t q_max;                   /* bound on q_bytes (PFX_PENDING_MAX_DEFAULT) */
    pending_frame *held;            /* the queued frame last returned: it backs that proto_msg */
    proto_hello_ok hello;
    char model[256];
    char err[512];
};

static int seterr(pfx_conn *c, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, sizeof c->err, fmt, ap);
    va_end(ap);
    return code;
}

const char *pfx_errmsg(const pfx_conn *c)
{
    return c->err;
}

int pfx_server_error(const pfx_conn *c)
{
    return c->server_code;
}

const proto_hello_ok *pfx_server(const pfx_conn *c)
{
    return &c->hello;
}

/* A frame's counts are u32 and its whole length fits a u32: refuse what would wrap. */
static int check_count(pfx_conn *c, const char *what, size_t n, size_t unit)
{
    if (n > (UINT32_MAX - 64) / unit)
        return seterr(c, PFX_EPROTO, "%s of %zu is too large for one frame (at most %u)", what, n,
                      (unsigned)((UINT32_MAX - 64) / unit));
    return 0;
}

static int send_msg(pfx_conn *c, const proto_msg *m)
{
    if (c->fd < 0)
        return seterr(c, PFX_EIO, "not connected (the last reconnect failed)");
    uint8_t small[4096];
    size_t n = proto_encode(m, small, sizeof small);
    uint8_t *p = small;
    if (n > sizeof small) {
        p = malloc(n);
        if (!p)
            return seterr(c, PFX_ENOMEM, "out of memory");
        proto_encode(m, p, n);
    }
    size_t off = 0;
    while (off < n) {
        ssize_t w = send(c->fd, p + off, n - off, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            if (p != small)
                free(p);
            return seterr(c, PFX_EIO, "send: %s", strerror(errno));
        }
        off += (size_t)w;
    }
    if (p != small)
        free(p);
    return 0;
}

/* How long pfx_generate() waits for the daemon's DONE after it sent CANCEL before it gives the
 * connection up (a daemon that ignores CANCEL must not hang an interactive client). */
#define CANCEL_GRACE_MS 5000.0
/* While it watches a cancel flag, the wait for bytes wakes this often to look at it: a signal
 * that lands between the look and poll() is seen at most this late. */
#define FLAG_POLL_MS 50

/* NEXT_FLAGGED: next_frame() saw the watched cancel flag set; the buffered bytes are intact. */
enum { NEXT_FLAGGED = 1 };

/* Waits until c->fd is readable. watch: return NEXT_FLAGGED as soon as *c->cancel_flag is
 * non-zero; deadline: a base_now_ms() time after which it fails with PFX_EIO (0: none). */
static int wait_readable(pfx_conn *c, int watch, double deadline)
{
    if (!watch && deadline == 0)
        return 0;
    for (;;) {
        if (watch && *c->cancel_flag)
            return NEXT_FLAGGED;
        int ms = watch ? FLAG_POLL_MS : -1;
        if (deadline != 0) {
            double left = deadline - base_now_ms();
            if (left <= 0)
                return seterr(c, PFX_EIO,
                              "the daemon did not end the cancelled request within "
                              "%.0f s",
                              CANCEL_GRACE_MS / 1e3);
            if (ms < 0 || left < ms)
                ms = (int)left + 1;
        }
        struct pollfd p = {.fd = c->fd, .events = POLLIN};
        int r = poll(&p, 1, ms);
        if (r > 0)
            return 0;
        if (r < 0 && errno != EINTR)
            return seterr(c, PFX_EIO, "poll: %s", strerror(errno));
    }
}

/* The next frame from the socket. It starts the input buffer and is c->consumed bytes long
 * until the next read. See wait_readable() for watch and deadline. */
static int read_socket(pfx_conn *c, proto_msg *m, int watch, double deadline)
{
    if (c->fd < 0)
        return seterr(c, PFX_EIO, "not connected (the last reconnect failed)");
    /* Drop the frame returned last time (no buffer yet before the first read). */
    if (c->len > c->consumed)
        memmove(c->buf, c->buf + c->consumed, c->len - c->consumed);
    c->len -= c->consumed;
    c->consumed = 0;
    for (;;) {
        long r = proto_decode(c->buf, c->len, (size_t)1 << 30, m);
        if (r > 0) {
            c->consumed = (size_t)r;
            return 0;
        }
        if (r != PROTO_NEED_MORE)
            return seterr(c, PFX_EPROTO, "malformed frame from the daemon");
        if (c->cap - c->len < 65536) {
            size_t cap = c->cap ? c->cap * 2 : 1 << 16;
            uint8_t *nb = realloc(c->buf, cap);
            if (!nb)
                return seterr(c, PFX_ENOMEM, "out of memory");
            c->buf = nb;
            c->cap = cap;
        }
        int w = wait_readable(c, watch, deadline);
        if (w != 0)
            return w;
        ssize_t n = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return seterr(c, PFX_EIO, "connection closed by the daemon%s%s", n < 0 ? ": " : "",
                          n < 0 ? strerror(errno) : "");
        c->len += (size_t)n;
    }
}

/* Frees the queued frame returned last (its proto_msg is no longer valid). */
static void release_held(pfx_conn *c)
{
    free(c->held);
    c->held = NULL;
}

/* Takes the first queued frame of request id (any request when any) off the queue and decodes
 * it into m; it stays allocated as c->held. Returns 1 when one was found, else 0. */
static int take_pending(pfx_conn *c, int any, uint32_t id, proto_msg *m)
{
    pending_frame **pp = &c->q_head, *prev = NULL;
    while (*pp && !any && (*pp)->id != id) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    pending_frame *f = *pp;
    if (!f)
        return 0;
    *pp = f->next;
    if (c->q_tail == f)
        c->q_tail = prev;
    c->q_frames--;
    c->q_bytes -= sizeof *f + f->len;
    c->held = f;
    /* It decoded once already, from these same bytes. */
    proto_decode(f->bytes, f->len, f->len, m);
    return 1;
}

/* Keeps the frame just read from the socket (the buffer's first c->consumed bytes) for its
 * request. Past the bound, or out of memory, the frame is left unread instead. */
static int keep_pending(pfx_conn *c, uint32_t id)
{
    size_t len = c->consumed;
    if (c->q_bytes + sizeof(pending_frame) + len > c->q_max) {
        c->consumed = 0;
        return seterr(c, PFX_EFULL,
                      "%zu frames (%zu bytes) of other requests are waiting to be collected and "
                      "the next (request %u, %zu bytes) would pass the bound of %zu bytes: "
                      "collect them with pfx_next() or pfx_wait()",
                      c->q_frames, c->q_bytes, (unsigned)id, len, c->q_max);
    }
    pending_frame *f = malloc(sizeof *f + len);
    if (!f) {
        c->consumed = 0;
        return seterr(c, PFX_ENOMEM, "out of memory");
    }
    f->next = NULL;
    f->id = id;
    f->len = len;
    memcpy(f->bytes, c->buf, len);
    if (c->q_tail)
        c->q_tail->next = f;
    else
        c->q_head = f;
    c->q_tail = f;
    c->q_frames++;
    c->q_bytes += sizeof *f + len;
    return 0;
}

/* Frees every queued frame (pfx_close(), pfx_reconnect()). */
static void free_pending(pfx_conn *c)
{
    release_held(c);
    while (c->q_head) {
        pending_frame *f = c->q_head;
        c->q_head = f->next;
        free(f);
    }
    c->q_tail = NULL;
    c->q_frames = c->q_bytes = 0;
}

int pfx_next(pfx_conn *c, proto_msg *m)
{
    release_held(c);
    if (take_pending(c, 1, 0, m))
        return 0;
    return read_socket(c, m, 0, 0);
}

/* The next frame of request id, or an ERROR about the whole connection (id 0); frames of other
 * requests read meanwhile are kept for them. watch, deadline: as wait_readable()'s. */
static int next_for(pfx_conn *c, uint32_t id, proto_msg *m, int watch, double deadline)
{
    release_held(c);
    if (take_pending(c, 0, id, m))
        return 0;
    for (;;) {
        int rc = read_socket(c, m, watch, deadline);
        if (rc != 0)
            return rc;
        if (m->id == id || (m->id == 0 && m->type == PROTO_ERROR))
            return 0;
        if ((rc = keep_pending(c, m->id)) != 0)
            return rc;
    }
}

size_t pfx_pending(const pfx_conn *c)
{
    return c->q_frames;
}

void pfx_set_pending_max(pfx_conn *c, size_t bytes)
{
    c->q_max = bytes;
}

/* Connects a socket to path and checks who serves it (SO_PEERCRED). Returns the descriptor, or
 * -1 with the reason in err. */
static int open_socket(const char *path, char *err, size_t errlen)
{
    struct sockaddr_un sa = {0};
    if (strlen(path) >= sizeof sa.sun_path) {
        snprintf(err, errlen, "socket path '%s' is too long", path);
        return -1;
    }
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        snprintf(err, errlen, "cannot connect to prefixd at '%s': %s (is `prefixd serve` running?)",
                 path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    struct ucred cred;
    socklen_t credlen = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &credlen) != 0) {
        snprintf(err, errlen, "socket '%s': cannot read the server's credentials: %s", path,
                 strerror(errno));
        close(fd);
        return -1;
    }
    if (cred.uid != getuid() && cred.uid != 0) {
        snprintf(err, errlen,
                 "refusing the socket '%s': it is served by uid %u, neither this user (uid %u) "
                 "nor root; another user may have bound it first (check who owns it and its "
                 "directory)",
                 path, (unsigned)cred.uid, (unsigned)getuid());
        close(fd);
        return -1;
    }
    return fd;
}

/* HELLO and HELLO_OK on c's fresh socket (no bytes buffered). Fills c->hello. */
static int handshake(pfx_conn *c)
{
    proto_msg m = {0};
    m.type = PROTO_HELLO;
    m.u.hello.magic = PROTO_MAGIC;
    m.u.hello.version = PROTO_VERSION;
    int rc = send_msg(c, &m);
    if (rc == 0)
        rc = pfx_next(c, &m);
    if (rc == 0 && m.type == PROTO_ERROR) {
        c->server_code = (int)m.u.error.code;
        return seterr(c, PFX_ESERVER, "daemon refused the handshake: %.*s", (int)m.u.error.msg.len,
                      m.u.error.msg.p);
    }
    if (rc == 0 && m.type != PROTO_HELLO_OK)
        return seterr(c, PFX_EPROTO, "unexpected reply to HELLO (type %u)", m.type);
    if (rc != 0)
        return rc;
    c->hello = m.u.hello_ok;
    snprintf(c->model, sizeof c->model, "%.*s", (int)m.u.hello_ok.model.len, m.u.hello_ok.model.p);
    c->hello.model = (proto_str){c->model, (uint32_t)strlen(c->model)};
    return 0;
}

int pfx_connect(const char *path, pfx_conn **out, char *err, size_t errlen)
{
    *out = NULL;
    char def[4096];
    if (!path) {
        if (proto_default_socket_path(def, sizeof def) != 0) {
            snprintf(err, errlen, "default socket path too long");
            return PFX_ECONNECT;
        }
        path = def;
    }
    int fd = open_socket(path, err, errlen);
    if (fd < 0)
        return PFX_ECONNECT;
    pfx_conn *c = calloc(1, sizeof *c);
    if (!c) {
        close(fd);
        snprintf(err, errlen, "out of memory");
        return PFX_ENOMEM;
    }
    c->fd = fd;
    c->next_id = 1;
    c->q_max = PFX_PENDING_MAX_DEFAULT;
    memcpy(c->path, path, strlen(path) + 1); /* open_socket() checked that it fits */
    int rc = handshake(c);
    if (rc != 0) {
        snprintf(err, errlen, "%s", c->err);
        pfx_close(c);
        return rc;
    }
    *out = c;
    return 0;
}

int pfx_reconnect(pfx_conn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->len = c->consumed = 0;
    c->server_code = 0;
    free_pending(c); /* frames of the old connection's requests, which ended with it */
    c->fd = open_socket(c->path, c->err, sizeof c->err);
    if (c->fd < 0)
        return PFX_ECONNECT;
    int rc = handshake(c);
    if (rc != 0) {
        close(c->fd);
        c->fd = -1;
        c->len = c->consumed = 0;
    }
    return rc;
}

void pfx_set_cancel_flag(pfx_conn *c, volatile sig_atomic_t *flag)
{
    c->cancel_flag = flag;
}

void pfx_close(pfx_conn *c)
{
    if (!c)
        return;
    close(c->fd);
    free_pending(c);
    free(c->buf);
    free(c);
}

/* CHAT: the messages as proto_chat_msg, borrowed from g. */
static int send_chat(pfx_conn *c, const pfx_gen *g, uint32_t *id)
{
    if (g->warm || g->pin)
        return seterr(c, PFX_EPROTO, "a chat cannot be a WARM request");
    int rc = check_count(c, "a chat: messages", g->n_msgs, 8);
    size_t sys = g->system ? strlen(g->system) : 0, total = sys;
    for (size_t i = 0; rc == 0 && i < g->n_msgs; i++) {
        if (!g->msgs[i].role || (!g->msgs[i].content && g->msgs[i].len))
            return seterr(c, PFX_EPROTO, "chat message %zu has no role or no content", i);
        total += g->msgs[i].len + strlen(g->msgs[i].role);
        rc = check_count(c, "a chat: bytes", total, 1);
    }
    if (rc == 0)
        rc = check_count(c, "a system prompt: length", sys, 1);
    if (rc != 0)
        return rc;
    proto_chat_msg *pm = malloc((g->n_msgs ? g->n_msgs : 1) * sizeof *pm);
    if (!pm)
        return seterr(c, PFX_ENOMEM, "out of memory");
    for (size_t i = 0; i < g->n_msgs; i++) {
        pm[i].role = (proto_str){g->msgs[i].role, (uint32_t)strlen(g->msgs[i].role)};
        pm[i].content =
            (proto_str){g->msgs[i].content ? g->msgs[i].content : "", (uint32_t)g->msgs[i].len};
    }
    proto_msg m = {.type = PROTO_CHAT, .id = c->next_id++};
    m.u.chat.max_new = g->max_new;
    m.u.chat.temp = g->temp;
    m.u.chat.top_p = g->top_p;
    m.u.chat.seed = g->seed;
    m.u.chat.ns = (proto_str){g->ns ? g->ns : "", g->ns ? (uint32_t)strlen(g->ns) : 0};
    m.u.chat.system = (proto_str){sys ? g->system : "", (uint32_t)sys};
    m.u.chat.n_msgs = (uint32_t)g->n_msgs;
    m.u.chat.msgs = pm;
    rc = send_msg(c, &m);
    free(pm);
    *id = m.id;
    return rc;
}

int pfx_send(pfx_conn *c, const pfx_gen *g, uint32_t *id)
{
    if (g->msgs)
        return send_chat(c, g, id);
    proto_msg m = {0};
    m.type = g->warm ? PROTO_WARM : PROTO_GENERATE;
    m.id = c->next_id++;
    m.u.gen.max_new = g->max_new;
    m.u.gen.temp = g->temp;
    m.u.gen.top_p = g->top_p;
    m.u.gen.seed = g->seed;
    m.u.gen.ns = (proto_str){g->ns ? g->ns : "", g->ns ? (uint32_t)strlen(g->ns) : 0};
    uint8_t *le = NULL;
    int rc = g->ids ? check_count(c, "a prompt of token ids: count", g->n_ids, 4)
                    : check_count(c, "a prompt: length", g->text_len, 1);
    if (rc != 0)
        return rc;
    if (g->ids) {
        m.flags |= PROTO_GEN_TOKENS;
        le = malloc(g->n_ids * 4 + 1);
        if (!le)
            return seterr(c, PFX_ENOMEM, "out of memory");
        for (size_t i = 0; i < g->n_ids; i++)
            for (int b = 0; b < 4; b++)
                le[4 * i + (size_t)b] = (uint8_t)((uint32_t)g->ids[i] >> (8 * b));
        m.u.gen.ids = (proto_ids){le, (uint32_t)g->n_ids};
    } else {
        m.u.gen.text = (proto_str){g->text ? g->text : "", (uint32_t)g->text_len};
    }
    if (g->pin)
        m.flags |= PROTO_GEN_PIN;
    rc = send_msg(c, &m);
    free(le);
    *id = m.id;
    return rc;
}

int pfx_cancel(pfx_conn *c, uint32_t id)
{
    proto_msg m = {0};
    m.type = PROTO_CANCEL;
    m.id = id;
    return send_msg(c, &m);
}

/* Collects request id's frames until it ends; ttft_ms counts from t0. */
static int wait_request(pfx_conn *c, uint32_t id, pfx_token_fn on_token, void *arg, pfx_result *out,
                        double t0)
{
    memset(out, 0, sizeof *out);
    c->server_code = 0;
    /* After CANCEL, the tokens already on their way are read and dropped, and the daemon has
     * CANCEL_GRACE_MS to answer with DONE. */
    int cancelled = 0, rc;
    double deadline = 0;
    for (;;) {
        proto_msg m;
        rc = next_for(c, id, &m, c->cancel_flag && !cancelled, deadline);
        if (rc == NEXT_FLAGGED ||
            (rc == 0 && m.type == PROTO_TOKEN && !cancelled && c->cancel_flag && *c->cancel_flag)) {
            cancelled = 1;
            deadline = base_now_ms() + CANCEL_GRACE_MS;
            if ((rc = pfx_cancel(c, id)) != 0)
                return rc;
            continue;
        }
        if (rc != 0)
            return rc;
        if (m.type == PROTO_TOKEN) {
            if (out->ttft_ms == 0)
                out->ttft_ms = base_now_ms() - t0;
            if (cancelled)
                continue;
            if (on_token && on_token(arg, m.u.token.id, m.u.token.piece.p, m.u.token.piece.len)) {
                cancelled = 1;
                deadline = base_now_ms() + CANCEL_GRACE_MS;
                if ((rc = pfx_cancel(c, id)) != 0)
                    return rc;
            }
        } else if (m.type == PROTO_DONE) {
            out->done = m.u.done;
            if (out->ttft_ms == 0)
                out->ttft_ms = base_now_ms() - t0;
            return 0;
        } else if (m.type == PROTO_ERROR) {
            out->server_code = c->server_code = (int)m.u.error.code;
            snprintf(out->server_msg, sizeof out->server_msg, "%.*s", (int)m.u.error.msg.len,
                     m.u.error.msg.p);
            return seterr(c, PFX_ESERVER, "%s", out->server_msg);
        }
    }
}

int pfx_generate(pfx_conn *c, const pfx_gen *g, pfx_token_fn on_token, void *arg, pfx_result *out)
{
    memset(out, 0, sizeof *out);
    c->server_code = 0;
    uint32_t id;
    double t0 = base_now_ms();
    int rc = pfx_send(c, g, &id);
    if (rc)
        return rc;
    return wait_request(c, id, on_token, arg, out, t0);
}

int pfx_chat(pfx_conn *c, const pfx_gen *g, pfx_token_fn on_token, void *arg, pfx_result *out)
{
    if (!g->msgs) {
        memset(out, 0, sizeof *out);
        return seterr(c, PFX_EPROTO, "pfx_chat: no messages (g->msgs is NULL)");
    }
    return pfx_generate(c, g, on_token, arg, out);
}

int pfx_has_chat(const pfx_conn *c)
{
    return (pfx_server(c)->caps & PROTO_CAP_CHAT) != 0;
}

int pfx_wait(pfx_conn *c, uint32_t id, pfx_token_fn on_token, void *arg, pfx_result *out)
{
    return wait_request(c, id, on_token, arg, out, base_now_ms());
}

/* Sends m and waits for the frame answering it (other requests' frames are kept for them). */
static int roundtrip(pfx_conn *c, proto_msg *m, proto_msg *reply)
{
    m->id = c->next_id++;
    c->server_code = 0;
    int rc = send_msg(c, m);
    if (rc == 0)
        rc = next_for(c, m->id, reply, 0, 0);
    if (rc == 0 && reply->type == PROTO_ERROR) {
        c->server_code = (int)reply->u.error.code;
        return seterr(c, PFX_ESERVER, "%.*s", (int)reply->u.error.msg.len, reply->u.error.msg.p);
    }
    return rc;
}

int pfx_stats(pfx_conn *c, char **json)
{
    proto_msg m = {0}, r;
    m.type = PROTO_STATS;
    int rc = roundtrip(c, &m, &r);
    if (rc)
        return rc;
    *json = malloc(r.u.json.len + 1);
    if (!*json)
        return seterr(c, PFX_ENOMEM, "out of memory");
    memcpy(*json, r.u.json.p, r.u.json.len);
    (*json)[r.u.json.len] = 0;
    return 0;
}

int pfx_tokenize(pfx_conn *c, const char *text, size_t len, int32_t **ids, size_t *n)
{
    int rc = check_count(c, "a text to tokenize: length", len, 1);
    if (rc != 0)
        return rc;
    proto_msg m = {0}, r;
    m.type = PROTO_TOKENIZE;
    m.u.text = (proto_str){text, (uint32_t)len};
    rc = roundtrip(c, &m, &r);
    if (rc)
        return rc;
    *ids = malloc(((size_t)r.u.ids.n + 1) * sizeof(int32_t));
    if (!*ids)
        return seterr(c, PFX_ENOMEM, "out of memory");
    for (uint32_t i = 0; i < r.u.ids.n; i++)
        (*ids)[i] = proto_ids_get(r.u.ids, i);
    *n = r.u.ids.n;
    return 0;
}

int pfx_detokenize(pfx_conn *c, const int32_t *ids, size_t n, char **text, size_t *len)
{
    if (check_count(c, "ids to detokenize: count", n, 4) != 0)
        return PFX_EPROTO;
    uint8_t *le = malloc(n * 4 + 1);
    if (!le)
        return seterr(c, PFX_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++)
        for (int b = 0; b < 4; b++)
            le[4 * i + (size_t)b] = (uint8_t)((uint32_t)ids[i] >> (8 * b));
    proto_msg m = {0}, r;
    m.type = PROTO_DETOKENIZE;
    m.u.ids = (proto_ids){le, (uint32_t)n};
    int rc = roundtrip(c, &m, &r);
    free(le);
    if (rc)
        return rc;
    *text = malloc(r.u.text.len + 1);
    if (!*text)
        return seterr(c, PFX_ENOMEM, "out of memory");
    memcpy(*text, r.u.text.p, r.u.text.len);
    (*text)[r.u.text.len] = 0;
    *len = r.u.text.len;
    return 0;
}
