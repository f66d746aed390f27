/* engine.h — the scheduler and the glue between the cache and the model.
 *
 * The engine turns requests (prompt, sampling parameters) into token events. It owns the K/V
 * cache handle and one model_state; each call to srv_engine_step() is one scheduler step:
 * admit waiting requests (tokenize, look up their cached prefix), prefill at most one chunk of
 * new prompt tokens (<= prefill_chunk), then decode one token for every running request in one
 * batched model_decode(). Requests that share a prefix share its blocks; a request's prompt blocks
 * are published as soon as its prefill completes, its generated blocks when it ends.
 *
 * The engine is synchronous and knows nothing of sockets or threads: the daemon runs it on its
 * engine thread, `prefixd run` and the tests run it inline. All calls on one engine come from one
 * thread. Events are delivered through the emit callback, during srv_engine_step() (or
 * srv_engine_submit()/srv_engine_cancel() for immediate errors), in order per request.
 */
#ifndef PREFIXD_ENGINE_H
#define PREFIXD_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "cache.h"
#include "model.h"
#include "proto.h"

typedef struct srv_engine srv_engine;

typedef enum srv_event_type {
    SRV_EV_TOKEN, /* one new token: token, piece */
    SRV_EV_DONE,  /* the request ended: done; no more events for this handle */
    SRV_EV_ERROR  /* the request failed: code, msg; no more events for this handle */
} srv_event_type;

typedef struct srv_event {
    srv_event_type type;
    uint64_t handle; /* the caller's handle from srv_request */
    int32_t token;
    const char *piece; /* TOKEN: decoded text, valid during the callback */
    size_t piece_len;
    proto_done done; /* DONE: finish reason and stats */
    int code;        /* ERROR: PROTO_ERR_* */
    const char *msg; /* ERROR: names the problem, valid during the callback */
} srv_event;

typedef void (*srv_emit_fn)(void *arg, const srv_event *ev);

typedef struct srv_engine_opts {
    int block_tokens;     /* B (default 16) */
    size_t cache_mem;     /* bytes of K/V blocks (default 1 GiB) */
    size_t pin_max;       /* pin budget (default cache_mem / 4) */
    int no_cache;         /* 1: never share blocks between requests */
    int max_batch;        /* running requests decoded per step (default 32) */
    int max_queue;        /* requests waiting beyond max_batch before BUSY (default 256) */
    int prefill_chunk;    /* prompt tokens prefilled per step (default 512) */
    int threads;          /* compute threads (0: all cores) */
    int test_key_bits;    /* cache test hook (cache_opts.test_key_bits) */
    const char *disk_dir; /* the disk tier's directory; NULL: no disk tier */
    size_t disk_max;      /* its budget in bytes (0: 4 GiB) */
    int disk_reset;       /* 1: wipe a store of another format version or geometry */
    size_t disk_spill;    /* spill buffer bytes (0: min(256 MiB, cache_mem / 4), at least two
                           * contexts' worth of blocks) */
    /* Optional: called on the disk thread when a load from disk has finished, so a caller that
     * sleeps while srv_engine_runnable() is 0 can wake. Without it, srv_engine_step() itself
     * waits for the disk when nothing else can run (tests, in-process use). */
    void (*wake)(void *arg);
    void *wake_arg;
    srv_emit_fn emit; /* required */
    void *emit_arg;
} srv_engine_opts;

typedef enum srv_request_kind { SRV_REQ_GENERATE, SRV_REQ_WARM } srv_request_kind;

typedef struct srv_request {
    uint64_t handle; /* caller's id for events; unique among live requests */
    srv_request_kind kind;
    const char *text; /* prompt as UTF-8 text (tokenized by the engine, BOS first) ... */
    size_t text_len;
    const int32_t *tokens; /* ... or as ids (used when tokens != NULL); the engine copies */
    size_t n_tokens;
    uint32_t max_new; /* new tokens at most */
    float temp;       /* 0: greedy */
    float top_p;
    uint64_t seed;
    int pin;        /* WARM: pin the prompt's full blocks */
    const void *ns; /* namespace bytes (the daemon folds the uid in); copied */
    size_t ns_len;
    double t_received_ms; /* srv_now_ms() when the request arrived, for TTFT */
} srv_request;

/* Makes an engine over a loaded model and tokenizer (borrowed: they must outlive the engine;
 * tok may be NULL, then only id prompts are accepted and pieces are empty).
 * Returns 0 or a negative code with a message in msg. */
int srv_engine_new(const model *m, const model_tokenizer *tok, const srv_engine_opts *o,
                   srv_engine **out, char *msg, size_t msglen);
void srv_engine_free(srv_engine *e);

/* Queues a request. Bad input (prompt past the context, ids out of range, empty prompt) and a
 * full queue are reported as an ERROR event for r->handle before this returns. Returns 0 if
 * queued, else the PROTO_ERR_* code (positive) that was emitted. */
int srv_engine_submit(srv_engine *e, const srv_request *r);

/* Cancels a live request: it ends with a DONE event (finish CANCELLED) at once, its blocks are
 * released. Returns 0, or -1 if no live request has that handle. */
int srv_engine_cancel(srv_engine *e, uint64_t handle);

/* Cancels every live request whose handle & mask == value (mask 0: all), as
 * srv_engine_cancel() does. Returns how many. */
int srv_engine_cancel_matching(srv_engine *e, uint64_t value, uint64_t mask);

/* One scheduler step (see above): takes the loads the disk thread has finished, admits,
 * prefills one chunk, decodes. Returns the number of live requests afterwards (0: idle). */
int srv_engine_step(srv_engine *e);

/* 1 if srv_engine_step() has work now; 0 if every live request waits for the disk tier (the
 * wake callback says when that changes) or none is live. */
int srv_engine_runnable(srv_engine *e);

/* Writes every block in RAM that is not on disk yet to the disk tier and waits until it is
 * written (shutdown; srv_engine_free() does it too). Returns the number of blocks queued. */
size_t srv_engine_flush_disk(srv_engine *e);

/* Live requests (waiting or running). */
int srv_engine_live(const srv_engine *e);

typedef struct srv_engine_stats {
    uint64_t requests;           /* submitted and accepted */
    uint64_t requests_done;      /* ended normally (stop or length) */
    uint64_t requests_cancelled; /* ended by cancel */
    uint64_t requests_failed;    /* ended or refused with an ERROR event */
    uint64_t prompt_tokens;      /* over all requests */
    uint64_t cached_tokens;      /* prompt tokens taken from the cache (RAM and disk) */
    uint64_t cached_tokens_disk; /* of those, loaded from disk */
    uint64_t prefill_tokens;     /* prompt tokens computed */
    uint64_t generated_tokens;
    double prefill_ms; /* engine time in model_prefill */
    double decode_ms;  /* engine time in model_decode */
    int running;       /* requests prefilling or decoding now */
    int waiting;       /* requests queued */
} srv_engine_stats;

void srv_engine_get_stats(const srv_engine *e, srv_engine_stats *out);

/* The cache (NULL with no_cache), for stats and tests. */
cache *srv_engine_cache(srv_engine *e);

struct srv_diskw_stats;
/* The disk tier's counters. Returns 0, or -1 (out untouched) if there is no disk tier. */
int srv_engine_disk_stats(srv_engine *e, struct srv_diskw_stats *out);

/* The options in force, defaults filled in. */
const srv_engine_opts *srv_engine_get_opts(const srv_engine *e);

/* Monotonic clock in milliseconds. */
double srv_now_ms(void);

#endif
