/* http_client.h — a small HTTP/1.1 client on plain sockets for `prefixctl bench --http`: one
 * keep-alive connection per handle, chunked and Content-Length bodies, Server-Sent Events, and
 * the OpenAI-style streaming completion the bench times (http_client.c).
 *
 * A handle is used by one thread at a time; handles share nothing, so each bench client thread
 * has its own. Errors are negative HC_E* codes; the handle's hc_errmsg() says what went wrong in
 * a sentence naming the URL, the status or the field.
 */
#ifndef PREFIXCTL_HTTP_CLIENT_H
#define PREFIXCTL_HTTP_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#define HC_ERRNO_MAP(X)                                                                            \
    X(URL, "bad URL")                                                                              \
    X(CONNECT, "cannot connect")                                                                   \
    X(IO, "connection lost")                                                                       \
    X(TIMEOUT, "timed out")                                                                        \
    X(PROTO, "malformed HTTP response")                                                            \
    X(STATUS, "HTTP error status")                                                                 \
    X(REPLY, "unexpected reply")                                                                   \
    X(NOMEM, "out of memory")

enum {
#define HC_ENUM(name, msg) HC_E##name,
    HC__BASE = -100,
    HC_ERRNO_MAP(HC_ENUM)
#undef HC_ENUM
};

/* The name of error code err (a static string). */
const char *hc_strerror(int err);

typedef struct hc_conn hc_conn;

/* Parses url ("http://HOST:PORT[/PREFIX]", "http://[V6]:PORT", or "unix:/path" for HTTP over a
 * Unix socket; a trailing "/v1" is dropped, so a base URL of the OpenAI SDKs works too) and
 * makes a handle for it; api_key (may be NULL; copied) is sent as "Authorization: Bearer KEY".
 * Connects lazily, on the first request. Returns 0 and *out (free with hc_close), or HC_EURL /
 * HC_ENOMEM with the reason in err (errlen bytes). */
int hc_open(const char *url, const char *api_key, hc_conn **out, char *err, size_t errlen);

/* Closes the connection and frees the handle; accepts NULL. */
void hc_close(hc_conn *c);

/* The last error's message, valid until the next call on c. */
const char *hc_errmsg(const hc_conn *c);

/* The URL as given to hc_open, for messages. */
const char *hc_url(const hc_conn *c);

/* Called with each Server-Sent Event's data (its "data:" lines joined by '\n', NUL-terminated,
 * valid until the callback returns). Return 0 to go on, nonzero to stop reading: the request
 * then returns HC_EREPLY (the callback should have called hc_seterr) and the connection closes. */
typedef int (*hc_event_cb)(void *arg, const char *data, size_t len);

/* A response: the status and, unless it was an event stream, the body. */
typedef struct hc_response {
    int status;
    char *body; /* NUL-terminated; malloc'ed, the caller frees; NULL for an event stream */
    size_t body_len;
} hc_response;

/* Sends method path (with the handle's prefix) with body (body_len bytes of JSON, or NULL) and
 * reads the whole answer. A text/event-stream answer is fed to on_event event by event; any other
 * is returned in out->body. Reuses the kept-alive connection, reconnecting once if the server had
 * closed it before answering. A status >= 400 is returned in out (not an error). Gives up after
 * timeout_ms without a byte (HC_ETIMEOUT). Returns 0, or a negative HC_E* code with
 * hc_errmsg() set. */
int hc_request(hc_conn *c, const char *method, const char *path, const char *body, size_t body_len,
               hc_event_cb on_event, void *arg, int timeout_ms, hc_response *out);

/* Sets the handle's error message (for callbacks); returns HC_EREPLY. */
int hc_seterr(hc_conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- the OpenAI API, as the bench uses it ---- */

/* What the server says of its model: from GET /v1/models (prefixd: max_model_len; llama-server:
 * meta.n_vocab, meta.n_ctx_train), GET /props (llama-server: the slots' n_ctx), and, when no
 * vocabulary size is given, a search with POST /detokenize for the first id refused (prefixd
 * answers an id out of range with a 400). */
typedef struct hc_server_info {
    char model[256];
    int vocab, seq_len;
} hc_server_info;

/* Fills *out from the server. Returns 0, or a negative code with hc_errmsg() saying which figure
 * could not be found (then give it with the bench's options). */
int hc_server_info_get(hc_conn *c, hc_server_info *out);

/* One streaming completion of token ids. */
typedef struct hc_completion_req {
    const int32_t *ids;
    size_t n_ids;
    uint32_t max_tokens;
    float temp;
    uint64_t seed;
    const char *cache_salt; /* may be NULL */
} hc_completion_req;

/* What the stream said. Figures a server did not report are left at 0 (ids) or -1 (times). */
typedef struct hc_completion_res {
    double ttft_ms;              /* client side: just before sending to the first event with text */
    double total_ms;             /* to the end of the stream */
    uint32_t prompt_tokens;      /* usage.prompt_tokens, else the ids sent */
    uint32_t cached_tokens;      /* usage.prompt_tokens_details.cached_tokens, else llama-server's
                                    timings.cache_n, else prompt_tokens - timings.prompt_n */
    uint32_t cached_tokens_disk; /* prefixd.cached_tokens_disk */
    uint32_t new_tokens;         /* usage.completion_tokens, else timings.predicted_n, else the
                                    events with text */
    double server_ttft_ms;       /* prefixd.ttft_ms */
    double prefill_ms;           /* prefixd.prefill_ms, else timings.prompt_ms */
    int32_t *reply_ids;          /* in: room for reply_cap ids (may be NULL); out: the reply's ids
                                    when the events carry a "tokens" array (llama-server) */
    size_t reply_cap, n_reply_ids;
} hc_completion_res;

/* POSTs req to /v1/completions with "stream": true and "stream_options": {"include_usage": true}
 * and reads the stream into *res. Returns 0, or a negative code with hc_errmsg() set (an error
 * status or an error event names the server's message). */
int hc_complete(hc_conn *c, const hc_completion_req *req, hc_completion_res *res);

#endif
