/* pool.c — the fork-join worker pool (see pool.h).
 *
 * One job at a time. Its whole claimable state is one 64-bit word: a generation (which job),
 * the job's task count and the next task to claim. A thread claims task i of job g by moving
 * the word from (g, n, i) to (g, n, i + 1) with a compare-and-swap, so a claim can never land in
 * another job than the one it read, however late the thread comes; and job g cannot end (nor
 * its fn and arg change) before every task claimed in it is done, which makes it safe to read
 * them after the claim. The caller counts finished tasks, not workers: once the last task is
 * claimed it waits only for the tasks still running, each a few tens of microseconds.
 *
 * Waiting is bounded: a worker spins for SPIN_NS after its last task (decode's jobs come back
 * to back), then sleeps on a futex over a sequence number bumped for each job; the caller spins
 * WAIT_NS for the tasks still running, then sleeps on a futex over the finished count. On a busy
 * machine, a sleeping caller hands its core to the peer it waits for, where a spinning one would
 * keep it from running. Linux only (futex), as the daemon is.
 */
#include "pool.h"

#include "base.h"

#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* A worker spins this long for the next job before it sleeps: longer than the gaps between a
 * decode step's jobs (a few row steps on the caller), far shorter than a scheduler slice. */
#define SPIN_NS 50000.0
/* The caller spins this long for the tasks still running before it sleeps: about one task. */
#define WAIT_NS 20000.0
/* The split threshold is the work the caller does alone in this many hand-offs: a split pays
 * for its hand-off only when each side saves more than it costs. */
#define HANDOFFS 4.0
#define HANDOFF_CAP_NS 100e3
/* A hand-off measured above REMEASURE_ABOVE_NS (a quiet machine's is about a microsecond) was
 * likely taken in a slow moment, such as a start beside a busy process: it is measured again
 * REMEASURE_MIN_NS later, then after twice as long each time it stays that high, up to
 * REMEASURE_MAX_NS, so that one slow moment does not keep mid-sized work on one thread for the
 * process's life (the split judgement below only ever sends more work to the caller alone). */
#define REMEASURE_ABOVE_NS 10e3
#define REMEASURE_MIN_NS 1e9
#define REMEASURE_MAX_NS 64e9
/* The pool judges its splits over windows of WINDOW_JOBS split jobs or WINDOW_NS of their time,
 * whichever ends first; a window whose splits saved less than SPLIT_GAIN (estimated time alone
 * over time split) is followed by BACKOFF_MIN_NS of jobs on the caller alone, doubled after
 * each further failed window up to BACKOFF_MAX_NS, and reset by a window that paid. */
#define WINDOW_JOBS 16
#define WINDOW_NS 20e6
#define SPLIT_GAIN 1.1
#define BACKOFF_MIN_NS 50e6
#define BACKOFF_MAX_NS 1e9

/* The job word: generation (24 bits), task count (20 bits), next task (20 bits). */
#define W_TASK_BITS 20
#define W_TASK_MASK ((UINT64_C(1) << W_TASK_BITS) - 1)
#define W_MAX_TASKS ((int)W_TASK_MASK)
#define W_GEN(w) ((uint32_t)((w) >> (2 * W_TASK_BITS)))
#define W_N(w) ((int)(((w) >> W_TASK_BITS) & W_TASK_MASK))
#define W_NEXT(w) ((int)((w)&W_TASK_MASK))
#define W_MAKE(gen, n)                                                                             \
    (((uint64_t)((gen)&0xffffffu) << (2 * W_TASK_BITS)) | ((uint64_t)(n) << W_TASK_BITS))

struct model__pool {
    int threads;
    pthread_t *tids;
    _Atomic uint64_t word;     /* the job word, above */
    atomic_uint seq;           /* futex: bumped for each job and at stop */
    atomic_int sleepers;       /* workers asleep (or about to sleep) on seq */
    atomic_int done;           /* futex: tasks of the current job finished */
    atomic_int caller_waiting; /* the caller sleeps (or is about to) on done */
    atomic_int stop;
    uint32_t gen; /* the caller's generation counter */
    double min_flops;
    double rate;                        /* the caller's FLOPs per ns, as calibrated */
    double remeasure_at, remeasure_gap; /* the next hand-off measurement (0: none), the gap */
    long remeasures;
    /* The caller's judgement of its splits (only the caller touches these). */
    double win_alone, win_split; /* estimated time alone, time split, of this window's jobs */
    int win_jobs;
    double alone_until; /* jobs run on the caller alone until this time (ns) */
    double backoff;     /* the next back-off's length (ns) */
    long splits, backoffs;
    /* The current job, written before its word is published. */
    model__task_fn fn;
    void *arg;
    int base; /* tasks of a job over W_MAX_TASKS run as several jobs; this one's first task */
};

typedef struct worker_arg {
    model__pool *p;
    int id;
} worker_arg;

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static void futex_wait(void *addr, unsigned expect)
{
    syscall(SYS_futex, addr, FUTEX_WAIT_PRIVATE, expect, NULL, NULL, 0);
}

static void futex_wake(void *addr, int n)
{
    syscall(SYS_futex, addr, FUTEX_WAKE_PRIVATE, n, NULL, NULL, 0);
}

/* Claims and runs tasks of job gen until none is left; counts each finished one. Returns how
 * many this thread ran. */
static int run_tasks(model__pool *p, uint32_t gen, int worker)
{
    uint64_t w = atomic_load_explicit(&p->word, memory_order_acquire);
    for (int ran = 0;; ran++) {
        if (W_GEN(w) != gen || W_NEXT(w) >= W_N(w))
            return ran;
        if (!atomic_compare_exchange_weak_explicit(&p->word, &w, w + 1, memory_order_acq_rel,
                                                   memory_order_acquire))
            continue;
        int n = W_N(w);
        p->fn(p->arg, p->base + W_NEXT(w), worker);
        if (atomic_fetch_add(&p->done, 1) + 1 == n && atomic_load(&p->caller_waiting))
            futex_wake(&p->done, 1);
        w = atomic_load_explicit(&p->word, memory_order_acquire);
    }
}

/* Waits until the job word's generation is not `seen` (or the pool stops); returns the word. */
static uint64_t worker_wait(model__pool *p, uint32_t seen)
{
    double t0 = 0;
    for (int spins = 0;; spins++) {
        uint64_t w = atomic_load_explicit(&p->word, memory_order_acquire);
        if (W_GEN(w) != seen || atomic_load_explicit(&p->stop, memory_order_relaxed))
            return w;
        cpu_relax();
        if ((spins & 63) != 63)
            continue;
        double t = now_ns();
        if (t0 == 0)
            t0 = t;
        if (t - t0 < SPIN_NS)
            continue;
        /* Sleep. The caller bumps seq after publishing a job and then wakes if it sees a
         * sleeper: with both sides sequentially consistent, either it sees us or we see its
         * job (or seq moved, and futex_wait returns at once). */
        atomic_fetch_add(&p->sleepers, 1);
        unsigned s = atomic_load(&p->seq);
        w = atomic_load(&p->word);
        if (W_GEN(w) == seen && !atomic_load(&p->stop))
            futex_wait(&p->seq, s);
        atomic_fetch_sub(&p->sleepers, 1);
        t0 = 0;
    }
}

static void *worker_main(void *a)
{
    worker_arg wa = *(worker_arg *)a;
    free(a);
    model__pool *p = wa.p;
    /* The generation at creation (0): a job posted before this thread ran is still seen. */
    uint32_t seen = 0;
    for (;;) {
        uint64_t w = worker_wait(p, seen);
        if (atomic_load(&p->stop))
            return NULL;
        seen = W_GEN(w);
        run_tasks(p, seen, wa.id);
    }
}

model__pool *model__pool_new(int threads)
{
    if (threads < 1)
        threads = 1;
    model__pool *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->threads = threads;
    p->backoff = BACKOFF_MIN_NS;
    p->tids = calloc((size_t)threads, sizeof *p->tids);
    if (!p->tids) {
        free(p);
        return NULL;
    }
    for (int i = 1; i < threads; i++) {
        worker_arg *wa = malloc(sizeof *wa);
        if (wa) {
            wa->p = p;
            wa->id = i;
        }
        if (!wa || pthread_create(&p->tids[i], NULL, worker_main, wa) != 0) {
            free(wa);
            p->threads = i;
            model__pool_free(p);
            return NULL;
        }
    }
    return p;
}

void model__pool_free(model__pool *p)
{
    if (!p)
        return;
    if (p->threads > 1)
        base_log(BASE_LOG_DEBUG, "model: %ld jobs split across %d threads, %ld back-offs to one",
                 p->splits, p->threads, p->backoffs);
    atomic_store(&p->stop, 1);
    atomic_fetch_add(&p->seq, 1);
    futex_wake(&p->seq, INT32_MAX);
    for (int i = 1; i < p->threads; i++)
        pthread_join(p->tids[i], NULL);
    free(p->tids);
    free(p);
}

int model__pool_threads(const model__pool *p)
{
    return p->threads;
}

/* One job of n <= W_MAX_TASKS tasks starting at task base, split across the pool. Returns how
 * many tasks the caller ran itself; *own_ns: how long it took to run them (from the start). */
static int run_split(model__pool *p, model__task_fn fn, void *arg, int base, int n, double *own_ns)
{
    double t_start = own_ns ? now_ns() : 0;
    p->fn = fn;
    p->arg = arg;
    p->base = base;
    atomic_store(&p->done, 0);
    p->gen = (p->gen + 1) & 0xffffffu;
    if (p->gen == 0) /* 0 is the workers' "seen nothing yet" */
        p->gen = 1;
    atomic_store_explicit(&p->word, W_MAKE(p->gen, n), memory_order_release);
    atomic_fetch_add(&p->seq, 1);
    if (atomic_load(&p->sleepers) > 0)
        futex_wake(&p->seq, INT32_MAX);
    int own = run_tasks(p, p->gen, 0);
    if (own_ns)
        *own_ns = now_ns() - t_start;
    /* Every task is claimed: wait for the ones still running elsewhere. */
    double t0 = 0;
    for (int spins = 0;; spins++) {
        int d = atomic_load(&p->done);
        if (d == n)
            return own;
        cpu_relax();
        if ((spins & 63) != 63)
            continue;
        double t = now_ns();
        if (t0 == 0)
            t0 = t;
        if (t - t0 < WAIT_NS)
            continue;
        atomic_store(&p->caller_waiting, 1);
        d = atomic_load(&p->done);
        if (d != n)
            futex_wait(&p->done, (unsigned)d);
        atomic_store(&p->caller_waiting, 0);
        t0 = 0;
    }
}

/* Books one split job: own tasks of n took own_ns of the caller, the job wall_ns. The time
 * the job would have taken alone is estimated as own_ns * n / own (tasks of one job are of
 * similar size). When the window ends, a split that did not pay sends the jobs to the caller
 * alone for a while: beside a busy process a peer is descheduled often, and the caller then
 * waits at every job's end for the task that peer holds, which costs more than the peer gives. */
static void judge_split(model__pool *p, int own, int n, double own_ns, double wall_ns, double now)
{
    p->splits++;
    p->win_alone += own > 0 ? own_ns * n / own : wall_ns;
    p->win_split += wall_ns;
    if (++p->win_jobs < WINDOW_JOBS && p->win_split < WINDOW_NS)
        return;
    if (p->win_alone < SPLIT_GAIN * p->win_split) {
        p->alone_until = now + p->backoff;
        p->backoff = p->backoff * 2 < BACKOFF_MAX_NS ? p->backoff * 2 : BACKOFF_MAX_NS;
        p->backoffs++;
    } else {
        p->backoff = BACKOFF_MIN_NS;
    }
    p->win_alone = p->win_split = 0;
    p->win_jobs = 0;
}

static double measure_handoff(model__pool *p, double budget_ns);
static double set_handoff(model__pool *p, double handoff, double now);

void model__pool_run(model__pool *p, model__task_fn fn, void *arg, int n_tasks, double flops)
{
    if (p->remeasure_at > 0) { /* a slow first measurement: once in a while, between jobs */
        double now = now_ns();
        if (now >= p->remeasure_at) {
            p->remeasures++;
            double h = set_handoff(p, measure_handoff(p, 2e6), now);
            if (p->remeasure_at == 0)
                base_log(BASE_LOG_INFO,
                         "model: hand-off measured again: %.1f us, so work under %.0f kFLOP stays "
                         "on one thread",
                         h / 1e3, p->min_flops / 1e3);
        }
    }
    double t0 = 0;
    if (p->threads > 1 && n_tasks > 1 && flops >= p->min_flops && p->alone_until > 0)
        t0 = now_ns(); /* only when a back-off may be running: a clock read costs ~20 ns */
    if (p->threads == 1 || n_tasks <= 1 || flops < p->min_flops || t0 < p->alone_until) {
        for (int t = 0; t < n_tasks; t++)
            fn(arg, t, 0);
        return;
    }
    p->alone_until = 0;
    for (int base = 0; base < n_tasks; base += W_MAX_TASKS) {
        int n = n_tasks - base < W_MAX_TASKS ? n_tasks - base : W_MAX_TASKS;
        double start = now_ns(), own_ns;
        int own = run_split(p, fn, arg, base, n, &own_ns);
        double end = now_ns();
        judge_split(p, own, n, own_ns, end - start, end);
    }
}

/* A calibration task: arrives, then waits (at most 1 ms) until every thread has arrived. */
typedef struct rendezvous {
    atomic_int arrived;
    int threads;
} rendezvous;

static void rendezvous_task(void *arg, int task, int worker)
{
    (void)task, (void)worker;
    rendezvous *r = arg;
    atomic_fetch_add(&r->arrived, 1);
    double t0 = now_ns();
    while (atomic_load(&r->arrived) < r->threads && now_ns() - t0 < 1e6)
        cpu_relax();
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The hand-off: jobs of one task per thread that end when every thread has taken its task,
 * what a split costs beyond its work. The first jobs wake sleeping workers (not counted); the
 * later ones find them spinning, as a forward pass's jobs do. The median of up to 45 (what fits
 * in budget_ns on a busy machine, at least 5): the least would be the best case, rarer than it
 * looks. */
static double measure_handoff(model__pool *p, double budget_ns)
{
    double t[45], start = now_ns();
    int n = 0;
    for (int i = 0; i < 50 && (i < 10 || now_ns() - start < budget_ns); i++) {
        rendezvous r = {0, p->threads};
        double t0 = now_ns();
        run_split(p, rendezvous_task, &r, 0, p->threads, NULL);
        if (i >= 5)
            t[n++] = now_ns() - t0;
    }
    qsort(t, (size_t)n, sizeof *t, cmp_double);
    return t[n / 2];
}

/* Sets the threshold from a hand-off measured at now, and when to measure it again. */
static double set_handoff(model__pool *p, double handoff, double now)
{
    /* Capped: a start on a loaded machine must not keep mid-sized work on one thread. */
    handoff = handoff < HANDOFF_CAP_NS ? handoff : HANDOFF_CAP_NS;
    p->min_flops = HANDOFFS * handoff * p->rate;
    if (handoff > REMEASURE_ABOVE_NS) {
        p->remeasure_gap = p->remeasure_gap > 0 ? p->remeasure_gap : REMEASURE_MIN_NS;
        p->remeasure_at = now + p->remeasure_gap;
        p->remeasure_gap =
            2 * p->remeasure_gap < REMEASURE_MAX_NS ? 2 * p->remeasure_gap : REMEASURE_MAX_NS;
    } else {
        p->remeasure_at = p->remeasure_gap = 0;
    }
    return handoff;
}

double model__pool_calibrate(model__pool *p, double flops_per_ns)
{
    if (p->threads == 1)
        return 0;
    p->rate = flops_per_ns;
    p->remeasure_gap = 0;
    return set_handoff(p, measure_handoff(p, 20e6), now_ns());
}

void model__pool_assume_handoff(model__pool *p, double handoff_ns, double flops_per_ns)
{
    if (p->threads == 1)
        return;
    p->rate = flops_per_ns;
    p->remeasure_gap = 0;
    set_handoff(p, handoff_ns, now_ns());
}

long model__pool_remeasures(const model__pool *p)
{
    return p->remeasures;
}

double model__pool_min_flops(const model__pool *p)
{
    return p->min_flops;
}

void model__pool_set_min_flops(model__pool *p, double flops)
{
    p->min_flops = flops;
    p->remeasure_at = 0; /* the caller's threshold stands */
}
