/* harness.h — a tiny test harness: named cases, asserts that print both values, a scratch
 * directory per case that never outlives it.
 *
 * A test file lists its cases in one table and hands it to harness_main() (or HARNESS_MAIN). The
 * table is the only list of the cases: ctest asks the binary for it at test time
 * (tests/CMakeLists.txt), so a case added to the table runs, and nothing else has to name it.
 *   binary            runs every case
 *   binary NAME       runs the case of that name (ctest registers one test per case)
 *   binary --list     prints the case names, one a line, each followed by its extra ctest labels
 *                     if it has any ("kill9 slow"); exits 2 on a name listed twice
 * A case's third member, optional, is its extra labels separated by spaces (for example "slow",
 * which `ctest -LE slow` leaves out); the binary's own labels come from its .cmake file.
 *
 * A failed CHECK prints where and both values, and ends the case (longjmp); a case that checked
 * nothing fails too. The binary exits 1 if any case failed, 0 otherwise, and 2 for an unknown
 * case name (never a silent pass).
 *
 * harness_tmpdir() gives the running case a scratch directory, $TMPDIR/prefixd-BINARY-CASE-XXXXXX
 * (/tmp without TMPDIR), made on first use and the same path for the rest of the case. It is
 * removed with everything in it (made writable first) when the case ends, passed or failed, and at
 * exit; harness_tmpdir_remove() removes it earlier (a later harness_tmpdir() makes a new one). A
 * forked child never removes its parent's directory. Call both only inside a case.
 */
#ifndef PREFIXD_HARNESS_H
#define PREFIXD_HARNESS_H

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct harness_case {
    const char *name;
    void (*fn)(void);
    const char *labels; /* extra ctest labels separated by spaces, or NULL */
} harness_case;

static jmp_buf harness_jmp;
static int harness_checks;

#define HARNESS_FAIL(...)                                                                          \
    do {                                                                                           \
        fprintf(stderr, "%s:%d: FAIL: ", __FILE__, __LINE__);                                      \
        fprintf(stderr, __VA_ARGS__);                                                              \
        fprintf(stderr, "\n");                                                                     \
        longjmp(harness_jmp, 1);                                                                   \
    } while (0)

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        harness_checks++;                                                                          \
        if (!(cond))                                                                               \
            HARNESS_FAIL("%s", #cond);                                                             \
    } while (0)

#define CHECK_MSG(cond, ...)                                                                       \
    do {                                                                                           \
        harness_checks++;                                                                          \
        if (!(cond))                                                                               \
            HARNESS_FAIL(__VA_ARGS__);                                                             \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                                         \
    do {                                                                                           \
        long long ha_ = (long long)(a), hb_ = (long long)(b);                                      \
        harness_checks++;                                                                          \
        if (ha_ != hb_)                                                                            \
            HARNESS_FAIL("%s == %s: %lld != %lld", #a, #b, ha_, hb_);                              \
    } while (0)

#define CHECK_EQ_U64(a, b)                                                                         \
    do {                                                                                           \
        uint64_t ha_ = (uint64_t)(a), hb_ = (uint64_t)(b);                                         \
        harness_checks++;                                                                          \
        if (ha_ != hb_)                                                                            \
            HARNESS_FAIL("%s == %s: %" PRIu64 " != %" PRIu64, #a, #b, ha_, hb_);                   \
    } while (0)

#define CHECK_NEAR(a, b, tol)                                                                      \
    do {                                                                                           \
        double ha_ = (double)(a), hb_ = (double)(b);                                               \
        harness_checks++;                                                                          \
        if (!(fabs(ha_ - hb_) <= (tol)))                                                           \
            HARNESS_FAIL("%s ~ %s: %.9g vs %.9g (tol %g)", #a, #b, ha_, hb_, (double)(tol));       \
    } while (0)

#define CHECK_STR_EQ(a, b)                                                                         \
    do {                                                                                           \
        const char *ha_ = (a), *hb_ = (b);                                                         \
        harness_checks++;                                                                          \
        if (strcmp(ha_, hb_) != 0)                                                                 \
            HARNESS_FAIL("%s == %s:\n  \"%s\"\n  \"%s\"", #a, #b, ha_, hb_);                       \
    } while (0)

#define CHECK_STR_CONTAINS(hay, needle)                                                            \
    do {                                                                                           \
        const char *ha_ = (hay), *hb_ = (needle);                                                  \
        harness_checks++;                                                                          \
        if (!ha_ || !strstr(ha_, hb_))                                                             \
            HARNESS_FAIL("%s contains %s:\n  \"%s\"\n  lacks \"%s\"", #hay, #needle,               \
                         ha_ ? ha_ : "(null)", hb_);                                               \
    } while (0)

/* ---- the case's scratch directory ---- */

static char harness_dir[PATH_MAX]; /* the running case's, or "" */
static pid_t harness_dir_pid;      /* the process that made it */
static const char *harness_prog = "test", *harness_case_name = "";

/* Removes path and everything below it, making each directory writable and searchable first (a
 * case may have taken the permissions away); says so on stderr when something stays. */
static inline void harness_rm_tree(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0)
        return;
    if (S_ISDIR(st.st_mode)) {
        chmod(path, 0700);
        DIR *d = opendir(path);
        if (d) {
            struct dirent *e;
            while ((e = readdir(d)) != NULL) {
                if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                    continue;
                char child[PATH_MAX];
                if (snprintf(child, sizeof child, "%s/%s", path, e->d_name) < (int)sizeof child)
                    harness_rm_tree(child);
            }
            closedir(d);
        }
        if (rmdir(path) != 0)
            fprintf(stderr, "harness: cannot remove %s: %s\n", path, strerror(errno));
    } else if (unlink(path) != 0) {
        fprintf(stderr, "harness: cannot remove %s: %s\n", path, strerror(errno));
    }
}

static inline void harness_tmpdir_remove(void)
{
    if (harness_dir[0] && getpid() == harness_dir_pid)
        harness_rm_tree(harness_dir);
    harness_dir[0] = 0;
}

static inline const char *harness_tmpdir(void)
{
    static int at_exit;
    if (harness_dir[0])
        return harness_dir;
    if (!at_exit) {
        atexit(harness_tmpdir_remove);
        at_exit = 1;
    }
    const char *base = getenv("TMPDIR");
    if (!base || !*base)
        base = "/tmp";
    snprintf(harness_dir, sizeof harness_dir, "%s/prefixd-%s-%s-XXXXXX", base, harness_prog,
             harness_case_name);
    if (!mkdtemp(harness_dir)) {
        int e = errno;
        harness_dir[0] = 0;
        HARNESS_FAIL("cannot make a scratch directory in %s: %s", base, strerror(e));
    }
    harness_dir_pid = getpid();
    return harness_dir;
}

/* ---- running the cases ---- */

/* --list: one line per case, its name and its extra labels; 2 on a name given twice. */
static inline int harness_list(const harness_case *cases, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < i; j++) {
            if (strcmp(cases[i].name, cases[j].name) == 0) {
                fprintf(stderr, "case '%s' is listed twice\n", cases[i].name);
                return 2;
            }
        }
        if (cases[i].labels && cases[i].labels[0])
            printf("%s %s\n", cases[i].name, cases[i].labels);
        else
            printf("%s\n", cases[i].name);
    }
    return fflush(stdout) == 0 ? 0 : 2;
}

static inline int harness_main(int argc, char **argv, const harness_case *cases, size_t n)
{
    if (argc > 1 && strcmp(argv[1], "--list") == 0)
        return harness_list(cases, n);
    const char *slash = strrchr(argv[0], '/');
    harness_prog = slash ? slash + 1 : argv[0];
    volatile int failed = 0, ran = 0;
    for (volatile size_t i = 0; i < n; i++) {
        if (argc > 1 && strcmp(argv[1], cases[i].name) != 0)
            continue;
        ran++;
        harness_checks = 0;
        harness_case_name = cases[i].name;
        fprintf(stderr, "-- %s\n", cases[i].name);
        if (setjmp(harness_jmp) == 0) {
            cases[i].fn();
            fprintf(stderr, "   ok (%d checks)\n", harness_checks);
            if (harness_checks == 0) {
                fprintf(stderr, "   FAIL: the case checked nothing\n");
                failed++;
            }
        } else {
            failed++;
        }
        harness_tmpdir_remove();
    }
    if (ran == 0) {
        fprintf(stderr, "no case named '%s'\n", argc > 1 ? argv[1] : "");
        return 2;
    }
    fprintf(stderr, "%d passed, %d failed\n", ran - failed, failed);
    return failed ? 1 : 0;
}

#define HARNESS_MAIN(cases)                                                                        \
    int main(int argc, char **argv)                                                                \
    {                                                                                              \
        return harness_main(argc, argv, cases, sizeof(cases) / sizeof(cases[0]));                  \
    }

#endif
