/* pool.c — the fork-join worker pool (see pool.h).
 *
 * One job at a time: the caller publishes (fn, arg, n_tasks) and bumps a generation counter;
 * workers and the caller take task indices from one atomic counter until none are left; the
 * caller waits until every worker has finished the generation. Workers spin for a short while
 * before sleeping, because decode steps come back-to-back and a condition-variable wake-up costs
 * tens of microseconds.
 */
#include "pool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#define SPIN_ROUNDS 20000
/* Spins of the caller waiting for the last tasks before it yields its core on each further
 * spin: on a shared machine the worker it waits for may be queued behind it on the same core. */
#define WAIT_SPINS 4000

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

struct model__pool {
    int threads;
    pthread_t *tids;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    atomic_uint gen;   /* bumped for each job; workers run a job when it changes */
    atomic_int next;   /* next task index */
    atomic_int active; /* workers still inside the current job */
    atomic_int stop;
    model__task_fn fn;
    void *arg;
    int n_tasks;
};

typedef struct worker_arg {
    model__pool *p;
    int id;
} worker_arg;

static void run_tasks(model__pool *p, int worker)
{
    for (;;) {
        int t = atomic_fetch_add_explicit(&p->next, 1, memory_order_relaxed);
        if (t >= p->n_tasks)
            break;
        p->fn(p->arg, t, worker);
    }
}

static void *worker_main(void *a)
{
    worker_arg wa = *(worker_arg *)a;
    free(a);
    model__pool *p = wa.p;
    unsigned seen =
        0; /* the generation at creation: a job posted before this thread ran still runs */
    for (;;) {
        unsigned g;
        int spins = 0;
        while ((g = atomic_load_explicit(&p->gen, memory_order_acquire)) == seen &&
               !atomic_load(&p->stop)) {
            cpu_relax();
            if (++spins > SPIN_ROUNDS) {
                pthread_mutex_lock(&p->mu);
                while (atomic_load(&p->gen) == seen && !atomic_load(&p->stop))
                    pthread_cond_wait(&p->cv, &p->mu);
                pthread_mutex_unlock(&p->mu);
                spins = 0;
            }
        }
        if (atomic_load(&p->stop))
            return NULL;
        seen = g;
        run_tasks(p, wa.id);
        atomic_fetch_sub_explicit(&p->active, 1, memory_order_release);
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
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
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
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, 1);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->threads; i++)
        pthread_join(p->tids[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p->tids);
    free(p);
}

int model__pool_threads(const model__pool *p)
{
    return p->threads;
}

void model__pool_run(model__pool *p, model__task_fn fn, void *arg, int n_tasks)
{
    if (p->threads == 1 || n_tasks == 1) {
        for (int t = 0; t < n_tasks; t++)
            fn(arg, t, 0);
        return;
    }
    p->fn = fn;
    p->arg = arg;
    p->n_tasks = n_tasks;
    atomic_store(&p->next, 0);
    atomic_store(&p->active, p->threads - 1);
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add_explicit(&p->gen, 1, memory_order_release);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    run_tasks(p, 0);
    for (int spins = 0; atomic_load_explicit(&p->active, memory_order_acquire) > 0; spins++) {
        if (spins < WAIT_SPINS)
            cpu_relax();
        else
            sched_yield();
    }
}
