/* server.h — the daemon (server.c) and its options (filled by serve.c). */
#ifndef PREFIXD_SERVER_H
#define PREFIXD_SERVER_H

#include <stddef.h>
#include <sys/types.h>

#include "model.h"

enum { SRV_LOG_ERROR, SRV_LOG_WARN, SRV_LOG_INFO, SRV_LOG_DEBUG };

typedef struct srv_opts {
    const char *model_path;
    const char *socket_path;
    mode_t socket_mode; /* default 0600 */
    size_t cache_mem;   /* 0: the engine's default (1 GiB) */
    size_t pin_max;     /* 0: cache_mem / 4 */
    int block_tokens;   /* 0: 16 */
    int threads;        /* 0: all cores */
    int max_batch;      /* 0: 32 */
    int max_queue;      /* 0: 256 */
    int no_cache;
    int share_across_users;
    const char *disk_dir; /* the disk tier's directory; NULL: no disk tier */
    int disk_is_default;  /* disk_dir is the default: if another daemon holds it, run without */
    size_t disk_max;      /* 0: 4 GiB */
    int disk_reset;       /* wipe a store of another format version or geometry */
    size_t max_frame;     /* bytes */
    size_t max_output;    /* per-connection unread output before its requests are cancelled */
    double grace_ms;      /* on SIGINT/SIGTERM, how long running requests may finish */
    int log_level;        /* SRV_LOG_* */
} srv_opts;

void srv_log_set_level(int level); /* before any thread starts */

/* Logs one line to stderr if level is at or below the configured level. Any thread. */
void srv_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Runs the daemon until SIGINT/SIGTERM: binds the socket, starts the engine thread, serves.
 * m and tok are borrowed. Returns the exit code: 0 after a clean shutdown, 2 when the socket
 * cannot be used (a live daemon on it, a path too long), 1 on other failures. */
int srv_run(const srv_opts *o, const model *m, const model_tokenizer *tok);

#endif
