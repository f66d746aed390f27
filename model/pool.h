/* pool.h — a tiny fork-join worker pool for the kernels that are not BLAS calls (attention, the
 * batch-invariant decode matmul). The caller takes part; workers spin briefly between jobs (a
 * decode step dispatches ~70 jobs) and then sleep on a condition variable. Private to model/. */
#ifndef PREFIXD_MODEL_POOL_H
#define PREFIXD_MODEL_POOL_H

typedef struct model__pool model__pool;

/* fn(arg, task, worker) runs once for each task in [0, n_tasks); worker in [0, threads). */
typedef void (*model__task_fn)(void *arg, int task, int worker);

/* threads: total including the caller (>= 1). Returns NULL on failure. */
model__pool *model__pool_new(int threads);
void model__pool_free(model__pool *p);
int model__pool_threads(const model__pool *p);

/* Runs all tasks and returns when every one is done. */
void model__pool_run(model__pool *p, model__task_fn fn, void *arg, int n_tasks);

#endif
