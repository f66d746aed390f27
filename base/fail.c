/* fail.c — the helper behind every "return a code, leave a message" site. */
#include "base.h"

#include <stdio.h>

int base_fail(char *msg, size_t msglen, int code, const char *fmt, ...)
{
    if (msg && msglen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, msglen, fmt, ap);
        va_end(ap);
    }
    return code;
}
