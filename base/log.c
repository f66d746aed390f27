/* log.c — one log for the daemon's threads: a line per event on stderr, with a time stamp and
 * a level. The line is formatted into a buffer first and written with one call, so lines of
 * the loop, engine and disk threads never interleave mid-line. */
#include "base.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

static int log_level = BASE_LOG_INFO;
static const char *const level_names[] = {"error", "warn", "info", "debug"};

void base_log_set_level(int level)
{
    log_level = level;
}

int base_log_parse_level(const char *name)
{
    for (int i = 0; i < (int)(sizeof level_names / sizeof *level_names); i++)
        if (strcmp(name, level_names[i]) == 0)
            return i;
    return -1;
}

void base_log(int level, const char *fmt, ...)
{
    if (level > log_level || level < 0)
        return;
    char line[2048];
    time_t t = time(NULL);
    struct tm tm;
    localtime_r(&t, &tm);
    size_t n = strftime(line, sizeof line, "%Y-%m-%d %H:%M:%S", &tm);
    n += (size_t)snprintf(line + n, sizeof line - n, " prefixd %s: ", level_names[level]);
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(line + n, sizeof line - n - 1, fmt, ap);
    va_end(ap);
    if (k < 0)
        k = 0;
    n += (size_t)k;
    if (n > sizeof line - 2)
        n = sizeof line - 2; /* a longer line is cut, never split */
    line[n++] = '\n';
    fwrite(line, 1, n, stderr);
}
