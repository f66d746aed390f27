/* activation.c — the socket passed by systemd socket activation (see activation.h).
 *
 * sd_listen_fds(3) without libsystemd: two environment variables and fds from 3 on. The checks
 * are the ones a daemon needs before it hands the fd to libuv: that it is meant for this process,
 * that there is one, and that it is a listening Unix stream socket (a datagram or TCP socket, or
 * one nobody called listen() on, would fail later and more obscurely inside the loop). The
 * variables are unset once read, as sd_listen_fds(1) does, so a child process never takes them
 * for its own.
 */
#include "activation.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static int say(char *msg, size_t msglen, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Writes the message (if there is room for one) and returns rc, so error paths are one line. */
static int say(char *msg, size_t msglen, int rc, const char *fmt, ...)
{
    if (msg && msglen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, msglen, fmt, ap);
        va_end(ap);
    }
    return rc;
}

/* Copies a variable's value before it is unset (the getenv pointer dies with unsetenv). Returns
 * 1 when the variable was set, 0 when not; a value too long for buf is cut, which the parser
 * then refuses as malformed. */
static int take_var(const char *name, char *buf, size_t cap)
{
    const char *v = getenv(name);
    if (!v)
        return 0;
    snprintf(buf, cap, "%s", v);
    return 1;
}

/* A whole decimal number in [0, max], nothing else (no sign, no spaces). */
static int parse_count(const char *s, long max, long *out)
{
    if (!*s)
        return -1;
    long v = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        v = v * 10 + (*p - '0');
        if (v > max)
            return -1;
    }
    *out = v;
    return 0;
}

/* Describes where the socket listens, for the log: a path, @name for the abstract namespace. */
static void describe(int fd, char *msg, size_t msglen)
{
    struct sockaddr_un sa;
    socklen_t len = sizeof sa;
    memset(&sa, 0, sizeof sa);
    if (getsockname(fd, (struct sockaddr *)&sa, &len) != 0 ||
        len <= offsetof(struct sockaddr_un, sun_path)) {
        say(msg, msglen, 0, "socket activation: fd %d (unnamed socket)", fd);
        return;
    }
    size_t n = len - offsetof(struct sockaddr_un, sun_path);
    if (sa.sun_path[0] == '\0')
        say(msg, msglen, 0, "socket activation: fd %d listening on '@%.*s'", fd, (int)n - 1,
            sa.sun_path + 1);
    else
        say(msg, msglen, 0, "socket activation: fd %d listening on '%.*s'", fd,
            (int)strnlen(sa.sun_path, n), sa.sun_path);
}

/* Checks that fd is a listening AF_UNIX SOCK_STREAM socket. Returns 0 or a negative code. */
static int check_listening_unix_stream(int fd, char *msg, size_t msglen)
{
    if (fcntl(fd, F_GETFD) < 0)
        return say(msg, msglen, SRV_ACTIVATION_EBADFD,
                   "socket activation: LISTEN_FDS=1 but fd %d is not open", fd);
    int v;
    socklen_t len = sizeof v;
    if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &v, &len) != 0) {
        if (errno == ENOTSOCK)
            return say(msg, msglen, SRV_ACTIVATION_ENOTSOCK,
                       "socket activation: fd %d is not a socket", fd);
        return say(msg, msglen, SRV_ACTIVATION_ESYS,
                   "socket activation: fd %d: getsockopt(SO_DOMAIN): %s", fd, strerror(errno));
    }
    if (v != AF_UNIX)
        return say(msg, msglen, SRV_ACTIVATION_ENOTSOCK,
                   "socket activation: fd %d is a socket of address family %d, not a Unix "
                   "socket (AF_UNIX); the socket unit needs ListenStream=/path",
                   fd, v);
    len = sizeof v;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &v, &len) != 0)
        return say(msg, msglen, SRV_ACTIVATION_ESYS,
                   "socket activation: fd %d: getsockopt(SO_TYPE): %s", fd, strerror(errno));
    if (v != SOCK_STREAM)
        return say(msg, msglen, SRV_ACTIVATION_ENOTSOCK,
                   "socket activation: fd %d is a Unix socket of type %d, not a stream socket "
                   "(SOCK_STREAM); the socket unit needs ListenStream=, not ListenDatagram= or "
                   "ListenSequentialPacket=",
                   fd, v);
    len = sizeof v;
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &v, &len) != 0)
        return say(msg, msglen, SRV_ACTIVATION_ESYS,
                   "socket activation: fd %d: getsockopt(SO_ACCEPTCONN): %s", fd, strerror(errno));
    if (!v)
        return say(msg, msglen, SRV_ACTIVATION_ENOTSOCK,
                   "socket activation: fd %d is a Unix stream socket that is not listening "
                   "(listen() was never called on it)",
                   fd);
    return 0;
}

int srv_activation_fd(char *msg, size_t msglen)
{
    say(msg, msglen, 0, "%s", "");
    char pid_s[32], fds_s[32];
    int have_pid = take_var("LISTEN_PID", pid_s, sizeof pid_s);
    int have_fds = take_var("LISTEN_FDS", fds_s, sizeof fds_s);
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
    if (!have_pid && !have_fds)
        return 0;
    if (!have_pid)
        return say(msg, msglen, 0,
                   "socket activation: LISTEN_FDS is set without LISTEN_PID: ignored");
    long pid;
    if (parse_count(pid_s, 1L << 30, &pid) != 0 || pid == 0)
        return say(msg, msglen, SRV_ACTIVATION_EENV,
                   "socket activation: LISTEN_PID='%s': expected a process id", pid_s);
    if ((pid_t)pid != getpid())
        return say(msg, msglen, 0,
                   "socket activation: LISTEN_PID=%ld names another process (this is %ld): "
                   "its fds are not ours, ignored",
                   pid, (long)getpid());
    if (!have_fds)
        return say(msg, msglen, 0,
                   "socket activation: LISTEN_PID is set without LISTEN_FDS: ignored");
    long n;
    if (parse_count(fds_s, 1L << 20, &n) != 0)
        return say(msg, msglen, SRV_ACTIVATION_EENV,
                   "socket activation: LISTEN_FDS='%s': expected a number of fds", fds_s);
    if (n == 0)
        return 0;
    /* Whatever happens next, none of the passed fds may leak into a child process. */
    for (long i = 0; i < n; i++)
        fcntl(SRV_ACTIVATION_FD_START + (int)i, F_SETFD, FD_CLOEXEC);
    if (n > 1)
        return say(msg, msglen, SRV_ACTIVATION_ECOUNT,
                   "socket activation: LISTEN_FDS=%ld: prefixd serves one socket; give the "
                   "socket unit a single ListenStream=",
                   n);
    int fd = SRV_ACTIVATION_FD_START;
    int rc = check_listening_unix_stream(fd, msg, msglen);
    if (rc != 0)
        return rc;
    describe(fd, msg, msglen);
    return fd;
}

const char *srv_activation_strerror(int code)
{
    switch (code) {
#define SRV_ACTIVATION_STR_(name, c, text)                                                         \
    case name:                                                                                     \
        return text;
        SRV_ACTIVATION_ERRNO_MAP(SRV_ACTIVATION_STR_)
#undef SRV_ACTIVATION_STR_
    }
    return "unknown error";
}
