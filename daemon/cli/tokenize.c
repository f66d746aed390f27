/* tokenize.c — `prefixd tokenize`: a tokenizer checked from the command line.
 *
 *   prefixd tokenize --model FILE [--ids|--pieces] [--add-special] [--special] TEXT|-
 *
 * FILE is a GGUF model or vocabulary-only GGUF file (no weights are read) or a llama2.c
 * tokenizer file. Prints the ids of TEXT (- reads standard input, whole) on one line,
 * space-separated, as llama.cpp's .out test files write them (no BOS unless --add-special);
 * --pieces prints each id's vocabulary text instead, one per line ("id<TAB>text"). --special
 * lets control tokens' texts ("<|eot_id|>") become those tokens. */
#include "cmd.h"
#include "model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f, "usage: prefixd tokenize --model FILE [--ids|--pieces] [--add-special] [--special] "
               "TEXT|-\n"
               "  --model FILE     a GGUF model or vocabulary file, or a llama2.c tokenizer\n"
               "  --ids            print the ids on one line (the default)\n"
               "  --pieces         print 'id<TAB>text' per token, the vocabulary's own text\n"
               "  --add-special    add BOS/EOS as the vocabulary asks (add_bos_token, ...)\n"
               "  --special        match control tokens' texts in TEXT as those tokens\n"
               "  TEXT             the text; - reads standard input\n");
}

static char *read_stdin(size_t *len)
{
    size_t cap = 65536, n = 0;
    char *b = malloc(cap);
    for (size_t k; b && (k = fread(b + n, 1, cap - n, stdin)) > 0;) {
        n += k;
        if (n == cap) {
            char *nb = realloc(b, cap *= 2);
            if (!nb) {
                free(b);
                return NULL;
            }
            b = nb;
        }
    }
    *len = n;
    return b;
}

int srv_cmd_tokenize(int argc, char **argv)
{
    const char *model_path = NULL, *text = NULL;
    int pieces = 0;
    unsigned flags = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc)
            model_path = argv[++i];
        else if (!strcmp(argv[i], "--ids"))
            pieces = 0;
        else if (!strcmp(argv[i], "--pieces"))
            pieces = 1;
        else if (!strcmp(argv[i], "--add-special"))
            flags |= MODEL_ENC_ADD_SPECIAL;
        else if (!strcmp(argv[i], "--special"))
            flags |= MODEL_ENC_SPECIAL;
        else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        } else if (argv[i][0] == '-' && argv[i][1] != 0) {
            fprintf(stderr, "prefixd tokenize: unknown option '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        } else if (!text)
            text = argv[i];
        else {
            fprintf(stderr, "prefixd tokenize: one TEXT only (quote it)\n");
            return 2;
        }
    }
    if (!model_path || !text) {
        fprintf(stderr, "prefixd tokenize: %s is required\n", model_path ? "TEXT" : "--model");
        usage(stderr);
        return 2;
    }
    char msg[1024];
    model_tokenizer *t = NULL;
    if (model_tokenizer_open(model_path, &t, msg, sizeof msg) != 0) {
        fprintf(stderr, "prefixd: %s\n", msg);
        return 2;
    }
    size_t len;
    char *in = NULL;
    if (!strcmp(text, "-")) {
        in = read_stdin(&len);
        if (!in) {
            fprintf(stderr, "prefixd tokenize: out of memory reading standard input\n");
            model_tokenizer_free(t);
            return 1;
        }
        text = in;
    } else {
        len = strlen(text);
    }
    size_t cap = model_encode_cap(len), n = 0;
    int32_t *ids = malloc(cap * sizeof *ids);
    int rc = ids ? model_tokenize(t, text, len, flags, ids, cap, &n) : MODEL_ENOMEM;
    if (rc) {
        fprintf(stderr, "prefixd tokenize: %s\n", model_strerror(rc));
    } else if (pieces) {
        for (size_t i = 0; i < n; i++) {
            size_t pl;
            const char *p = model_token_text(t, ids[i], &pl);
            printf("%d\t%.*s\n", ids[i], (int)pl, p);
        }
    } else {
        for (size_t i = 0; i < n; i++)
            printf("%s%d", i ? " " : "", ids[i]);
        printf("\n");
    }
    free(ids);
    free(in);
    model_tokenizer_free(t);
    return rc ? 1 : 0;
}
