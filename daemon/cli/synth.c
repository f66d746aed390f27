/* synth.c — `prefixd synth`: writes a model with random weights of a given shape, and a
 * byte-level tokenizer beside it (MODEL.tok), for speed measurements and the no-download demo. */
#include "cmd.h"
#include "model.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f, "usage: prefixd synth --shape NAME|dim,hidden,layers,heads,kv_heads,vocab,seq_len "
               "-o PATH [--seed S] [--no-tokenizer]\n"
               "\n"
               "Writes a llama2.c checkpoint with random weights, and PATH.tok, a byte-level\n"
               "tokenizer of the same vocabulary. Named shapes: stories260K, stories15M,\n"
               "stories42M, stories110M.\n");
}

int srv_cmd_synth(int argc, char **argv)
{
    const char *shape = NULL, *out = NULL;
    uint64_t seed = 1;
    int no_tok = 0;
    enum { O_SHAPE = 256, O_SEED, O_NOTOK, O_HELP };
    static const struct option opts[] = {{"shape", required_argument, 0, O_SHAPE},
                                         {"seed", required_argument, 0, O_SEED},
                                         {"no-tokenizer", no_argument, 0, O_NOTOK},
                                         {"help", no_argument, 0, O_HELP},
                                         {0, 0, 0, 0}};
    optind = 1;
    int ch;
    while ((ch = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
        char *end;
        switch (ch) {
        case O_SHAPE:
            shape = optarg;
            break;
        case 'o':
            out = optarg;
            break;
        case O_SEED:
            seed = strtoull(optarg, &end, 10);
            if (*end || end == optarg) {
                fprintf(stderr, "prefixd synth: --seed '%s': expected a whole number\n", optarg);
                return 2;
            }
            break;
        case O_NOTOK:
            no_tok = 1;
            break;
        case 'h':
        case O_HELP:
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (!shape || !out || optind < argc) {
        fprintf(stderr, "prefixd synth: --shape and -o are required\n");
        usage(stderr);
        return 2;
    }
    char msg[512];
    model_config c;
    if (model_shape_parse(shape, &c, msg, sizeof msg) != 0) {
        fprintf(stderr, "prefixd synth: %s\n", msg);
        return 2;
    }
    if (model_synth_write(out, &c, seed, msg, sizeof msg) != 0) {
        fprintf(stderr, "prefixd synth: %s\n", msg);
        return 1;
    }
    printf("wrote %s: dim %d, hidden %d, %d layers, %d heads (%d kv), vocab %d, context %d; "
           "%.2fM params, %.1f MB\n",
           out, c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size, c.seq_len,
           (double)model_param_count(&c) / 1e6, (double)model_weight_bytes(&c) / 1e6);
    if (!no_tok) {
        size_t n = strlen(out) + 8;
        char *tp = malloc(n);
        if (!tp)
            return 1;
        snprintf(tp, n, "%s.tok", out);
        int rc = model_tokenizer_synth_write(tp, c.vocab_size, msg, sizeof msg);
        if (rc != 0)
            fprintf(stderr, "prefixd synth: %s\n", msg);
        else
            printf("wrote %s: byte-level tokenizer, %d tokens\n", tp, c.vocab_size);
        free(tp);
        if (rc != 0)
            return 1;
    }
    return 0;
}
