/* harness.h — a tiny test harness: named cases, asserts that print both values.
 *
 * A test file lists its cases and hands them to harness_main(); run with no argument it runs
 * them all, with one argument only the case of that name (ctest registers one test per case).
 * A failed CHECK prints where and both values, and ends the case (longjmp); the binary exits 1
 * if any case failed, 0 otherwise, and 2 for an unknown case name (never a silent pass).
 */
#ifndef PREFIXD_HARNESS_H
#define PREFIXD_HARNESS_H

#include <inttypes.h>
#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct harness_case {
    const char *name;
    void (*fn)(void);
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

static inline int harness_main(int argc, char **argv, const harness_case *cases, size_t n)
{
    volatile int failed = 0, ran = 0;
    for (volatile size_t i = 0; i < n; i++) {
        if (argc > 1 && strcmp(argv[1], cases[i].name) != 0)
            continue;
        ran++;
        harness_checks = 0;
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
