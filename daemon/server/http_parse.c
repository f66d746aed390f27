/* http_parse.c — one HTTP/1.x request at a time, read with Node's http-parser (Debian's
 * libhttp-parser, 2.9).
 *
 * http-parser is a callback state machine that copies nothing and keeps no buffer: bytes go in
 * as they arrive from a read, in any split, and callbacks hand back slices of them. That is the
 * shape a libuv read callback wants (no second framing layer, no re-parse of a partial header
 * as with picohttpparser). This file keeps only what the API needs from a request: method, URL
 * (<= HREQ_MAX_URL), the Authorization and Expect headers, and the body (<= max_body, with
 * Content-Length or chunked). Everything else in the headers is parsed and dropped.
 *
 * A request ends the parse: on_message_complete pauses the parser, so bytes of a pipelined next
 * request stay unread until the connection has answered this one (hreq_next()). Limits are
 * checked as bytes arrive, never after buffering: a Content-Length over max_body is refused as
 * soon as the headers are in (so a client that sent Expect: 100-continue never sends the body),
 * a chunked body as soon as it passes max_body, the headers at HREQ_MAX_HEADER bytes.
 */
#include "http_api.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static int fail(hreq *r, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int fail(hreq *r, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->err, sizeof r->err, fmt, ap);
    va_end(ap);
    r->status = status;
    return -1;
}

static hreq *req_of(http_parser *p)
{
    return p->data;
}

static int on_message_begin(http_parser *p)
{
    req_of(p)->started = 1;
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t n)
{
    hreq *r = req_of(p);
    if (n > HREQ_MAX_URL - r->url_len)
        return fail(r, 414, "request URL longer than %d bytes", HREQ_MAX_URL);
    memcpy(r->url + r->url_len, at, n);
    r->url_len += n;
    r->url[r->url_len] = 0;
    return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t n)
{
    hreq *r = req_of(p);
    if (r->in_value) { /* a new field begins */
        r->in_value = 0;
        r->field_len = 0;
        r->field_kind = 0;
    }
    /* Only short names matter; a longer one is kept truncated and matches nothing. */
    size_t room = sizeof r->field - 1 - r->field_len;
    memcpy(r->field + r->field_len, at, n < room ? n : room);
    r->field_len += n < room ? n : room;
    r->field[r->field_len] = 0;
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t n)
{
    hreq *r = req_of(p);
    if (!r->in_value) {
        r->in_value = 1;
        r->field_kind = strcasecmp(r->field, "authorization") == 0 ? 1
                        : strcasecmp(r->field, "expect") == 0      ? 2
                                                                   : 0;
        if (r->field_kind == 1 && r->auth_len > 0)
            return fail(r, 400, "more than one Authorization header");
    }
    if (r->field_kind == 1) {
        if (n > HREQ_MAX_AUTH - r->auth_len)
            return fail(r, 431, "Authorization header longer than %d bytes", HREQ_MAX_AUTH);
        memcpy(r->auth + r->auth_len, at, n);
        r->auth_len += n;
        r->auth[r->auth_len] = 0;
    } else if (r->field_kind == 2) {
        if (n >= 12 && strncasecmp(at, "100-continue", 12) == 0)
            r->want_continue = 1;
    }
    return 0;
}

static int on_headers_complete(http_parser *p)
{
    hreq *r = req_of(p);
    if (p->http_major != 1)
        return fail(r, 505, "HTTP version %u.%u is not supported (HTTP/1.0 and 1.1 are)",
                    p->http_major, p->http_minor);
    if ((p->flags & F_CONTENTLENGTH) && p->content_length > r->max_body)
        return fail(r, 413, "request body of %llu bytes is larger than the maximum (%zu bytes)",
                    (unsigned long long)p->content_length, r->max_body);
    r->headers_done = 1;
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t n)
{
    hreq *r = req_of(p);
    if (n > r->max_body - r->body_len)
        return fail(r, 413, "request body larger than the maximum (%zu bytes)", r->max_body);
    if (r->body_len + n + 1 > r->body_cap) {
        size_t cap = r->body_cap ? r->body_cap : 1024;
        while (cap < r->body_len + n + 1)
            cap *= 2;
        if (p->flags & F_CONTENTLENGTH && cap > p->content_length + 1 &&
            r->body_len + n + 1 <= p->content_length + 1)
            cap = (size_t)p->content_length + 1; /* the announced size, no more */
        char *nb = realloc(r->body, cap);
        if (!nb)
            return fail(r, 503, "out of memory for a request body of %zu bytes", r->body_len + n);
        r->body = nb;
        r->body_cap = cap;
    }
    memcpy(r->body + r->body_len, at, n);
    r->body_len += n;
    r->body[r->body_len] = 0;
    return 0;
}

static int on_message_complete(http_parser *p)
{
    hreq *r = req_of(p);
    r->complete = 1;
    r->keep_alive = http_should_keep_alive(p) && !p->upgrade;
    http_parser_pause(p, 1); /* the next request waits for hreq_next() */
    return 0;
}

static const http_parser_settings settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

void hreq_init(hreq *r, size_t max_body)
{
    memset(r, 0, sizeof *r);
    r->max_body = max_body;
    http_parser_set_max_header_size(HREQ_MAX_HEADER);
    http_parser_init(&r->p, HTTP_REQUEST);
    r->p.data = r;
}

void hreq_next(hreq *r)
{
    char *body = r->body;
    size_t cap = r->body_cap, max_body = r->max_body;
    http_parser p = r->p;
    /* Keep a small body buffer for the next request; a large one goes. */
    if (cap > 64 * 1024) {
        free(body);
        body = NULL;
        cap = 0;
    }
    memset(r, 0, sizeof *r);
    r->body = body;
    r->body_cap = cap;
    r->max_body = max_body;
    r->p = p;
    r->p.data = r;
    http_parser_pause(&r->p, 0);
}

void hreq_free(hreq *r)
{
    free(r->body);
    r->body = NULL;
    r->body_cap = r->body_len = 0;
}

long hreq_feed(hreq *r, const char *data, size_t len)
{
    if (r->status)
        return -1;
    if (r->complete || len == 0)
        return 0;
    size_t n = http_parser_execute(&r->p, &settings, data, len);
    enum http_errno e = HTTP_PARSER_ERRNO(&r->p);
    if (r->status)
        return -1; /* a limit, from a callback */
    if (e == HPE_PAUSED && r->complete)
        return (long)n;
    if (e == HPE_HEADER_OVERFLOW)
        return fail(r, 431, "request headers larger than %d bytes", HREQ_MAX_HEADER);
    if (e != HPE_OK)
        return fail(r, 400, "malformed HTTP request: %s (%s)", http_errno_description(e),
                    http_errno_name(e));
    if (r->p.upgrade && !r->complete)
        return fail(r, 400, "protocol upgrades are not supported");
    if (n != len && !r->complete)
        return fail(r, 400, "malformed HTTP request: %zu bytes left unparsed", len - n);
    return (long)n;
}

const char *hreq_method(const hreq *r)
{
    return http_method_str((enum http_method)r->p.method);
}
