/* server_int.h — what the server's files share: the server and connection structs, the two
 * queues between the loop thread and the engine thread, and the functions each file offers the
 * others (double underscore: private to the server).
 *
 * Threads: the loop thread owns connections (conn.c) and the listener, signals and timers
 * (server.c); the engine thread (engine_thread.c) owns the engine. They meet only in the two
 * queues below, under `mu`: tasks go loop -> engine, encoded frames go engine -> loop (woken
 * with uv_async_send). Connections are known to the engine thread only by their 32-bit id.
 */
#ifndef PREFIXD_SERVER_INT_H
#define PREFIXD_SERVER_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <uv.h>

#include "base.h"
#include "chat_prompt.h"
#include "engine.h"
#include "proto.h"
#include "server.h"

#define SRV_MAX_CONNS 4096
#define SRV_MAX_REQS_PER_CONN 64
#define SRV_FRAMES_PER_READ 64
/* Replies a connection may be owed (STATS, TOKENIZE, DETOKENIZE in flight) before its next
 * frames wait: with the write queue's bound (--max-output), what a client that never reads can
 * make the daemon hold is bounded. */
#define SRV_MAX_OWED 256

/* Connection ids: native connections count up from 1 without this bit; HTTP connections
 * (http.c) have it set. A request's handle is (connection id << 32 | request id) either way, and
 * the engine thread renders the events of a handle with this bit as HTTP bytes (http_emit.c)
 * instead of native frames. */
#define SRV_CONN_HTTP 0x80000000u

/* ---- Queues between the threads ---- */

/* A task for the engine thread. */
typedef enum srv_task_type {
    SRV_TASK_SUBMIT,
    SRV_TASK_CANCEL,
    SRV_TASK_CANCEL_CONN, /* every request of a connection (it closed, or reads too slowly) */
    SRV_TASK_STATS,
    SRV_TASK_METRICS, /* GET /metrics: the Prometheus text for an HTTP connection (metrics.c) */
    SRV_TASK_STOP     /* end the engine thread (after the loop saw no live request, or gave up) */
} srv_task_type;

typedef struct srv_task {
    base_qnode node;
    srv_task_type type;
    uint32_t conn;
    uint32_t req;
    uint32_t uid;     /* the client's (STATS shows a user their own counters) */
    engine_request r; /* SUBMIT: pointers into data */
    char *data;       /* owned: text / ids / namespace bytes */
    size_t len;
    struct oai_out *oai; /* SUBMIT over HTTP: how to render its answer (owned; http_emit.c) */
} srv_task;

/* One encoded frame for a connection, made on the engine thread. */
typedef struct srv_frame {
    base_qnode node;
    uint32_t conn;
    uint32_t req;
    int ends; /* the request's last frame */
    size_t len;
    uint8_t bytes[]; /* one encoded frame */
} srv_frame;

/* ---- Per-user counters (engine thread) ----
 * STATS shows each user their own requests; only the daemon's owner (or everyone, with
 * --stats-all-users) sees the daemon-wide request and cache-hit counters, which would tell one
 * user that another repeated a prompt. */
#define SRV_MAX_USERS 1024

typedef struct srv_user_stats {
    uint32_t uid;
    int used;
    uint64_t requests, requests_done, requests_cancelled, requests_failed;
    uint64_t prompt_tokens, cached_tokens, cached_tokens_disk, generated_tokens;
    uint64_t cached_tokens_remote;
} srv_user_stats;

/* ---- Histograms for /metrics (engine thread, metrics.c) ---- */
#define SRV_HIST_BUCKETS 14

typedef struct srv_hist {
    uint64_t le[SRV_HIST_BUCKETS]; /* observations <= each bound (not cumulative) */
    uint64_t count;
    double sum; /* seconds */
} srv_hist;

#define SRV_OAI_BUCKETS 256

/* ---- Connections ---- */

typedef enum conn_state { CONN_AWAIT_HELLO, CONN_READY, CONN_CLOSING } conn_state;

typedef struct conn {
    uv_pipe_t pipe;
    struct server *srv;
    uint32_t id;
    uid_t uid;
    conn_state state;
    uint8_t *buf;
    size_t len, cap;
    uint32_t reqs[SRV_MAX_REQS_PER_CONN]; /* live request ids */
    int n_reqs;
    int slow;          /* output bound hit: its requests were cancelled */
    double t_last;     /* accept, or the last complete frame (timeouts) */
    int paused;        /* reading stopped: complete frames wait on the resume list */
    int resume_queued; /* on the server's resume list */
    int over_budget;   /* the last allocation was refused by --max-input-mem */
    int owed;          /* replies to STATS, TOKENIZE, DETOKENIZE not yet queued for writing */
    int held;          /* reading stopped until it reads its replies (owed, write queue) */
} conn;

typedef struct server {
    srv_opts o;
    uv_loop_t *loop;
    uv_pipe_t listener;
    uv_async_t wake;
    uv_signal_t sigint, sigterm, sighup;
    uv_timer_t drain_timer;
    uv_timer_t sweep_timer; /* hello and idle timeouts */
    uv_idle_t resume_idle;  /* runs while connections have buffered frames left */
    conn *conns[SRV_MAX_CONNS];
    uint32_t resume[SRV_MAX_CONNS]; /* ids of connections with frames left */
    int n_resume;
    size_t input_bytes;       /* all connections' input buffers (--max-input-mem) */
    struct tok_job *tok_jobs; /* tokenizing on workers now (tokenize.c) */
    uint32_t next_id;
    /* Per connection slot: the id of the connection there if its HELLO asked for DONE's
     * cached_tokens_remote (PROTO_CAP_REMOTE); written by the loop thread at HELLO, read by the
     * engine thread (a request is submitted after its connection's HELLO, through a queue). */
    _Atomic uint32_t done_remote[SRV_MAX_CONNS];
    int draining;
    double drain_start;
    int listener_open;
    /* the engine thread */
    const model *m;
    const model_tokenizer *tok;
    model_chat_template *chat; /* the model's chat template (CHAT), or NULL: chat_why says why */
    char chat_why[1200];
    engine *engine;
    pthread_t thread;
    int thread_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    base_queue tasks;                    /* loop -> engine, under mu */
    base_queue frames;                   /* engine -> loop, under mu */
    int live;                            /* the engine's live requests, read by the loop under mu */
    srv_user_stats users[SRV_MAX_USERS]; /* engine thread; open addressing on the uid */
    int engine_stopped;
    /* the HTTP API: http.c's state (loop thread; NULL without --http), and the engine thread's
     * answers being rendered (http_emit.c) and histograms (metrics.c) */
    struct http_srv *http;
    struct oai_live *oai_live[SRV_OAI_BUCKETS];
    srv_hist ttft_hist, prefill_hist;
    /* counters (written by the loop thread, read by the engine thread for STATS) */
    _Atomic uint64_t connections, frames_in, frames_out, bad_frames;
} server;

/* ---- conn.c (loop thread) ---- */

/* The listener's connection callback: accepts, assigns an id, starts reading. */
void srv__accept_cb(uv_stream_t *listener, int status);

/* Closes a connection (its requests are cancelled); freed in its close callback. */
void srv__conn_close(conn *c);

/* The live connection with that id, or NULL. */
conn *srv__conn_find(server *s, uint32_t id);

/* Queues bytes (copied) on a connection. */
void srv__conn_write(conn *c, const uint8_t *bytes, size_t len);

/* An ERROR reply to a frame that is not a tracked request (TOKENIZE, DETOKENIZE). */
void srv__conn_reply_error(conn *c, uint32_t req, int code, const char *msg);

/* Ends a tracked request from the loop thread: with an ERROR, or with DONE (cancelled). */
void srv__conn_end_request(conn *c, uint32_t req, int code, const char *msg);
void srv__conn_send_done_cancelled(conn *c, uint32_t req);

/* A reply owed to the connection was queued for writing (or cannot be anymore): it may go on. */
void srv__conn_owed_done(conn *c);

/* Starts (or resumes) reading a connection; closes it if that fails. */
void srv__conn_read_start(conn *c);

/* The once-a-second timer: hello and idle timeouts. */
void srv__sweep_cb(uv_timer_t *t);

/* Writes the frames the engine thread queued to their connections (uv_async callback). */
void srv__deliver_cb(uv_async_t *a);

/* ---- engine_thread.c ---- */

/* A task with data_len bytes of owned data. Returns NULL when out of memory. */
srv_task *srv__task_new(srv_task_type type, uint32_t conn_id, uint32_t req, size_t data_len);

/* Frees a task and what it owns. */
void srv__task_free(srv_task *t);

/* Hands a task to the engine thread (it then belongs to the engine thread). Loop thread. */
void srv__task_push(server *s, srv_task *t);

/* Frees every task and frame still queued (after the engine thread stopped). */
void srv__queues_free(server *s);

/* Starts the engine thread. Returns 0 or ENGINE_ETHREAD. */
int srv__engine_thread_start(server *s);

/* Stops the engine thread: cancels what is live, joins it. Loop thread. */
void srv__engine_thread_stop(server *s);

/* The engine's emit and wake callbacks (engine_opts). */
void srv__engine_emit_cb(void *arg, const engine_event *ev);
void srv__engine_wake_cb(void *arg);

/* ---- tokenize.c (loop thread; the work runs on libuv's worker pool) ---- */

/* Tokenizes a SUBMIT task's text prompt (namespace in its first ns_len data bytes) on a worker,
 * then submits it as ids. Returns 0 (the task belongs to the job now), or -1 when out of
 * memory (the caller still owns the task). */
int srv__tokenize_prompt(conn *c, srv_task *t, size_t ns_len);

/* Answers TOKENIZE (in: text) or DETOKENIZE (in: little-endian ids) from a worker. Returns 0,
 * or -1 when out of memory. in is copied. */
int srv__tokenize_reply(conn *c, uint32_t req, int detokenize, const void *in, size_t len);

/* The daemon stops now: every job in flight is answered on its connection (a prompt: DONE
 * cancelled; TOKENIZE/DETOKENIZE: ERROR SHUTTING_DOWN); the workers' results are dropped. */
void srv__tokenize_end_all(server *s);

/* Marks a prompt still being tokenized as cancelled. Returns 1 if there was one. */
int srv__tokenize_cancel(server *s, uint32_t conn_id, uint32_t req);

/* The same for a connection known by id (native or HTTP: an HTTP connection's task carries
 * its rendering, see http_emit.c). */
int srv__tokenize_prompt_id(server *s, uint32_t conn_id, srv_task *t, size_t ns_len);

/* A chat (CHAT, or /v1/chat/completions with a template): the task's text is the messages as
 * CHAT's list on the wire (str role, str content each; a system prompt already made the first
 * message), n_msgs of them, checked. A worker renders them with s->chat and tokenizes the
 * rendering (model_chat_prompt()), then submits the ids as srv__tokenize_prompt_id() does.
 * Returns 0, or -1 when out of memory (the caller still owns the task). */
int srv__tokenize_chat_id(server *s, uint32_t conn_id, srv_task *t, size_t ns_len, uint32_t n_msgs);

/* ---- http.c (loop thread) ---- */

/* Binds --http and starts serving it (nothing without --http). Returns 0 or an exit code (2: the
 * address or the API key file cannot be used, 1: other failures). */
int srv__http_start(server *s);

/* Stops accepting HTTP connections (shutdown); the unix: socket file is removed. */
void srv__http_stop_listening(server *s);

/* Frees http.c's state after the loop is closed. */
void srv__http_free(server *s);

/* Closes h if it is an HTTP connection (shutdown walk). Returns 1 if it was one. */
int srv__http_walk_close(uv_handle_t *h);

/* Writes bytes the engine thread rendered for an HTTP connection (from srv__deliver_cb). The
 * frame stays the caller's. */
void srv__http_deliver(server *s, const srv_frame *f);

/* A prompt's tokenizing ended for an HTTP connection (tokenize.c): push the task (taken:
 * *task set to NULL) or answer the error (err; code: its PROTO_ERR_*, BAD_REQUEST for a
 * conversation the chat template refused). */
void srv__http_tokenized(server *s, uint32_t conn_id, uint32_t req, int cancelled, int code,
                         const char *err, srv_task **task);

/* ---- http_emit.c (engine thread) ---- */

/* Takes a SUBMIT task's rendering (t->oai, set to NULL) before the engine sees the request. */
void srv__http_register(server *s, srv_task *t);

/* Renders an engine event of an HTTP request and queues the bytes. */
void srv__http_emit(server *s, const engine_event *ev);

/* Queues bytes for a connection (copied). */
void srv__push_bytes(server *s, uint32_t conn_id, uint32_t req, int ends, const void *p, size_t n);

/* ---- metrics.c (engine thread) ---- */

/* Counts a finished request in the TTFT and prefill histograms. */
void srv__metrics_observe(server *s, const engine_event *ev);

/* Answers a METRICS task with the Prometheus text format. */
void srv__metrics_reply(server *s, const srv_task *t);

/* ---- stats.c (engine thread) ---- */

/* The counters as one JSON object (malloc'ed text) for a client of uid `uid`, or NULL when out
 * of memory. */
char *srv__stats_json(server *s, uint32_t uid);

/* The row of counters of uid (made on first use; past SRV_MAX_USERS users, the last row is
 * shared by the rest). */
srv_user_stats *srv__user_stats(server *s, uint32_t uid);

#endif
