/* http_client.c — a small HTTP/1.1 client on plain sockets, for `prefixctl bench --http`.
 *
 * It is written for one job: timing streamed completions against prefixd's OpenAI-compatible API
 * and against llama.cpp's llama-server, so it adds as little as it can between the request and
 * the first token. One blocking socket per handle (TCP_NODELAY, so a request leaves in one go),
 * kept alive between requests and reopened once when the server closed it first. Answers are read
 * through one buffer: the status line and headers, then the body as the server framed it (chunked
 * transfer encoding, a Content-Length, or up to the close), handed either whole to the caller or,
 * for text/event-stream, event by event to a callback as each event's blank line arrives. Every
 * read waits at most the request's timeout, so a silent server is an error, never a hang.
 *
 * The second half is the OpenAI API as the bench uses it: what the model is (/v1/models, /props,
 * /detokenize) and one streaming completion of token ids, read into the figures the bench's CSV
 * has: client-side TTFT, prompt and cached tokens (OpenAI's usage, or llama-server's timings),
 * and prefixd's own server-side times when present.
 */
#include "base.h"
#include "http_client.h"

#include <cJSON.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAX_LINE 16384 /* a status line, a header line or a chunk-size line */

struct hc_conn {
    char url[512];
    char host[256], port[16];                                   /* TCP */
    char sun_path[sizeof(((struct sockaddr_un *)0)->sun_path)]; /* Unix: non-empty */
    char prefix[256];                                           /* the URL's path, no '/' last */
    char *auth;                                                 /* "Bearer KEY" or NULL */
    int fd;                                                     /* -1: not connected */
    int timeout_ms;
    char rbuf[65536];
    size_t rpos, rlen; /* unread bytes: rbuf[rpos, rlen) */
    char err[1536];    /* "URL: what" */
};

typedef struct gbuf {
    char *p;
    size_t len, cap;
} gbuf;

static int gb_add(gbuf *g, const void *p, size_t n)
{
    if (g->len + n + 1 > g->cap) {
        size_t cap = g->cap ? g->cap : 256;
        while (cap < g->len + n + 1)
            cap *= 2;
        char *np = realloc(g->p, cap);
        if (!np)
            return HC_ENOMEM;
        g->p = np;
        g->cap = cap;
    }
    memcpy(g->p + g->len, p, n);
    g->len += n;
    g->p[g->len] = '\0';
    return 0;
}

const char *hc_strerror(int err)
{
    switch (err) {
#define HC_STR(name, msg)                                                                          \
    case HC_E##name:                                                                               \
        return msg;
        HC_ERRNO_MAP(HC_STR)
#undef HC_STR
    default:
        return "unknown error";
    }
}

int hc_seterr(hc_conn *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, sizeof c->err, fmt, ap);
    va_end(ap);
    return HC_EREPLY;
}

/* Sets the message "URL: what" and returns code. */
static int fail(hc_conn *c, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(hc_conn *c, int code, const char *fmt, ...)
{
    char what[800];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    snprintf(c->err, sizeof c->err, "%s: %s", c->url, what);
    return code;
}

const char *hc_errmsg(const hc_conn *c)
{
    return c->err;
}

const char *hc_url(const hc_conn *c)
{
    return c->url;
}

/* ---- the handle and its connection ---- */

int hc_open(const char *url, const char *api_key, hc_conn **out, char *err, size_t errlen)
{
    *out = NULL;
    hc_conn *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return HC_ENOMEM;
    }
    c->fd = -1;
    snprintf(c->url, sizeof c->url, "%s", url);
    const char *path = "";
    if (!strncmp(url, "unix:", 5)) {
        if (url[5] != '/' || strlen(url + 5) >= sizeof c->sun_path) {
            snprintf(err, errlen, "'%s': give unix:/absolute/path (at most %zu bytes)", url,
                     sizeof c->sun_path - 1);
            free(c);
            return HC_EURL;
        }
        snprintf(c->sun_path, sizeof c->sun_path, "%s", url + 5);
    } else {
        if (strncasecmp(url, "http://", 7) != 0) {
            snprintf(err, errlen, "'%s': give http://HOST:PORT or unix:/path%s", url,
                     strncasecmp(url, "https://", 8) ? "" : " (https is not supported)");
            free(c);
            return HC_EURL;
        }
        const char *h = url + 7, *hend, *p;
        if (*h == '[') { /* [v6]:port */
            hend = strchr(h, ']');
            if (!hend) {
                snprintf(err, errlen, "'%s': an IPv6 address without its closing ']'", url);
                free(c);
                return HC_EURL;
            }
            h++;
            p = hend + 1;
        } else {
            hend = h + strcspn(h, ":/");
            p = hend;
        }
        size_t hl = (size_t)(hend - h);
        if (hl == 0 || hl >= sizeof c->host) {
            snprintf(err, errlen, "'%s': no host name", url);
            free(c);
            return HC_EURL;
        }
        memcpy(c->host, h, hl);
        const char *port = "80";
        size_t pl = 2;
        if (*p == ':') {
            port = p + 1;
            pl = strspn(port, "0123456789");
            p = port + pl;
            if (pl == 0 || pl > 5 || atoi(port) < 1 || atoi(port) > 65535) {
                snprintf(err, errlen, "'%s': the port must be a number from 1 to 65535", url);
                free(c);
                return HC_EURL;
            }
        }
        memcpy(c->port, port, pl);
        if (*p && *p != '/') {
            snprintf(err, errlen, "'%s': unexpected '%c' after the host and port", url, *p);
            free(c);
            return HC_EURL;
        }
        path = p;
    }
    size_t n = strlen(path);
    while (n > 0 && path[n - 1] == '/')
        n--;
    if (n >= 3 && !strncmp(path + n - 3, "/v1", 3))
        n -= 3; /* an SDK's base URL */
    if (n >= sizeof c->prefix || memchr(path, '?', n) || memchr(path, ' ', n)) {
        snprintf(err, errlen, "'%s': the path must be a plain prefix under 255 bytes", url);
        free(c);
        return HC_EURL;
    }
    memcpy(c->prefix, path, n);
    if (api_key) {
        size_t kl = strlen(api_key);
        if (kl == 0 || strpbrk(api_key, "\r\n")) {
            snprintf(err, errlen, "--api-key: give a non-empty key on one line");
            free(c);
            return HC_EURL;
        }
        c->auth = malloc(kl + 8);
        if (!c->auth) {
            snprintf(err, errlen, "out of memory");
            free(c);
            return HC_ENOMEM;
        }
        snprintf(c->auth, kl + 8, "Bearer %s", api_key);
    }
    *out = c;
    return 0;
}

static void conn_drop(hc_conn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->rpos = c->rlen = 0;
}

void hc_close(hc_conn *c)
{
    if (!c)
        return;
    conn_drop(c);
    free(c->auth);
    free(c);
}

static int conn_connect(hc_conn *c)
{
    if (c->sun_path[0]) {
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        memcpy(a.sun_path, c->sun_path, strlen(c->sun_path));
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
            int e = errno;
            if (fd >= 0)
                close(fd);
            return fail(c, HC_ECONNECT, "cannot connect: %s", strerror(e));
        }
        c->fd = fd;
        return 0;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res;
    int g = getaddrinfo(c->host, c->port, &hints, &res);
    if (g != 0)
        return fail(c, HC_ECONNECT, "cannot resolve '%s': %s", c->host, gai_strerror(g));
    int e = 0;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            e = errno;
            continue;
        }
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            c->fd = fd;
            break;
        }
        e = errno;
        close(fd);
    }
    freeaddrinfo(res);
    if (c->fd < 0)
        return fail(c, HC_ECONNECT, "cannot connect: %s", strerror(e));
    return 0;
}

static int conn_write(hc_conn *c, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return fail(c, HC_EIO, "sending the request: %s", strerror(errno));
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Reads more into rbuf. Returns the bytes read, 0 at the server's close, or an error. */
static int conn_fill(hc_conn *c)
{
    if (c->rpos == c->rlen)
        c->rpos = c->rlen = 0;
    else if (c->rlen == sizeof c->rbuf) {
        memmove(c->rbuf, c->rbuf + c->rpos, c->rlen - c->rpos);
        c->rlen -= c->rpos;
        c->rpos = 0;
    }
    if (c->rlen == sizeof c->rbuf) /* not reached: lines are shorter, bodies are consumed */
        return fail(c, HC_EPROTO, "the read buffer is full");
    for (;;) {
        struct pollfd p = {.fd = c->fd, .events = POLLIN};
        int r = poll(&p, 1, c->timeout_ms);
        if (r < 0 && errno == EINTR)
            continue;
        if (r == 0)
            return fail(c, HC_ETIMEOUT, "no answer for %d s", c->timeout_ms / 1000);
        ssize_t n = read(c->fd, c->rbuf + c->rlen, sizeof c->rbuf - c->rlen);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return fail(c, HC_EIO, "reading the answer: %s", strerror(errno));
        c->rlen += (size_t)n;
        return (int)n;
    }
}

/* Reads one line (CRLF or LF; both stripped) into line[cap]. Returns its length, or an error
 * (HC_EIO at a close before the line ends). */
static int conn_line(hc_conn *c, char *line, size_t cap)
{
    size_t n = 0;
    for (;;) {
        while (c->rpos < c->rlen) {
            char ch = c->rbuf[c->rpos++];
            if (ch == '\n') {
                if (n > 0 && line[n - 1] == '\r')
                    n--;
                line[n] = '\0';
                return (int)n;
            }
            if (n + 1 >= cap)
                return fail(c, HC_EPROTO, "a header or chunk line longer than %zu bytes", cap);
            line[n++] = ch;
        }
        int r = conn_fill(c);
        if (r < 0)
            return r;
        if (r == 0)
            return fail(c, HC_EIO, "the server closed the connection in the middle of an answer");
    }
}

/* ---- answer bodies ---- */

typedef struct body_sink {
    int sse;
    hc_event_cb cb;
    void *arg;
    gbuf body;       /* not an event stream */
    gbuf line, data; /* an event stream: the line so far, the event's data so far */
    int has_data;
} body_sink;

static int sse_dispatch(hc_conn *c, body_sink *s)
{
    if (!s->has_data)
        return 0;
    s->has_data = 0;
    const char *d = s->data.p ? s->data.p : "";
    size_t n = s->data.len;
    s->data.len = 0;
    if (s->cb(s->arg, d, n) != 0)
        return HC_EREPLY;
    (void)c;
    return 0;
}

static int sse_line(hc_conn *c, body_sink *s)
{
    char *l = s->line.p ? s->line.p : "";
    size_t n = s->line.len;
    if (n > 0 && l[n - 1] == '\r')
        l[--n] = '\0';
    s->line.len = 0;
    if (n == 0)
        return sse_dispatch(c, s);
    if (n >= 5 && !memcmp(l, "data:", 5)) {
        size_t off = 5;
        if (off < n && l[off] == ' ')
            off++; /* one space after the colon is not part of the data */
        if (s->has_data && gb_add(&s->data, "\n", 1) != 0)
            return fail(c, HC_ENOMEM, "out of memory");
        if (gb_add(&s->data, l + off, n - off) != 0)
            return fail(c, HC_ENOMEM, "out of memory");
        s->has_data = 1;
    }
    return 0; /* comments (':'), event:, id:, retry: are not needed */
}

static int sink_feed(hc_conn *c, body_sink *s, const char *p, size_t n)
{
    if (!s->sse)
        return gb_add(&s->body, p, n) ? fail(c, HC_ENOMEM, "out of memory") : 0;
    while (n > 0) {
        const char *nl = memchr(p, '\n', n);
        size_t k = nl ? (size_t)(nl - p) : n;
        if (gb_add(&s->line, p, k) != 0)
            return fail(c, HC_ENOMEM, "out of memory");
        if (!nl)
            break;
        int r = sse_line(c, s);
        if (r < 0)
            return r;
        p += k + 1;
        n -= k + 1;
    }
    return 0;
}

/* Moves up to n body bytes (n == SIZE_MAX: to the close) from the connection to the sink. */
static int body_bytes(hc_conn *c, body_sink *s, size_t n)
{
    while (n > 0) {
        if (c->rpos == c->rlen) {
            int r = conn_fill(c);
            if (r < 0)
                return r;
            if (r == 0) {
                if (n == SIZE_MAX)
                    return 0;
                return fail(c, HC_EIO,
                            "the server closed the connection %zu bytes before the "
                            "end of the body",
                            n);
            }
        }
        size_t k = c->rlen - c->rpos;
        if (k > n)
            k = n;
        int r = sink_feed(c, s, c->rbuf + c->rpos, k);
        c->rpos += k;
        if (r < 0)
            return r;
        if (n != SIZE_MAX)
            n -= k;
    }
    return 0;
}

static int body_chunked(hc_conn *c, body_sink *s)
{
    char line[MAX_LINE];
    for (;;) {
        int r = conn_line(c, line, sizeof line);
        if (r < 0)
            return r;
        char *end;
        errno = 0;
        unsigned long long size = strtoull(line, &end, 16);
        if (end == line || errno || (*end && *end != ';' && *end != ' ' && *end != '\t') ||
            size > ((size_t)1 << 40))
            return fail(c, HC_EPROTO, "bad chunk size line '%.40s'", line);
        if (size == 0)
            break;
        if ((r = body_bytes(c, s, (size_t)size)) < 0)
            return r;
        if ((r = conn_line(c, line, sizeof line)) < 0)
            return r;
        if (r != 0)
            return fail(c, HC_EPROTO, "a chunk longer than its size line said");
    }
    for (;;) { /* trailers, up to the blank line */
        int r = conn_line(c, line, sizeof line);
        if (r <= 0)
            return r;
    }
}

/* ---- requests ---- */

typedef struct resp_head {
    int status, chunked, close, sse;
    long long length; /* -1: none */
} resp_head;

/* Reads the status line and headers (skipping 1xx answers). *fresh_eof: the server closed the
 * connection before the first byte of the answer (a kept-alive connection it had closed). */
static int read_head(hc_conn *c, resp_head *h, int *fresh_eof)
{
    char line[MAX_LINE];
    *fresh_eof = 0;
    for (;;) {
        if (c->rpos == c->rlen) {
            int r = conn_fill(c);
            if (r == 0 || r == HC_EIO) {
                *fresh_eof = 1;
                return fail(c, HC_EIO, "the server closed the connection before answering");
            }
            if (r < 0)
                return r;
        }
        int r = conn_line(c, line, sizeof line);
        if (r < 0)
            return r;
        int major, minor, status;
        if (sscanf(line, "HTTP/%d.%d %3d", &major, &minor, &status) != 3 || status < 100 ||
            status > 999)
            return fail(c, HC_EPROTO, "not an HTTP status line: '%.60s'", line);
        *h = (resp_head){.status = status, .length = -1, .close = major == 1 && minor == 0};
        for (;;) {
            if ((r = conn_line(c, line, sizeof line)) < 0)
                return r;
            if (r == 0)
                break;
            char *colon = strchr(line, ':');
            if (!colon)
                return fail(c, HC_EPROTO, "a header line without ':': '%.60s'", line);
            *colon = '\0';
            char *v = colon + 1;
            v += strspn(v, " \t");
            if (!strcasecmp(line, "Content-Length")) {
                char *end;
                h->length = strtoll(v, &end, 10);
                if (end == v || h->length < 0)
                    return fail(c, HC_EPROTO, "bad Content-Length '%.40s'", v);
            } else if (!strcasecmp(line, "Transfer-Encoding")) {
                h->chunked = strcasestr(v, "chunked") != NULL;
            } else if (!strcasecmp(line, "Connection")) {
                if (strcasestr(v, "close"))
                    h->close = 1;
                else if (strcasestr(v, "keep-alive"))
                    h->close = 0;
            } else if (!strcasecmp(line, "Content-Type")) {
                h->sse = strncasecmp(v, "text/event-stream", 17) == 0;
            }
        }
        if (status >= 200)
            return 0;
    }
}

int hc_request(hc_conn *c, const char *method, const char *path, const char *body, size_t body_len,
               hc_event_cb on_event, void *arg, int timeout_ms, hc_response *out)
{
    *out = (hc_response){0};
    c->err[0] = '\0';
    c->timeout_ms = timeout_ms;
    gbuf req = {0};
    char head[1024];
    int hn = snprintf(head, sizeof head,
                      "%s %s%s HTTP/1.1\r\nHost: %s%s%s\r\nUser-Agent: prefixctl-bench\r\n"
                      "Accept: application/json, text/event-stream\r\n",
                      method, c->prefix, path, c->sun_path[0] ? "localhost" : c->host,
                      c->sun_path[0] ? "" : ":", c->sun_path[0] ? "" : c->port);
    if (hn < 0 || (size_t)hn >= sizeof head)
        return fail(c, HC_EURL, "the request line and Host header are too long");
    if (gb_add(&req, head, (size_t)hn) != 0 ||
        (c->auth && (gb_add(&req, "Authorization: ", 15) ||
                     gb_add(&req, c->auth, strlen(c->auth)) || gb_add(&req, "\r\n", 2)))) {
        free(req.p);
        return fail(c, HC_ENOMEM, "out of memory");
    }
    if (body) {
        hn = snprintf(head, sizeof head,
                      "Content-Type: application/json\r\nContent-Length: %zu\r\n", body_len);
        if (hn < 0 || gb_add(&req, head, (size_t)hn) != 0) {
            free(req.p);
            return fail(c, HC_ENOMEM, "out of memory");
        }
    }
    if (gb_add(&req, "\r\n", 2) != 0 || (body && gb_add(&req, body, body_len) != 0)) {
        free(req.p);
        return fail(c, HC_ENOMEM, "out of memory");
    }
    resp_head h;
    int r = 0;
    for (int attempt = 0; attempt < 2; attempt++) {
        int reused = c->fd >= 0, fresh_eof = 0;
        if (!reused && (r = conn_connect(c)) < 0)
            break;
        r = conn_write(c, req.p, req.len);
        int unsent = r < 0;
        if (r == 0)
            r = read_head(c, &h, &fresh_eof);
        if (r == 0)
            break;
        conn_drop(c);
        /* A kept-alive connection the server had closed (our request not sent, or not answered
         * at all): once more, on a new one. */
        if (!reused || !(unsent || fresh_eof))
            break;
    }
    free(req.p);
    if (r < 0)
        return r;
    out->status = h.status;
    body_sink s = {.sse = h.sse && on_event, .cb = on_event, .arg = arg};
    int no_body = !strcmp(method, "HEAD") || h.status == 204 || h.status == 304;
    if (no_body)
        r = 0;
    else if (h.chunked)
        r = body_chunked(c, &s);
    else if (h.length >= 0)
        r = body_bytes(c, &s, (size_t)h.length);
    else {
        h.close = 1;
        r = body_bytes(c, &s, SIZE_MAX);
    }
    if (r == 0 && s.sse) {
        if (s.line.len > 0)
            r = sse_line(c, &s); /* a last line without its newline */
        if (r == 0)
            r = sse_dispatch(c, &s);
    }
    free(s.line.p);
    free(s.data.p);
    if (r < 0 || h.close)
        conn_drop(c);
    if (r < 0) {
        free(s.body.p);
        if (r == HC_EREPLY && !c->err[0])
            fail(c, r, "the answer was refused");
        return r;
    }
    if (!s.sse) {
        if (!s.body.p && gb_add(&s.body, "", 0) != 0)
            return fail(c, HC_ENOMEM, "out of memory");
        out->body = s.body.p;
        out->body_len = s.body.len;
    }
    return 0;
}

/* ---- the OpenAI API ---- */

#define INFO_TIMEOUT_MS 30000
#define COMPLETE_TIMEOUT_MS 600000

/* The message of an OpenAI-style error body ({"error": {"message"}}), or of llama-server's, or
 * the start of the body. */
static void error_message(const char *body, char *out, size_t cap)
{
    cJSON *j = cJSON_Parse(body);
    cJSON *e = cJSON_GetObjectItem(j, "error");
    const char *m = cJSON_GetStringValue(cJSON_GetObjectItem(e, "message"));
    if (!m)
        m = cJSON_GetStringValue(e);
    if (m)
        snprintf(out, cap, "%s", m);
    else
        snprintf(out, cap, "%.200s", body ? body : "");
    cJSON_Delete(j);
}

static double num_or(const cJSON *o, const char *k, double dflt)
{
    const cJSON *v = cJSON_GetObjectItem(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : dflt;
}

/* A GET or POST whose JSON answer goes to *out (the caller deletes it). Returns the status, or a
 * negative code. */
static int json_call(hc_conn *c, const char *method, const char *path, const char *body,
                     cJSON **out)
{
    hc_response r;
    *out = NULL;
    int rc =
        hc_request(c, method, path, body, body ? strlen(body) : 0, NULL, NULL, INFO_TIMEOUT_MS, &r);
    if (rc < 0)
        return rc;
    if (r.status == 401 || r.status == 403) {
        char m[512];
        error_message(r.body, m, sizeof m);
        free(r.body);
        return fail(c, HC_ESTATUS, "%s %s: HTTP %d: %s (give the key with --api-key)", method, path,
                    r.status, m);
    }
    *out = cJSON_Parse(r.body);
    free(r.body);
    return r.status;
}

/* Whether the server's /detokenize takes id: 1 yes, 0 no (a 4xx), or a negative code. */
static int id_valid(hc_conn *c, int id)
{
    char body[64];
    snprintf(body, sizeof body, "{\"tokens\": [%d]}", id);
    cJSON *j;
    int st = json_call(c, "POST", "/detokenize", body, &j);
    cJSON_Delete(j);
    if (st < 0)
        return st;
    return st == 200 ? 1 : st >= 400 && st < 500 ? 0 : -1;
}

int hc_server_info_get(hc_conn *c, hc_server_info *out)
{
    cJSON *j;
    int st = json_call(c, "GET", "/v1/models", NULL, &j);
    if (st < 0)
        return st;
    if (st != 200 || !j) {
        cJSON_Delete(j);
        return fail(c, HC_ESTATUS,
                    "GET /v1/models: HTTP %d%s: is this an OpenAI-compatible "
                    "server?",
                    st, j ? "" : " (not JSON)");
    }
    cJSON *m = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "data"), 0);
    const char *id = cJSON_GetStringValue(cJSON_GetObjectItem(m, "id"));
    snprintf(out->model, sizeof out->model, "%s", id ? id : "");
    cJSON *meta = cJSON_GetObjectItem(m, "meta");
    if (!out->seq_len)
        out->seq_len = (int)num_or(m, "max_model_len", num_or(meta, "n_ctx_train", 0));
    if (!out->vocab)
        out->vocab = (int)num_or(meta, "n_vocab", 0);
    int ctx_train = !cJSON_GetObjectItem(m, "max_model_len");
    cJSON_Delete(j);
    if (ctx_train) { /* llama-server: the slots' context, which -c may make smaller */
        st = json_call(c, "GET", "/props", NULL, &j);
        if (st < 0)
            return st;
        cJSON *g = cJSON_GetObjectItem(j, "default_generation_settings");
        int n_ctx = (int)num_or(g, "n_ctx", 0);
        if (st == 200 && n_ctx > 0)
            out->seq_len = n_ctx;
        cJSON_Delete(j);
    }
    if (out->seq_len <= 0)
        return fail(c, HC_EREPLY,
                    "GET /v1/models tells no context length (max_model_len or "
                    "meta.n_ctx_train)");
    if (out->vocab > 0)
        return 0;
    /* prefixd: the first id /detokenize refuses is the vocabulary size. */
    int v = id_valid(c, 3);
    if (v < 0)
        return v;
    if (v == 0)
        return fail(c, HC_EREPLY,
                    "the vocabulary size is not in GET /v1/models and POST "
                    "/detokenize does not tell it");
    int lo = 3, hi = 64; /* lo valid, hi not yet known */
    while ((v = id_valid(c, hi)) == 1) {
        lo = hi;
        if (hi >= (1 << 24))
            return fail(c, HC_EREPLY, "POST /detokenize takes every id up to 2^24");
        hi *= 2;
    }
    if (v < 0)
        return v;
    while (hi - lo > 1) { /* lo valid, hi not */
        int mid = lo + (hi - lo) / 2;
        if ((v = id_valid(c, mid)) < 0)
            return v;
        *(v ? &lo : &hi) = mid;
    }
    out->vocab = hi;
    return 0;
}

typedef struct stream_state {
    hc_conn *c;
    hc_completion_res *res;
    double t0;
    int text_events, done, have_usage_cached, have_timings_cached;
} stream_state;

static int completion_event_cb(void *arg, const char *data, size_t len)
{
    stream_state *st = arg;
    hc_completion_res *res = st->res;
    (void)len;
    if (!strcmp(data, "[DONE]")) {
        st->done = 1;
        return 0;
    }
    cJSON *j = cJSON_Parse(data);
    if (!j)
        return hc_seterr(st->c, "%s: an event that is not JSON: '%.80s'", hc_url(st->c), data);
    cJSON *e = cJSON_GetObjectItem(j, "error");
    if (e) {
        const char *m = cJSON_GetStringValue(cJSON_GetObjectItem(e, "message"));
        hc_seterr(st->c, "%s: the stream ended with an error: %s", hc_url(st->c),
                  m ? m : "(no message)");
        cJSON_Delete(j);
        return 1;
    }
    cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
    const char *text = cJSON_GetStringValue(cJSON_GetObjectItem(ch, "text"));
    if (text && text[0]) {
        if (st->text_events++ == 0)
            res->ttft_ms = base_now_ms() - st->t0;
    }
    cJSON *toks = cJSON_GetObjectItem(j, "tokens");
    if (!toks)
        toks = cJSON_GetObjectItem(ch, "tokens");
    cJSON *t;
    cJSON_ArrayForEach(t, toks)
    {
        if (cJSON_IsNumber(t) && res->n_reply_ids < res->reply_cap)
            res->reply_ids[res->n_reply_ids++] = (int32_t)t->valuedouble;
    }
    cJSON *u = cJSON_GetObjectItem(j, "usage");
    if (cJSON_IsObject(u)) {
        res->prompt_tokens = (uint32_t)num_or(u, "prompt_tokens", res->prompt_tokens);
        res->new_tokens = (uint32_t)num_or(u, "completion_tokens", res->new_tokens);
        cJSON *d = cJSON_GetObjectItem(u, "prompt_tokens_details");
        if (cJSON_IsNumber(cJSON_GetObjectItem(d, "cached_tokens"))) {
            res->cached_tokens = (uint32_t)num_or(d, "cached_tokens", 0);
            st->have_usage_cached = 1;
        }
    }
    cJSON *tm = cJSON_GetObjectItem(j, "timings"); /* llama-server */
    if (cJSON_IsObject(tm)) {
        if (!st->have_usage_cached) {
            if (cJSON_IsNumber(cJSON_GetObjectItem(tm, "cache_n")))
                res->cached_tokens = (uint32_t)num_or(tm, "cache_n", 0);
            else if (cJSON_IsNumber(cJSON_GetObjectItem(tm, "prompt_n"))) {
                double pn = num_or(tm, "prompt_n", 0), all = (double)res->prompt_tokens;
                res->cached_tokens = pn < all ? (uint32_t)(all - pn) : 0;
            }
            st->have_timings_cached = 1;
        }
        if (cJSON_IsNumber(cJSON_GetObjectItem(tm, "predicted_n")) && !cJSON_IsObject(u))
            res->new_tokens = (uint32_t)num_or(tm, "predicted_n", 0);
        res->prefill_ms = num_or(tm, "prompt_ms", res->prefill_ms);
    }
    cJSON *p = cJSON_GetObjectItem(j, "prefixd");
    if (cJSON_IsObject(p)) {
        res->cached_tokens_disk = (uint32_t)num_or(p, "cached_tokens_disk", 0);
        res->server_ttft_ms = num_or(p, "ttft_ms", -1);
        res->prefill_ms = num_or(p, "prefill_ms", res->prefill_ms);
    }
    cJSON_Delete(j);
    return 0;
}

int hc_complete(hc_conn *c, const hc_completion_req *req, hc_completion_res *res)
{
    cJSON *j = cJSON_CreateObject();
    cJSON *pr = cJSON_AddArrayToObject(j, "prompt");
    for (size_t i = 0; pr && i < req->n_ids; i++)
        cJSON_AddItemToArray(pr, cJSON_CreateNumber(req->ids[i]));
    cJSON_AddNumberToObject(j, "max_tokens", req->max_tokens);
    cJSON_AddNumberToObject(j, "temperature", req->temp);
    cJSON_AddNumberToObject(j, "seed", (double)(req->seed & ((1ull << 52) - 1)));
    cJSON_AddBoolToObject(j, "stream", 1);
    cJSON_AddBoolToObject(cJSON_AddObjectToObject(j, "stream_options"), "include_usage", 1);
    cJSON_AddBoolToObject(j, "cache_prompt", 1); /* llama-server's prefix reuse; others ignore it */
    if (req->cache_salt)
        cJSON_AddStringToObject(j, "cache_salt", req->cache_salt);
    char *body = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    if (!body)
        return fail(c, HC_ENOMEM, "out of memory");
    int32_t *ids = res->reply_ids;
    size_t cap = res->reply_cap;
    *res = (hc_completion_res){.prompt_tokens = (uint32_t)req->n_ids,
                               .server_ttft_ms = -1,
                               .prefill_ms = -1,
                               .ttft_ms = -1,
                               .reply_ids = ids,
                               .reply_cap = cap};
    stream_state st = {.c = c, .res = res, .t0 = base_now_ms()};
    hc_response r;
    int rc = hc_request(c, "POST", "/v1/completions", body, strlen(body), completion_event_cb, &st,
                        COMPLETE_TIMEOUT_MS, &r);
    free(body);
    if (rc < 0)
        return rc;
    res->total_ms = base_now_ms() - st.t0;
    if (r.status != 200) {
        char m[512];
        error_message(r.body, m, sizeof m);
        free(r.body);
        return fail(c, HC_ESTATUS, "POST /v1/completions: HTTP %d: %s", r.status, m);
    }
    if (r.body) { /* 200 but not an event stream */
        free(r.body);
        return fail(c, HC_EREPLY,
                    "POST /v1/completions with \"stream\": true did not answer "
                    "with an event stream");
    }
    if (st.text_events == 0)
        return fail(c, HC_EREPLY, "POST /v1/completions: the stream carried no token");
    if (!st.done)
        return fail(c, HC_EREPLY, "POST /v1/completions: the stream ended without [DONE]");
    if (res->new_tokens == 0)
        res->new_tokens = (uint32_t)st.text_events;
    if (res->cached_tokens > res->prompt_tokens)
        res->cached_tokens = res->prompt_tokens;
    return 0;
}
