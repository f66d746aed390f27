/* prefixctl — the command-line client: generate, chat, warm, stats, tokenize, detokenize, and
 * bench (bench.c). */
#include "bench.h"
#include "prefixd_client.h"

#include <cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: prefixctl [--socket PATH] <command> [options]\n"
        "\n"
        "  generate (--prompt TEXT | --prompt-file F) [-n N] [--temp T] [--top-p P]\n"
        "           [--seed S] [--namespace NS] [--json]\n"
        "                 stream a continuation to stdout; --json prints one object at the\n"
        "                 end (text, tokens, prompt_tokens, cached_tokens, ttft_ms, ...)\n"
        "  chat [-n N] [--temp T] [--namespace NS] [--system TEXT]\n"
        "                 interactive: one line per turn; the conversation is resent as\n"
        "                 token ids each turn, so its whole history stays cached\n"
        "  warm (--prompt TEXT | --prompt-file F) [--pin] [--namespace NS]\n"
        "                 prefill a prompt into the cache without generating\n"
        "  stats [--json | --prometheus]\n"
        "  tokenize TEXT | detokenize ID...\n"
        "  bench [--workload chat,fewshot,unique,sweep] [--clients C] [--runs N] ...\n"
        "                 client-side TTFT benchmark; CSV and JSON out (bench --help)\n"
        "\n"
        "The socket is --socket, else $PREFIXD_SOCKET, else $XDG_RUNTIME_DIR/prefixd.sock,\n"
        "else /tmp/prefixd-$UID.sock. Exit codes: 0 ok, 1 daemon or connection error, 2 usage.\n");
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "prefixctl: %s: %s\n", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    char *b = malloc(cap);
    size_t r;
    while (b && (r = fread(b + n, 1, cap - n, f)) > 0) {
        n += r;
        if (n == cap) {
            cap *= 2;
            char *nb = realloc(b, cap);
            if (!nb) {
                free(b);
                b = NULL;
            }
            b = nb;
        }
    }
    fclose(f);
    *len = n;
    return b;
}

static const char *finish_name(int f)
{
    return f == PROTO_FINISH_STOP ? "stop" : f == PROTO_FINISH_LENGTH ? "length" : "cancelled";
}

typedef struct gen_ctx {
    int print;
    char *text;
    size_t len, cap;
    int32_t *ids;
    size_t n, idcap;
} gen_ctx;

static int gen_token_cb(void *arg, int32_t id, const char *piece, size_t len)
{
    gen_ctx *g = arg;
    if (g->print) {
        fwrite(piece, 1, len, stdout);
        fflush(stdout);
    }
    if (g->len + len + 1 > g->cap) {
        g->cap = (g->len + len + 1) * 2;
        g->text = realloc(g->text, g->cap);
    }
    if (g->n + 1 > g->idcap) {
        g->idcap = g->idcap ? g->idcap * 2 : 256;
        g->ids = realloc(g->ids, g->idcap * sizeof(int32_t));
    }
    if (!g->text || !g->ids) {
        fprintf(stderr, "prefixctl: out of memory\n");
        exit(1);
    }
    memcpy(g->text + g->len, piece, len);
    g->len += len;
    g->text[g->len] = 0;
    g->ids[g->n++] = id;
    return 0;
}

typedef struct gen_args {
    const char *prompt, *prompt_file, *ns, *system;
    long n;
    float temp, top_p;
    uint64_t seed;
    int json, pin, prometheus;
} gen_args;

/* Parses the options shared by generate, chat, warm and stats. Returns 0 or 2. */
static int parse(int argc, char **argv, gen_args *a)
{
    enum { O_PROMPT = 256, O_FILE, O_TEMP, O_TOPP, O_SEED, O_NS, O_JSON, O_PIN, O_PROM, O_SYS };
    static const struct option opts[] = {{"prompt", required_argument, 0, O_PROMPT},
                                         {"prompt-file", required_argument, 0, O_FILE},
                                         {"temp", required_argument, 0, O_TEMP},
                                         {"top-p", required_argument, 0, O_TOPP},
                                         {"seed", required_argument, 0, O_SEED},
                                         {"namespace", required_argument, 0, O_NS},
                                         {"json", no_argument, 0, O_JSON},
                                         {"pin", no_argument, 0, O_PIN},
                                         {"prometheus", no_argument, 0, O_PROM},
                                         {"system", required_argument, 0, O_SYS},
                                         {0, 0, 0, 0}};
    optind = 1;
    int ch;
    while ((ch = getopt_long(argc, argv, "n:", opts, NULL)) != -1) {
        char *end;
        switch (ch) {
        case O_PROMPT:
            a->prompt = optarg;
            break;
        case O_FILE:
            a->prompt_file = optarg;
            break;
        case 'n':
            a->n = strtol(optarg, &end, 10);
            if (*end || end == optarg || a->n < 0 || a->n > 1 << 30) {
                fprintf(stderr, "prefixctl: -n '%s': expected a whole number >= 0\n", optarg);
                return 2;
            }
            break;
        case O_TEMP:
            a->temp = strtof(optarg, &end);
            if (*end || end == optarg || !(a->temp >= 0)) {
                fprintf(stderr, "prefixctl: --temp '%s': expected a number >= 0\n", optarg);
                return 2;
            }
            break;
        case O_TOPP:
            a->top_p = strtof(optarg, &end);
            if (*end || end == optarg || !(a->top_p >= 0 && a->top_p <= 1)) {
                fprintf(stderr, "prefixctl: --top-p '%s': expected 0..1\n", optarg);
                return 2;
            }
            break;
        case O_SEED:
            a->seed = strtoull(optarg, &end, 10);
            if (*end || end == optarg) {
                fprintf(stderr, "prefixctl: --seed '%s': expected a whole number\n", optarg);
                return 2;
            }
            break;
        case O_NS:
            a->ns = optarg;
            break;
        case O_JSON:
            a->json = 1;
            break;
        case O_PIN:
            a->pin = 1;
            break;
        case O_PROM:
            a->prometheus = 1;
            break;
        case O_SYS:
            a->system = optarg;
            break;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "prefixctl: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    return 0;
}

static int cmd_generate(pfx_conn *c, gen_args *a, int warm)
{
    size_t len = 0;
    char *file = NULL;
    const char *text = a->prompt;
    if (!!a->prompt == !!a->prompt_file) {
        fprintf(stderr, "prefixctl: give exactly one of --prompt and --prompt-file\n");
        return 2;
    }
    if (a->prompt_file) {
        file = read_file(a->prompt_file, &len);
        if (!file)
            return 2;
        text = file;
    } else {
        len = strlen(text);
    }
    pfx_gen g = {0};
    g.text = text;
    g.text_len = len;
    g.max_new = warm ? 0 : (uint32_t)a->n;
    g.temp = a->temp;
    g.top_p = a->top_p;
    g.seed = a->seed;
    g.ns = a->ns;
    g.warm = warm;
    g.pin = a->pin;
    gen_ctx ctx = {.print = !a->json && !warm};
    pfx_result r;
    int rc = pfx_generate(c, &g, gen_token_cb, &ctx, &r);
    free(file);
    if (rc != 0) {
        fprintf(stderr, "prefixctl: %s\n", pfx_errmsg(c));
        free(ctx.text);
        free(ctx.ids);
        return 1;
    }
    if (warm) {
        printf("warmed: %u prompt tokens, %u already cached%s, %.1f ms\n", r.done.prompt_tokens,
               r.done.cached_tokens, a->pin ? ", pinned" : "", r.done.total_ms);
    } else if (a->json) {
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "text", ctx.text ? ctx.text : "");
        cJSON *ids = cJSON_AddArrayToObject(j, "tokens");
        for (size_t i = 0; i < ctx.n; i++)
            cJSON_AddItemToArray(ids, cJSON_CreateNumber(ctx.ids[i]));
        cJSON_AddNumberToObject(j, "prompt_tokens", r.done.prompt_tokens);
        cJSON_AddNumberToObject(j, "cached_tokens", r.done.cached_tokens);
        cJSON_AddNumberToObject(j, "cached_tokens_disk", r.done.cached_tokens_disk);
        cJSON_AddNumberToObject(j, "new_tokens", r.done.new_tokens);
        cJSON_AddNumberToObject(j, "ttft_ms", r.ttft_ms);
        cJSON_AddNumberToObject(j, "server_ttft_ms", r.done.ttft_ms);
        cJSON_AddNumberToObject(j, "prefill_ms", r.done.prefill_ms);
        cJSON_AddNumberToObject(j, "decode_tokens_per_s", r.done.decode_tokens_per_s);
        cJSON_AddNumberToObject(j, "total_ms", r.done.total_ms);
        cJSON_AddStringToObject(j, "finish_reason", finish_name(r.done.finish));
        char *s = cJSON_PrintUnformatted(j);
        printf("%s\n", s);
        free(s);
        cJSON_Delete(j);
    } else {
        printf("\n");
    }
    free(ctx.text);
    free(ctx.ids);
    return 0;
}

static int cmd_stats(pfx_conn *c, gen_args *a)
{
    char *json;
    if (pfx_stats(c, &json) != 0) {
        fprintf(stderr, "prefixctl: %s\n", pfx_errmsg(c));
        return 1;
    }
    if (a->json) {
        printf("%s\n", json);
        free(json);
        return 0;
    }
    cJSON *j = cJSON_Parse(json);
    free(json);
    if (!j) {
        fprintf(stderr, "prefixctl: the daemon's stats are not JSON\n");
        return 1;
    }
    for (cJSON *it = j->child; it; it = it->next) {
        if (!cJSON_IsNumber(it))
            continue;
        if (a->prometheus)
            printf("# TYPE prefixd_%s %s\nprefixd_%s %.17g\n", it->string,
                   strstr(it->string, "running") || strstr(it->string, "waiting") ||
                           strstr(it->string, "blocks_") || strstr(it->string, "bytes_") ||
                           !strcmp(it->string, "block_tokens") ||
                           !strcmp(it->string, "disk_blocks") || !strcmp(it->string, "disk_bytes")
                       ? "gauge"
                       : "counter",
                   it->string, it->valuedouble);
        else
            printf("%-24s %.17g\n", it->string, it->valuedouble);
    }
    cJSON_Delete(j);
    return 0;
}

/* Appends ids to a growing conversation. */
static int conv_add(int32_t **conv, size_t *n, size_t *cap, const int32_t *ids, size_t k)
{
    if (*n + k > *cap) {
        *cap = (*n + k) * 2;
        int32_t *nc = realloc(*conv, *cap * sizeof(int32_t));
        if (!nc)
            return -1;
        *conv = nc;
    }
    memcpy(*conv + *n, ids, k * sizeof(int32_t));
    *n += k;
    return 0;
}

/* Tokenizes text as a continuation: the daemon's ids start with BOS (dropped here) and, for
 * non-empty text, the dummy-prefix space, which the continuation of a conversation also wants
 * as a word separator. */
static int tokenize_tail(pfx_conn *c, const char *text, int32_t **ids, size_t *n)
{
    int32_t *all;
    size_t k;
    if (pfx_tokenize(c, text, strlen(text), &all, &k) != 0)
        return -1;
    *ids = all;
    if (k > 0 && all[0] == 1) {
        memmove(all, all + 1, (k - 1) * sizeof(int32_t));
        k--;
    }
    *n = k;
    return 0;
}

static int cmd_chat(pfx_conn *c, gen_args *a)
{
    int32_t *conv = NULL;
    size_t n = 0, cap = 0;
    int32_t bos = 1;
    if (conv_add(&conv, &n, &cap, &bos, 1) != 0)
        return 1;
    if (a->system) {
        int32_t *ids;
        size_t k;
        if (tokenize_tail(c, a->system, &ids, &k) != 0 || conv_add(&conv, &n, &cap, ids, k)) {
            fprintf(stderr, "prefixctl: %s\n", pfx_errmsg(c));
            return 1;
        }
        free(ids);
    }
    char line[8192];
    int tty = isatty(0);
    for (int turn = 1;; turn++) {
        if (tty) {
            fprintf(stderr, "> ");
            fflush(stderr);
        }
        if (!fgets(line, sizeof line, stdin))
            break;
        line[strcspn(line, "\n")] = 0;
        int32_t *ids;
        size_t k;
        if (tokenize_tail(c, line, &ids, &k) != 0) {
            fprintf(stderr, "prefixctl: %s\n", pfx_errmsg(c));
            free(conv);
            return 1;
        }
        int rc = conv_add(&conv, &n, &cap, ids, k);
        free(ids);
        if (rc != 0)
            return 1;
        pfx_gen g = {0};
        g.ids = conv;
        g.n_ids = n;
        g.max_new = (uint32_t)a->n;
        g.temp = a->temp;
        g.top_p = a->top_p;
        g.seed = a->seed + (uint64_t)turn;
        g.ns = a->ns;
        gen_ctx ctx = {.print = 1};
        pfx_result r;
        if (pfx_generate(c, &g, gen_token_cb, &ctx, &r) != 0) {
            fprintf(stderr, "prefixctl: %s\n", pfx_errmsg(c));
            free(conv);
            return 1;
        }
        printf("\n");
        fflush(stdout);
        fprintf(stderr, "[turn %d: prompt %u tokens, cached %u, TTFT %.1f ms]\n", turn,
                r.done.prompt_tokens, r.done.cached_tokens, r.ttft_ms);
        /* The reply's ids, exactly as received, join the conversation. */
        if (conv_add(&conv, &n, &cap, ctx.ids, ctx.n) != 0)
            return 1;
        free(ctx.text);
        free(ctx.ids);
    }
    free(conv);
    return 0;
}

int main(int argc, char **argv)
{
    const char *sock = NULL;
    int i = 1;
    for (; i < argc; i++) {
        if (!strcmp(argv[i], "--socket") && i + 1 < argc)
            sock = argv[++i];
        else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return 0;
        } else
            break;
    }
    if (i >= argc) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[i];
    int sub_argc = argc - i;
    char **sub_argv = argv + i;
    if (!strcmp(cmd, "bench"))
        return bench_main(sock, sub_argc, sub_argv);
    static const char *known[] = {"generate", "chat", "warm", "stats", "tokenize", "detokenize"};
    int ok = 0;
    for (size_t k = 0; k < sizeof known / sizeof known[0]; k++)
        ok |= !strcmp(cmd, known[k]);
    if (!ok) {
        fprintf(stderr, "prefixctl: unknown command '%s'\n", cmd);
        usage(stderr);
        return 2;
    }
    gen_args a = {.n = 256};
    if (strcmp(cmd, "tokenize") != 0 && strcmp(cmd, "detokenize") != 0 &&
        parse(sub_argc, sub_argv, &a) != 0)
        return 2;
    char err[1024];
    pfx_conn *c;
    if (pfx_connect(sock, &c, err, sizeof err) != 0) {
        fprintf(stderr, "prefixctl: %s\n", err);
        return 1;
    }
    int rc = 0;
    if (!strcmp(cmd, "generate"))
        rc = cmd_generate(c, &a, 0);
    else if (!strcmp(cmd, "warm"))
        rc = cmd_generate(c, &a, 1);
    else if (!strcmp(cmd, "stats"))
        rc = cmd_stats(c, &a);
    else if (!strcmp(cmd, "chat"))
        rc = cmd_chat(c, &a);
    else if (!strcmp(cmd, "tokenize")) {
        if (sub_argc != 2) {
            fprintf(stderr, "usage: prefixctl tokenize TEXT\n");
            rc = 2;
        } else {
            int32_t *ids;
            size_t n;
            if (pfx_tokenize(c, sub_argv[1], strlen(sub_argv[1]), &ids, &n) != 0) {
                fprintf(stderr, "prefixctl: %s\n", pfx_errmsg(c));
                rc = 1;
            } else {
                for (size_t k = 0; k < n; k++)
                    printf("%s%d", k ? " " : "", ids[k]);
                printf("\n");
                free(ids);
            }
        }
    } else {
        size_t n = (size_t)(sub_argc - 1);
        int32_t *ids = malloc((n + 1) * sizeof(int32_t));
        for (size_t k = 0; ids && k < n; k++) {
            char *end;
            long v = strtol(sub_argv[k + 1], &end, 10);
            if (*end || end == sub_argv[k + 1]) {
                fprintf(stderr, "prefixctl: detokenize: '%s' is not an id\n", sub_argv[k + 1]);
                rc = 2;
                break;
            }
            ids[k] = (int32_t)v;
        }
        char *text;
        size_t len;
        if (rc == 0 && ids) {
            if (pfx_detokenize(c, ids, n, &text, &len) != 0) {
                fprintf(stderr, "prefixctl: %s\n", pfx_errmsg(c));
                rc = 1;
            } else {
                fwrite(text, 1, len, stdout);
                printf("\n");
                free(text);
            }
        }
        free(ids);
    }
    pfx_close(c);
    return rc;
}
