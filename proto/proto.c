/* proto.c — frame encoder and decoder (see proto.h and PROTOCOL.md).
 *
 * The decoder reads through a bounded cursor: every field read checks the bytes left in the
 * frame's body first, so no input can make it read outside the buffer, and every length is
 * compared against what remains (never added to a pointer before that check). It returns how
 * many bytes it consumed, PROTO_NEED_MORE, or a framing error, as picohttpparser does.
 */
#include "proto.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

const char *proto_strerror(int code)
{
    switch (code) {
#define X(name, c, msg)                                                                            \
    case c:                                                                                        \
        return msg;
        PROTO_ERR_MAP(X)
#undef X
    }
    return "unknown error";
}

/* ---- Reading -------------------------------------------------------------------------------- */

typedef struct rd {
    const uint8_t *p;
    size_t left;
    int bad; /* set by the first read past the end */
} rd;

static uint32_t get_le(const uint8_t *b, int n)
{
    uint32_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = v << 8 | b[i];
    return v;
}

static uint32_t rd_u(rd *r, int n)
{
    if (r->bad || r->left < (size_t)n) {
        r->bad = 1;
        return 0;
    }
    uint32_t v = get_le(r->p, n);
    r->p += n;
    r->left -= (size_t)n;
    return v;
}

static uint64_t rd_u64(rd *r)
{
    uint64_t lo = rd_u(r, 4);
    uint64_t hi = rd_u(r, 4);
    return lo | hi << 32;
}

static float rd_f32(rd *r)
{
    uint32_t v = rd_u(r, 4);
    float f;
    memcpy(&f, &v, 4);
    return f;
}

static double rd_f64(rd *r)
{
    uint64_t v = rd_u64(r);
    double d;
    memcpy(&d, &v, 8);
    return d;
}

static proto_str rd_str(rd *r)
{
    proto_str s = {"", 0};
    uint32_t n = rd_u(r, 4);
    if (r->bad || n > r->left) {
        r->bad = 1;
        return s;
    }
    s.p = (const char *)r->p;
    s.len = n;
    r->p += n;
    r->left -= n;
    return s;
}

static proto_ids rd_ids(rd *r)
{
    proto_ids ids = {NULL, 0};
    uint32_t n = rd_u(r, 4);
    if (r->bad || n > r->left / 4) {
        r->bad = 1;
        return ids;
    }
    ids.le = r->p;
    ids.n = n;
    r->p += 4 * (size_t)n;
    r->left -= 4 * (size_t)n;
    return ids;
}

static void invalid(proto_msg *out, uint32_t code, const char *msg)
{
    out->type = PROTO_TYPE_INVALID;
    out->u.error.code = code;
    out->u.error.msg.p = msg;
    out->u.error.msg.len = (uint32_t)strlen(msg);
}

long proto_frame_size(const uint8_t *buf, size_t len)
{
    if (len < 4)
        return PROTO_NEED_MORE;
    return (long)get_le(buf, 4) + 4;
}

long proto_decode(const uint8_t *buf, size_t len, size_t max_frame, proto_msg *out)
{
    if (len < 4)
        return PROTO_NEED_MORE;
    uint32_t flen = get_le(buf, 4);
    if (flen < 8)
        return -PROTO_ERR_BAD_FRAME;
    if (max_frame < PROTO_HEADER_SIZE || flen > max_frame - 4)
        return -PROTO_ERR_TOO_BIG;
    if (len - 4 < flen)
        return PROTO_NEED_MORE;
    memset(out, 0, sizeof *out);
    out->type = (uint16_t)get_le(buf + 4, 2);
    out->flags = (uint16_t)get_le(buf + 6, 2);
    out->id = get_le(buf + 8, 4);
    rd r = {buf + PROTO_HEADER_SIZE, flen - 8, 0};
    long consumed = (long)flen + 4;
    switch (out->type) {
    case PROTO_HELLO:
        out->u.hello.magic = rd_u(&r, 4);
        out->u.hello.version = (uint16_t)rd_u(&r, 2);
        rd_u(&r, 2);
        out->u.hello.caps = rd_u(&r, 4);
        if (!r.bad && out->u.hello.magic != PROTO_MAGIC) {
            invalid(out, PROTO_ERR_BAD_FRAME, "HELLO: bad magic (expected \"PFXD\")");
            return consumed;
        }
        break;
    case PROTO_HELLO_OK:
        out->u.hello_ok.version = (uint16_t)rd_u(&r, 2);
        rd_u(&r, 2);
        out->u.hello_ok.caps = rd_u(&r, 4);
        out->u.hello_ok.vocab_size = rd_u(&r, 4);
        out->u.hello_ok.seq_len = rd_u(&r, 4);
        out->u.hello_ok.block_tokens = rd_u(&r, 4);
        out->u.hello_ok.max_frame = rd_u(&r, 4);
        out->u.hello_ok.model = rd_str(&r);
        break;
    case PROTO_GENERATE:
    case PROTO_WARM: {
        proto_generate *g = &out->u.gen;
        g->max_new = rd_u(&r, 4);
        g->temp = rd_f32(&r);
        g->top_p = rd_f32(&r);
        g->seed = rd_u64(&r);
        g->ns = rd_str(&r);
        if (out->flags & PROTO_GEN_TOKENS)
            g->ids = rd_ids(&r);
        else
            g->text = rd_str(&r);
        if (!r.bad && (out->flags & ~(PROTO_GEN_TOKENS | PROTO_GEN_PIN))) {
            invalid(out, PROTO_ERR_BAD_REQUEST, "GENERATE/WARM: unknown flag bits");
            return consumed;
        }
        break;
    }
    case PROTO_CHAT: {
        proto_chat *c = &out->u.chat;
        c->max_new = rd_u(&r, 4);
        c->temp = rd_f32(&r);
        c->top_p = rd_f32(&r);
        c->seed = rd_u64(&r);
        c->ns = rd_str(&r);
        c->system = rd_str(&r);
        c->n_msgs = rd_u(&r, 4);
        c->list = r.p;
        for (uint32_t i = 0; i < c->n_msgs && !r.bad; i++) {
            rd_str(&r);
            rd_str(&r);
        }
        c->list_len = r.bad ? 0 : (size_t)(r.p - c->list);
        if (!r.bad && out->flags) {
            invalid(out, PROTO_ERR_BAD_REQUEST, "CHAT: unknown flag bits");
            return consumed;
        }
        break;
    }
    case PROTO_CANCEL:
    case PROTO_STATS:
        break;
    case PROTO_TOKEN:
        out->u.token.id = (int32_t)rd_u(&r, 4);
        out->u.token.piece = rd_str(&r);
        break;
    case PROTO_DONE: {
        proto_done *d = &out->u.done;
        d->finish = (uint8_t)rd_u(&r, 1);
        rd_u(&r, 2);
        rd_u(&r, 1);
        d->prompt_tokens = rd_u(&r, 4);
        d->cached_tokens = rd_u(&r, 4);
        d->cached_tokens_disk = rd_u(&r, 4);
        d->new_tokens = rd_u(&r, 4);
        d->ttft_ms = rd_f64(&r);
        d->prefill_ms = rd_f64(&r);
        d->decode_tokens_per_s = rd_f64(&r);
        d->total_ms = rd_f64(&r);
        d->cached_tokens_remote = out->flags & PROTO_DONE_REMOTE ? rd_u(&r, 4) : 0;
        if (!r.bad && (out->flags & ~PROTO_DONE_REMOTE)) {
            invalid(out, PROTO_ERR_BAD_FRAME, "DONE: unknown flag bits");
            return consumed;
        }
        break;
    }
    case PROTO_ERROR:
        out->u.error.code = rd_u(&r, 4);
        out->u.error.msg = rd_str(&r);
        break;
    case PROTO_STATS_REPLY:
        out->u.json = rd_str(&r);
        break;
    case PROTO_TOKENIZE:
    case PROTO_TEXT:
        out->u.text = rd_str(&r);
        break;
    case PROTO_TOKENS:
    case PROTO_DETOKENIZE:
        out->u.ids = rd_ids(&r);
        break;
    default:
        invalid(out, PROTO_ERR_UNKNOWN_TYPE, "unknown message type");
        return consumed;
    }
    if (r.bad)
        invalid(out, PROTO_ERR_BAD_FRAME, "a field runs past the end of the frame");
    else if (r.left != 0)
        invalid(out, PROTO_ERR_BAD_FRAME, "trailing bytes after the last field");
    return consumed;
}

/* ---- Writing -------------------------------------------------------------------------------- */

typedef struct wr {
    uint8_t *p;
    size_t cap, n; /* n counts every byte, written or not */
} wr;

static void wr_bytes(wr *w, const void *src, size_t n)
{
    if (w->n + n <= w->cap && n)
        memcpy(w->p + w->n, src, n);
    w->n += n;
}

static void wr_u(wr *w, uint32_t v, int n)
{
    uint8_t b[4];
    for (int i = 0; i < n; i++)
        b[i] = (uint8_t)(v >> (8 * i));
    wr_bytes(w, b, (size_t)n);
}

static void wr_u64(wr *w, uint64_t v)
{
    wr_u(w, (uint32_t)v, 4);
    wr_u(w, (uint32_t)(v >> 32), 4);
}

static void wr_f32(wr *w, float f)
{
    uint32_t v;
    memcpy(&v, &f, 4);
    wr_u(w, v, 4);
}

static void wr_f64(wr *w, double d)
{
    uint64_t v;
    memcpy(&v, &d, 8);
    wr_u64(w, v);
}

static void wr_str(wr *w, proto_str s)
{
    wr_u(w, s.len, 4);
    wr_bytes(w, s.p, s.len);
}

static void wr_ids(wr *w, proto_ids ids)
{
    wr_u(w, ids.n, 4);
    wr_bytes(w, ids.le, 4 * (size_t)ids.n);
}

size_t proto_encode(const proto_msg *m, uint8_t *buf, size_t cap)
{
    wr w = {buf, cap, 0};
    wr_u(&w, 0, 4); /* length, patched below */
    wr_u(&w, m->type, 2);
    wr_u(&w, m->flags, 2);
    wr_u(&w, m->id, 4);
    switch (m->type) {
    case PROTO_HELLO:
        wr_u(&w, m->u.hello.magic, 4);
        wr_u(&w, m->u.hello.version, 2);
        wr_u(&w, 0, 2);
        wr_u(&w, m->u.hello.caps, 4);
        break;
    case PROTO_HELLO_OK:
        wr_u(&w, m->u.hello_ok.version, 2);
        wr_u(&w, 0, 2);
        wr_u(&w, m->u.hello_ok.caps, 4);
        wr_u(&w, m->u.hello_ok.vocab_size, 4);
        wr_u(&w, m->u.hello_ok.seq_len, 4);
        wr_u(&w, m->u.hello_ok.block_tokens, 4);
        wr_u(&w, m->u.hello_ok.max_frame, 4);
        wr_str(&w, m->u.hello_ok.model);
        break;
    case PROTO_GENERATE:
    case PROTO_WARM:
        wr_u(&w, m->u.gen.max_new, 4);
        wr_f32(&w, m->u.gen.temp);
        wr_f32(&w, m->u.gen.top_p);
        wr_u64(&w, m->u.gen.seed);
        wr_str(&w, m->u.gen.ns);
        if (m->flags & PROTO_GEN_TOKENS)
            wr_ids(&w, m->u.gen.ids);
        else
            wr_str(&w, m->u.gen.text);
        break;
    case PROTO_CHAT:
        wr_u(&w, m->u.chat.max_new, 4);
        wr_f32(&w, m->u.chat.temp);
        wr_f32(&w, m->u.chat.top_p);
        wr_u64(&w, m->u.chat.seed);
        wr_str(&w, m->u.chat.ns);
        wr_str(&w, m->u.chat.system);
        wr_u(&w, m->u.chat.n_msgs, 4);
        if (m->u.chat.msgs) {
            for (uint32_t i = 0; i < m->u.chat.n_msgs; i++) {
                wr_str(&w, m->u.chat.msgs[i].role);
                wr_str(&w, m->u.chat.msgs[i].content);
            }
        } else {
            wr_bytes(&w, m->u.chat.list, m->u.chat.list_len);
        }
        break;
    case PROTO_TOKEN:
        wr_u(&w, (uint32_t)m->u.token.id, 4);
        wr_str(&w, m->u.token.piece);
        break;
    case PROTO_DONE:
        wr_u(&w, m->u.done.finish, 1);
        wr_u(&w, 0, 2);
        wr_u(&w, 0, 1);
        wr_u(&w, m->u.done.prompt_tokens, 4);
        wr_u(&w, m->u.done.cached_tokens, 4);
        wr_u(&w, m->u.done.cached_tokens_disk, 4);
        wr_u(&w, m->u.done.new_tokens, 4);
        wr_f64(&w, m->u.done.ttft_ms);
        wr_f64(&w, m->u.done.prefill_ms);
        wr_f64(&w, m->u.done.decode_tokens_per_s);
        wr_f64(&w, m->u.done.total_ms);
        if (m->flags & PROTO_DONE_REMOTE)
            wr_u(&w, m->u.done.cached_tokens_remote, 4);
        break;
    case PROTO_ERROR:
        wr_u(&w, m->u.error.code, 4);
        wr_str(&w, m->u.error.msg);
        break;
    case PROTO_STATS_REPLY:
        wr_str(&w, m->u.json);
        break;
    case PROTO_TOKENIZE:
    case PROTO_TEXT:
        wr_str(&w, m->u.text);
        break;
    case PROTO_TOKENS:
    case PROTO_DETOKENIZE:
        wr_ids(&w, m->u.ids);
        break;
    default: /* CANCEL, STATS: empty body */
        break;
    }
    if (w.n <= cap) {
        uint32_t flen = (uint32_t)(w.n - 4);
        for (int i = 0; i < 4; i++)
            buf[i] = (uint8_t)(flen >> (8 * i));
    }
    return w.n;
}

int proto_chat_next(const proto_chat *c, size_t *off, proto_chat_msg *m)
{
    if (*off >= c->list_len)
        return 0;
    rd r = {c->list + *off, c->list_len - *off, 0};
    m->role = rd_str(&r);
    m->content = rd_str(&r);
    if (r.bad)
        return 0;
    *off = (size_t)(r.p - c->list);
    return 1;
}

int proto_namespace_valid(proto_str ns)
{
    if (ns.len > PROTO_MAX_NAMESPACE)
        return 0;
    for (uint32_t i = 0; i < ns.len; i++) {
        char ch = ns.p[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '_' || ch == '-'))
            return 0;
    }
    return 1;
}

size_t proto_utf8_check(const char *s, size_t len)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        unsigned c = u[i];
        size_t n;
        uint32_t cp, min;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            n = 2, cp = c & 0x1F, min = 0x80;
        } else if ((c & 0xF0) == 0xE0) {
            n = 3, cp = c & 0x0F, min = 0x800;
        } else if ((c & 0xF8) == 0xF0) {
            n = 4, cp = c & 0x07, min = 0x10000;
        } else {
            return i;
        }
        if (len - i < n)
            return i;
        for (size_t k = 1; k < n; k++) {
            if ((u[i + k] & 0xC0) != 0x80)
                return i;
            cp = cp << 6 | (u[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return i;
        i += n;
    }
    return len;
}

/* ---- Sampling ------------------------------------------------------------------------------- */

uint64_t proto_random_seed(void)
{
    uint64_t seed;
    if (getrandom(&seed, sizeof seed, GRND_NONBLOCK) == (ssize_t)sizeof seed)
        return seed;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    seed = (uint64_t)ts.tv_sec * 1000000007u ^ (uint64_t)ts.tv_nsec ^ (uint64_t)getpid() << 40;
    /* splitmix64's finaliser, so that nearby times give unrelated seeds. */
    seed = (seed ^ seed >> 30) * 0xbf58476d1ce4e5b9ull;
    seed = (seed ^ seed >> 27) * 0x94d049bb133111ebull;
    return seed ^ seed >> 31;
}

/* ---- The default socket ---------------------------------------------------------------------- */

/* Without $PREFIXD_SOCKET or $XDG_RUNTIME_DIR the socket lives in a directory of its own under
 * /tmp rather than in /tmp itself: any user can create /tmp/anything first, but a directory that
 * the daemon owns with mode 0700 is one nobody else can plant a socket in (and /tmp's sticky bit
 * keeps others from renaming it away). */
static int private_dir(char *buf, size_t cap)
{
    int n = snprintf(buf, cap, "/tmp/prefixd-%u", (unsigned)getuid());
    return n < 0 || (size_t)n >= cap ? -1 : 0;
}

static int env_set(const char *name)
{
    const char *v = getenv(name);
    return v && *v;
}

int proto_default_socket_path(char *buf, size_t cap)
{
    int n;
    if (env_set("PREFIXD_SOCKET"))
        n = snprintf(buf, cap, "%s", getenv("PREFIXD_SOCKET"));
    else if (env_set("XDG_RUNTIME_DIR"))
        n = snprintf(buf, cap, "%s/prefixd.sock", getenv("XDG_RUNTIME_DIR"));
    else if (private_dir(buf, cap) != 0)
        return -1;
    else
        n = snprintf(buf + strlen(buf), cap - strlen(buf), "/prefixd.sock");
    return n < 0 || (size_t)n >= cap ? -1 : 0;
}

int proto_default_socket_dir(char *buf, size_t cap)
{
    if (env_set("PREFIXD_SOCKET") || env_set("XDG_RUNTIME_DIR"))
        return 0;
    return private_dir(buf, cap) != 0 ? -1 : 1;
}

int proto_socket_dir_check(const char *dir, char *err, size_t errlen)
{
    struct stat st;
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        int e = errno;
        snprintf(err, errlen, "socket directory '%s': cannot create it: %s", dir, strerror(e));
        return -e;
    }
    /* lstat: a symlink planted under the name is refused, never followed. */
    if (lstat(dir, &st) != 0) {
        int e = errno;
        snprintf(err, errlen, "socket directory '%s': %s", dir, strerror(e));
        return -e;
    }
    if (!S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "socket directory '%s' is not a directory (%s): refusing it", dir,
                 S_ISLNK(st.st_mode) ? "a symlink" : "another kind of file");
        return -ENOTDIR;
    }
    if (st.st_uid != geteuid()) {
        snprintf(err, errlen,
                 "socket directory '%s' is owned by uid %u, not by this user (uid %u): refusing "
                 "it (another user may have created it; remove it or set $PREFIXD_SOCKET)",
                 dir, (unsigned)st.st_uid, (unsigned)geteuid());
        return -EPERM;
    }
    if (st.st_mode & 077) {
        snprintf(err, errlen,
                 "socket directory '%s' has mode %04o: refusing it, it must be private to its "
                 "owner (chmod 700 it)",
                 dir, (unsigned)(st.st_mode & 07777));
        return -EPERM;
    }
    return 0;
}
