/* base.h — the few helpers every folder of prefixd may use: a monotonic clock, one log, the
 * message-and-code helper for failures, large buffers in huge pages, an intrusive FIFO queue,
 * and container_of.
 *
 * The base depends on libc and nothing of ours, so model/, cache/, the engine, the server and
 * the clients can all include it without making a circle. Everything here is safe to call from
 * any thread unless its comment says otherwise.
 */
#ifndef PREFIXD_BASE_H
#define PREFIXD_BASE_H

#include <stdarg.h>
#include <stddef.h>

/* The struct that embeds `member` at ptr (libuv handles embedded in their owner). */
#define container_of(ptr, type, member) ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

/* ---- Clock ---- */

/* Monotonic clock in milliseconds (CLOCK_MONOTONIC; meaningful only as a difference). */
double base_now_ms(void);

/* ---- Log ---- */

enum { BASE_LOG_ERROR, BASE_LOG_WARN, BASE_LOG_INFO, BASE_LOG_DEBUG };

/* Sets the level above which lines are dropped (default BASE_LOG_INFO). Call before threads
 * start. */
void base_log_set_level(int level);

/* Parses "error", "warn", "info" or "debug". Returns the BASE_LOG_* level, or -1. */
int base_log_parse_level(const char *name);

/* Logs one line to stderr ("<time> prefixd <level>: <text>") when level is at or below the
 * configured one. One fprintf per line, so lines of different threads do not interleave. */
void base_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- Failures ---- */

/* Formats a message into msg (msglen bytes, may be 0 with msg NULL) and returns code: the one
 * line every "return an error with its message" site needs. */
int base_fail(char *msg, size_t msglen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* ---- Huge-page buffers ---- */

/* Allocates bytes (rounded up to 2 MiB) aligned to 2 MiB and asks the kernel for huge pages
 * (MADV_HUGEPAGE): for arenas that are read all over (K/V blocks, packed weights), where 4 KiB
 * pages would cost a TLB miss every 4 KiB. With touch, every page is written now, so that page
 * faults do not land on a later request's time to first token. Returns NULL when out of
 * memory. Free with base_huge_free(). */
void *base_huge_alloc(size_t bytes, int touch);
void base_huge_free(void *p);

/* The size base_huge_alloc() reserves for bytes. */
size_t base_huge_round(size_t bytes);

/* ---- Intrusive FIFO queue ----
 * A node is embedded in the queued object; container_of() recovers it. No locking: callers
 * that share a queue between threads hold their own mutex around push/take. */
typedef struct base_qnode {
    struct base_qnode *next;
} base_qnode;

typedef struct base_queue {
    base_qnode *head, *tail;
} base_queue;

static inline void base_queue_push(base_queue *q, base_qnode *n)
{
    n->next = NULL;
    if (q->tail)
        q->tail->next = n;
    else
        q->head = n;
    q->tail = n;
}

/* Takes the whole queue at once (the consumer then works on the list unlocked). Returns the
 * first node (linked through ->next) or NULL; the queue is empty afterwards. */
static inline base_qnode *base_queue_take_all(base_queue *q)
{
    base_qnode *h = q->head;
    q->head = q->tail = NULL;
    return h;
}

static inline int base_queue_empty(const base_queue *q)
{
    return q->head == NULL;
}

#endif
