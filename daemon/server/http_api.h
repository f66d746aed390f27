/* http_api.h — the HTTP API's parts that do no I/O: reading one HTTP/1.x request (on top of
 * http-parser, http_parse.c), mapping an OpenAI JSON request to what the engine needs, and
 * rendering responses, Server-Sent Events and errors in the OpenAI shape (openai.c).
 *
 * Nothing here knows libuv, threads or the engine: http.c (the loop thread) reads requests with
 * hreq_*, and maps them with oai_parse(); http_emit.c (the engine thread) renders the engine's
 * events with oai_out_*. The fuzz target (tests/fuzz/fuzz_http.c) drives the same functions.
 *
 * Errors are OpenAI's: an HTTP status, a `param` naming the offending field (or empty) and a
 * message that names the problem.
 */
#ifndef PREFIXD_HTTP_API_H
#define PREFIXD_HTTP_API_H

#include <http_parser.h>
#include <stddef.h>
#include <stdint.h>

/* ---- A growable byte buffer ---------------------------------------------------------------- */

/* Appends never fail loudly: on out of memory the buffer sets oom and stops growing; the caller
 * checks oom once at the end. Free with hbuf_free(); a zeroed hbuf is empty. */
typedef struct hbuf {
    char *p;
    size_t len, cap;
    int oom;
} hbuf;

void hbuf_add(hbuf *b, const void *p, size_t n);
void hbuf_str(hbuf *b, const char *s);
void hbuf_printf(hbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void hbuf_free(hbuf *b);

/* ---- One HTTP request (http_parse.c) -------------------------------------------------------- */

#define HREQ_MAX_URL 2048     /* longer: 414 */
#define HREQ_MAX_AUTH 1024    /* a longer Authorization header: 431 */
#define HREQ_MAX_HEADER 65536 /* all header bytes of one request (http-parser's limit): 431 */

typedef struct hreq {
    http_parser p;
    size_t max_body; /* a longer body: 413 */
    /* The request, valid once complete is set (url and auth NUL-terminated). */
    char url[HREQ_MAX_URL + 1];
    size_t url_len;
    char auth[HREQ_MAX_AUTH + 1]; /* the Authorization header's value */
    size_t auth_len;
    char *body; /* owned, NUL-terminated; NULL when empty */
    size_t body_len, body_cap;
    int keep_alive;    /* the connection may carry another request after this one */
    int want_continue; /* Expect: 100-continue (set when the headers are in) */
    int headers_done;
    int complete;
    int started; /* a byte of this request has been read */
    /* Header parsing: the field being read and which one it is. */
    char field[32];
    size_t field_len;
    int field_kind; /* 0 other, 1 authorization, 2 expect */
    int in_value;
    /* A malformed or too large request: the status to answer (400, 413, 414, 431, 505) and why. */
    int status;
    char err[200];
} hreq;

/* Prepares r for a connection's first request. max_body: the largest body accepted. */
void hreq_init(hreq *r, size_t max_body);

/* Forgets the complete request (frees its body) and reads the next one on the same
 * connection. */
void hreq_next(hreq *r);

/* Frees what r owns. */
void hreq_free(hreq *r);

/* Reads bytes of a request. Returns the bytes consumed: it stops after one complete request
 * (r->complete; what follows belongs to the next one, fed after hreq_next()), or when all of
 * data is taken. Returns -1 on a malformed or too large request, with r->status and r->err set;
 * the connection cannot continue. */
long hreq_feed(hreq *r, const char *data, size_t len);

/* The method as a string ("GET", "POST", ...). */
const char *hreq_method(const hreq *r);

/* ---- OpenAI requests (openai.c) ------------------------------------------------------------- */

typedef enum oai_kind { OAI_COMPLETION, OAI_CHAT } oai_kind;

#define OAI_MAX_STOP 4
#define OAI_MAX_STOP_LEN 256
#define OAI_MAX_SALT 48 /* cache_salt: [A-Za-z0-9._-] */
#define OAI_MAX_TOP_LOGPROBS 20

typedef struct oai_error {
    int status;     /* HTTP status */
    char param[64]; /* the field at fault, or "" */
    char code[40];  /* OpenAI's machine-readable code, or "" */
    char msg[400];
} oai_error;

/* A request mapped for the engine. Everything is owned (oai_params_free). */
typedef struct oai_params {
    oai_kind kind;
    char *text; /* the prompt as text (a completion's string, a chat's rendered messages) ... */
    size_t text_len;
    int32_t *ids; /* ... or as token ids (a completion's array of integers), when ids != NULL */
    size_t n_ids;
    uint32_t max_tokens; /* completions: 16 by default; chat: as many as the context leaves */
    float temperature;   /* default 1 */
    float top_p;         /* default 1 */
    uint64_t seed;
    int has_seed;
    char *stop[OAI_MAX_STOP];
    size_t stop_len[OAI_MAX_STOP];
    int n_stop;
    int stream, include_usage;
    int logprobs;     /* 1: log-probabilities of the answer's tokens */
    int top_logprobs; /* and of that many most likely tokens at each position */
    char cache_salt[OAI_MAX_SALT + 1];
    /* chat: the messages as the native CHAT's list (str role, str content each, roles as the
     * request has them but "developer" made "system"), for a model with a chat template. */
    char *chat_list;
    size_t chat_list_len;
    uint32_t n_msgs;
} oai_params;

/* Maps a JSON request body of kind `kind`. Returns 0, or -1 with err filled (400 and the field
 * at fault; out holds nothing to free). */
int oai_parse(oai_kind kind, const char *body, size_t len, oai_params *out, oai_error *err);
void oai_params_free(oai_params *p);

/* The plain role-prefixed rendering of chat messages, for a model without a chat template: each
 * message as "<role>: <content>\n", then "assistant:". With a template the daemon renders
 * chat_list with it instead, as it renders the native CHAT. */
#define OAI_CHAT_PROMPT_END "assistant:"

/* ---- Responses (openai.c) ------------------------------------------------------------------- */

/* The status line and headers of a response. content_length < 0: the body is sent in chunks
 * (Transfer-Encoding: chunked) as an event stream. retry_after > 0 adds Retry-After. */
void oai_http_head(hbuf *b, int status, const char *content_type, long content_length,
                   int keep_alive, int retry_after);

/* A whole response: head and a JSON body. */
void oai_http_json(hbuf *b, int status, const char *json, size_t len, int keep_alive,
                   int retry_after);

/* The OpenAI error object {"error": {"message", "type", "param", "code"}} as JSON text. */
void oai_error_json(hbuf *b, const oai_error *e);

/* A whole error response (head and body). retry_after as for oai_http_head(). */
void oai_http_error(hbuf *b, const oai_error *e, int keep_alive, int retry_after);

/* Fills e: status, param (or NULL), code (or NULL), and a message. Returns -1 (for
 * `return oai_fail(...)`). */
int oai_fail(oai_error *e, int status, const char *param, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* A request's figures at its end, for `usage` and `prefixd`. */
typedef struct oai_usage {
    uint32_t prompt_tokens, cached_tokens, cached_tokens_disk, cached_tokens_remote,
        completion_tokens;
    double ttft_ms, prefill_ms, decode_tokens_per_s, total_ms;
} oai_usage;

/* One token's log-probability as a response shows it: its text (the token's own bytes) and
 * logprob. */
typedef struct oai_token_lp {
    const char *text;
    size_t len;
    float logprob;
} oai_token_lp;

/* What the rendering keeps of one token's log-probabilities until they are sent. */
typedef struct oai_lp_entry {
    size_t end; /* bytes of the answer's text once this token's piece is added */
    int n;      /* 1 + alternatives */
    float logprob[1 + OAI_MAX_TOP_LOGPROBS];
    size_t off[1 + OAI_MAX_TOP_LOGPROBS], len[1 + OAI_MAX_TOP_LOGPROBS]; /* in lp_text */
} oai_lp_entry;

/* The rendering of one request's answer, token by token (engine thread). */
typedef struct oai_out {
    oai_kind kind;
    int stream, include_usage;
    int keep_alive;
    int chunked; /* HTTP/1.1: the stream is chunked; HTTP/1.0: ends with the connection */
    char id[48];
    long created;
    const char *model; /* borrowed: lives as long as the server */
    char *stop[OAI_MAX_STOP];
    size_t stop_len[OAI_MAX_STOP];
    int n_stop;
    size_t max_stop;
    hbuf text;   /* generated text so far (cut at a stop string once one is seen) */
    size_t sent; /* bytes of text already streamed */
    uint32_t n_tokens;
    int stopped;   /* a stop string was seen: the rest is not shown */
    int head_sent; /* streaming: the head and the first chunk went out */
    int logprobs, top_logprobs;
    oai_lp_entry *lp; /* one per token, when logprobs */
    size_t n_lp, cap_lp, lp_sent;
    hbuf lp_text; /* the entries' token texts */
} oai_out;

/* A rendering for params p (its stop strings are moved into it: p keeps none). */
oai_out *oai_out_new(const oai_params *p, const char *id, long created, const char *model,
                     int keep_alive, int chunked);
void oai_out_free(oai_out *o);

/* A token's text: appends to wire what a stream sends now (nothing for a non-streaming
 * request). lp: NULL, or (when the request asked for logprobs) n_lp entries: the token's own,
 * then the most likely alternatives. Returns 1 when a stop string has just been seen (the caller
 * ends the request), else
 * 0. */
int oai_out_token(oai_out *o, const char *piece, size_t len, const oai_token_lp *lp, int n_lp,
                  hbuf *wire);

/* The request ended: appends the rest of the answer (a stream's last chunks and [DONE], or the
 * whole response). finish is "stop" or "length". */
void oai_out_done(oai_out *o, const char *finish, const oai_usage *u, hbuf *wire);

/* The request failed: an error response, or, once a stream has started, an error event and the
 * end of the stream. */
void oai_out_error(oai_out *o, const oai_error *e, int retry_after, hbuf *wire);

/* Appends s with invalid UTF-8 replaced by U+FFFD. */
void oai_utf8_clean(hbuf *b, const char *s, size_t len);

/* The length of s's longest prefix that ends on a UTF-8 character boundary (an incomplete last
 * character is held back). */
size_t oai_utf8_complete(const char *s, size_t len);

#endif
