/* test_sockdir.c — the default socket path and the private directory it lives in without
 * $XDG_RUNTIME_DIR: the daemon creates it 0700 and refuses one that another user owns, that
 * others may enter, or that is not a real directory (a planted symlink or file). */
#include "harness.h"
#include "proto.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmp[256];

static void make_tmp(void)
{
    CHECK((size_t)snprintf(tmp, sizeof tmp, "%s", harness_tmpdir()) < sizeof tmp);
}

static void path_in(char *out, size_t cap, const char *name)
{
    CHECK((size_t)snprintf(out, cap, "%s/%s", tmp, name) < cap);
}

static void cleanup(const char *dir)
{
    chmod(dir, 0700);
    rmdir(dir);
    unlink(dir);
    rmdir(tmp);
}

static void test_default_path(void)
{
    char buf[256], dir[256], want[64];
    unsetenv("PREFIXD_SOCKET");
    unsetenv("XDG_RUNTIME_DIR");
    snprintf(want, sizeof want, "/tmp/prefixd-%u/prefixd.sock", (unsigned)getuid());
    CHECK_EQ_INT(proto_default_socket_path(buf, sizeof buf), 0);
    CHECK_STR_EQ(buf, want);
    CHECK_EQ_INT(proto_default_socket_dir(dir, sizeof dir), 1);
    CHECK_EQ_INT(strncmp(buf, dir, strlen(dir)), 0);
    CHECK_EQ_INT(buf[strlen(dir)], '/');
    CHECK_EQ_INT(proto_default_socket_path(buf, 10), -1);
    setenv("XDG_RUNTIME_DIR", "/run/user/7", 1);
    CHECK_EQ_INT(proto_default_socket_path(buf, sizeof buf), 0);
    CHECK_STR_EQ(buf, "/run/user/7/prefixd.sock");
    CHECK_EQ_INT(proto_default_socket_dir(dir, sizeof dir), 0);
    setenv("PREFIXD_SOCKET", "/x/y.sock", 1);
    CHECK_EQ_INT(proto_default_socket_path(buf, sizeof buf), 0);
    CHECK_STR_EQ(buf, "/x/y.sock");
    unsetenv("XDG_RUNTIME_DIR");
    CHECK_EQ_INT(proto_default_socket_dir(dir, sizeof dir), 0);
    unsetenv("PREFIXD_SOCKET");
}

static void test_creates(void)
{
    char dir[128], err[512];
    struct stat st;
    make_tmp();
    path_in(dir, sizeof dir, "d");
    mode_t old = umask(0);
    int rc = proto_socket_dir_check(dir, err, sizeof err);
    umask(old);
    CHECK_MSG(rc == 0, "rc %d: %s", rc, err);
    CHECK_EQ_INT(lstat(dir, &st), 0);
    CHECK(S_ISDIR(st.st_mode));
    CHECK_EQ_INT(st.st_mode & 07777, 0700);
    /* An existing private directory is accepted as it is. */
    CHECK_EQ_INT(proto_socket_dir_check(dir, err, sizeof err), 0);
    cleanup(dir);
}

static void test_refuses_mode(void)
{
    static const mode_t modes[] = {0750, 0705, 0777, 01777, 0710};
    char dir[128], err[512];
    make_tmp();
    path_in(dir, sizeof dir, "d");
    CHECK_EQ_INT(mkdir(dir, 0700), 0);
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
        CHECK_EQ_INT(chmod(dir, modes[i]), 0);
        CHECK_EQ_INT(proto_socket_dir_check(dir, err, sizeof err), -EPERM);
        CHECK_STR_CONTAINS(err, dir);
        CHECK_STR_CONTAINS(err, "mode");
    }
    cleanup(dir);
}

static void test_refuses_owner(void)
{
    char dir[128], err[512];
    make_tmp();
    path_in(dir, sizeof dir, "d");
    CHECK_EQ_INT(mkdir(dir, 0700), 0);
    if (geteuid() == 0) {
        CHECK_EQ_INT(chown(dir, 65534, 65534), 0);
        CHECK_EQ_INT(proto_socket_dir_check(dir, err, sizeof err), -EPERM);
        CHECK_STR_CONTAINS(err, dir);
        CHECK_STR_CONTAINS(err, "owned by uid 65534");
    } else {
        /* Not root: a directory of someone else's is one we cannot make; /tmp's owner is root. */
        CHECK_EQ_INT(proto_socket_dir_check("/", err, sizeof err), -EPERM);
        CHECK_STR_CONTAINS(err, "owned by uid 0");
    }
    cleanup(dir);
}

static void test_refuses_non_dir(void)
{
    char dir[128], target[128], err[512];
    make_tmp();
    path_in(target, sizeof target, "target");
    CHECK_EQ_INT(mkdir(target, 0700), 0);
    path_in(dir, sizeof dir, "link");
    CHECK_EQ_INT(symlink(target, dir), 0);
    CHECK_EQ_INT(proto_socket_dir_check(dir, err, sizeof err), -ENOTDIR);
    CHECK_STR_CONTAINS(err, "symlink");
    CHECK_STR_CONTAINS(err, dir);
    CHECK_EQ_INT(unlink(dir), 0);
    FILE *f = fopen(dir, "w");
    CHECK(f != NULL);
    fclose(f);
    CHECK_EQ_INT(proto_socket_dir_check(dir, err, sizeof err), -ENOTDIR);
    CHECK_STR_CONTAINS(err, "not a directory");
    unlink(dir);
    rmdir(target);
    /* A missing parent: the error names the directory and the cause. */
    path_in(dir, sizeof dir, "no/such");
    CHECK_EQ_INT(proto_socket_dir_check(dir, err, sizeof err), -ENOENT);
    CHECK_STR_CONTAINS(err, dir);
    rmdir(tmp);
}

static const harness_case cases[] = {
    {"default_path", test_default_path},       {"creates", test_creates},
    {"refuses_mode", test_refuses_mode},       {"refuses_owner", test_refuses_owner},
    {"refuses_non_dir", test_refuses_non_dir},
};

HARNESS_MAIN(cases)
