/* run.c — `prefixd run`: one generation in-process, no socket.
 *
 * It goes through the same engine as the daemon (tokenize, cache lookup, chunked prefill,
 * decode), so what it prints is what a client of the daemon would receive: the prompt's pieces
 * and then the continuation, as llama2.c's run prints them (raw control bytes are not printed),
 * then a newline. Statistics go to stderr.
 */
#include "cmd.h"
#include "base.h"
#include "engine.h"
#include "proto.h"

#include <ctype.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f,
            "usage: prefixd run --model PATH [options]\n"
            "\n"
            "Generates one continuation in-process and prints the prompt and the continuation.\n"
            "\n"
            "  --model PATH        llama2.c checkpoint or GGUF file (required)\n"
            "  --tokenizer PATH    tokenizer (default: MODEL.tok, else tokenizer.bin beside it)\n"
            "  --prompt TEXT       prompt (default: empty, the story starts from BOS)\n"
            "  -n N                new tokens at most (default 256)\n"
            "  --ctx N             context length, overriding the model file's\n"
            "  --temp T            temperature, 0 = greedy (default 0.8)\n"
            "  --top-p P           nucleus sampling threshold (default 0.95)\n"
            "  --seed S            random seed (default: a random one, so each run differs)\n"
            "  --threads N         compute threads (default: all cores)\n"
            "  --block-tokens N    tokens per K/V block (default 16)\n"
            "  --kv-type T         K/V storage: f32, f16 or q8_0 (default " ENGINE_DEFAULT_KV_NAME
            ")\n"
            "  --cache-mem SIZE    K/V memory (default: 8 contexts, 64M to RAM/4)\n"
            "  --no-cache          do not share blocks (one request: no difference)\n");
}

typedef struct run_ctx {
    int32_t prev;
    int failed;
    engine_done done;
} run_ctx;

/* Prints a piece as llama2.c does: a lone byte that is neither printable nor white space is a
 * raw control byte of byte fallback and is skipped. */
static void print_piece(const char *p, size_t len)
{
    if (len == 0)
        return;
    if (len == 1 && !(isprint((unsigned char)p[0]) || isspace((unsigned char)p[0])))
        return;
    fwrite(p, 1, len, stdout);
}

static void run_emit_cb(void *arg, const engine_event *ev)
{
    run_ctx *ctx = arg;
    switch (ev->type) {
    case ENGINE_EV_TOKEN:
        print_piece(ev->piece, ev->piece_len);
        fflush(stdout);
        break;
    case ENGINE_EV_DONE:
        ctx->done = ev->done;
        break;
    case ENGINE_EV_ERROR:
        fprintf(stderr, "prefixd: %s\n", ev->msg);
        ctx->failed = 1;
        break;
    }
}

int srv_cmd_run(int argc, char **argv)
{
    const char *model_path = NULL, *tok_path = NULL, *prompt = "";
    long n_new = 256, threads = 0, block = 16, ctx_len = 0;
    int kv_type = ENGINE_DEFAULT_KV_TYPE;
    float temp = PROTO_DEFAULT_TEMP, top_p = PROTO_DEFAULT_TOP_P;
    uint64_t seed = proto_random_seed(), mem = 0;
    int no_cache = 0;
    enum {
        O_MODEL = 256,
        O_TOK,
        O_PROMPT,
        O_TEMP,
        O_TOPP,
        O_SEED,
        O_THREADS,
        O_BLOCK,
        O_KV_TYPE,
        O_MEM,
        O_NOCACHE,
        O_CTX,
        O_HELP
    };
    static const struct option opts[] = {{"model", required_argument, 0, O_MODEL},
                                         {"tokenizer", required_argument, 0, O_TOK},
                                         {"prompt", required_argument, 0, O_PROMPT},
                                         {"temp", required_argument, 0, O_TEMP},
                                         {"top-p", required_argument, 0, O_TOPP},
                                         {"seed", required_argument, 0, O_SEED},
                                         {"threads", required_argument, 0, O_THREADS},
                                         {"block-tokens", required_argument, 0, O_BLOCK},
                                         {"kv-type", required_argument, 0, O_KV_TYPE},
                                         {"cache-mem", required_argument, 0, O_MEM},
                                         {"no-cache", no_argument, 0, O_NOCACHE},
                                         {"ctx", required_argument, 0, O_CTX},
                                         {"help", no_argument, 0, O_HELP},
                                         {0, 0, 0, 0}};
    optind = 1;
    int ch;
    while ((ch = getopt_long(argc, argv, "n:h", opts, NULL)) != -1) {
        char *end;
        switch (ch) {
        case O_MODEL:
            model_path = optarg;
            break;
        case O_TOK:
            tok_path = optarg;
            break;
        case O_PROMPT:
            prompt = optarg;
            break;
        case 'n':
            if (srv_parse_int(optarg, 0, 1 << 30, &n_new) != 0) {
                fprintf(stderr, "prefixd run: -n '%s': expected a whole number >= 0\n", optarg);
                return 2;
            }
            break;
        case O_TEMP:
            temp = strtof(optarg, &end);
            if (*end || end == optarg || !(temp >= 0.0f)) {
                fprintf(stderr, "prefixd run: --temp '%s': expected a number >= 0\n", optarg);
                return 2;
            }
            break;
        case O_TOPP:
            top_p = strtof(optarg, &end);
            if (*end || end == optarg || !(top_p >= 0.0f && top_p <= 1.0f)) {
                fprintf(stderr, "prefixd run: --top-p '%s': expected a number in [0, 1]\n", optarg);
                return 2;
            }
            break;
        case O_SEED:
            seed = strtoull(optarg, &end, 10);
            if (*end || end == optarg) {
                fprintf(stderr, "prefixd run: --seed '%s': expected a whole number\n", optarg);
                return 2;
            }
            break;
        case O_THREADS:
            if (srv_parse_int(optarg, 1, 256, &threads) != 0) {
                fprintf(stderr, "prefixd run: --threads '%s': expected 1..256\n", optarg);
                return 2;
            }
            break;
        case O_KV_TYPE:
            if (model_kv_type_parse(optarg, &kv_type) != 0) {
                fprintf(stderr, "prefixd run: --kv-type '%s': expected f32, f16 or q8_0\n", optarg);
                return 2;
            }
            break;
        case O_BLOCK:
            if (srv_parse_int(optarg, 1, 4096, &block) != 0) {
                fprintf(stderr, "prefixd run: --block-tokens '%s': expected 1..4096\n", optarg);
                return 2;
            }
            break;
        case O_MEM:
            if (srv_parse_size(optarg, &mem) != 0) {
                fprintf(stderr, "prefixd run: --cache-mem '%s': expected a size like 512M\n",
                        optarg);
                return 2;
            }
            break;
        case O_NOCACHE:
            no_cache = 1;
            break;
        case O_CTX:
            if (srv_parse_int(optarg, 1, 1048576, &ctx_len) != 0) {
                fprintf(stderr, "prefixd run: --ctx '%s': expected 1..1048576\n", optarg);
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
    if (optind < argc) {
        fprintf(stderr, "prefixd run: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (!model_path) {
        fprintf(stderr, "prefixd run: --model PATH is required\n");
        usage(stderr);
        return 2;
    }
    char msg[1024];
    model *m;
    model_tokenizer *tok;
    if (srv_load(model_path, tok_path, &m, &tok) != 0)
        return 2;
    if (ctx_len)
        model_set_context(m, (int)ctx_len); /* in range: parsed above */
    const model_config *c = model_get_config(m);
    fprintf(stderr,
            "model: dim %d, hidden %d, %d layers, %d heads (%d kv), vocab %d, context %d; "
            "%.2fM params, %.1f MB weights, %llu K/V bytes per token (%s)\n",
            c->dim, c->hidden_dim, c->n_layers, c->n_heads, c->n_kv_heads, c->vocab_size,
            c->seq_len, (double)model_param_count(c) / 1e6, (double)model_weight_bytes(c) / 1e6,
            (unsigned long long)model_kv_bytes_per_token(c, kv_type), model_type_name(kv_type));

    size_t plen = strlen(prompt), n_ids = 0;
    size_t cap = model_encode_cap(plen);
    int32_t *ids = malloc(cap * sizeof(int32_t));
    if (!ids || model_encode(tok, prompt, plen, 1, ids, cap, &n_ids) != 0) {
        fprintf(stderr, "prefixd: cannot tokenize the prompt\n");
        free(ids);
        model_tokenizer_free(tok);
        model_free(m);
        return 1;
    }
    if (n_ids > (size_t)c->seq_len) {
        fprintf(stderr, "prefixd: prompt is %zu tokens, the model's context is %d\n", n_ids,
                c->seq_len);
        free(ids);
        model_tokenizer_free(tok);
        model_free(m);
        return 2;
    }
    if (n_ids + (size_t)n_new > (size_t)c->seq_len + 1)
        fprintf(stderr,
                "prefixd: warning: prompt (%zu tokens) + %ld new tokens passes the model's "
                "context of %d: generation stops there\n",
                n_ids, n_new, c->seq_len);

    run_ctx ctx = {0};
    engine_opts eo = {0};
    eo.block_tokens = (int)block;
    eo.kv_type = kv_type;
    eo.cache_mem = (size_t)mem;
    eo.no_cache = no_cache;
    eo.max_batch = 1;
    eo.max_queue = 1;
    eo.threads = (int)threads;
    eo.emit = run_emit_cb;
    eo.emit_arg = &ctx;
    engine *e = NULL;
    if (engine_new(m, tok, &eo, &e, msg, sizeof msg) != 0) {
        fprintf(stderr, "prefixd: %s\n", msg);
        free(ids);
        model_tokenizer_free(tok);
        model_free(m);
        return 1;
    }
    /* The prompt's pieces first, as the reference prints them (BOS prints nothing). */
    for (size_t i = 0; i < n_ids; i++) {
        size_t len;
        const char *p = model_decode_piece(tok, i ? ids[i - 1] : -1, ids[i], &len);
        print_piece(p, len);
    }
    fflush(stdout);
    engine_request q = {0};
    q.handle = 1;
    q.kind = ENGINE_REQ_GENERATE;
    q.tokens = ids;
    q.n_tokens = n_ids;
    q.max_new = (uint32_t)n_new;
    q.temp = temp;
    q.top_p = top_p;
    q.seed = seed;
    q.t_received_ms = base_now_ms();
    if (engine_submit(e, &q) == 0)
        while (engine_live(e) > 0 && engine_step(e) > 0)
            ;
    printf("\n");
    fflush(stdout);
    if (!ctx.failed)
        fprintf(stderr,
                "prompt %u tokens (%u cached), %u new tokens, TTFT %.1f ms, prefill %.1f ms, "
                "decode %.1f tokens/s, finish: %s\n",
                ctx.done.prompt_tokens, ctx.done.cached_tokens, ctx.done.new_tokens,
                ctx.done.ttft_ms, ctx.done.prefill_ms, ctx.done.decode_tokens_per_s,
                ctx.done.finish == ENGINE_FINISH_STOP     ? "stop"
                : ctx.done.finish == ENGINE_FINISH_LENGTH ? "length"
                                                          : "cancelled");
    engine_free(e);
    free(ids);
    model_tokenizer_free(tok);
    model_free(m);
    return ctx.failed ? 1 : 0;
}
