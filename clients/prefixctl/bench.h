/* bench.h — `prefixctl bench`, the client-side TTFT benchmark driver (bench.c). */
#ifndef PREFIXCTL_BENCH_H
#define PREFIXCTL_BENCH_H

/* Runs `prefixctl bench` with argv[0] == "bench" and the options after it, against the daemon on
 * sock (NULL: the default socket). Returns the process exit code: 0 ok, 1 a daemon, connection
 * or file error, 2 bad usage or parameters that do not fit the model. Called from main only. */
int bench_main(const char *sock, int argc, char **argv);

#endif
