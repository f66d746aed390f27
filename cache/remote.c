/* remote.c — the Redis/Valkey remote tier (cache_remote.h): pipelined GETs and SETs of verified
 * block values over one connection, every exchange under a deadline.
 *
 * Why these shapes:
 * - hiredis connects (TCP or Unix socket, with a connect timeout) and parses the small replies
 *   (its redisReader); GET replies are parsed here, so that a payload is read from the socket
 *   straight into its slot (get_reply()). The commands are written here, as RESP arrays, with
 *   sendmsg() (an iovec, and no SIGPIPE when the server has gone); a SET's payload is sent from
 *   the pool slot where it lies (the header and token ids are built beside it), so a
 *   write-behind costs the engine nothing and the remote thread no staging copy.
 * - The socket is made non-blocking after the connect and every wait is a poll() bounded by the
 *   timeout (how long the server may stay silent: a stalled server costs a request one timeout)
 *   and by the exchange's hard deadline (20 timeouts, at least 1 s: a server that answers but
 *   crawls). Measuring silence rather than a batch's whole time keeps a large batch on a busy
 *   machine (this one, at a load average of 17, moved 8 MB in 60-120 ms) from failing while data
 *   flows. After a failed or late exchange the replies still owed cannot be told from the next
 *   ones, so the connection is dropped; the caller (the remote thread) reconnects with backoff.
 * - Loads come in chains whose keys are known in advance: a batch of GETs (at most
 *   CACHE_REMOTE_BATCH_BYTES of values) goes out in one write and its replies are read in order,
 *   one round trip per batch; a miss ends the chain (the blocks after it are useless without it)
 *   but the batch's replies are still read, to keep the connection in step.
 * - Nothing is trusted: a reply's length is compared with the value size first (another length
 *   is read past and dropped, within the deadline), then cache_value_check_head() checks the
 *   header and token ids and cache_value_check_sum() the checksum of the payload where it
 *   landed (hashed piece by piece right after each read() put it there, while it is in the
 *   CPU's cache, instead of in a second pass). A bad value is deleted (DEL) so that nobody loads it
 * again.
 */
#include "base.h"
#include "cache_remote.h"

#include "cache_value.h"
#include "remote_int.h"

#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#define XXH_INLINE_ALL /* the payload's hash, chunk by chunk as it lands, at full speed */
#include <xxhash.h>

#define RBUF_BYTES ((size_t)1 << 20)    /* one read(): large, so a 1 MB value is a few syscalls */
#define CMD_MAX 256                     /* a command's text around a value (key, lengths, TTL) */
#define IB_BYTES ((size_t)256 << 10)    /* the GET replies' input buffer (payloads bypass it) */
#define BULK_MAX ((long long)512 << 20) /* Redis's own proto-max-bulk-len default */
#define DIRECT_MIN ((size_t)64 << 10)   /* read straight into the slot from this size on */

const double cache_remote_hist_ms[CACHE_REMOTE_HIST] = {1, 2, 5, 10, 20, 50, 100, 200, 500, 1e300};

struct cache_remote {
    char *url;
    char *host; /* TCP, or NULL */
    int port;
    int db;
    char *path; /* Unix socket, or NULL */
    char *password;
    double timeout_ms;
    uint32_t ttl_s;
    cache_value_fmt fmt;
    redisContext *c; /* NULL: not connected */
    char *rbuf;      /* RBUF_BYTES: what read_reply() feeds hiredis's reader */
    char *ib;        /* IB_BYTES: GET replies, parsed here (get_reply()) */
    size_t ib_pos, ib_len;
    uint8_t *head;     /* one value's header and token ids */
    XXH3_state_t *hs;  /* the payload's hash as it is read (get_reply()) */
    XXH128_hash_t sum; /* ... the last payload's */
    char *cmd;         /* commands being built (GET batches, DEL) */
    size_t cmd_cap;
    cache_remote_stats st;
    char msg[512];
    char redirect[CACHE__REDIRECT_LEN]; /* the last GET's MOVED or ASK reply (a cluster's) */
};

/* ---- small helpers ---- */

static void record_latency(cache_remote *r, double ms)
{
    int i = 0;
    while (i < CACHE_REMOTE_HIST - 1 && ms >= cache_remote_hist_ms[i])
        i++;
    r->st.latency_hist[i]++;
    r->st.round_trips++;
}

void cache_remote_key_name(cache_key k, char *out)
{
    snprintf(out, CACHE_REMOTE_KEY_LEN + 1, "%s%016llx%016llx", CACHE_REMOTE_KEY_PREFIX,
             (unsigned long long)k.hi, (unsigned long long)k.lo);
}

void cache_remote_partial_key_name(cache_key parent, const int32_t *tokens, size_t t, char *out)
{
    /* A tag keeps these hashes apart from block keys, whatever t is. */
    static const char tag[8] = "partial";
    XXH3_state_t st;
    XXH3_128bits_reset(&st);
    XXH3_128bits_update(&st, &parent.lo, 8);
    XXH3_128bits_update(&st, &parent.hi, 8);
    XXH3_128bits_update(&st, tag, sizeof tag);
    XXH3_128bits_update(&st, tokens, t * sizeof(int32_t));
    XXH128_hash_t h = XXH3_128bits_digest(&st);
    snprintf(out, CACHE_REMOTE_PARTIAL_KEY_LEN + 1, "%s%016llx%016llx", CACHE_REMOTE_PARTIAL_PREFIX,
             (unsigned long long)h.high64, (unsigned long long)h.low64);
}

/* ---- the URL ---- */

/* Splits url into host/port/db or path (allocated into r when r is not NULL). */
static int url_parse(const char *url, cache_remote *r, char *msg, size_t msglen)
{
    if (strncmp(url, "unix:", 5) == 0) {
        const char *p = url + 5;
        if (strncmp(p, "//", 2) == 0)
            p += 2;
        if (!*p) {
            snprintf(msg, msglen, "remote '%s': no socket path after 'unix:'", url);
            return CACHE_EINVAL;
        }
        if (strlen(p) >= 108) {
            snprintf(msg, msglen, "remote '%s': socket path longer than 107 bytes", url);
            return CACHE_EINVAL;
        }
        if (r && !(r->path = strdup(p)))
            return CACHE_ENOMEM;
        return 0;
    }
    if (strncmp(url, "redis://", 8) != 0) {
        snprintf(msg, msglen,
                 "remote '%s': not a URL this build reads (redis://HOST:PORT[/DB] or "
                 "unix:/path/redis.sock; rediss:// is not supported)",
                 url);
        return CACHE_EINVAL;
    }
    const char *p = url + 8, *hend;
    if (strchr(p, '@')) {
        snprintf(msg, msglen,
                 "remote '%s': credentials in the URL are not accepted (they would show in the "
                 "process list): use --remote-password-file",
                 url);
        return CACHE_EINVAL;
    }
    const char *h0 = p;
    if (*p == '[') {
        hend = strchr(p, ']');
        if (!hend) {
            snprintf(msg, msglen, "remote '%s': unterminated [IPv6 address]", url);
            return CACHE_EINVAL;
        }
        h0 = p + 1;
        p = hend + 1;
    } else {
        hend = p + strcspn(p, ":/");
        p = hend;
    }
    if (hend == h0) {
        snprintf(msg, msglen, "remote '%s': no host", url);
        return CACHE_EINVAL;
    }
    long port = 6379, db = 0;
    char *end;
    if (*p == ':') {
        errno = 0;
        port = strtol(p + 1, &end, 10);
        if (end == p + 1 || errno || port < 1 || port > 65535 || (*end && *end != '/')) {
            snprintf(msg, msglen, "remote '%s': the port must be 1..65535", url);
            return CACHE_EINVAL;
        }
        p = end;
    }
    if (*p == '/' && p[1]) {
        errno = 0;
        db = strtol(p + 1, &end, 10);
        if (end == p + 1 || errno || db < 0 || db > 1000000 || *end) {
            snprintf(msg, msglen, "remote '%s': the database after '/' must be a number >= 0", url);
            return CACHE_EINVAL;
        }
    } else if (*p && strcmp(p, "/") != 0) {
        snprintf(msg, msglen, "remote '%s': unexpected '%s' after the host", url, p);
        return CACHE_EINVAL;
    }
    if (r) {
        r->host = strndup(h0, (size_t)(hend - h0));
        r->port = (int)port;
        r->db = (int)db;
        if (!r->host)
            return CACHE_ENOMEM;
    }
    return 0;
}

int cache_remote_url_check(const char *url, char *msg, size_t msglen)
{
    return url_parse(url, NULL, msg, msglen);
}

/* ---- open, close, connect ---- */

int cache_remote_open(const cache_remote_opts *o, cache_remote **out, char *msg, size_t msglen)
{
    *out = NULL;
    if (!o->url || o->block_tokens < 1 || o->block_floats == 0) {
        snprintf(msg, msglen, "remote tier: no URL or no block geometry");
        return CACHE_EINVAL;
    }
    cache_remote *r = calloc(1, sizeof *r);
    if (!r) {
        snprintf(msg, msglen, "remote tier: out of memory");
        return CACHE_ENOMEM;
    }
    int rc = url_parse(o->url, r, msg, msglen);
    r->url = strdup(o->url);
    r->password = o->password && o->password[0] ? strdup(o->password) : NULL;
    r->timeout_ms = o->timeout_ms > 0 ? o->timeout_ms : CACHE_REMOTE_DEFAULT_TIMEOUT;
    r->ttl_s = o->ttl_s ? o->ttl_s : CACHE_REMOTE_DEFAULT_TTL;
    cache_value_fmt_init(&r->fmt, o->fingerprint, o->block_tokens, o->block_floats, o->kv_type);
    r->rbuf = malloc(RBUF_BYTES);
    r->ib = malloc(IB_BYTES);
    r->head = malloc(sizeof(cache_value_hdr) + r->fmt.tok_bytes);
    r->hs = XXH3_createState();
    r->cmd_cap = 4096;
    r->cmd = malloc(r->cmd_cap);
    if (rc == 0 && (!r->url || (o->password && o->password[0] && !r->password) || !r->rbuf ||
                    !r->ib || !r->head || !r->cmd || !r->hs)) {
        snprintf(msg, msglen, "remote tier: out of memory");
        rc = CACHE_ENOMEM;
    }
    if (rc != 0) {
        cache_remote_close(r);
        return rc;
    }
    *out = r;
    return 0;
}

static void disconnect(cache_remote *r)
{
    if (r->c)
        redisFree(r->c);
    r->c = NULL;
    r->ib_pos = r->ib_len = 0;
}

void cache_remote_close(cache_remote *r)
{
    if (!r)
        return;
    disconnect(r);
    if (r->password) /* not left in freed memory */
        memset(r->password, 0, strlen(r->password));
    free(r->password);
    free(r->url);
    free(r->host);
    free(r->path);
    free(r->rbuf);
    free(r->ib);
    free(r->head);
    XXH3_freeState(r->hs);
    free(r->cmd);
    free(r);
}

int cache_remote_connected(const cache_remote *r)
{
    return r->c != NULL;
}

const char *cache_remote_url(const cache_remote *r)
{
    return r->url;
}

const char *cache_remote_errmsg(const cache_remote *r)
{
    return r ? r->msg : "";
}

void cache_remote_get_stats(const cache_remote *r, cache_remote_stats *out)
{
    *out = r->st;
}

/* A failed exchange: the reason into msg, the connection dropped, the error counted. */
static int conn_fail(cache_remote *r, int rc, const char *what, const char *why)
{
    snprintf(r->msg, sizeof r->msg, "remote '%s': %s: %s", r->url, what, why);
    disconnect(r);
    if (rc == CACHE_ETIMEDOUT)
        r->st.timeouts++;
    else
        r->st.errors++;
    return rc;
}

/* ---- I/O under a deadline ---- */

/* Waits until the socket is ready for events, for at most the timeout (the server's silence:
 * every wait follows a read or write that moved what it could) and never past the exchange's
 * hard deadline. */
static int io_wait(cache_remote *r, short events, double deadline)
{
    for (;;) {
        double left = deadline - base_now_ms();
        if (left <= 0)
            return CACHE_ETIMEDOUT;
        if (left > r->timeout_ms)
            left = r->timeout_ms;
        struct pollfd p = {.fd = r->c->fd, .events = events};
        int k = poll(&p, 1, (int)left + 1);
        if (k > 0)
            return (p.revents & (events | POLLHUP | POLLERR)) ? 0 : CACHE_EIO;
        if (k == 0)
            return CACHE_ETIMEDOUT;
        if (errno != EINTR)
            return CACHE_EIO;
    }
}

/* After a read() that returned k <= 0: 0 when reading may go on (interrupted, or the socket
 * became readable within the deadline), else the connection's failure (closed, an error, the
 * server silent past the deadline). */
static int read_again(cache_remote *r, ssize_t k, double deadline, const char *what)
{
    if (k == 0)
        return conn_fail(r, CACHE_EIO, what, "connection closed by the server");
    if (errno == EINTR)
        return 0;
    if (errno != EAGAIN && errno != EWOULDBLOCK)
        return conn_fail(r, CACHE_EIO, what, strerror(errno));
    int rc = io_wait(r, POLLIN, deadline);
    return rc ? conn_fail(r, rc, what,
                          rc == CACHE_ETIMEDOUT ? "no answer (deadline)" : "connection lost")
              : 0;
}

/* The hard deadline of one exchange (a batch): 20 timeouts, at least a second. The timeout
 * itself bounds each silence of the server; this bounds a server that answers but crawls. */
static double hard_ms(const cache_remote *r)
{
    return 20 * r->timeout_ms < 1000 ? 1000 : 20 * r->timeout_ms;
}

double cache__remote_hard_ms(const cache_remote *r)
{
    return hard_ms(r);
}

/* Writes every byte of iov[0..n) (modified), waiting for room up to the deadline. */
static int send_iov(cache_remote *r, struct iovec *iov, int n, double deadline, const char *what)
{
    while (n > 0) {
        /* sendmsg() for MSG_NOSIGNAL: a server gone is an error here, never SIGPIPE. */
        struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)n};
        ssize_t k = sendmsg(r->c->fd, &mh, MSG_NOSIGNAL);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                return conn_fail(r, CACHE_EIO, what, strerror(errno));
            int rc = io_wait(r, POLLOUT, deadline);
            if (rc)
                return conn_fail(r, rc, what,
                                 rc == CACHE_ETIMEDOUT ? "the server reads nothing (deadline)"
                                                       : "connection lost");
            continue;
        }
        size_t done = (size_t)k;
        while (n > 0 && done >= iov->iov_len) {
            done -= iov->iov_len;
            iov++;
            n--;
        }
        if (n > 0) {
            iov->iov_base = (char *)iov->iov_base + done;
            iov->iov_len -= done;
        }
    }
    return 0;
}

static int send_buf(cache_remote *r, const void *buf, size_t len, double deadline, const char *what)
{
    struct iovec iov = {(void *)buf, len};
    return send_iov(r, &iov, 1, deadline, what);
}

/* Reads the next reply (free it with freeReplyObject()). */
static int read_reply(cache_remote *r, redisReply **out, double deadline, const char *what)
{
    for (;;) {
        void *rep = NULL;
        if (redisReaderGetReply(r->c->reader, &rep) != REDIS_OK)
            return conn_fail(r, CACHE_EIO, what,
                             r->c->reader->errstr[0] ? r->c->reader->errstr
                                                     : "a reply that is not RESP");
        if (rep) {
            *out = rep;
            return 0;
        }
        ssize_t k = read(r->c->fd, r->rbuf, RBUF_BYTES);
        if (k > 0) {
            if (redisReaderFeed(r->c->reader, r->rbuf, (size_t)k) != REDIS_OK)
                return conn_fail(r, CACHE_ENOMEM, what, "out of memory buffering a reply");
            continue;
        }
        int rc = read_again(r, k, deadline, what);
        if (rc)
            return rc;
    }
}

/* Appends one command (RESP array of argc bulk strings) to r->cmd at *len. */
static int cmd_append(cache_remote *r, size_t *len, int argc, const char *const *argv,
                      const size_t *argl)
{
    size_t need = 32;
    for (int i = 0; i < argc; i++)
        need += argl[i] + 32;
    if (*len + need > r->cmd_cap) {
        size_t cap = r->cmd_cap;
        while (*len + need > cap)
            cap *= 2;
        char *p = realloc(r->cmd, cap);
        if (!p)
            return CACHE_ENOMEM;
        r->cmd = p;
        r->cmd_cap = cap;
    }
    *len += (size_t)sprintf(r->cmd + *len, "*%d\r\n", argc);
    for (int i = 0; i < argc; i++) {
        *len += (size_t)sprintf(r->cmd + *len, "$%zu\r\n", argl[i]);
        memcpy(r->cmd + *len, argv[i], argl[i]);
        *len += argl[i];
        memcpy(r->cmd + *len, "\r\n", 2);
        *len += 2;
    }
    return 0;
}

/* One command, its reply checked: an error reply or another type than want fails. */
static int simple_cmd(cache_remote *r, int argc, const char *const *argv, const size_t *argl,
                      double deadline, const char *what)
{
    size_t len = 0;
    if (cmd_append(r, &len, argc, argv, argl) != 0)
        return conn_fail(r, CACHE_ENOMEM, what, "out of memory");
    int rc = send_buf(r, r->cmd, len, deadline, what);
    redisReply *rep = NULL;
    if (rc == 0)
        rc = read_reply(r, &rep, deadline, what);
    if (rc)
        return rc;
    if (rep->type == REDIS_REPLY_ERROR) {
        char why[256];
        snprintf(why, sizeof why, "the server says: %.200s", rep->str);
        freeReplyObject(rep);
        return conn_fail(r, CACHE_EIO, what, why);
    }
    freeReplyObject(rep);
    return 0;
}

int cache_remote_connect(cache_remote *r)
{
    disconnect(r);
    r->msg[0] = 0;
    double t = r->timeout_ms < 200 ? 200 : r->timeout_ms; /* connecting: a TCP handshake or two */
    struct timeval tv = {(time_t)(t / 1000), (suseconds_t)((long)t % 1000) * 1000};
    double deadline = base_now_ms() + t;
    redisContext *c = r->path ? redisConnectUnixWithTimeout(r->path, tv)
                              : redisConnectWithTimeout(r->host, r->port, tv);
    if (!c || c->err) {
        snprintf(r->msg, sizeof r->msg, "remote '%s': cannot connect: %s", r->url,
                 c ? c->errstr : "out of memory");
        if (c)
            redisFree(c);
        r->st.connect_fails++;
        return CACHE_EIO;
    }
    r->c = c;
    /* Our own poll() bounds every wait; hiredis only parses. maxbuf 0: its buffer keeps its
     * size between replies instead of being freed and grown again for every value. */
    int fl = fcntl(c->fd, F_GETFL);
    if (fl < 0 || fcntl(c->fd, F_SETFL, fl | O_NONBLOCK) < 0) {
        conn_fail(r, CACHE_EIO, "cannot make the socket non-blocking", strerror(errno));
        r->st.connect_fails++;
        return CACHE_EIO;
    }
    c->flags &= ~REDIS_BLOCK;
    c->reader->maxbuf = 0;
    int rc = 0;
    if (r->password) {
        const char *argv[] = {"AUTH", r->password};
        size_t argl[] = {4, strlen(r->password)};
        rc = simple_cmd(r, 2, argv, argl, deadline, "authenticating (AUTH)");
    }
    if (rc == 0 && r->db) {
        char dbs[24];
        snprintf(dbs, sizeof dbs, "%d", r->db);
        const char *argv[] = {"SELECT", dbs};
        size_t argl[] = {6, strlen(dbs)};
        rc = simple_cmd(r, 2, argv, argl, deadline, "selecting the database");
    }
    if (rc == 0) {
        const char *argv[] = {"PING"};
        size_t argl[] = {4};
        rc = simple_cmd(r, 1, argv, argl, deadline, "checking the server answers (PING)");
    }
    if (r->password) /* the AUTH command's copy */
        memset(r->cmd, 0, r->cmd_cap);
    if (rc) {
        r->st.connect_fails++;
        return rc;
    }
    r->st.connects++;
    return 0;
}

/* ---- GET replies, parsed here ----
 *
 * hiredis's reader would buffer a whole 1 MB value, copy it into a reply object of its own
 * (a fresh allocation, page-faulted every time) and leave us to copy it again into the slot:
 * three copies and the faults, measured at ~1.3 GB/s. A GET's reply is one of three things, so
 * they are parsed here: the header line and the value's head go through a small buffer, the
 * payload is read from the socket straight into the destination slot and checksummed there.
 * Between exchanges both readers are empty (a reply is always read whole), so they never share
 * a byte. */

/* Reads more of the stream into ib (compacting it first). */
static int in_fill(cache_remote *r, double deadline, const char *what)
{
    if (r->ib_pos > 0) {
        memmove(r->ib, r->ib + r->ib_pos, r->ib_len - r->ib_pos);
        r->ib_len -= r->ib_pos;
        r->ib_pos = 0;
    }
    if (r->ib_len == IB_BYTES)
        return conn_fail(r, CACHE_EIO, what, "a reply line longer than 256 KiB");
    for (;;) {
        ssize_t k = read(r->c->fd, r->ib + r->ib_len, IB_BYTES - r->ib_len);
        if (k > 0) {
            r->ib_len += (size_t)k;
            return 0;
        }
        int rc = read_again(r, k, deadline, what);
        if (rc)
            return rc;
    }
}

/* The next n bytes of the stream into out, or dropped (out NULL): what ib holds first, then
 * large pieces straight from the socket into out. With hash, each piece is fed to r->hs where
 * it landed, right after it landed (still in the CPU's cache). */
static int in_take(cache_remote *r, void *out, size_t n, int hash, double deadline,
                   const char *what)
{
    uint8_t *o = out;
    while (n > 0) {
        size_t have = r->ib_len - r->ib_pos;
        if (have > 0) {
            size_t m = have < n ? have : n;
            if (o) {
                memcpy(o, r->ib + r->ib_pos, m);
                if (hash)
                    XXH3_128bits_update(r->hs, o, m);
                o += m;
            }
            r->ib_pos += m;
            n -= m;
            continue;
        }
        r->ib_pos = r->ib_len = 0;
        if (!o || n < DIRECT_MIN) {
            int rc = in_fill(r, deadline, what);
            if (rc)
                return rc;
            continue;
        }
        ssize_t k = read(r->c->fd, o, n);
        if (k > 0) {
            if (hash)
                XXH3_128bits_update(r->hs, o, (size_t)k);
            o += k;
            n -= (size_t)k;
            continue;
        }
        int rc = read_again(r, k, deadline, what);
        if (rc)
            return rc;
    }
    return 0;
}

/* The next reply line, without its CRLF, NUL-terminated in ib (valid until the next in_*). */
static int in_line(cache_remote *r, char **line, double deadline, const char *what)
{
    for (;;) {
        char *p = r->ib + r->ib_pos;
        char *e = memchr(p, '\n', r->ib_len - r->ib_pos);
        if (e) {
            if (e == p || e[-1] != '\r')
                return conn_fail(r, CACHE_EIO, what, "a reply line without CRLF");
            e[-1] = 0;
            r->ib_pos = (size_t)(e + 1 - r->ib);
            *line = p;
            return 0;
        }
        int rc = in_fill(r, deadline, what);
        if (rc)
            return rc;
    }
}

/* What one GET reply was. */
enum { GOT_VALUE, GOT_NIL, GOT_ERROR, GOT_BAD, GOT_MOVED, GOT_ASK };

/* Reads one GET reply. With want, a value of the right length goes into r->head and dst (its
 * payload), unverified; without, or of another length, its bytes are dropped (GOT_BAD for a
 * wrong length). GOT_ERROR leaves the server's text in r->msg. Returns 0 or a failed exchange. */
static int get_reply(cache_remote *r, int want, float *dst, int *got, double deadline)
{
    const char *what = "loading blocks";
    char *line, *end;
    int rc = in_line(r, &line, deadline, what);
    if (rc)
        return rc;
    if (line[0] == '-') {
        snprintf(r->msg, sizeof r->msg, "remote '%s': GET: the server says: %.200s", r->url,
                 line + 1);
        /* Something else than a string under our key is as bad as a corrupt value. A cluster
         * node's redirection is kept for remote_cluster.c. */
        *got = strncmp(line + 1, "WRONGTYPE", 9) == 0 ? GOT_BAD : GOT_ERROR;
        if (strncmp(line + 1, "MOVED ", 6) == 0 || strncmp(line + 1, "ASK ", 4) == 0) {
            *got = line[1] == 'M' ? GOT_MOVED : GOT_ASK;
            snprintf(r->redirect, sizeof r->redirect, "%s", line + 1);
        }
        return 0;
    }
    errno = 0;
    long long len = line[0] == '$' ? strtoll(line + 1, &end, 10) : -2;
    if (line[0] != '$' || end == line + 1 || *end || errno || len < -1 || len > BULK_MAX)
        return conn_fail(r, CACHE_EIO, what, "a reply to GET that is not a bulk string");
    if (len == -1) {
        *got = GOT_NIL;
        return 0;
    }
    size_t n = (size_t)len, head = sizeof(cache_value_hdr) + r->fmt.tok_bytes;
    char crlf[2];
    if (!want || n != r->fmt.val_bytes) {
        *got = GOT_BAD;
        rc = in_take(r, NULL, n, 0, deadline, what);
    } else {
        *got = GOT_VALUE;
        rc = in_take(r, r->head, head, 0, deadline, what);
        XXH3_128bits_reset(r->hs);
        if (rc == 0)
            rc = in_take(r, dst, r->fmt.payload_bytes, 1, deadline, what);
        r->sum = XXH3_128bits_digest(r->hs);
    }
    if (rc == 0)
        rc = in_take(r, crlf, 2, 0, deadline, what);
    if (rc == 0 && memcmp(crlf, "\r\n", 2) != 0)
        return conn_fail(r, CACHE_EIO, what, "a bulk string not ended by CRLF");
    return rc;
}

/* ---- loads ---- */

/* Deletes the keys of bad values (one round trip). Failing is not worse than not trying: the
 * value fails the next load the same way. */
static void delete_bad(cache_remote *r, const cache_key *bad, size_t n)
{
    char saved[sizeof r->msg]; /* the verification failure is the message to keep */
    memcpy(saved, r->msg, sizeof saved);
    size_t len = 0;
    for (size_t i = 0; i < n; i++) {
        char k[CACHE_REMOTE_KEY_LEN + 1];
        cache_remote_key_name(bad[i], k);
        const char *argv[] = {"DEL", k};
        size_t argl[] = {3, CACHE_REMOTE_KEY_LEN};
        if (cmd_append(r, &len, 2, argv, argl) != 0)
            return;
    }
    double deadline = base_now_ms() + hard_ms(r);
    if (send_buf(r, r->cmd, len, deadline, "deleting bad values") == 0) {
        for (size_t i = 0; i < n; i++) {
            redisReply *rep;
            if (read_reply(r, &rep, deadline, "deleting bad values") != 0)
                break;
            if (rep->type == REDIS_REPLY_INTEGER && rep->integer > 0)
                r->st.corrupt_deleted++;
            freeReplyObject(rep);
        }
    }
    memcpy(r->msg, saved, sizeof saved);
}

/* Judges one GET reply for block key (got: what get_reply() found; the value's head in r->head,
 * its payload in its slot, the payload's hash in r->sum): 1 if loaded and verified, 0 if the chain
 * ends here (*bad set for a value to delete). */
static int take_value(cache_remote *r, int got, cache_key key, cache_key parent,
                      const int32_t *tokens, int *bad)
{
    if (got == GOT_NIL) {
        r->st.misses++;
        return 0;
    }
    if (got == GOT_ERROR || got == GOT_MOVED || got == GOT_ASK) {
        r->st.errors++;
        return 0;
    }
    const char *why = "wrong length, or not a string";
    int rc = CACHE_ECORRUPT;
    if (got == GOT_VALUE) {
        rc = cache_value_check_head(&r->fmt, r->head, key, parent, tokens, &why);
        if (rc == 0) /* the payload's hash, taken as it landed in its slot (get_reply()) */
            rc = cache_value_check_sum(r->head, r->sum.low64, r->sum.high64, &why);
    }
    if (rc == 0) {
        r->st.hits++;
        r->st.bytes_in += r->fmt.val_bytes;
        return 1;
    }
    if (rc == CACHE_ENOTFOUND)
        r->st.foreign++;
    char k[CACHE_REMOTE_KEY_LEN + 1];
    cache_remote_key_name(key, k);
    snprintf(r->msg, sizeof r->msg, "remote '%s': value %s failed verification (%s): deleted",
             r->url, k, why);
    *bad = 1;
    return 0;
}

/* Counts a GET batch's time (failed ones too); returns rc. */
static int get_done(cache_remote *r, double t0, int rc)
{
    double dt = base_now_ms() - t0;
    r->st.get_ms += dt;
    record_latency(r, dt);
    return rc;
}

/* Sends the GETs of keys[from, from + m) in one write. */
static int send_gets(cache_remote *r, const cache_key *keys, size_t from, size_t m, double deadline)
{
    size_t len = 0;
    for (size_t j = 0; j < m; j++) {
        char k[CACHE_REMOTE_KEY_LEN + 1];
        cache_remote_key_name(keys[from + j], k);
        const char *argv[] = {"GET", k};
        size_t argl[] = {3, CACHE_REMOTE_KEY_LEN};
        if (cmd_append(r, &len, 2, argv, argl) != 0)
            return conn_fail(r, CACHE_ENOMEM, "loading blocks", "out of memory");
    }
    int rc = send_buf(r, r->cmd, len, deadline, "loading blocks");
    if (rc == 0)
        r->st.gets += m;
    return rc;
}

int cache_remote_get(cache_remote *r, cache_key parent, const cache_key *keys,
                     const int32_t *tokens, float *const *dst, size_t n, size_t *n_loaded)
{
    *n_loaded = 0;
    r->msg[0] = 0;
    if (!r->c)
        return CACHE_ENOCONN;
    size_t per = CACHE_REMOTE_BATCH_BYTES / r->fmt.val_bytes;
    if (per < 1)
        per = 1;
    size_t B = r->fmt.block_tokens, sent = 0; /* keys [0, sent) have their GETs out */
    int go_on = 1;
    for (size_t start = 0; start < n && go_on;) {
        size_t m = n - start < per ? n - start : per;
        double t0 = base_now_ms(), deadline = t0 + hard_ms(r);
        int rc = 0;
        if (sent == start && (rc = send_gets(r, keys, sent, m, deadline)) == 0)
            sent += m;
        if (rc)
            return get_done(r, t0, rc);
        int bad = 0;
        for (size_t j = 0; j < m; j++) {
            size_t i = start + j;
            int got;
            if ((rc = get_reply(r, go_on, dst[i], &got, deadline)) != 0)
                return get_done(r, t0, rc); /* the blocks loaded so far stay loaded */
            /* One batch ahead, once this one flows: the server prepares the next batch while
             * this one is read, so no batch waits for its request to cross (on a busy machine,
             * for the server to be scheduled). Not before: the server would copy both batches
             * before its first byte. It holds at most two batches of replies. */
            size_t ahead = n - sent < per ? n - sent : per;
            if (j == 0 && go_on && ahead > 0 &&
                (rc = send_gets(r, keys, sent, ahead, deadline)) == 0)
                sent += ahead;
            if (rc)
                return get_done(r, t0, rc);
            if (go_on) {
                cache_key pk = i ? keys[i - 1] : parent;
                go_on = take_value(r, got, keys[i], pk, tokens + i * B, &bad);
                if (go_on)
                    *n_loaded = i + 1;
            }
        }
        start += m;
        /* The chain ended: the replies of the batch asked ahead are read past. */
        for (; !go_on && start < sent; start++) {
            int got;
            if ((rc = get_reply(r, 0, NULL, &got, deadline)) != 0)
                return get_done(r, t0, rc);
        }
        if (start == sent && r->ib_pos != r->ib_len)
            return get_done(
                r, t0, conn_fail(r, CACHE_EIO, "loading blocks", "bytes after the last reply"));
        get_done(r, t0, 0);
        if (bad) /* nothing is owed now: the DEL's reply comes next */
            delete_bad(r, &keys[*n_loaded], 1);
    }
    return 0;
}

/* ---- writes ---- */

/* After a block's SET: its partial pointers, "SET <partial key of its first t tokens> <its key>
 * EX ttl" for t = 1 .. B - 1, so that a prompt whose full blocks end at this block's parent finds
 * it by the tokens it has (cache_remote_get_partial()). About 100 bytes each. */
static int send_partial_pointers(cache_remote *r, const cache_remote_item *it, const char *ttl,
                                 double deadline)
{
    char k[CACHE_REMOTE_KEY_LEN + 1], pk[CACHE_REMOTE_PARTIAL_KEY_LEN + 1];
    cache_remote_key_name(it->key, k);
    size_t len = 0;
    for (uint32_t t = 1; t < r->fmt.block_tokens; t++) {
        cache_remote_partial_key_name(it->parent, it->tokens, t, pk);
        const char *argv[] = {"SET", pk, k, "EX", ttl};
        size_t argl[] = {3, CACHE_REMOTE_PARTIAL_KEY_LEN, CACHE_REMOTE_KEY_LEN, 2, strlen(ttl)};
        if (cmd_append(r, &len, 5, argv, argl) != 0)
            return conn_fail(r, CACHE_ENOMEM, "storing blocks", "out of memory");
    }
    return len ? send_buf(r, r->cmd, len, deadline, "storing blocks") : 0;
}

/* Reads n replies whatever they say (the partial pointers': one refused costs a shortcut). */
static int skip_replies(cache_remote *r, size_t n, double deadline)
{
    for (size_t i = 0; i < n; i++) {
        redisReply *rep;
        int rc = read_reply(r, &rep, deadline, "storing blocks");
        if (rc)
            return rc;
        freeReplyObject(rep);
    }
    return 0;
}

int cache_remote_put(cache_remote *r, const cache_remote_item *items, size_t n, size_t *n_stored)
{
    if (n_stored)
        *n_stored = 0;
    r->msg[0] = 0;
    if (!r->c)
        return CACHE_ENOCONN;
    double t0 = base_now_ms(), deadline = t0 + hard_ms(r);
    size_t head = sizeof(cache_value_hdr) + r->fmt.tok_bytes;
    char ttl[16];
    int ttl_len = snprintf(ttl, sizeof ttl, "%u", (unsigned)r->ttl_s);
    for (size_t i = 0; i < n; i++) {
        char pre[CMD_MAX], post[CMD_MAX], k[CACHE_REMOTE_KEY_LEN + 1];
        cache_remote_key_name(items[i].key, k);
        int pl = snprintf(pre, sizeof pre, "*5\r\n$3\r\nSET\r\n$%zu\r\n%s\r\n$%zu\r\n",
                          CACHE_REMOTE_KEY_LEN, k, r->fmt.val_bytes);
        int ql = snprintf(post, sizeof post, "\r\n$2\r\nEX\r\n$%d\r\n%s\r\n", ttl_len, ttl);
        cache_value_build_head(&r->fmt, r->head, items[i].key, items[i].parent, items[i].tokens,
                               items[i].data);
        struct iovec iov[4] = {{pre, (size_t)pl},
                               {r->head, head},
                               {(void *)items[i].data, r->fmt.payload_bytes},
                               {post, (size_t)ql}};
        int rc = send_iov(r, iov, 4, deadline, "storing blocks");
        if (rc == 0)
            rc = send_partial_pointers(r, &items[i], ttl, deadline);
        if (rc)
            return rc;
    }
    size_t ok = 0;
    const char *refused = NULL;
    char why[256] = "";
    for (size_t i = 0; i < n; i++) {
        redisReply *rep;
        int rc = read_reply(r, &rep, deadline, "storing blocks");
        if (rc)
            return rc;
        int ptr_rc = skip_replies(r, r->fmt.block_tokens - 1, deadline);
        if (ptr_rc) {
            freeReplyObject(rep);
            return ptr_rc;
        }
        if (rep->type == REDIS_REPLY_STATUS) {
            ok++;
        } else {
            r->st.put_refused++;
            if (!refused) {
                snprintf(why, sizeof why, "%.200s",
                         rep->type == REDIS_REPLY_ERROR ? rep->str : "an unexpected reply");
                refused = why;
            }
        }
        freeReplyObject(rep);
    }
    double dt = base_now_ms() - t0;
    r->st.put_ms += dt;
    record_latency(r, dt);
    r->st.puts += ok;
    r->st.bytes_out += ok * r->fmt.val_bytes;
    if (n_stored)
        *n_stored = ok;
    if (refused) {
        snprintf(r->msg, sizeof r->msg, "remote '%s': the server refused %zu of %zu blocks: %s",
                 r->url, n - ok, n, refused);
        return CACHE_EFULL;
    }
    return 0;
}

/* ---- the partial block after a chain ---- */

/* Parses a block's Redis key (cache_remote_key_name()) into *k. */
static int parse_key_name(const char *s, size_t len, cache_key *k)
{
    size_t pl = sizeof CACHE_REMOTE_KEY_PREFIX - 1;
    if (len != CACHE_REMOTE_KEY_LEN || memcmp(s, CACHE_REMOTE_KEY_PREFIX, pl) != 0)
        return -1;
    s += pl;
    uint64_t v[2] = {0, 0};
    for (int i = 0; i < 32; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0)
            return -1;
        v[i / 16] = v[i / 16] << 4 | (uint64_t)d;
    }
    k->hi = v[0];
    k->lo = v[1];
    return 0;
}

/* Reads the pointer GETs' n replies (longest first): the first that names a block. */
static int partial_pointer(cache_remote *r, size_t n, double deadline, cache_key *child,
                           size_t *t_found)
{
    *t_found = 0;
    for (size_t j = 0; j < n; j++) {
        redisReply *rep;
        int rc = read_reply(r, &rep, deadline, "loading a partial block");
        if (rc)
            return rc;
        if (!*t_found && rep->type == REDIS_REPLY_STRING &&
            parse_key_name(rep->str, rep->len, child) == 0)
            *t_found = n - j;
        freeReplyObject(rep);
    }
    return 0;
}

int cache_remote_get_partial(cache_remote *r, cache_key parent, const int32_t *tokens, size_t n,
                             float *dst, size_t *k)
{
    *k = 0;
    r->msg[0] = 0;
    if (!r->c)
        return CACHE_ENOCONN;
    if (n >= r->fmt.block_tokens)
        n = r->fmt.block_tokens - 1;
    if (n == 0)
        return 0;
    double t0 = base_now_ms(), deadline = t0 + hard_ms(r);
    /* One round trip for the pointers of every length (the longest that exists wins), one for
     * the block they name. */
    size_t len = 0;
    for (size_t t = n; t >= 1; t--) {
        char pk[CACHE_REMOTE_PARTIAL_KEY_LEN + 1];
        cache_remote_partial_key_name(parent, tokens, t, pk);
        const char *argv[] = {"GET", pk};
        size_t argl[] = {3, CACHE_REMOTE_PARTIAL_KEY_LEN};
        if (cmd_append(r, &len, 2, argv, argl) != 0)
            return conn_fail(r, CACHE_ENOMEM, "loading a partial block", "out of memory");
    }
    cache_key child;
    size_t t_found;
    int rc = send_buf(r, r->cmd, len, deadline, "loading a partial block");
    if (rc == 0)
        rc = partial_pointer(r, n, deadline, &child, &t_found);
    if (rc || !t_found)
        return get_done(r, t0, rc);
    char ck[CACHE_REMOTE_KEY_LEN + 1];
    cache_remote_key_name(child, ck);
    const char *argv[] = {"GET", ck};
    size_t argl[] = {3, CACHE_REMOTE_KEY_LEN};
    len = 0;
    if (cmd_append(r, &len, 2, argv, argl) != 0)
        return conn_fail(r, CACHE_ENOMEM, "loading a partial block", "out of memory");
    int got;
    if ((rc = send_buf(r, r->cmd, len, deadline, "loading a partial block")) != 0 ||
        (rc = get_reply(r, 1, dst, &got, deadline)) != 0)
        return get_done(r, t0, rc);
    r->st.gets++;
    /* The block is verified as any other, against its own token ids (we know only the first t);
     * then those first t must be ours. A pointer is untrusted: it may name any block; one of
     * another parent is a stale or foreign pointer, not a bad block (it is left alone). */
    const int32_t *own = (const int32_t *)(void *)(r->head + sizeof(cache_value_hdr));
    const cache_value_hdr *h = (const void *)r->head;
    if (got == GOT_VALUE && !cache_key_eq(h->parent, parent)) {
        r->st.misses++;
        return get_done(r, t0, 0);
    }
    int bad = 0;
    if (take_value(r, got, child, parent, got == GOT_VALUE ? own : tokens, &bad)) {
        size_t m = 0;
        while (m < t_found && own[m] == tokens[m])
            m++;
        *k = m;
        r->st.hits--; /* counted as a partial block, not a full one */
        r->st.partial_hits++;
        r->st.partial_tokens += m;
    }
    get_done(r, t0, 0);
    if (bad)
        delete_bad(r, &child, 1);
    return 0;
}

/* ---- one cluster node's halves of an exchange (remote_int.h) ----
 *
 * The same commands, replies and verification as above, cut where the round trip is, so that
 * remote_cluster.c can have every node working on its share of a batch at once. */

static const char asking_cmd[] = "*1\r\n$6\r\nASKING\r\n";

int cache__remote_get_send(cache_remote *r, const cache_key *keys, const size_t *idx,
                           const uint8_t *asking, size_t m, double deadline)
{
    r->msg[0] = 0;
    if (!r->c)
        return CACHE_ENOCONN;
    size_t len = 0;
    for (size_t j = 0; j < m; j++) {
        if (asking && asking[j]) {
            const char *argv[] = {"ASKING"};
            size_t argl[] = {6};
            if (cmd_append(r, &len, 1, argv, argl) != 0)
                return conn_fail(r, CACHE_ENOMEM, "loading blocks", "out of memory");
        }
        char k[CACHE_REMOTE_KEY_LEN + 1];
        cache_remote_key_name(keys[idx[j]], k);
        const char *argv[] = {"GET", k};
        size_t argl[] = {3, CACHE_REMOTE_KEY_LEN};
        if (cmd_append(r, &len, 2, argv, argl) != 0)
            return conn_fail(r, CACHE_ENOMEM, "loading blocks", "out of memory");
    }
    int rc = send_buf(r, r->cmd, len, deadline, "loading blocks");
    if (rc == 0)
        r->st.gets += m;
    return rc;
}

/* Reads the +OK of an ASKING (anything else is out of step). */
static int asking_reply(cache_remote *r, double deadline, const char *what)
{
    char *line;
    int rc = in_line(r, &line, deadline, what);
    if (rc == 0 && line[0] != '+')
        return conn_fail(r, CACHE_EIO, what, "ASKING was not answered +OK");
    return rc;
}

int cache__remote_get_recv(cache_remote *r, cache_key parent, const cache_key *keys,
                           const int32_t *tokens, float *const *dst, const size_t *idx,
                           const uint8_t *asking, size_t m, uint8_t *out, cache__redirect *redirect,
                           double deadline)
{
    size_t B = r->fmt.block_tokens;
    int want = 1, bad = 0;
    cache_key bad_key = {0, 0};
    for (size_t j = 0; j < m; j++) {
        size_t i = idx[j];
        int got, rc;
        out[j] = CACHE__KEY_NONE;
        if (asking && asking[j] && (rc = asking_reply(r, deadline, "loading blocks")) != 0)
            return rc;
        if ((rc = get_reply(r, want, dst[i], &got, deadline)) != 0)
            return rc;
        if (!want) {
            out[j] = CACHE__KEY_SKIP;
        } else if (got == GOT_MOVED || got == GOT_ASK) {
            out[j] = got == GOT_MOVED ? CACHE__KEY_MOVED : CACHE__KEY_ASK;
            memcpy(redirect[j].text, r->redirect, sizeof r->redirect);
        } else {
            int b = 0;
            if (take_value(r, got, keys[i], i ? keys[i - 1] : parent, tokens + i * B, &b)) {
                out[j] = CACHE__KEY_OK;
            } else {
                out[j] = b ? CACHE__KEY_BAD : got == GOT_NIL ? CACHE__KEY_MISS : CACHE__KEY_ERROR;
                want = 0; /* the node's later keys in the chain are useless without this one */
                if (b) {
                    bad = 1;
                    bad_key = keys[i];
                }
            }
        }
    }
    if (r->ib_pos != r->ib_len)
        return conn_fail(r, CACHE_EIO, "loading blocks", "bytes after the last reply");
    if (bad)
        delete_bad(r, &bad_key, 1);
    return 0;
}

int cache__remote_put_send(cache_remote *r, const cache_remote_item *items, const size_t *idx,
                           const uint8_t *asking, size_t m, double deadline)
{
    r->msg[0] = 0;
    if (!r->c)
        return CACHE_ENOCONN;
    size_t head = sizeof(cache_value_hdr) + r->fmt.tok_bytes;
    char ttl[16];
    int ttl_len = snprintf(ttl, sizeof ttl, "%u", (unsigned)r->ttl_s);
    for (size_t j = 0; j < m; j++) {
        const cache_remote_item *it = &items[idx[j]];
        char pre[CMD_MAX], post[CMD_MAX], k[CACHE_REMOTE_KEY_LEN + 1];
        cache_remote_key_name(it->key, k);
        int al = asking && asking[j] ? (int)sizeof asking_cmd - 1 : 0;
        memcpy(pre, asking_cmd, (size_t)al);
        int pl = al + snprintf(pre + al, sizeof pre - (size_t)al,
                               "*5\r\n$3\r\nSET\r\n$%zu\r\n%s\r\n$%zu\r\n", CACHE_REMOTE_KEY_LEN, k,
                               r->fmt.val_bytes);
        int ql = snprintf(post, sizeof post, "\r\n$2\r\nEX\r\n$%d\r\n%s\r\n", ttl_len, ttl);
        cache_value_build_head(&r->fmt, r->head, it->key, it->parent, it->tokens, it->data);
        struct iovec iov[4] = {{pre, (size_t)pl},
                               {r->head, head},
                               {(void *)it->data, r->fmt.payload_bytes},
                               {post, (size_t)ql}};
        int rc = send_iov(r, iov, 4, deadline, "storing blocks");
        if (rc)
            return rc;
    }
    return 0;
}

int cache__remote_put_recv(cache_remote *r, const uint8_t *asking, size_t m, uint8_t *out,
                           cache__redirect *redirect, double deadline)
{
    const char *what = "storing blocks";
    for (size_t j = 0; j < m; j++) {
        redisReply *rep;
        int rc;
        out[j] = CACHE__KEY_NONE;
        if (asking && asking[j]) {
            if ((rc = read_reply(r, &rep, deadline, what)) != 0)
                return rc;
            freeReplyObject(rep);
        }
        if ((rc = read_reply(r, &rep, deadline, what)) != 0)
            return rc;
        if (rep->type == REDIS_REPLY_STATUS) {
            out[j] = CACHE__KEY_OK;
            r->st.puts++;
            r->st.bytes_out += r->fmt.val_bytes;
        } else if (rep->type == REDIS_REPLY_ERROR &&
                   (strncmp(rep->str, "MOVED ", 6) == 0 || strncmp(rep->str, "ASK ", 4) == 0)) {
            out[j] = rep->str[0] == 'M' ? CACHE__KEY_MOVED : CACHE__KEY_ASK;
            snprintf(redirect[j].text, sizeof redirect[j].text, "%s", rep->str);
        } else {
            out[j] = CACHE__KEY_ERROR;
            r->st.put_refused++;
            if (!r->msg[0])
                snprintf(r->msg, sizeof r->msg, "remote '%s': the server refused a block: %.200s",
                         r->url, rep->type == REDIS_REPLY_ERROR ? rep->str : "an unexpected reply");
        }
        freeReplyObject(rep);
    }
    return 0;
}

int cache__remote_command(cache_remote *r, int argc, const char *const *argv, const size_t *argl,
                          redisReply **out)
{
    *out = NULL;
    r->msg[0] = 0;
    if (!r->c)
        return CACHE_ENOCONN;
    double deadline = base_now_ms() + hard_ms(r);
    size_t len = 0;
    if (cmd_append(r, &len, argc, argv, argl) != 0)
        return conn_fail(r, CACHE_ENOMEM, argv[0], "out of memory");
    int rc = send_buf(r, r->cmd, len, deadline, argv[0]);
    if (rc == 0)
        rc = read_reply(r, out, deadline, argv[0]);
    return rc;
}
