/* test_activation.c — srv_activation_fd(): the socket passed by systemd socket activation.
 *
 * Each case puts something on fd 3 (a listening Unix socket as systemd would, or something a
 * daemon must refuse), sets LISTEN_PID and LISTEN_FDS as systemd does, and checks the returned
 * fd or error, its message, FD_CLOEXEC, and that the variables are gone afterwards.
 */
#include "activation.h"
#include "harness.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static char dir[64];
static char path[128];
static char msg[512];

/* Moves fd onto 3 (where systemd puts the first passed fd); -1 just closes 3. */
static void put_on_fd3(int fd)
{
    if (fd == 3)
        return;
    close(3);
    if (fd < 0)
        return;
    CHECK(dup2(fd, 3) == 3);
    close(fd);
}

/* A Unix stream socket bound to a fresh path, listening or not. */
static int unix_socket(int type, int listening)
{
    snprintf(dir, sizeof dir, "/tmp/prefixd-act-XXXXXX");
    CHECK(mkdtemp(dir) != NULL);
    snprintf(path, sizeof path, "%s/p.sock", dir);
    int fd = socket(AF_UNIX, type, 0);
    CHECK(fd >= 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    memcpy(sa.sun_path, path, strlen(path) + 1);
    CHECK(bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0);
    if (listening)
        CHECK(listen(fd, 8) == 0);
    return fd;
}

static void cleanup(void)
{
    close(3);
    if (path[0])
        unlink(path);
    if (dir[0])
        rmdir(dir);
    path[0] = dir[0] = '\0';
}

static void set_env(const char *pid, const char *fds)
{
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
    if (pid)
        setenv("LISTEN_PID", pid, 1);
    if (fds)
        setenv("LISTEN_FDS", fds, 1);
}

static void set_env_ours(const char *fds)
{
    char pid[32];
    snprintf(pid, sizeof pid, "%ld", (long)getpid());
    set_env(pid, fds);
}

static void check_env_gone(void)
{
    CHECK(getenv("LISTEN_PID") == NULL);
    CHECK(getenv("LISTEN_FDS") == NULL);
    CHECK(getenv("LISTEN_FDNAMES") == NULL);
}

/* Runs srv_activation_fd() and expects a code and a message fragment. */
static void expect(int code, const char *fragment)
{
    strcpy(msg, "stale");
    CHECK_EQ_INT(srv_activation_fd(msg, sizeof msg), code);
    if (fragment)
        CHECK_STR_CONTAINS(msg, fragment);
    else
        CHECK_STR_EQ(msg, "");
    check_env_gone();
}

static void test_nothing_passed(void)
{
    set_env(NULL, NULL);
    expect(0, NULL);
    set_env_ours("0");
    expect(0, NULL);
}

static void test_listening_unix_socket(void)
{
    put_on_fd3(unix_socket(SOCK_STREAM, 1));
    set_env_ours("1");
    setenv("LISTEN_FDNAMES", "prefixd.socket", 1);
    expect(3, path);
    CHECK_STR_CONTAINS(msg, "fd 3");
    CHECK(fcntl(3, F_GETFD) & FD_CLOEXEC);
    /* It is the very socket: a client connecting to the path is accepted on fd 3. */
    int c = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    memcpy(sa.sun_path, path, strlen(path) + 1);
    CHECK(connect(c, (struct sockaddr *)&sa, sizeof sa) == 0);
    int a = accept(3, NULL, NULL);
    CHECK(a >= 0);
    close(a);
    close(c);
    /* The variables are gone: a second call (or a child) sees nothing. */
    expect(0, NULL);
    cleanup();
}

static void test_abstract_socket(void)
{
    put_on_fd3(-1);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    CHECK(fd >= 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    char name[64];
    int n = snprintf(name, sizeof name, "prefixd-act-%ld", (long)getpid());
    memcpy(sa.sun_path + 1, name, (size_t)n);
    socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
    CHECK(bind(fd, (struct sockaddr *)&sa, len) == 0);
    CHECK(listen(fd, 8) == 0);
    put_on_fd3(fd);
    set_env_ours("1");
    expect(3, "'@prefixd-act-");
    cleanup();
}

static void test_other_pid(void)
{
    put_on_fd3(unix_socket(SOCK_STREAM, 1));
    char pid[32];
    snprintf(pid, sizeof pid, "%ld", (long)getpid() + 1);
    set_env(pid, "1");
    expect(0, "names another process");
    /* Not ours: the fd is left alone (no FD_CLOEXEC set on it). */
    CHECK(!(fcntl(3, F_GETFD) & FD_CLOEXEC));
    set_env(NULL, "1");
    expect(0, "without LISTEN_PID");
    set_env_ours(NULL);
    expect(0, "without LISTEN_FDS");
    cleanup();
}

static void test_malformed(void)
{
    static const char *bad_pid[] = {"", "abc", "12x", "-5", " 7", "0", "99999999999999999999"};
    for (size_t i = 0; i < sizeof bad_pid / sizeof bad_pid[0]; i++) {
        set_env(bad_pid[i], "1");
        expect(SRV_ACTIVATION_EENV, "LISTEN_PID='");
    }
    static const char *bad_fds[] = {"", "one", "-1", "1 ", "+1", "99999999999"};
    for (size_t i = 0; i < sizeof bad_fds / sizeof bad_fds[0]; i++) {
        set_env_ours(bad_fds[i]);
        expect(SRV_ACTIVATION_EENV, "LISTEN_FDS='");
    }
}

static void test_two_fds(void)
{
    put_on_fd3(unix_socket(SOCK_STREAM, 1));
    int p[2];
    CHECK(pipe(p) == 0);
    CHECK(dup2(p[0], 4) == 4);
    close(p[0]);
    close(p[1]);
    set_env_ours("2");
    expect(SRV_ACTIVATION_ECOUNT, "LISTEN_FDS=2");
    CHECK_STR_CONTAINS(msg, "one socket");
    /* Refused, but neither fd may leak into a child. */
    CHECK(fcntl(3, F_GETFD) & FD_CLOEXEC);
    CHECK(fcntl(4, F_GETFD) & FD_CLOEXEC);
    close(4);
    cleanup();
}

static void test_closed_fd(void)
{
    put_on_fd3(-1);
    set_env_ours("1");
    expect(SRV_ACTIVATION_EBADFD, "fd 3 is not open");
}

static void test_not_a_socket(void)
{
    int p[2];
    CHECK(pipe(p) == 0);
    close(p[1]);
    put_on_fd3(p[0]);
    set_env_ours("1");
    expect(SRV_ACTIVATION_ENOTSOCK, "fd 3 is not a socket");
    cleanup();
}

static void test_not_listening(void)
{
    put_on_fd3(unix_socket(SOCK_STREAM, 0));
    set_env_ours("1");
    expect(SRV_ACTIVATION_ENOTSOCK, "not listening");
    cleanup();
}

static void test_datagram(void)
{
    put_on_fd3(unix_socket(SOCK_DGRAM, 0));
    set_env_ours("1");
    expect(SRV_ACTIVATION_ENOTSOCK, "not a stream socket");
    cleanup();
}

static void test_tcp(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    CHECK(bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0);
    CHECK(listen(fd, 8) == 0);
    put_on_fd3(fd);
    set_env_ours("1");
    expect(SRV_ACTIVATION_ENOTSOCK, "not a Unix socket");
    cleanup();
}

static void test_null_msg(void)
{
    put_on_fd3(-1);
    set_env_ours("1");
    CHECK_EQ_INT(srv_activation_fd(NULL, 0), SRV_ACTIVATION_EBADFD);
    check_env_gone();
}

static void test_strerror(void)
{
    CHECK_STR_CONTAINS(srv_activation_strerror(SRV_ACTIVATION_ECOUNT), "more than one");
    CHECK_STR_CONTAINS(srv_activation_strerror(SRV_ACTIVATION_ENOTSOCK), "listening Unix");
    CHECK_STR_EQ(srv_activation_strerror(-999), "unknown error");
    CHECK_STR_EQ(srv_activation_strerror(0), "unknown error");
}

static const harness_case cases[] = {
    {"nothing_passed", test_nothing_passed},
    {"listening_unix_socket", test_listening_unix_socket},
    {"abstract_socket", test_abstract_socket},
    {"other_pid", test_other_pid},
    {"malformed", test_malformed},
    {"two_fds", test_two_fds},
    {"closed_fd", test_closed_fd},
    {"not_a_socket", test_not_a_socket},
    {"not_listening", test_not_listening},
    {"datagram", test_datagram},
    {"tcp", test_tcp},
    {"null_msg", test_null_msg},
    {"strerror", test_strerror},
};

HARNESS_MAIN(cases)
