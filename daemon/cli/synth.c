/* synth.c — `prefixd synth`: writes a model with random weights of a given shape (a llama2.c
 * checkpoint, or a GGUF file of any weight type and architecture llama or qwen2) and a
 * byte-level tokenizer beside it (MODEL.tok), for speed measurements and the no-download demo;
 * with --from, converts a GGUF model's weights to another type instead. */
#include "cmd.h"
#include "model.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f,
            "usage: prefixd synth --shape NAME|dim,hidden,layers,heads,kv_heads,vocab,seq_len "
            "-o PATH [--seed S] [--no-tokenizer]\n"
            "                     [--format llama2c|gguf] [--type T] [--arch llama|qwen2]\n"
            "                     [--rope-freqs] [--rope-scale F]\n"
            "       prefixd synth --from MODEL.gguf --type T -o PATH\n"
            "\n"
            "Writes a model with random weights, and PATH.tok, a byte-level tokenizer of the\n"
            "same vocabulary. Named shapes: stories260K, stories15M, stories42M, stories110M.\n"
            "--format gguf writes a GGUF file whose matrices have type T: f32, f16, bf16, q8_0,\n"
            "q4_0, q4_1, q5_0, q5_1, q4_k, q5_k, q6_k or q4_k_m (llama.cpp's mix); --arch qwen2\n"
            "adds Q/K/V biases and NeoX rotary. --rope-freqs adds Llama 3.1's rotary factors\n"
            "(rope_freqs.weight, computed with the shape's context as the original one);\n"
            "--rope-scale F writes linear rotary scaling by F (both GGUF only). --from converts a\n"
            "GGUF model's weights to type T, keeping its metadata and vocabulary.\n");
}

int srv_cmd_synth(int argc, char **argv)
{
    const char *shape = NULL, *out = NULL, *format = "llama2c", *arch = "llama", *from = NULL;
    const char *type_name = NULL;
    uint64_t seed = 1;
    int no_tok = 0, type = MODEL_TYPE_F32, rope_freqs = 0;
    float rope_scale = 1.0f;
    enum {
        O_SHAPE = 256,
        O_SEED,
        O_NOTOK,
        O_HELP,
        O_FORMAT,
        O_TYPE,
        O_ARCH,
        O_FROM,
        O_ROPE_FREQS,
        O_ROPE_SCALE
    };
    static const struct option opts[] = {{"shape", required_argument, 0, O_SHAPE},
                                         {"seed", required_argument, 0, O_SEED},
                                         {"no-tokenizer", no_argument, 0, O_NOTOK},
                                         {"format", required_argument, 0, O_FORMAT},
                                         {"type", required_argument, 0, O_TYPE},
                                         {"arch", required_argument, 0, O_ARCH},
                                         {"from", required_argument, 0, O_FROM},
                                         {"rope-freqs", no_argument, 0, O_ROPE_FREQS},
                                         {"rope-scale", required_argument, 0, O_ROPE_SCALE},
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
        case O_FORMAT:
            format = optarg;
            break;
        case O_TYPE:
            type_name = optarg;
            break;
        case O_ARCH:
            arch = optarg;
            break;
        case O_FROM:
            from = optarg;
            break;
        case O_ROPE_FREQS:
            rope_freqs = 1;
            break;
        case O_ROPE_SCALE:
            rope_scale = strtof(optarg, &end);
            if (*end || end == optarg || !(rope_scale >= 1.0f) || rope_scale > 1e6f) {
                fprintf(stderr, "prefixd synth: --rope-scale '%s': expected a number >= 1\n",
                        optarg);
                return 2;
            }
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
    char msg[512];
    if (type_name && model_type_parse(type_name, &type) != 0) {
        fprintf(stderr,
                "prefixd synth: --type '%s': expected f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, "
                "q5_1, q4_k, q5_k, q6_k or q4_k_m\n",
                type_name);
        return 2;
    }
    int gguf = strcmp(format, "gguf") == 0;
    if (!gguf && strcmp(format, "llama2c") != 0) {
        fprintf(stderr, "prefixd synth: --format '%s': expected llama2c or gguf\n", format);
        return 2;
    }
    if (strcmp(arch, "llama") != 0 && strcmp(arch, "qwen2") != 0) {
        fprintf(stderr, "prefixd synth: --arch '%s': expected llama or qwen2\n", arch);
        return 2;
    }
    if (from) {
        if (!out || shape || optind < argc) {
            fprintf(stderr, "prefixd synth: --from takes -o and --type, not --shape\n");
            return 2;
        }
        model *m;
        if (model_load(from, &m, msg, sizeof msg) != 0) {
            fprintf(stderr, "prefixd synth: %s\n", msg);
            return 1;
        }
        int rc = model_convert_gguf(m, out, type, msg, sizeof msg);
        model_free(m);
        if (rc != 0) {
            fprintf(stderr, "prefixd synth: %s\n", msg);
            return 1;
        }
        printf("wrote %s: the weights of %s as %s\n", out, from, type_name ? type_name : "f32");
        return 0;
    }
    if (!shape || !out || optind < argc) {
        fprintf(stderr, "prefixd synth: --shape and -o are required\n");
        usage(stderr);
        return 2;
    }
    if (!gguf && (type_name || strcmp(arch, "llama") != 0 || rope_freqs || rope_scale != 1.0f)) {
        fprintf(stderr, "prefixd synth: --type, --arch and --rope-* need --format gguf\n");
        return 2;
    }
    model_config c;
    if (model_shape_parse(shape, &c, msg, sizeof msg) != 0) {
        fprintf(stderr, "prefixd synth: %s\n", msg);
        return 2;
    }
    c.rope_factor = rope_scale;
    if ((gguf ? model_synth_write_gguf_rope(out, &c, arch, type, seed, rope_freqs, msg, sizeof msg)
              : model_synth_write(out, &c, seed, msg, sizeof msg)) != 0) {
        fprintf(stderr, "prefixd synth: %s\n", msg);
        return 1;
    }
    printf("wrote %s: %s, dim %d, hidden %d, %d layers, %d heads (%d kv), vocab %d, context %d; "
           "%.2fM params\n",
           out, gguf ? type_name ? type_name : "f32" : "llama2.c f32", c.dim, c.hidden_dim,
           c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size, c.seq_len,
           (double)model_param_count(&c) / 1e6);
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
