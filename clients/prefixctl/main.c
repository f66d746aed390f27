/* prefixctl — the command-line client: generate, warm, stats, tokenize, detokenize, chat
 * (chat.c) and bench (bench.c).
 *
 * Every command takes the global options (--socket PATH) before or after its name and --help;
 * its arguments are checked before the daemon is reached, so a usage error exits 2 without a
 * connection. Exit codes: 0 ok, 1 daemon or connection error, 2 usage (including input the daemon
 * refuses as invalid: a bad namespace, a prompt longer than the context, an unknown token id).
 */
#include "bench.h"
#include "chat.h"
#include "prefixd_client.h"
#include "prefixd_version.h"

#include <cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The options each command takes (besides --socket and --help), one bit per option. */
enum {
    A_PROMPT = 1 << 0, /* --prompt and --prompt-file */
    A_N = 1 << 1,
    A_SAMPLE = 1 << 2, /* --temp, --top-p, --seed */
    A_NS = 1 << 3,
    A_JSON = 1 << 4,
    A_PIN = 1 << 5,
    A_PROM = 1 << 6,
    A_SYS = 1 << 7,
    A_CTXPOL = 1 << 8, /* --context-policy */
    A_MSG = 1 << 9,    /* --message (chat, one-shot) */
};

#define MAX_MESSAGES 256 /* --message options at most */

typedef struct command {
    const char *name;
    int opts;
    const char *synopsis; /* after "prefixctl NAME " */
    const char *help;     /* what it does and its options */
} command;

#define SAMPLING_HELP                                                                              \
    "  --temp T         temperature, 0 = greedy (default 0.8)\n"                                   \
    "  --top-p P        nucleus sampling threshold, 0 or 1 = off (default 0.95)\n"                 \
    "  --seed S         random seed (default: a random one, so each sampled run differs;\n"        \
    "                   greedy runs need none)\n"

static const command commands[] = {
    {"generate", A_PROMPT | A_N | A_SAMPLE | A_NS | A_JSON,
     "(--prompt TEXT | --prompt-file F) [-n N]\n"
     "       [--temp T] [--top-p P] [--seed S] [--namespace NS] [--json]",
     "Streams a continuation of the prompt to stdout.\n"
     "\n"
     "  --prompt TEXT    the prompt\n"
     "  --prompt-file F  the prompt, read from a file\n"
     "  -n N             new tokens at most (default 256)\n" SAMPLING_HELP
     "  --namespace NS   cache namespace: up to 64 bytes of A-Z a-z 0-9 . _ -\n"
     "  --json           print one JSON object at the end instead (text, tokens,\n"
     "                   prompt_tokens, cached_tokens, cached_tokens_disk, ttft_ms, ...)\n"},
    {"chat", A_N | A_SAMPLE | A_NS | A_SYS | A_CTXPOL | A_MSG | A_JSON,
     "[-n N] [--temp T] [--top-p P] [--seed S] [--namespace NS]\n"
     "       [--system TEXT] [--context-policy drop|stop] [--message [ROLE:]TEXT ... [--json]]",
     "Interactive: one line of stdin per turn (with line editing and history at a\n"
     "terminal). When the daemon's model has a chat template, each turn sends the messages\n"
     "and the daemon renders them with it (CHAT); otherwise the conversation is resent as\n"
     "token ids, a plain continuation. Either way its whole history stays cached. Ctrl-C\n"
     "stops a reply; /help lists the commands (/save, /load, /stats, /system, /clear, /exit).\n"
     "With --message, one turn and no stdin: the reply to the messages given, streamed (or\n"
     "one JSON object with --json, as generate prints it); it needs a model with a template.\n"
     "\n"
     "  --message [ROLE:]TEXT\n"
     "                   a message (ROLE system, user or assistant; user if no ROLE:),\n"
     "                   repeated for a conversation, in order\n"
     "  -n N             new tokens per reply at most (default 256)\n" SAMPLING_HELP
     "  --namespace NS   cache namespace\n"
     "  --system TEXT    text that opens the conversation\n"
     "  --context-policy drop|stop\n"
     "                   when the next turn would not fit the context: drop the oldest\n"
     "                   turns after the system prompt (default), or stop the chat\n"},
    {"warm", A_PROMPT | A_NS | A_PIN, "(--prompt TEXT | --prompt-file F) [--pin] [--namespace NS]",
     "Prefills a prompt into the cache without generating.\n"
     "\n"
     "  --pin            keep its blocks in RAM (within the daemon's --pin-max)\n"
     "  --namespace NS   cache namespace\n"},
    {"stats", A_JSON | A_PROM, "[--json | --prometheus]",
     "Prints the daemon's counters: one per line, as the daemon's JSON (--json), or in\n"
     "Prometheus' text format (--prometheus).\n"},
    {"tokenize", 0, "TEXT",
     "Prints the token ids of TEXT (BOS first). A text that starts with '-' goes after '--':\n"
     "prefixctl tokenize -- '-x'.\n"},
    {"detokenize", 0, "ID...", "Prints the text of the token ids (BOS and EOS print nothing).\n"},
    {"bench", 0, "[options]", NULL}, /* bench.c prints its own */
};

#define N_COMMANDS (sizeof commands / sizeof commands[0])

static void usage(FILE *f)
{
    fprintf(f, "usage: prefixctl [--socket PATH] <command> [options]\n"
               "       prefixctl --version\n"
               "\n");
    for (size_t i = 0; i < N_COMMANDS; i++)
        fprintf(f, "  %s %s\n", commands[i].name, commands[i].synopsis);
    fprintf(f, "\n"
               "'prefixctl <command> --help' explains a command. --socket PATH may come before or\n"
               "after the command; the socket is --socket, else $PREFIXD_SOCKET, else\n"
               "$XDG_RUNTIME_DIR/prefixd.sock, else /tmp/prefixd-$UID/prefixd.sock. prefixctl\n"
               "talks only to a daemon of its own user or root. Exit codes: 0 ok, 1 daemon or\n"
               "connection error, 2 usage or input the daemon refuses as invalid.\n");
}

static void command_usage(const command *cmd, FILE *f)
{
    fprintf(f, "usage: prefixctl %s [--socket PATH] %s\n\n%s", cmd->name, cmd->synopsis, cmd->help);
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
    const command *cmd;
    const char *socket;
    const char *prompt, *prompt_file, *ns, *system;
    char *file_text; /* --prompt-file's contents (malloc'd), read before connecting */
    size_t file_len;
    uint32_t n;
    float temp, top_p;
    uint64_t seed;
    int seed_given, json, pin, prometheus, help;
    int context_stop;                   /* --context-policy stop */
    const char *messages[MAX_MESSAGES]; /* --message, in order */
    int n_messages;
    char **rest; /* positional arguments (tokenize's text, detokenize's ids) */
    int n_rest;
} gen_args;

/* Parses an unsigned whole number in [0, max]; refuses signs, blanks and overflow. */
static int parse_u64(const char *s, uint64_t max, uint64_t *out)
{
    if (*s < '0' || *s > '9')
        return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end || errno == ERANGE || v > max)
        return -1;
    *out = v;
    return 0;
}

static int bad_value(const gen_args *a, const char *opt, const char *val, const char *want)
{
    fprintf(stderr, "prefixctl %s: %s '%s': expected %s\n", a->cmd->name, opt, val, want);
    return 2;
}

static int set_option(gen_args *a, int ch, const char *arg)
{
    char *end;
    uint64_t v;
    switch (ch) {
    case 'p':
        a->prompt = arg;
        return 0;
    case 'f':
        a->prompt_file = arg;
        return 0;
    case 'n':
        if (parse_u64(arg, UINT32_MAX, &v) != 0)
            return bad_value(a, "-n", arg, "a whole number from 0 to 4294967295");
        a->n = (uint32_t)v;
        return 0;
    case 't':
        a->temp = strtof(arg, &end);
        if (*end || end == arg || !(a->temp >= 0 && a->temp <= 1e6f))
            return bad_value(a, "--temp", arg, "a number >= 0");
        return 0;
    case 'P':
        a->top_p = strtof(arg, &end);
        if (*end || end == arg || !(a->top_p >= 0 && a->top_p <= 1))
            return bad_value(a, "--top-p", arg, "a number from 0 to 1");
        return 0;
    case 's':
        if (parse_u64(arg, UINT64_MAX, &a->seed) != 0)
            return bad_value(a, "--seed", arg, "a whole number from 0 to 2^64-1");
        a->seed_given = 1;
        return 0;
    case 'N':
        if (!proto_namespace_valid((proto_str){arg, (uint32_t)strnlen(arg, 1000)}))
            return bad_value(a, "--namespace", arg, "up to 64 bytes of A-Z a-z 0-9 . _ -");
        a->ns = arg;
        return 0;
    case 'j':
        a->json = 1;
        return 0;
    case 'i':
        a->pin = 1;
        return 0;
    case 'm':
        a->prometheus = 1;
        return 0;
    case 'y':
        a->system = arg;
        return 0;
    case 'C':
        if (strcmp(arg, "drop") != 0 && strcmp(arg, "stop") != 0)
            return bad_value(a, "--context-policy", arg, "drop or stop");
        a->context_stop = !strcmp(arg, "stop");
        return 0;
    case 'M':
        if (a->n_messages == MAX_MESSAGES) {
            fprintf(stderr, "prefixctl chat: more than %d --message options\n", MAX_MESSAGES);
            return 2;
        }
        a->messages[a->n_messages++] = arg;
        return 0;
    case 'S':
        a->socket = arg;
        return 0;
    case 'h':
        a->help = 1;
        return 0;
    }
    return 2;
}

/* Parses a command's options (argv[0] is its name) into a, accepting only those the command
 * takes. Returns 0, or 2 after a message on a usage error. */
static int parse(int argc, char **argv, gen_args *a)
{
    static const struct {
        int bit;
        struct option o;
    } all[] = {{A_PROMPT, {"prompt", required_argument, 0, 'p'}},
               {A_PROMPT, {"prompt-file", required_argument, 0, 'f'}},
               {A_SAMPLE, {"temp", required_argument, 0, 't'}},
               {A_SAMPLE, {"top-p", required_argument, 0, 'P'}},
               {A_SAMPLE, {"seed", required_argument, 0, 's'}},
               {A_NS, {"namespace", required_argument, 0, 'N'}},
               {A_JSON, {"json", no_argument, 0, 'j'}},
               {A_PIN, {"pin", no_argument, 0, 'i'}},
               {A_PROM, {"prometheus", no_argument, 0, 'm'}},
               {A_SYS, {"system", required_argument, 0, 'y'}},
               {A_CTXPOL, {"context-policy", required_argument, 0, 'C'}},
               {A_MSG, {"message", required_argument, 0, 'M'}},
               {0, {"socket", required_argument, 0, 'S'}},
               {0, {"help", no_argument, 0, 'h'}}};
    struct option opts[sizeof all / sizeof all[0] + 1];
    size_t k = 0;
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (all[i].bit == 0 || (a->cmd->opts & all[i].bit))
            opts[k++] = all[i].o;
    opts[k] = (struct option){0, 0, 0, 0};
    const char *shorts = a->cmd->opts & A_N ? ":hn:" : ":h";
    optind = 1;
    opterr = 0;
    int ch;
    while ((ch = getopt_long(argc, argv, shorts, opts, NULL)) != -1) {
        if (ch == '?' || ch == ':') {
            const char *what = argv[optind - 1];
            if (ch == '?' && optopt && optopt != 'n')
                fprintf(stderr, "prefixctl %s: unknown option '-%c'\n", a->cmd->name, optopt);
            else
                fprintf(stderr, "prefixctl %s: %s option '%s'\n", a->cmd->name,
                        ch == ':' ? "a value is missing after" : "unknown", what);
            fprintf(stderr, "'prefixctl %s --help' lists its options.\n", a->cmd->name);
            return 2;
        }
        if (set_option(a, ch, optarg) != 0)
            return 2;
    }
    a->rest = argv + optind;
    a->n_rest = argc - optind;
    return 0;
}

/* The checks that need no daemon: the prompt options and the positional arguments. Reads
 * --prompt-file. Returns 0 or 2. */
static int check_args(gen_args *a)
{
    const char *name = a->cmd->name;
    if (a->cmd->opts & A_PROMPT) {
        if (!!a->prompt == !!a->prompt_file) {
            fprintf(stderr, "prefixctl %s: give exactly one of --prompt and --prompt-file\n", name);
            return 2;
        }
        if (a->prompt_file && !(a->file_text = read_file(a->prompt_file, &a->file_len)))
            return 2;
    }
    if (!strcmp(name, "tokenize") && a->n_rest != 1) {
        fprintf(stderr,
                "prefixctl tokenize: expected one TEXT argument, got %d (quote the text; "
                "one starting with '-' goes after '--')\n",
                a->n_rest);
        return 2;
    }
    if (!strcmp(name, "detokenize") && a->n_rest < 1) {
        fprintf(stderr, "prefixctl detokenize: expected one or more token ids\n");
        return 2;
    }
    if (strcmp(name, "tokenize") != 0 && strcmp(name, "detokenize") != 0 && a->n_rest > 0) {
        fprintf(stderr, "prefixctl %s: unexpected argument '%s'\n", name, a->rest[0]);
        return 2;
    }
    return 0;
}

/* Reports a failed call on c; returns the exit code: 2 when the daemon refused the input as
 * invalid (the user's to fix), 1 for every other daemon or connection error. */
static int call_failed(pfx_conn *c)
{
    fprintf(stderr, "prefixctl: %s\n", pfx_errmsg(c));
    switch (pfx_server_error(c)) {
    case PROTO_ERR_PROMPT_TOO_LONG:
    case PROTO_ERR_BAD_UTF8:
    case PROTO_ERR_BAD_TOKEN:
    case PROTO_ERR_BAD_NAMESPACE:
        return 2;
    }
    return 1;
}

/* --message [ROLE:]TEXT as a chat message (a ROLE other than the three is part of the text). */
static pfx_chat_msg chat_message(const char *arg)
{
    static const char *const roles[] = {"system", "user", "assistant"};
    for (size_t i = 0; i < sizeof roles / sizeof *roles; i++) {
        size_t l = strlen(roles[i]);
        if (!strncmp(arg, roles[i], l) && arg[l] == ':')
            return (pfx_chat_msg){roles[i], arg + l + 1, strlen(arg + l + 1)};
    }
    return (pfx_chat_msg){"user", arg, strlen(arg)};
}

static int cmd_generate(pfx_conn *c, gen_args *a, int warm)
{
    pfx_gen g = {0};
    pfx_chat_msg msgs[MAX_MESSAGES];
    if (a->n_messages > 0) { /* chat --message */
        if (!pfx_has_chat(c)) {
            fprintf(stderr,
                    "prefixctl chat: the daemon's model (%.*s) has no chat template, so it "
                    "cannot render --message; use generate --prompt, or start the daemon with "
                    "--chat-template\n",
                    (int)pfx_server(c)->model.len, pfx_server(c)->model.p);
            return 2;
        }
        for (int i = 0; i < a->n_messages; i++)
            msgs[i] = chat_message(a->messages[i]);
        g.msgs = msgs;
        g.n_msgs = (size_t)a->n_messages;
        g.system = a->system;
    } else {
        g.text = a->prompt_file ? a->file_text : a->prompt;
        g.text_len = a->prompt_file ? a->file_len : strlen(a->prompt);
    }
    g.max_new = warm ? 0 : a->n;
    g.temp = a->temp;
    g.top_p = a->top_p;
    g.seed = a->seed;
    g.ns = a->ns;
    g.warm = warm;
    g.pin = a->pin;
    gen_ctx ctx = {.print = !a->json && !warm};
    pfx_result r;
    if (pfx_generate(c, &g, gen_token_cb, &ctx, &r) != 0) {
        if (ctx.print && ctx.len > 0)
            printf("\n");
        free(ctx.text);
        free(ctx.ids);
        return call_failed(c);
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
    if (pfx_stats(c, &json) != 0)
        return call_failed(c);
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

static int cmd_tokenize(pfx_conn *c, gen_args *a)
{
    int32_t *ids;
    size_t n;
    if (pfx_tokenize(c, a->rest[0], strlen(a->rest[0]), &ids, &n) != 0)
        return call_failed(c);
    for (size_t k = 0; k < n; k++)
        printf("%s%d", k ? " " : "", ids[k]);
    printf("\n");
    free(ids);
    return 0;
}

/* Parses detokenize's ids (before connecting). Returns 0 or 2. */
static int parse_ids(gen_args *a, int32_t **ids)
{
    *ids = malloc((size_t)a->n_rest * sizeof(int32_t));
    if (!*ids) {
        fprintf(stderr, "prefixctl: out of memory\n");
        return 2;
    }
    for (int k = 0; k < a->n_rest; k++) {
        uint64_t v;
        if (parse_u64(a->rest[k], INT32_MAX, &v) != 0) {
            fprintf(stderr, "prefixctl detokenize: '%s' is not a token id (0 to 2147483647)\n",
                    a->rest[k]);
            free(*ids);
            return 2;
        }
        (*ids)[k] = (int32_t)v;
    }
    return 0;
}

static int cmd_detokenize(pfx_conn *c, const int32_t *ids, size_t n)
{
    char *text;
    size_t len;
    if (pfx_detokenize(c, ids, n, &text, &len) != 0)
        return call_failed(c);
    fwrite(text, 1, len, stdout);
    printf("\n");
    free(text);
    return 0;
}

/* Takes the global options before the command: --socket PATH (or --socket=PATH), --help,
 * --version. Returns the index of the command, or -1 with *rc the exit code. */
static int parse_globals(int argc, char **argv, const char **sock, int *rc)
{
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (!strcmp(argv[i], "--socket")) {
            if (i + 1 >= argc) {
                fprintf(stderr, "prefixctl: a value is missing after option '--socket'\n");
                return *rc = 2, -1;
            }
            *sock = argv[++i];
        } else if (!strncmp(argv[i], "--socket=", 9)) {
            *sock = argv[i] + 9;
        } else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return *rc = 0, -1;
        } else if (!strcmp(argv[i], "--version")) {
            printf("prefixctl %s (git %s)\n", PREFIXD_VERSION, PREFIXD_GIT);
            return *rc = 0, -1;
        } else {
            fprintf(stderr, "prefixctl: unknown option '%s' (before the command)\n", argv[i]);
            usage(stderr);
            return *rc = 2, -1;
        }
    }
    if (i >= argc) {
        fprintf(stderr, "prefixctl: no command given\n");
        usage(stderr);
        return *rc = 2, -1;
    }
    return i;
}

int main(int argc, char **argv)
{
    const char *sock = NULL;
    int rc = 0;
    int i = parse_globals(argc, argv, &sock, &rc);
    if (i < 0)
        return rc;
    const command *cmd = NULL;
    for (size_t k = 0; k < N_COMMANDS; k++)
        if (!strcmp(argv[i], commands[k].name))
            cmd = &commands[k];
    if (!cmd) {
        fprintf(stderr, "prefixctl: unknown command '%s'\n", argv[i]);
        usage(stderr);
        return 2;
    }
    if (!strcmp(cmd->name, "bench"))
        return bench_main(sock, argc - i, argv + i);
    gen_args a = {.cmd = cmd,
                  .socket = sock,
                  .n = 256,
                  .temp = PROTO_DEFAULT_TEMP,
                  .top_p = PROTO_DEFAULT_TOP_P};
    if (parse(argc - i, argv + i, &a) != 0)
        return 2;
    if (a.help) {
        command_usage(cmd, stdout);
        return 0;
    }
    int32_t *ids = NULL;
    if (check_args(&a) != 0 || (!strcmp(cmd->name, "detokenize") && parse_ids(&a, &ids) != 0)) {
        free(a.file_text);
        return 2;
    }
    if (!a.seed_given)
        a.seed = proto_random_seed();
    if (!strcmp(cmd->name, "chat") && a.json && a.n_messages == 0) {
        fprintf(stderr, "prefixctl chat: --json goes with --message (one turn)\n");
        return 2;
    }
    if (!strcmp(cmd->name, "chat") && a.n_messages == 0) {
        /* The chat connects (and reconnects) itself. */
        chat_opts co = {.socket = a.socket,
                        .ns = a.ns,
                        .system = a.system,
                        .max_new = a.n,
                        .temp = a.temp,
                        .top_p = a.top_p,
                        .seed = a.seed,
                        .context_stop = a.context_stop};
        return chat_main(&co);
    }
    char err[1024];
    pfx_conn *c;
    if (pfx_connect(a.socket, &c, err, sizeof err) != 0) {
        fprintf(stderr, "prefixctl: %s\n", err);
        free(a.file_text);
        free(ids);
        return 1;
    }
    if (!strcmp(cmd->name, "generate") || !strcmp(cmd->name, "chat"))
        rc = cmd_generate(c, &a, 0);
    else if (!strcmp(cmd->name, "warm"))
        rc = cmd_generate(c, &a, 1);
    else if (!strcmp(cmd->name, "stats"))
        rc = cmd_stats(c, &a);
    else if (!strcmp(cmd->name, "tokenize"))
        rc = cmd_tokenize(c, &a);
    else
        rc = cmd_detokenize(c, ids, (size_t)a.n_rest);
    pfx_close(c);
    free(a.file_text);
    free(ids);
    return rc;
}
