/* serve.c — `prefixd serve`: options, model loading, then the daemon (server.c). */
#include "activation.h"
#include "base.h"
#include "cmd.h"
#include "proto.h"
#include "server.h"

#include "cache_remote.h"
#include "cache_remote_cluster.h"
#include "chat_template.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: prefixd serve --model PATH [options]\n"
        "\n"
        "Serves generation on a Unix socket (and with --http, an OpenAI-compatible HTTP\n"
        "API) with a shared prefix cache (logs to stderr;\n"
        "SIGINT/SIGTERM finish running requests and exit).\n"
        "\n"
        "  --model PATH            llama2.c checkpoint or GGUF file (required)\n"
        "  --tokenizer PATH        tokenizer (default: MODEL.tok, else tokenizer.bin beside it)\n"
        "  --socket PATH           socket (default: $PREFIXD_SOCKET, else\n"
        "                          $XDG_RUNTIME_DIR/prefixd.sock, else\n"
        "                          /tmp/prefixd-$UID/prefixd.sock in a directory created 0700\n"
        "                          and refused if another user owns it or can enter it)\n"
        "  --socket-mode MODE      permissions of the socket, octal (default 0600)\n"
        "  --cache-mem SIZE        memory for K/V blocks (default: 8 contexts, 64M to RAM/4)\n"
        "  --pin-max SIZE          budget for pinned prefixes (default cache-mem / 4)\n"
        "  --disk-dir DIR|none     disk tier: blocks leaving RAM spill there and survive\n"
        "                          restarts (default: $XDG_CACHE_HOME/prefixd, else\n"
        "                          ~/.cache/prefixd; 'none' turns it off)\n"
        "  --disk-max SIZE         disk tier budget (default 4G)\n"
        "  --disk-reset            wipe a disk dir written by another format version or\n"
        "                          block geometry instead of refusing it\n"
        "  --remote URL            remote tier shared by several daemons: a Redis or Valkey\n"
        "                          server, redis://HOST:PORT[/DB] or unix:/path/redis.sock\n"
        "  --remote-cluster HOST:PORT,...  the remote tier on a Redis Cluster (or Valkey\n"
        "                          cluster), given by seed nodes: blocks spread over its\n"
        "                          primaries by hash slot; MOVED/ASK followed; a node down\n"
        "                          costs only its blocks\n"
        "  --remote-password-file F  AUTH password for it, for every node of a cluster (the\n"
        "                          file's first line; the file must not be readable by\n"
        "                          group or others)\n"
        "  --remote-ttl DURATION   expiry of the blocks written there (default 1d; s, m, h, d)\n"
        "  --remote-timeout MS     how long it may stay silent in an exchange (default 50;\n"
        "                          a batch ends after 20 of these); past it a request\n"
        "                          computes what it did not get\n"
        "  --block-tokens N        tokens per K/V block (default 16)\n"
        "  --kv-type f32|f16|q8_0  how K/V is stored in RAM, on disk and remote: f32, f16\n"
        "                          (half the bytes), q8_0 (~3.8x fewer; see the README's\n"
        "                          'K/V types'); default " ENGINE_DEFAULT_KV_NAME "\n"
        "  --ctx N                 context length, overriding the model file's\n"
        "  --threads N             compute threads (default: all cores)\n"
        "  --max-batch N           requests decoded together (default 32)\n"
        "  --max-queue N           requests waiting beyond those before 'busy' (default 256)\n"
        "  --no-cache              do not share blocks between requests\n"
        "  --share-across-users    let different Unix users share blocks (default: never)\n"
        "  --max-frame SIZE        largest frame accepted (default 16M)\n"
        "  --max-output SIZE       unread output per connection before its requests are\n"
        "                          cancelled (default 8M)\n"
        "  --grace SECONDS         on SIGINT/SIGTERM, time for running requests (default 10)\n"
        "  --hello-timeout SEC     close connections that send no HELLO (default 10; 0 never)\n"
        "  --idle-timeout SEC      close connections idle this long (default 600; 0 never)\n"
        "  --max-conns-per-user N  connections one Unix user may hold (default 256; 0 no limit)\n"
        "  --max-input-mem SIZE    unprocessed input of all connections together (default 256M)\n"
        "  --max-text SIZE         largest text to tokenize, prompt or TOKENIZE (default 4M)\n"
        "  --decode-history        publish a reply's K/V as decode wrote it, at once, instead\n"
        "                          of recomputing it by prefill in the background (exact\n"
        "                          history: a chat's cache is bitwise an uncached run's)\n"
        "  --stats-all-users       show every user the daemon-wide counters (default: only\n"
        "                          the daemon's owner and root; others see their own)\n"
        "  --http ADDR             also serve the OpenAI-compatible HTTP API on ADDR:\n"
        "                          127.0.0.1:8080, [::1]:8080 (port 0: any free port, logged)\n"
        "                          or unix:/path (HTTP on a Unix socket, peer-uid namespaces)\n"
        "  --api-key-file FILE     HTTP requests need 'Authorization: Bearer KEY' with a key of\n"
        "                          FILE ('KEY [TENANT]' lines); each tenant is its own cache\n"
        "                          namespace\n"
        "  --http-insecure         allow a non-loopback --http address without API keys\n"
        "  --chat-template NAME|FILE  render chats (CHAT, /v1/chat/completions) with a\n"
        "                          built-in family's template or a Jinja file instead of the\n"
        "                          model's tokenizer.chat_template (needed when the model has\n"
        "                          none); NAME: llama3, chatml, gemma, ... (every family:\n"
        "                          prefixd chat-template --help)\n"
        "  --log-level LEVEL       error, warn, info or debug (default info)\n");
}

/* $XDG_CACHE_HOME/prefixd/blocks-BxF (else ~/.cache/...; F: 4-byte words per block, then -TYPE
 * for a K/V type other than f32), its parents created (0700). Returns 0, or -1 with the reason
 * in buf. */
static int default_disk_dir(char *buf, size_t cap, int block_tokens, size_t block_floats,
                            int kv_type)
{
    const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    int n;
    if (xdg && xdg[0] == '/')
        n = snprintf(buf, cap, "%s/prefixd", xdg);
    else if (home && home[0])
        n = snprintf(buf, cap, "%s/.cache/prefixd", home);
    else
        return snprintf(buf, cap, "no $XDG_CACHE_HOME or $HOME for the default --disk-dir"), -1;
    if (n < 0 || (size_t)n >= cap)
        return snprintf(buf, cap, "the default --disk-dir path is too long"), -1;
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = 0;
        mkdir(buf, 0700);
        *p = '/';
    }
    mkdir(buf, 0700);
    size_t len = strlen(buf);
    n = snprintf(buf + len, cap - len, "/blocks-%dx%zu%s%s", block_tokens, block_floats,
                 kv_type == MODEL_TYPE_F32 ? "" : "-",
                 kv_type == MODEL_TYPE_F32 ? "" : model_type_name(kv_type));
    if (n < 0 || (size_t)n >= cap - len)
        return snprintf(buf, cap, "the default --disk-dir path is too long"), -1;
    return 0;
}

/* The first line of a password file that only its owner may read into buf. Returns 0, or -1
 * after printing the problem. */
static int read_password_file(const char *path, char *buf, size_t cap)
{
    FILE *f = fopen(path, "r");
    struct stat sb;
    if (!f || fstat(fileno(f), &sb) != 0) {
        fprintf(stderr, "prefixd serve: --remote-password-file '%s': %s\n", path, strerror(errno));
        if (f)
            fclose(f);
        return -1;
    }
    if (!S_ISREG(sb.st_mode) || (sb.st_mode & 077)) {
        fprintf(stderr, "prefixd serve: --remote-password-file '%s': %s (chmod 600 it)\n", path,
                S_ISREG(sb.st_mode) ? "readable or writable by group or others"
                                    : "not a regular file");
        fclose(f);
        return -1;
    }
    if (!fgets(buf, (int)cap, f))
        buf[0] = 0;
    fclose(f);
    buf[strcspn(buf, "\r\n")] = 0;
    if (!buf[0]) {
        fprintf(stderr, "prefixd serve: --remote-password-file '%s': empty first line\n", path);
        return -1;
    }
    return 0;
}

/* "90", "90s", "15m", "12h", "1d" -> seconds (1 .. 10 years). Returns 0 or -1. */
static int parse_duration_s(const char *v, uint32_t *out)
{
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (end == v || errno || x <= 0)
        return -1;
    double unit = strcmp(end, "") == 0 || strcmp(end, "s") == 0 ? 1
                  : strcmp(end, "m") == 0                       ? 60
                  : strcmp(end, "h") == 0                       ? 3600
                  : strcmp(end, "d") == 0                       ? 86400
                                                                : -1;
    if (unit < 0 || x * unit < 1 || x * unit > 315360000)
        return -1;
    *out = (uint32_t)(x * unit);
    return 0;
}

static int bad(const char *opt, const char *val, const char *want)
{
    fprintf(stderr, "prefixd serve: %s '%s': expected %s\n", opt, val, want);
    return 2;
}

int srv_cmd_serve(int argc, char **argv)
{
    srv_opts o = {0};
    o.engine.kv_type = ENGINE_DEFAULT_KV_TYPE;
    o.socket_mode = 0600;
    o.max_frame = 16u << 20;
    o.max_output = 8u << 20;
    o.grace_ms = 10000;
    o.hello_timeout_ms = 10000;
    o.idle_timeout_ms = 600000;
    o.max_conns_per_user = 256;
    o.max_input_mem = (size_t)256 << 20;
    o.max_text = (size_t)4 << 20;
    o.log_level = BASE_LOG_INFO;
    const char *tok_path = NULL, *disk_dir = NULL;
    static char remote_password[512];
    long ctx = 0;
    char sockbuf[4096], diskbuf[4096];
    enum {
        O_MODEL = 256,
        O_TOK,
        O_SOCK,
        O_MODE,
        O_MEM,
        O_PIN,
        O_DISK,
        O_DISKMAX,
        O_DISKRESET,
        O_BLOCK,
        O_THREADS,
        O_BATCH,
        O_QUEUE,
        O_NOCACHE,
        O_SHARE,
        O_FRAME,
        O_OUTPUT,
        O_GRACE,
        O_LOG,
        O_HELLO_TO,
        O_IDLE_TO,
        O_CONNS_USER,
        O_INPUT_MEM,
        O_MAX_TEXT,
        O_STATS_ALL,
        O_DECODE_HISTORY,
        O_CTX,
        O_HTTP,
        O_API_KEYS,
        O_HTTP_INSECURE,
        O_REMOTE,
        O_REMOTE_CLUSTER,
        O_REMOTE_PW,
        O_REMOTE_TTL,
        O_REMOTE_TO,
        O_KV_TYPE,
        O_CHAT_TEMPLATE,
        O_HELP
    };
    static const struct option opts[] = {
        {"model", required_argument, 0, O_MODEL},
        {"tokenizer", required_argument, 0, O_TOK},
        {"socket", required_argument, 0, O_SOCK},
        {"ctx", required_argument, 0, O_CTX},
        {"socket-mode", required_argument, 0, O_MODE},
        {"cache-mem", required_argument, 0, O_MEM},
        {"pin-max", required_argument, 0, O_PIN},
        {"disk-dir", required_argument, 0, O_DISK},
        {"disk-max", required_argument, 0, O_DISKMAX},
        {"disk-reset", no_argument, 0, O_DISKRESET},
        {"block-tokens", required_argument, 0, O_BLOCK},
        {"kv-type", required_argument, 0, O_KV_TYPE},
        {"threads", required_argument, 0, O_THREADS},
        {"max-batch", required_argument, 0, O_BATCH},
        {"max-queue", required_argument, 0, O_QUEUE},
        {"no-cache", no_argument, 0, O_NOCACHE},
        {"share-across-users", no_argument, 0, O_SHARE},
        {"max-frame", required_argument, 0, O_FRAME},
        {"max-output", required_argument, 0, O_OUTPUT},
        {"grace", required_argument, 0, O_GRACE},
        {"log-level", required_argument, 0, O_LOG},
        {"hello-timeout", required_argument, 0, O_HELLO_TO},
        {"idle-timeout", required_argument, 0, O_IDLE_TO},
        {"max-conns-per-user", required_argument, 0, O_CONNS_USER},
        {"max-input-mem", required_argument, 0, O_INPUT_MEM},
        {"max-text", required_argument, 0, O_MAX_TEXT},
        {"stats-all-users", no_argument, 0, O_STATS_ALL},
        {"decode-history", no_argument, 0, O_DECODE_HISTORY},
        {"http", required_argument, 0, O_HTTP},
        {"api-key-file", required_argument, 0, O_API_KEYS},
        {"http-insecure", no_argument, 0, O_HTTP_INSECURE},
        {"remote", required_argument, 0, O_REMOTE},
        {"remote-cluster", required_argument, 0, O_REMOTE_CLUSTER},
        {"remote-password-file", required_argument, 0, O_REMOTE_PW},
        {"remote-ttl", required_argument, 0, O_REMOTE_TTL},
        {"remote-timeout", required_argument, 0, O_REMOTE_TO},
        {"chat-template", required_argument, 0, O_CHAT_TEMPLATE},
        {"help", no_argument, 0, O_HELP},
        {0, 0, 0, 0}};
    optind = 1;
    int ch;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        uint64_t sz;
        long v;
        char *end;
        switch (ch) {
        case O_MODEL:
            o.model_path = optarg;
            break;
        case O_TOK:
            tok_path = optarg;
            break;
        case O_SOCK:
            o.socket_path = optarg;
            break;
        case O_MODE:
            v = strtol(optarg, &end, 8);
            if (*end || end == optarg || v < 0 || v > 0777)
                return bad("--socket-mode", optarg, "an octal mode like 0600");
            o.socket_mode = (mode_t)v;
            break;
        case O_MEM:
            if (srv_parse_size(optarg, &sz) != 0 || sz == 0)
                return bad("--cache-mem", optarg, "a size like 1G");
            o.engine.cache_mem = (size_t)sz;
            break;
        case O_PIN:
            if (srv_parse_size(optarg, &sz) != 0)
                return bad("--pin-max", optarg, "a size like 256M");
            o.engine.pin_max = (size_t)sz;
            break;
        case O_DISK:
            if (!optarg[0])
                return bad("--disk-dir", optarg, "a directory or 'none'");
            disk_dir = optarg;
            break;
        case O_DISKMAX:
            if (srv_parse_size(optarg, &sz) != 0 || sz < 4096)
                return bad("--disk-max", optarg, "a size of at least 4K, like 4G");
            o.engine.disk_max = (size_t)sz;
            break;
        case O_DISKRESET:
            o.engine.disk_reset = 1;
            break;
        case O_CTX:
            if (srv_parse_int(optarg, 1, 1048576, &ctx) != 0)
                return bad("--ctx", optarg, "1..1048576");
            break;
        case O_BLOCK:
            if (srv_parse_int(optarg, 1, 4096, &v) != 0)
                return bad("--block-tokens", optarg, "1..4096");
            o.engine.block_tokens = (int)v;
            break;
        case O_KV_TYPE:
            if (model_kv_type_parse(optarg, &o.engine.kv_type) != 0)
                return bad("--kv-type", optarg, "f32, f16 or q8_0");
            break;
        case O_THREADS:
            if (srv_parse_int(optarg, 1, 256, &v) != 0)
                return bad("--threads", optarg, "1..256");
            o.engine.threads = (int)v;
            break;
        case O_BATCH:
            if (srv_parse_int(optarg, 1, 1024, &v) != 0)
                return bad("--max-batch", optarg, "1..1024");
            o.engine.max_batch = (int)v;
            break;
        case O_QUEUE:
            if (srv_parse_int(optarg, 1, 1 << 20, &v) != 0)
                return bad("--max-queue", optarg, "1..1048576");
            o.engine.max_queue = (int)v;
            break;
        case O_NOCACHE:
            o.engine.no_cache = 1;
            break;
        case O_SHARE:
            o.share_across_users = 1;
            break;
        case O_FRAME:
            if (srv_parse_size(optarg, &sz) != 0 || sz < 4096 || sz > (1u << 30))
                return bad("--max-frame", optarg, "a size from 4K to 1G");
            o.max_frame = (size_t)sz;
            break;
        case O_OUTPUT:
            if (srv_parse_size(optarg, &sz) != 0 || sz < 1024)
                return bad("--max-output", optarg, "a size of at least 1K");
            o.max_output = (size_t)sz;
            break;
        case O_GRACE:
            o.grace_ms = strtod(optarg, &end) * 1000;
            if (*end || end == optarg || o.grace_ms < 0)
                return bad("--grace", optarg, "seconds >= 0");
            break;
        case O_HELLO_TO:
        case O_IDLE_TO: {
            double sec = strtod(optarg, &end);
            if (*end || end == optarg || !(sec >= 0 && sec <= 1e6))
                return bad(ch == O_HELLO_TO ? "--hello-timeout" : "--idle-timeout", optarg,
                           "seconds >= 0 (0: never)");
            *(ch == O_HELLO_TO ? &o.hello_timeout_ms : &o.idle_timeout_ms) = sec * 1000;
            break;
        }
        case O_CONNS_USER:
            if (srv_parse_int(optarg, 0, 4096, &v) != 0)
                return bad("--max-conns-per-user", optarg, "0..4096 (0: no limit)");
            o.max_conns_per_user = (int)v;
            break;
        case O_INPUT_MEM:
            if (srv_parse_size(optarg, &sz) != 0 || sz < (1u << 20))
                return bad("--max-input-mem", optarg, "a size of at least 1M");
            o.max_input_mem = (size_t)sz;
            break;
        case O_MAX_TEXT:
            if (srv_parse_size(optarg, &sz) != 0 || sz < 1024 || sz > (1u << 30))
                return bad("--max-text", optarg, "a size from 1K to 1G");
            o.max_text = (size_t)sz;
            break;
        case O_DECODE_HISTORY:
            o.engine.decode_history = 1;
            break;
        case O_STATS_ALL:
            o.stats_all_users = 1;
            break;
        case O_HTTP:
            if (!optarg[0] || (strncmp(optarg, "unix:", 5) == 0 && !optarg[5]))
                return bad("--http", optarg, "HOST:PORT, [IPV6]:PORT or unix:/path");
            o.http_addr = optarg;
            break;
        case O_API_KEYS:
            o.api_key_file = optarg;
            break;
        case O_HTTP_INSECURE:
            o.http_insecure = 1;
            break;
        case O_REMOTE: {
            char msg[512];
            if (cache_remote_url_check(optarg, msg, sizeof msg) != 0) {
                fprintf(stderr, "prefixd serve: --remote: %s\n", msg);
                return 2;
            }
            if (o.engine.remote_cluster)
                return bad("--remote", optarg, "one remote tier: --remote or --remote-cluster");
            o.engine.remote_url = optarg;
            break;
        }
        case O_REMOTE_CLUSTER: {
            char msg[512];
            if (cache_remote_cluster_seeds_check(optarg, msg, sizeof msg) != 0) {
                fprintf(stderr, "prefixd serve: --remote-cluster: %s\n", msg);
                return 2;
            }
            if (o.engine.remote_url && !o.engine.remote_cluster)
                return bad("--remote-cluster", optarg,
                           "one remote tier: --remote or --remote-cluster");
            o.engine.remote_url = optarg;
            o.engine.remote_cluster = 1;
            break;
        }
        case O_REMOTE_PW:
            if (read_password_file(optarg, remote_password, sizeof remote_password) != 0)
                return 2;
            o.engine.remote_password = remote_password;
            break;
        case O_REMOTE_TTL:
            if (parse_duration_s(optarg, &o.engine.remote_ttl_s) != 0)
                return bad("--remote-ttl", optarg, "a duration like 3600, 90m, 12h or 1d");
            break;
        case O_REMOTE_TO:
            o.engine.remote_timeout_ms = strtod(optarg, &end);
            if (*end || end == optarg ||
                !(o.engine.remote_timeout_ms >= 1 && o.engine.remote_timeout_ms <= 600000))
                return bad("--remote-timeout", optarg, "milliseconds, 1..600000");
            break;
        case O_CHAT_TEMPLATE: {
            /* Checked now, before the model loads: a family's name, or a file that parses. */
            model_chat_template *t = NULL;
            int family;
            char msg[1024];
            if (model_chat_template_choose(optarg, NULL, &t, &family, NULL, 0, msg, sizeof msg) !=
                0) {
                fprintf(stderr, "prefixd serve: %s\n", msg);
                return 2;
            }
            model_chat_template_free(t);
            o.chat_template = optarg;
            break;
        }
        case O_LOG:
            if ((o.log_level = base_log_parse_level(optarg)) < 0)
                return bad("--log-level", optarg, "error, warn, info or debug");
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
        fprintf(stderr, "prefixd serve: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (!o.model_path) {
        fprintf(stderr, "prefixd serve: --model PATH is required\n");
        usage(stderr);
        return 2;
    }
    if (o.api_key_file && !o.http_addr) {
        fprintf(stderr, "prefixd serve: --api-key-file is for the HTTP API: give --http ADDR\n");
        return 2;
    }
    if (!o.socket_path) {
        if (proto_default_socket_path(sockbuf, sizeof sockbuf) != 0) {
            fprintf(stderr, "prefixd serve: default socket path too long\n");
            return 2;
        }
        o.socket_path = sockbuf;
        char dir[256], err[512];
        if (proto_default_socket_dir(dir, sizeof dir) == 1 &&
            proto_socket_dir_check(dir, err, sizeof err) != 0) {
            fprintf(stderr, "prefixd serve: %s\n", err);
            return 2;
        }
    }
    base_log_set_level(o.log_level);
    /* Socket activation (systemd's LISTEN_FDS): read before any thread starts. */
    char amsg[512];
    int afd = srv_activation_fd(amsg, sizeof amsg);
    if (afd < 0) {
        base_log(BASE_LOG_ERROR, "%s", amsg);
        return 2;
    }
    if (amsg[0])
        base_log(afd > 0 ? BASE_LOG_INFO : BASE_LOG_DEBUG, "%s", amsg);
    o.listen_fd = afd;
    model *m;
    model_tokenizer *tok;
    if (srv_load(o.model_path, tok_path, &m, &tok) != 0)
        return 2;
    if (ctx)
        model_set_context(m, (int)ctx); /* in range: parsed above */
    const model_config *c = model_get_config(m);
    base_log(BASE_LOG_INFO,
             "model %s: dim %d, hidden %d, %d layers, %d heads (%d kv), vocab %d, context %d; "
             "%.2fM params, %.1f MB weights, %llu K/V bytes per token (%s)",
             o.model_path, c->dim, c->hidden_dim, c->n_layers, c->n_heads, c->n_kv_heads,
             c->vocab_size, c->seq_len, (double)model_param_count(c) / 1e6,
             (double)model_weight_bytes(c) / 1e6,
             (unsigned long long)model_kv_bytes_per_token(c, o.engine.kv_type),
             model_type_name(o.engine.kv_type));
    if (disk_dir && strcmp(disk_dir, "none") == 0) {
        o.engine.disk_dir = NULL;
    } else if (disk_dir) {
        o.engine.disk_dir = disk_dir;
    } else if (!o.engine.no_cache) {
        /* The default is shared by every model: one subdirectory per block geometry, since a
         * store holds blocks of one size (a model of another shape would be refused there). */
        int bt = o.engine.block_tokens ? o.engine.block_tokens : 16;
        size_t bw = model_kv_block_bytes(c, bt, o.engine.kv_type) / 4;
        if (default_disk_dir(diskbuf, sizeof diskbuf, bt, bw, o.engine.kv_type) == 0) {
            o.engine.disk_dir = diskbuf;
            o.disk_is_default = 1;
        } else {
            base_log(BASE_LOG_WARN, "disk tier off: %s", diskbuf);
        }
    }
    int rc = srv_run(&o, m, tok);
    model_tokenizer_free(tok);
    model_free(m);
    return rc;
}
