/* bench_remote_load.c — the remote store's load and store throughput against a real redis-server
 * (started here on a Unix socket in a temporary folder, no persistence), without a model: a
 * chain of blocks of the stories110M shape (16 tokens: 1.18 MB each) stored with
 * cache_remote_put() in batches, then loaded back with cache_remote_get() (pipelined, verified,
 * copied into the destination slots), median of --runs.
 *
 * usage: build/bench/bench_remote_load [--blocks 93] [--runs 7] [--floats 294912]
 */
#include "bench_util.h"
#include "cache_remote.h"

#include <signal.h>
#include <sys/wait.h>

static pid_t start_redis(char *sock, size_t cap, char *dir)
{
    snprintf(sock, cap, "%s/redis.sock", dir);
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "exec redis-server --port 0 --unixsocket %s --unixsocketperm 700 --save '' "
             "--appendonly no --dir %s --logfile %s/redis.log",
             sock, dir, dir);
    pid_t pid = fork();
    if (pid == 0) {
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 250 && access(sock, F_OK) != 0; i++)
        usleep(20000);
    return pid;
}

int main(int argc, char **argv)
{
    int n = 93, runs = 7;
    size_t floats = 294912; /* stories110M: 12 layers x 2 x 768 x 16 tokens */
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--blocks"))
            n = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--runs"))
            runs = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--floats"))
            floats = (size_t)atol(argv[i + 1]);
    }
    if (n < 1 || runs < 1 || floats < 1) {
        fprintf(stderr, "usage: bench_remote_load [--blocks N] [--runs N] [--floats N]\n");
        return 2;
    }
    char dir[] = "/tmp/prefixd-bench-redis-XXXXXX", sock[256], url[300], msg[512];
    if (!mkdtemp(dir))
        return 1;
    pid_t pid = start_redis(sock, sizeof sock, dir);
    snprintf(url, sizeof url, "unix:%s", sock);
    cache_remote_opts o = {
        .url = url, .block_tokens = 16, .block_floats = floats, .timeout_ms = 5000};
    cache_remote *r;
    if (cache_remote_open(&o, &r, msg, sizeof msg) != 0 || cache_remote_connect(r) != 0) {
        fprintf(stderr, "bench_remote_load: %s%s\n", msg, r ? cache_remote_errmsg(r) : "");
        kill(pid, SIGKILL);
        return 1;
    }
    int32_t *tok = malloc((size_t)n * 16 * sizeof *tok);
    cache_key *keys = malloc((size_t)n * sizeof *keys);
    float **src = malloc((size_t)n * sizeof *src), **dst = malloc((size_t)n * sizeof *dst);
    cache_remote_item *items = malloc((size_t)n * sizeof *items);
    uint64_t rng = 1;
    for (int i = 0; i < n; i++) {
        src[i] = malloc(floats * sizeof(float));
        dst[i] = malloc(floats * sizeof(float));
        for (size_t f = 0; f < floats; f++)
            src[i][f] = (float)bench_rand_tok(&rng, 1000);
        memset(dst[i], 0, floats * sizeof(float)); /* touched: no page faults in the timing */
        for (int t = 0; t < 16; t++)
            tok[i * 16 + t] = bench_rand_tok(&rng, 32000);
        keys[i] = (cache_key){rng * 31 + (uint64_t)i, (uint64_t)i};
        items[i] =
            (cache_remote_item){keys[i], i ? keys[i - 1] : (cache_key){7, 7}, tok + i * 16, src[i]};
    }
    double *put = malloc((size_t)runs * sizeof *put), *get = malloc((size_t)runs * sizeof *get);
    size_t per = CACHE_REMOTE_BATCH_BYTES / (floats * 4 + 200);
    if (per < 1)
        per = 1;
    for (int k = 0; k < runs; k++) {
        double t0 = base_now_ms();
        for (int i = 0; i < n; i += (int)per) {
            size_t m = (size_t)(n - i) < per ? (size_t)(n - i) : per;
            if (cache_remote_put(r, items + i, m, NULL) != 0) {
                fprintf(stderr, "put: %s\n", cache_remote_errmsg(r));
                return 1;
            }
        }
        double t1 = base_now_ms();
        size_t got = 0;
        if (cache_remote_get(r, (cache_key){7, 7}, keys, tok, dst, (size_t)n, &got) != 0 ||
            got != (size_t)n) {
            fprintf(stderr, "get: %zu of %d: %s\n", got, n, cache_remote_errmsg(r));
            return 1;
        }
        put[k] = t1 - t0;
        get[k] = base_now_ms() - t1;
    }
    double mb = (double)n * floats * 4 / 1e6, g = bench_median(get, runs),
           p = bench_median(put, runs);
    printf("%d blocks of %.2f MB (%.1f MB), median of %d runs:\n", n, floats * 4 / 1e6, mb, runs);
    printf("  load (pipelined GETs, verified, copied into slots): %.1f ms, %.0f MB/s\n", g,
           mb / (g / 1e3));
    printf("  store (pipelined SETs of %zu blocks per round trip): %.1f ms, %.0f MB/s\n", per, p,
           mb / (p / 1e3));
    for (int i = 0; i < n; i++)
        if (memcmp(src[i], dst[i], floats * 4) != 0)
            return fprintf(stderr, "block %d differs\n", i), 1;
    cache_remote_close(r);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    char rm[400];
    snprintf(rm, sizeof rm, "rm -rf %s", dir);
    if (system(rm) != 0)
        return 1;
    return 0;
}
