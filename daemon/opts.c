/* opts.c — small option parsers shared by the prefixd subcommands. */
#include "cmd.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

int srv_parse_size(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    if (!s || !*s || *s == '-')
        return -1;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s)
        return -1;
    unsigned shift = 0;
    switch (*end) {
    case 'k':
    case 'K':
        shift = 10;
        end++;
        break;
    case 'm':
    case 'M':
        shift = 20;
        end++;
        break;
    case 'g':
    case 'G':
        shift = 30;
        end++;
        break;
    case 't':
    case 'T':
        shift = 40;
        end++;
        break;
    default:
        break;
    }
    if (shift && (*end == 'i' || *end == 'I'))
        end++;
    if (*end == 'b' || *end == 'B')
        end++;
    if (*end)
        return -1;
    if (shift && v > (UINT64_MAX >> shift))
        return -1;
    *out = (uint64_t)v << shift;
    return 0;
}

int srv_parse_int(const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    if (!s || !*s)
        return -1;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

int srv_default_tokenizer(const char *model_path, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s.tok", model_path);
    if (access(buf, R_OK) == 0)
        return 0;
    const char *slash = strrchr(model_path, '/');
    int dirlen = slash ? (int)(slash - model_path) + 1 : 0;
    snprintf(buf, cap, "%.*stokenizer.bin", dirlen, model_path);
    if (access(buf, R_OK) == 0)
        return 0;
    snprintf(buf, cap,
             "no tokenizer found: tried '%s.tok' and '%.*stokenizer.bin' (give one with "
             "--tokenizer)",
             model_path, dirlen, model_path);
    return -1;
}
