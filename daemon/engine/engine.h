/* engine.h — the scheduler and the glue between the cache and the model.
 *
 * The engine turns requests (prompt, sampling parameters) into token events. It owns the K/V
 * cache handle and one model_state; each call to engine_step() is one scheduler step: admit
 * waiting requests (look up their cached prefix), prefill at most one chunk of new prompt tokens
 * (<= prefill_chunk), then decode one token for every running request in one batched
 * model_decode(). Requests that share a prefix share its blocks; a request's prompt blocks are
 * published as soon as its prefill completes, its generated blocks when it ends.
 *
 * Threads: every engine_* call on one engine comes from one thread, the caller's (the daemon's
 * engine thread; `prefixd run` and the tests call it inline). The engine starts threads of its
 * own below that API: the model's compute pool; with a disk tier the disk thread
 * (disk_thread.h), which loads blocks into requests' slots and writes spilled blocks while the
 * caller's thread computes; and a short-lived thread that populates the cache's memory
 * (cache_prefault()) after engine_new() returns, joined (stopped early) by engine_free(). The
 * optional wake callback is the only thing that runs on the disk thread. The engine knows nothing
 * of sockets, event loops or wire formats: it reports results in its own types (engine_event,
 * engine_done, ENGINE_E* codes), which the native protocol and the HTTP API each translate.
 *
 * Events are delivered through the emit callback, during engine_step() (or engine_submit()/
 * engine_cancel() for immediate errors and cancellations), in order per request.
 */
#ifndef PREFIXD_ENGINE_H
#define PREFIXD_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "cache.h"
#include "model.h"

/* Error codes: 0 is success, these are negative. */
#define ENGINE_ERRNO_MAP(X)                                                                        \
    X(EINVAL, -1, "invalid request")                                                               \
    X(ETOOLONG, -2, "prompt longer than the model's context")                                      \
    X(EBADTOKEN, -3, "token id out of range")                                                      \
    X(EBUSY, -4, "too many requests")                                                              \
    X(ENOSPC, -5, "K/V cache full")                                                                \
    X(EPINMAX, -6, "pin budget exceeded")                                                          \
    X(ENOMEM, -7, "out of memory")                                                                 \
    X(EMODEL, -8, "the forward pass failed")                                                       \
    X(ENOTFOUND, -9, "no live request has that handle")                                            \
    X(EDISK, -10, "the disk tier cannot be used")                                                  \
    X(EDISKBUSY, -11, "the disk directory is in use by another process")                           \
    X(ETHREAD, -12, "cannot start a thread")                                                       \
    X(ECONFIG, -13, "invalid engine option")                                                       \
    X(EREMOTE, -14, "the remote tier cannot be used")

enum {
#define X(name, code, msg) ENGINE_##name = code,
    ENGINE_ERRNO_MAP(X)
#undef X
};

/* Static text of an ENGINE_* code, or "unknown error". */
const char *engine_strerror(int err);

typedef struct engine engine;

/* Why a request ended. */
typedef enum engine_finish {
    ENGINE_FINISH_STOP,     /* the model ended the text (BOS or EOS sampled), or WARM done */
    ENGINE_FINISH_LENGTH,   /* max_new reached, or the model's context */
    ENGINE_FINISH_CANCELLED /* engine_cancel() */
} engine_finish;

/* A finished request's figures. */
typedef struct engine_done {
    engine_finish finish;
    uint32_t prompt_tokens;
    uint32_t cached_tokens;      /* prompt tokens from the cache (RAM and disk) */
    uint32_t cached_tokens_disk; /* of those, loaded from the disk tier */
    uint32_t new_tokens;
    double ttft_ms;    /* request received -> first token ready */
    double prefill_ms; /* engine time spent prefilling this request */
    double decode_tokens_per_s;
    double total_ms;

    uint32_t cached_tokens_remote; /* of cached_tokens, loaded from the remote tier */
} engine_done;

typedef enum engine_event_type {
    ENGINE_EV_TOKEN, /* one new token: token, piece */
    ENGINE_EV_DONE,  /* the request ended: done; no more events for this handle */
    ENGINE_EV_ERROR  /* the request failed: code, msg; no more events for this handle */
} engine_event_type;

/* The most alternatives a TOKEN event carries (OpenAI's top_logprobs limit). */
#define ENGINE_MAX_TOP_LOGPROBS 20

/* Log-probabilities of a sampled token, under the model's own distribution at that position
 * (the softmax of its logits: temperature 1, before top_p), natural logarithms. */
typedef struct engine_logprobs {
    float logprob; /* the sampled token's */
    int32_t prev;  /* the token before it (the prompt's last, for the first): for its text */
    int n_top;     /* alternatives in top_* (the request's top_logprobs) */
    int32_t top_token[ENGINE_MAX_TOP_LOGPROBS]; /* the most likely first; ties: lower id */
    float top_logprob[ENGINE_MAX_TOP_LOGPROBS];
} engine_logprobs;

typedef struct engine_event {
    engine_event_type type;
    uint64_t handle; /* the caller's handle from engine_request */
    uint32_t owner;  /* the caller's owner from engine_request */
    int32_t token;
    const char *piece; /* TOKEN: decoded text, valid during the callback */
    size_t piece_len;
    const engine_logprobs *logprobs; /* TOKEN: when the request asked for them, else NULL;
                                      * valid during the callback */
    engine_done done;                /* DONE: finish reason and figures */
    int code;                        /* ERROR: an ENGINE_E* code */
    const char *msg;                 /* ERROR: names the problem, valid during the callback */
} engine_event;

typedef void (*engine_emit_fn)(void *arg, const engine_event *ev);

/* The K/V type `prefixd serve` and `run` use unless told (--kv-type); README "K/V types" has
 * the measurements it was chosen from. */
#define ENGINE_DEFAULT_KV_TYPE MODEL_TYPE_F16
#define ENGINE_DEFAULT_KV_NAME "f16" /* its name, for the usage texts */

/* The default cache_mem holds this many full contexts' K/V. */
#define ENGINE_DEFAULT_CONTEXTS 8

typedef struct engine_opts {
    int block_tokens;     /* B (default 16) */
    size_t cache_mem;     /* bytes of K/V blocks (0: ENGINE_DEFAULT_CONTEXTS contexts' K/V, at
                           * least 64 MiB, at most a quarter of physical memory; logged) */
    int no_prefault;      /* 1: do not populate the K/V memory ahead (pages fault on use) */
    size_t pin_max;       /* pin budget (default cache_mem / 4) */
    int no_cache;         /* 1: never share blocks between requests */
    int max_batch;        /* running requests decoded per step (default 32) */
    int max_queue;        /* requests waiting beyond max_batch before BUSY (default 256) */
    int prefill_chunk;    /* prompt tokens prefilled per step (default 512) */
    int threads;          /* compute threads (0: all cores) */
    int kv_type;          /* K/V element type in every tier: MODEL_TYPE_F32 (0), MODEL_TYPE_F16 or
                           * MODEL_TYPE_Q8_0 (model.h; refused with a message when the model
                           * cannot take it). The command line's default is
                           * ENGINE_DEFAULT_KV_TYPE. */
    int test_key_bits;    /* cache test hook (cache_opts.test_key_bits) */
    int decode_history;   /* 1: publish a reply's blocks as decode wrote them, at once (before
                           * exact history; faster, but the next turn reads K/V that differs
                           * from an uncached prefill's in the last bits). 0 (default): when a
                           * request ends, its generated positions are recomputed by prefill in
                           * the background (while nothing else runs) and those blocks are
                           * published, so a chat's cached history is bitwise what an uncached
                           * run computes. */
    const char *disk_dir; /* the disk tier's directory; NULL: no disk tier */
    size_t disk_max;      /* its budget in bytes (0: 4 GiB) */
    int disk_reset;       /* 1: wipe a store of another format version or geometry */
    size_t disk_spill;    /* spill buffer bytes (0: min(256 MiB, cache_mem / 4), at least two
                           * contexts' worth of blocks) */
    /* Optional: called on the disk thread when a load from disk has finished, so a caller that
     * sleeps while engine_runnable() is 0 can wake. Without it, engine_step() itself
     * waits for the disk when nothing else can run (tests, in-process use). */
    void (*wake)(void *arg);
    void *wake_arg;
    engine_emit_fn emit; /* required */
    void *emit_arg;

    /* The remote tier (Redis/Valkey, shared by several daemons; see remote_thread.h). */
    const char *remote_url;      /* "redis://HOST:PORT[/DB]" or "unix:/path"; NULL: none */
    int remote_cluster;          /* 1: remote_url is a Redis Cluster seed list, HOST:PORT,... */
    const char *remote_password; /* AUTH password, or NULL; copied by engine_new() */
    uint32_t remote_ttl_s;       /* expiry of the values written (0: one day) */
    double remote_timeout_ms;    /* how long the server may stay silent (0: 50 ms) */
    size_t remote_queue;         /* write-behind queue bytes (0: min(256 MiB, cache_mem / 4)) */
} engine_opts;

typedef enum engine_request_kind { ENGINE_REQ_GENERATE, ENGINE_REQ_WARM } engine_request_kind;

typedef struct engine_request {
    uint64_t handle; /* caller's id for events; unique among live requests */
    engine_request_kind kind;
    const char *text; /* prompt as UTF-8 text (tokenized by the engine, BOS first) ... */
    size_t text_len;
    const int32_t *tokens; /* ... or as ids (used when tokens != NULL); the engine copies */
    size_t n_tokens;
    uint32_t max_new; /* new tokens at most */
    float temp;       /* 0: greedy */
    float top_p;
    uint64_t seed;
    int logprobs;     /* 1: TOKEN events carry the sampled token's log-probability */
    int top_logprobs; /* with logprobs: that many most likely tokens too (0..20) */
    int pin;          /* WARM: pin the prompt's full blocks */
    const void *ns;   /* namespace bytes (the daemon folds the uid in); copied */
    size_t ns_len;
    double t_received_ms; /* base_now_ms() when the request arrived, for TTFT */
    uint32_t owner;       /* the caller's, echoed in every event of this request (the daemon
                           * passes the client's uid, to count per user) */
} engine_request;

/* Makes an engine over a loaded model and tokenizer (borrowed: they must outlive the engine;
 * tok may be NULL, then only id prompts are accepted and pieces are empty). Starts the disk
 * thread when o->disk_dir is set. Returns 0, or an ENGINE_E* code with a message in msg:
 * ECONFIG (an impossible option, e.g. a cache too small for one block), ENOMEM, EDISK (the
 * disk dir cannot be used: see cache_disk_open()), EDISKBUSY (another process holds it),
 * EREMOTE (a remote URL that cannot be used), ETHREAD. With remote_url set, the remote thread
 * connects in the background: a server that cannot be reached is not an error (it is retried). */
int engine_new(const model *m, const model_tokenizer *tok, const engine_opts *o, engine **out,
               char *msg, size_t msglen);
void engine_free(engine *e);

/* Queues a request. Everything is checked before anything is allocated: bad input (prompt past
 * the context, ids out of range, empty prompt) and a full queue are reported as an ERROR event
 * for r->handle before this returns. max_new is clamped to what the context leaves. Returns 0
 * if queued, else the ENGINE_E* code that was emitted. */
int engine_submit(engine *e, const engine_request *r);

/* Cancels a live request: it ends with a DONE event (finish CANCELLED) at once, its blocks are
 * released. Returns 0, or ENGINE_ENOTFOUND if no live request has that handle. */
int engine_cancel(engine *e, uint64_t handle);

/* Cancels every live request whose handle & mask == value (mask 0: all), as
 * engine_cancel() does. Returns how many. */
int engine_cancel_matching(engine *e, uint64_t value, uint64_t mask);

/* One scheduler step (see above): takes the loads the disk thread has finished, admits,
 * prefills one chunk, decodes; when no live request computes, recomputes one chunk of an ended
 * request's history (decode_history). Returns the live requests plus the ended ones whose
 * history is still pending afterwards (0: nothing left to do). */
int engine_step(engine *e);

/* 1 if engine_step() has work now; 0 if every live request waits for the disk or remote tier
 * (the wake callback says when that changes) or none is live. Also gives back the references
 * held for the remote tier's finished writes (an idle engine is not stepped). */
int engine_runnable(engine *e);

/* Writes every block in RAM that is not on disk yet to the disk tier and waits until it is
 * written (shutdown; engine_free() does it too). Returns the number of blocks queued. */
size_t engine_flush_disk(engine *e);

/* Live requests (waiting or running). */
int engine_live(const engine *e);

typedef struct engine_stats {
    uint64_t requests;           /* submitted and accepted */
    uint64_t requests_done;      /* ended normally (stop or length) */
    uint64_t requests_cancelled; /* ended by cancel */
    uint64_t requests_failed;    /* ended or refused with an ERROR event */
    uint64_t prompt_tokens;      /* over all requests */
    uint64_t cached_tokens;      /* prompt tokens taken from the cache (RAM and disk) */
    uint64_t cached_tokens_disk; /* of those, loaded from disk */
    uint64_t prefill_tokens;     /* prompt tokens computed */
    uint64_t generated_tokens;
    double prefill_ms;           /* engine time in model_prefill */
    uint64_t history_tokens;     /* generated positions recomputed by prefill (exact history) */
    uint64_t history_dropped;    /* ... requests whose recompute was dropped for memory */
    uint64_t history_superseded; /* ... whose positions a newer prompt computes anyway */
    double history_ms;           /* engine time recomputing them */
    int background;              /* ended requests whose history is still being recomputed */
    double decode_ms;            /* engine time in model_decode */
    int running;                 /* requests prefilling or decoding now */
    int waiting;                 /* requests queued */

    uint64_t cached_tokens_remote; /* of cached_tokens, loaded from the remote tier */
} engine_stats;

void engine_get_stats(const engine *e, engine_stats *out);

/* The cache (NULL with no_cache), for stats and tests. */
cache *engine_cache(engine *e);

struct disk_thread_stats;
/* The disk tier's counters. Returns 0, or ENGINE_ENOTFOUND (out untouched) if there is no disk
 * tier. */
int engine_disk_stats(engine *e, struct disk_thread_stats *out);

struct remote_thread_stats;
/* The remote tier's counters. Returns 0, or ENGINE_ENOTFOUND (out untouched) if there is no
 * remote tier. */
int engine_remote_stats(engine *e, struct remote_thread_stats *out);

/* The options in force, defaults filled in. */
const engine_opts *engine_get_opts(const engine *e);

#endif
