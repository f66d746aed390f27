/* prefixd_client.h — libprefixd, the C client library (uses proto/ only).
 *
 * A pfx_conn is one connection to the daemon, used from one thread. Calls block. pfx_generate()
 * streams tokens to a callback as their frames arrive; the lower-level pfx_send(), pfx_wait()
 * and pfx_next() let one connection carry several requests at once. Errors: 0 on success, else
 * a negative PFX_E* code with a message in the connection's error text (pfx_errmsg()), or, for
 * an ERROR frame from the daemon, PFX_ESERVER with the daemon's code in the result.
 *
 * Several requests on one connection: a blocking call (pfx_generate(), pfx_wait(), pfx_stats(),
 * pfx_tokenize(), pfx_detokenize()) reads the frames of the other requests in flight while it
 * waits for its own, and keeps them, in order, for those requests: pfx_wait() and pfx_next()
 * return them before reading the socket. The kept frames are bounded (pfx_set_pending_max(),
 * default PFX_PENDING_MAX_DEFAULT bytes): when the next frame of another request would pass the
 * bound, the blocking call returns PFX_EFULL and leaves that frame unread, so no frame is ever
 * dropped. Its own request is still in flight then: collect the others' frames with pfx_next()
 * (the call's own answer comes that way too, in its turn), or call pfx_wait() again for a
 * request sent with pfx_send().
 */
#ifndef PREFIXD_CLIENT_H
#define PREFIXD_CLIENT_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "proto.h"

enum {
    PFX_ECONNECT = -1,
    PFX_EIO = -2,
    PFX_EPROTO = -3,
    PFX_ESERVER = -4,
    PFX_ENOMEM = -5,
    PFX_EFULL = -6 /* other requests' frames waiting to be collected passed the bound */
};

/* The default bound on the frames kept for other requests (bytes, counting each frame's wire
 * bytes and a small header): 16 MiB, over 300,000 TOKEN frames. */
#define PFX_PENDING_MAX_DEFAULT ((size_t)16 << 20)

typedef struct pfx_conn pfx_conn;

/* Connects to path (NULL: proto_default_socket_path()) and does the HELLO handshake. Before
 * sending anything it checks who serves the socket (SO_PEERCRED) and refuses (PFX_ECONNECT) a
 * server whose uid is neither the caller's nor root. On failure *out is NULL and err (errlen
 * bytes) says why, naming the path (and the server's uid when that was the reason). */
int pfx_connect(const char *path, pfx_conn **out, char *err, size_t errlen);
void pfx_close(pfx_conn *c); /* accepts NULL */

/* Closes c's socket and connects again to the same path (the one pfx_connect() resolved), with
 * the same checks and a new HELLO; for a client whose daemon went away (a call failed with
 * PFX_EIO) and may be back. Requests that were running on the old socket are gone, and their
 * frames with them; request ids go on counting. pfx_server() then holds the new daemon's facts,
 * which may differ (another model). On failure (PFX_ECONNECT, or the handshake's codes) the
 * reason is in pfx_errmsg(), every other call fails with PFX_EIO until a pfx_reconnect()
 * succeeds, and c must still be closed with pfx_close(). */
int pfx_reconnect(pfx_conn *c);

/* Lets a signal handler cancel pfx_generate(): while flag is not NULL, pfx_generate() watches
 * *flag, and once it is non-zero it sends CANCEL for its request, drops the tokens still on their
 * way, and returns 0 when the daemon's DONE arrives (finish PROTO_FINISH_CANCELLED, unless the
 * request had already ended otherwise); a daemon that does not answer within 5 s fails the call
 * with PFX_EIO. Waiting, it looks at *flag at least every 50 ms, so a handler need not interrupt
 * a system call (SA_RESTART is fine). The caller clears *flag; the library only reads it. flag
 * must live as long as it is set on c; NULL stops the watch. */
void pfx_set_cancel_flag(pfx_conn *c, volatile sig_atomic_t *flag);

/* The daemon's HELLO_OK facts. Valid as long as c. */
const proto_hello_ok *pfx_server(const pfx_conn *c);
const char *pfx_errmsg(const pfx_conn *c);
/* The PROTO_ERR_* code of the ERROR frame that failed the last call (PFX_ESERVER), else 0. */
int pfx_server_error(const pfx_conn *c);

/* A chat message (pfx_chat()). */
typedef struct pfx_chat_msg {
    const char *role;    /* "system", "user" or "assistant", NUL-terminated */
    const char *content; /* UTF-8, len bytes */
    size_t len;
} pfx_chat_msg;

typedef struct pfx_gen {
    const char *text; /* prompt as text, or ... */
    size_t text_len;
    const int32_t *ids; /* ... as ids (when not NULL) */
    size_t n_ids;
    uint32_t max_new; /* u32 on the wire: callers holding a wider or signed count check its
                         range before they store it here (prefixctl refuses -1 and >= 2^32) */
    float temp, top_p;
    uint64_t seed;
    const char *ns; /* namespace or NULL */
    int warm;       /* WARM instead of GENERATE */
    int pin;        /* with warm */
    /* A chat instead of a prompt (pfx_chat(); text and ids are then not read): n_msgs
     * messages, and a system prompt put first (NUL-terminated; NULL or "" for none). */
    const pfx_chat_msg *msgs;
    size_t n_msgs;
    const char *system;
} pfx_gen;

typedef struct pfx_result {
    proto_done done; /* the daemon's stats (valid when ok) */
    double ttft_ms;  /* client side: send to the first TOKEN frame */
    int server_code; /* PROTO_ERR_* when the daemon answered ERROR */
    char server_msg[512];
} pfx_result;

/* Called for each token; return non-zero to cancel the request (the tokens that still arrive
 * before the daemon's DONE are dropped, not passed on). */
typedef int (*pfx_token_fn)(void *arg, int32_t id, const char *piece, size_t len);

int pfx_generate(pfx_conn *c, const pfx_gen *g, pfx_token_fn on_token, void *arg, pfx_result *out);

/* CHAT: the assistant's next message after g->msgs, which the daemon renders with its model's
 * chat template (so the contents never become control tokens, and each turn's prompt is a token
 * prefix of the next turn's: the cache finds the earlier turns). Sampling, namespace and
 * max_new as for pfx_generate(); g->warm and g->pin must be 0. Streams and returns as
 * pfx_generate() does (pfx_generate() and pfx_send() send a CHAT too when g->msgs is set).
 * Whether the daemon can: pfx_has_chat(). A daemon whose model has no template answers
 * PFX_ESERVER with server code PROTO_ERR_NO_TEMPLATE; the fallback is a prompt of one's own. */
int pfx_chat(pfx_conn *c, const pfx_gen *g, pfx_token_fn on_token, void *arg, pfx_result *out);

/* 1 if the daemon renders chats (HELLO_OK's capability PROTO_CAP_CHAT), else 0. */
int pfx_has_chat(const pfx_conn *c);

/* STATS: *json receives a malloc'd NUL-terminated JSON object (free it). */
int pfx_stats(pfx_conn *c, char **json);

/* TOKENIZE: *ids (malloc'd) receives the ids, BOS first. DETOKENIZE: *text (malloc'd). */
int pfx_tokenize(pfx_conn *c, const char *text, size_t len, int32_t **ids, size_t *n);
int pfx_detokenize(pfx_conn *c, const int32_t *ids, size_t n, char **text, size_t *len);

/* Lower level: sends a request without waiting for it, returns its id in *id. Collect its frames
 * with pfx_wait() or pfx_next(). */
int pfx_send(pfx_conn *c, const pfx_gen *g, uint32_t *id);
int pfx_cancel(pfx_conn *c, uint32_t id);

/* Waits for the rest of request id (sent with pfx_send()) as pfx_generate() does, the frames kept
 * for it first; frames of other requests read meanwhile are kept for them. out->ttft_ms counts
 * from this call. An id that is not in flight waits until the daemon closes the connection
 * (PFX_EIO). */
int pfx_wait(pfx_conn *c, uint32_t id, pfx_token_fn on_token, void *arg, pfx_result *out);

/* The next frame of any request: the frames kept by blocking calls first, in arrival order, then
 * the socket. *m's strings and ids point into c's buffers: valid until the next call on c. */
int pfx_next(pfx_conn *c, proto_msg *m);

/* The number of frames kept for other requests, waiting for pfx_wait() or pfx_next(). */
size_t pfx_pending(const pfx_conn *c);

/* Sets the bound on the bytes of frames kept for other requests (see the top of this file). */
void pfx_set_pending_max(pfx_conn *c, size_t bytes);

#endif
