/* prefixd_client.h — libprefixd, the C client library (uses proto/ only).
 *
 * A pfx_conn is one connection to the daemon, used from one thread. Calls block. pfx_generate()
 * streams tokens to a callback as their frames arrive; the lower-level pfx_send() and
 * pfx_next() let one connection carry several requests at once. Errors: 0 on success, else a
 * negative PFX_E* code with a message in the connection's error text (pfx_errmsg()), or, for
 * an ERROR frame from the daemon, PFX_ESERVER with the daemon's code in the result.
 */
#ifndef PREFIXD_CLIENT_H
#define PREFIXD_CLIENT_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "proto.h"

enum { PFX_ECONNECT = -1, PFX_EIO = -2, PFX_EPROTO = -3, PFX_ESERVER = -4, PFX_ENOMEM = -5 };

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

/* STATS: *json receives a malloc'd NUL-terminated JSON object (free it). */
int pfx_stats(pfx_conn *c, char **json);

/* TOKENIZE: *ids (malloc'd) receives the ids, BOS first. DETOKENIZE: *text (malloc'd). */
int pfx_tokenize(pfx_conn *c, const char *text, size_t len, int32_t **ids, size_t *n);
int pfx_detokenize(pfx_conn *c, const int32_t *ids, size_t n, char **text, size_t *len);

/* Lower level: sends a request, returns its id in *id; pfx_next() reads the next frame (valid
 * until the next call on c). */
int pfx_send(pfx_conn *c, const pfx_gen *g, uint32_t *id);
int pfx_cancel(pfx_conn *c, uint32_t id);
int pfx_next(pfx_conn *c, proto_msg *m);

#endif
