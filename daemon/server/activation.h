/* activation.h — the listening socket handed over by systemd socket activation.
 *
 * With a `prefixd.socket` unit, systemd binds the socket itself, starts `prefixd serve` on the
 * first connection and passes the listening socket as fd 3 (SD_LISTEN_FDS_START), saying so in
 * two environment variables: LISTEN_FDS (how many fds, from 3 on) and LISTEN_PID (the pid they are
 * meant for, so a child that inherits the environment does not take them too). This is the whole
 * protocol (sd_listen_fds(3)); we read it here rather than link libsystemd for one function.
 *
 * prefixd serves one socket, so exactly one fd is accepted, and it must be what a daemon can
 * serve: a Unix stream socket already listening. Anything else is refused with a message naming
 * the fd and the problem, never served half-way.
 */
#ifndef PREFIXD_ACTIVATION_H
#define PREFIXD_ACTIVATION_H

#include <stddef.h>

/* The first fd passed by socket activation. */
#define SRV_ACTIVATION_FD_START 3

/* Error codes of srv_activation_fd(), all negative. */
#define SRV_ACTIVATION_ERRNO_MAP(X)                                                                \
    X(SRV_ACTIVATION_EENV, -1, "malformed LISTEN_PID or LISTEN_FDS")                               \
    X(SRV_ACTIVATION_ECOUNT, -2, "more than one socket passed")                                    \
    X(SRV_ACTIVATION_EBADFD, -3, "the passed fd is not open")                                      \
    X(SRV_ACTIVATION_ENOTSOCK, -4, "the passed fd is not a listening Unix stream socket")          \
    X(SRV_ACTIVATION_ESYS, -5, "a system call on the passed fd failed")

enum {
#define SRV_ACTIVATION_ENUM_(name, code, text) name = code,
    SRV_ACTIVATION_ERRNO_MAP(SRV_ACTIVATION_ENUM_)
#undef SRV_ACTIVATION_ENUM_
};

/* Takes the listening socket passed by socket activation, if any.
 *
 * Reads LISTEN_PID and LISTEN_FDS and then unsets them (and LISTEN_FDNAMES) in every case, so
 * no child of the daemon mistakes them for its own. Call it once, from the main thread, before
 * any other thread starts (it changes the environment, which is not thread-safe).
 *
 * Returns:
 *  - the fd (SRV_ACTIVATION_FD_START, i.e. 3) when exactly one socket was passed to this
 *    process and it is a listening AF_UNIX SOCK_STREAM socket; FD_CLOEXEC is set on it. The
 *    caller owns it (hand it to uv_pipe_open(), which also makes it non-blocking). msg says
 *    what was found, e.g. "socket activation: fd 3 listening on '/run/user/1000/prefixd.sock'",
 *    for the log. The socket file belongs to the socket unit: do not chmod or unlink it.
 *  - 0 when nothing was passed to us: neither variable set, LISTEN_FDS=0, or LISTEN_PID names
 *    another process (then msg says so; otherwise msg is empty). Bind the socket as usual.
 *  - a negative SRV_ACTIVATION_E* code, with msg naming the variable or fd and the problem
 *    (a malformed variable, LISTEN_FDS above 1, fd 3 closed, not a socket, not AF_UNIX, not
 *    SOCK_STREAM, not listening). The daemon should refuse to start (exit 2): a unit that
 *    passes the wrong thing is a configuration error.
 *
 * msg (msglen bytes, may be NULL when msglen is 0) always receives a NUL-terminated string.
 */
int srv_activation_fd(char *msg, size_t msglen);

/* A static English description of a SRV_ACTIVATION_E* code ("unknown error" for others). */
const char *srv_activation_strerror(int code);

#endif
