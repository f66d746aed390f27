/* pool.h — the fork-join worker pool of the forward pass (the products, attention and the
 * row-wise steps). Private to model/.
 *
 * A job is n_tasks small tasks that the caller and the workers claim one at a time from one
 * atomic counter, so no thread owns a share: a thread that the system deschedules holds up only
 * the one task it was running, and the others finish the rest. The caller waits for the tasks,
 * never for the workers (a worker that comes late finds nothing left and goes back to wait).
 * Waiting threads spin briefly, then sleep on a futex. A job whose work (in FLOPs, the caller's
 * estimate) is below what a hand-off costs runs on the caller alone; that threshold is measured
 * when the pool starts (model__pool_calibrate). What a task computes must not depend on which
 * thread runs it: the `worker` index only picks scratch memory.
 */
#ifndef PREFIXD_MODEL_POOL_H
#define PREFIXD_MODEL_POOL_H

typedef struct model__pool model__pool;

/* fn(arg, task, worker) runs once for each task in [0, n_tasks); worker in [0, threads). */
typedef void (*model__task_fn)(void *arg, int task, int worker);

/* threads: total including the caller (>= 1). Returns NULL on failure. */
model__pool *model__pool_new(int threads);
void model__pool_free(model__pool *p);
int model__pool_threads(const model__pool *p);

/* Runs all tasks and returns when every one is done. flops: the job's work, estimated; a job
 * below model__pool_min_flops() (or of one task, or on a pool of one thread) runs on the caller
 * alone, in task order. Called from one thread at a time (the engine thread). */
void model__pool_run(model__pool *p, model__task_fn fn, void *arg, int n_tasks, double flops);

/* Measures the hand-off: the time a job of one task per thread takes to reach every thread
 * (the median of a few tries with the workers awake), and sets the split threshold to what the
 * caller computes alone in a few hand-offs: min_flops = HANDOFFS * handoff_ns * flops_per_ns,
 * where flops_per_ns is the caller's own measured rate on small work. Returns the hand-off in
 * ns. */
double model__pool_calibrate(model__pool *p, double flops_per_ns);

/* A hand-off measured above ~10 us (a slow moment: a quiet machine's is about 1 us) is
 * measured again by model__pool_run(), between two jobs, 1 s later, then after 2, 4, ... up to
 * 64 s while it stays that high (each time up to ~2 ms of the caller's). */

/* As model__pool_calibrate(), with the hand-off given instead of measured (tests). */
void model__pool_assume_handoff(model__pool *p, double handoff_ns, double flops_per_ns);

/* How many times the hand-off was measured again. */
long model__pool_remeasures(const model__pool *p);

/* The threshold in force (0 before calibration: every job of several tasks is split). */
double model__pool_min_flops(const model__pool *p);

/* Overrides the threshold (tests: 0 splits every job, so that the split paths run); no hand-off
 * is measured again after. */
void model__pool_set_min_flops(model__pool *p, double flops);

#endif
