/* server.h — the daemon: the libuv loop that serves the native protocol on a Unix socket, and
 * the engine thread that runs the engine (engine.h) behind it. Its options are filled by
 * `prefixd serve` (daemon/cli/serve.c).
 *
 * Files: conn.c (connections and framing, on the loop thread), engine_thread.c (the engine
 * thread, its queues and the emit path), stats.c (the STATS reply), server.c (binding the
 * socket, signals, start and shutdown: srv_run()). The OpenAI-compatible HTTP API (--http):
 * http.c (its connections, on the loop thread), http_parse.c and openai.c (reading requests
 * and the JSON, no I/O: http_api.h), http_emit.c (rendering answers on the engine thread),
 * metrics.c (GET /metrics).
 */
#ifndef PREFIXD_SERVER_H
#define PREFIXD_SERVER_H

#include <stddef.h>
#include <sys/types.h>

#include "engine.h"
#include "model.h"

typedef struct srv_opts {
    engine_opts engine; /* the engine's options (emit and wake are the server's own) */
    const char *model_path;
    const char *socket_path;
    mode_t socket_mode; /* default 0600 */
    int listen_fd;      /* > 0: a listening socket passed by socket activation (activation.h),
                         * served as it is: never bound, chmod'ed or unlinked by us */
    int share_across_users;
    int stats_all_users;     /* STATS shows every user the daemon-wide counters */
    int disk_is_default;     /* engine.disk_dir is the default: if another daemon holds it, run
                              * without a disk tier */
    size_t max_frame;        /* bytes */
    size_t max_output;       /* per-connection unread output before its requests are cancelled */
    double grace_ms;         /* on SIGINT/SIGTERM, how long running requests may finish */
    double hello_timeout_ms; /* a connection must say HELLO within this (0: never closed) */
    double idle_timeout_ms;  /* a connection with no request and no frame is closed (0: never) */
    int max_conns_per_user;  /* connections one uid may hold (0: no limit) */
    size_t max_input_mem;    /* all connections' unprocessed input together */
    size_t max_text;         /* largest text to tokenize (a prompt or TOKENIZE) */
    int log_level;           /* BASE_LOG_* */
    /* The HTTP API: off unless http_addr is set ("127.0.0.1:8080", "[::1]:8080",
     * "unix:/path"). */
    const char *http_addr;
    const char *api_key_file; /* "key [tenant]" lines: bearer authentication, one namespace
                               * per tenant */
    int http_insecure;        /* allow a non-loopback address without API keys */
    /* --chat-template: a family's name or a Jinja file, rendering chats in place of the
     * model's template (model_chat_template_choose()); NULL: the model's. */
    const char *chat_template;
} srv_opts;

/* Runs the daemon until SIGINT/SIGTERM: binds the socket, starts the engine thread, serves.
 * m and tok are borrowed. Returns the exit code: 0 after a clean shutdown, 2 when the socket
 * or the configuration cannot be used (a live daemon on the socket, a path too long, a disk dir
 * that cannot be used), 1 on other failures. Call from the main thread, once. */
int srv_run(const srv_opts *o, const model *m, const model_tokenizer *tok);

#endif
