/* redis_server.h — a real redis-server for the C tests: started on a Unix socket in the running
 * case's scratch folder (harness_tmpdir()), no TCP port, no persistence; killed by redis_stop(),
 * and at exit whatever happens (a failed CHECK ends a case early). Include after harness.h.
 * have_redis() says whether redis-server is installed (scripts/deps --test installs it); cases
 * that need it pass with a "skipped" line when it is not. */
#ifndef PREFIXD_TEST_REDIS_SERVER_H
#define PREFIXD_TEST_REDIS_SERVER_H

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static pid_t redis_pid;
static char redis_sock[600];

static inline int have_redis(void)
{
    return system("command -v redis-server >/dev/null 2>&1") == 0;
}

static inline void redis_stop(void)
{
    if (redis_pid > 0) {
        kill(redis_pid, SIGKILL);
        waitpid(redis_pid, NULL, 0);
    }
    redis_pid = 0;
}

static inline void redis_start(const char *extra)
{
    const char *dir = harness_tmpdir();
    snprintf(redis_sock, sizeof redis_sock, "%s/redis.sock", dir);
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "exec redis-server --port 0 --unixsocket %s --unixsocketperm 700 --save '' "
             "--appendonly no --dir %s --logfile %s/redis.log %s",
             redis_sock, dir, dir, extra);
    redis_pid = fork();
    if (redis_pid == 0) {
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    CHECK(redis_pid > 0);
    atexit(redis_stop); /* a failed CHECK ends the case early */
    for (int i = 0; i < 200 && access(redis_sock, F_OK) != 0; i++)
        usleep(20000);
    CHECK_MSG(access(redis_sock, F_OK) == 0, "redis-server did not make %s", redis_sock);
}

#endif
