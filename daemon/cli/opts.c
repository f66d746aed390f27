/* opts.c — small option parsers shared by the prefixd subcommands. */
#include "cmd.h"
#include "model.h"

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

int srv_load(const char *model_path, const char *tok_path, model **m, model_tokenizer **tok)
{
    char msg[1024], buf[4096];
    *m = NULL;
    *tok = NULL;
    if (model_load(model_path, m, msg, sizeof msg) != 0) {
        fprintf(stderr, "prefixd: %s\n", msg);
        return 2;
    }
    if (!tok_path) {
        /* A GGUF file carries its vocabulary; a llama2.c checkpoint (MODEL_EINVAL) does not. */
        int rc = model_tokenizer_from_model(*m, tok, msg, sizeof msg);
        if (rc == 0)
            return 0;
        if (rc != MODEL_EINVAL) {
            fprintf(stderr, "prefixd: %s\n", msg);
            model_free(*m);
            *m = NULL;
            return 2;
        }
        if (srv_default_tokenizer(model_path, buf, sizeof buf) != 0) {
            fprintf(stderr, "prefixd: %s\n", buf);
            model_free(*m);
            *m = NULL;
            return 2;
        }
        tok_path = buf;
    }
    if (model_tokenizer_load(tok_path, model_get_config(*m)->vocab_size, tok, msg, sizeof msg) !=
        0) {
        fprintf(stderr, "prefixd: %s\n", msg);
        model_free(*m);
        *m = NULL;
        return 2;
    }
    return 0;
}
