/* bench.c — `prefixctl bench`: time to first token as a client sees it, under workloads that
 * share a prefix (or do not), against a running daemon.
 *
 * Prompts are synthetic token ids: deterministic pseudo-random ids in [3, vocab) (never UNK, BOS
 * or EOS) drawn from the seed, the kind of text (system prompt, user turn, question, ...) and its
 * index, so a workload needs no text, works on any model, and is the same run after run. Each
 * prompt starts with BOS and is sent as ids; a chat resends its whole history each turn, the
 * model's replies exactly as streamed back, as `prefixctl chat` does, so its prefix never breaks.
 *
 * Workloads:
 *   chat     S system prompts of P tokens; N conversations, conversation k on system prompt
 *            k mod S; each of T turns adds U user tokens and asks for R reply tokens. Conversation
 *            k belongs to client k mod C, and each client takes its conversations in turn, one
 *            turn at a time, so the conversations (and the system prompts) interleave.
 *   fewshot  one preamble of P tokens, then Q independent questions of U tokens, spread over the
 *            C clients.
 *   unique   Q prompts of P + U tokens sharing nothing (not even their first block): the control.
 *   sweep    for each prompt length L: a fresh prompt of L tokens (uncached), then a prompt with
 *            its first L - U tokens and U new ones (cached prefix); one client.
 *
 * One connection and one thread per client; TTFT runs on a monotonic clock from just before a
 * request is sent to its first TOKEN frame (libprefixd's pfx_generate). Run r (of --runs) uses
 * seed + r - 1, so runs share nothing unless the daemon kept something from an earlier bench.
 * --prefix-seed draws the shared prefixes (system prompts, the preamble) from a seed of their
 * own, so a later bench can ask new questions on prefixes cached by an earlier one (a restart).
 * Output: a summary on stdout, one CSV row per request, one JSON summary per workload, and a
 * progress line on stderr when it is a terminal.
 *
 * With --http URL the same workloads go to an OpenAI-compatible server instead (prefixd's --http,
 * or llama.cpp's llama-server), as streaming POST /v1/completions of the same ids, one keep-alive
 * connection per client (http_client.c); TTFT runs to the first event carrying text. Those
 * streams carry text, not ids, so a chat's reply joins the history as synthetic ids of the
 * reply's length (unless the server sends its ids): the next turn then matches up to the end of
 * the previous prompt, not through the reply. --synthetic-replies does the same on the socket, so
 * both transports send the very same prompts.
 */
#include "base.h"
#include "bench.h"
#include "http_client.h"
#include "prefixd_client.h"

#include <cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { W_CHAT, W_FEWSHOT, W_UNIQUE, W_SWEEP, W_COUNT };
static const char *const wl_names[W_COUNT] = {"chat", "fewshot", "unique", "sweep"};

/* Streams of synthetic ids: the kind of text in the top bits, its indices below. */
enum { S_SYSTEM = 1, S_USER, S_PREAMBLE, S_QUESTION, S_UNIQUE, S_SWEEP, S_SWEEP_SUFFIX, S_REPLY };

#define MAX_LENGTHS 64
#define TOK_FIRST 3 /* ids 0..2 are UNK, BOS and EOS */

typedef struct bench_opts {
    int order[W_COUNT], n_order; /* workloads in the order given */
    int clients, systems, system_tokens, conversations, turns, user_tokens, reply_tokens;
    int think_ms; /* chat: pause after each reply before the client's next request */
    int requests, runs;
    int lengths[MAX_LENGTHS], n_lengths, lengths_given;
    uint64_t seed, prefix_seed; /* prefix_seed 0: the same as seed */
    float temp;
    const char *label, *ns, *csv, *json;
    const char *socket;         /* --socket after the command; NULL: the one main() was given */
    const char *http, *api_key; /* --http URL: the OpenAI-compatible API instead of the socket */
    int append, warm, quiet, synthetic_replies;
} bench_opts;

typedef struct bench_row {
    int wl, run, client, conv, turn;
    uint32_t prompt_tokens, cached, cached_disk, new_tokens;
    double ttft_ms, server_ttft_ms, prefill_ms, total_ms;
} bench_row;

typedef struct bench_phase { /* one workload's one run */
    int wl, run;
    uint64_t seed;
    double wall_s;
} bench_phase;

typedef struct bench {
    bench_opts o;
    int vocab, seq_len, block_tokens;
    char model[256];
    pfx_conn **conns; /* one per client (the socket) */
    hc_conn **hconns; /* one per client (--http) */
    pthread_mutex_t mu;
    bench_row *rows; /* under mu */
    size_t n_rows, cap_rows;
    bench_phase *phases;
    size_t n_phases;
    atomic_int failed;
    atomic_int running;  /* client threads not yet finished in the current phase */
    atomic_size_t done;  /* requests finished in the current phase */
    char fail_msg[1024]; /* under mu; set by the first failure */
} bench;

typedef struct bench_client {
    bench *b;
    int idx, wl, run;
    uint64_t seed, pseed; /* the run's seeds: all prompts, and the shared prefixes */
} bench_client;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: prefixctl [--socket PATH] bench [options]\n"
            "\n"
            "Client-side time to first token (TTFT) under workloads with and without a shared\n"
            "prefix. Prompts are pseudo-random token ids from --seed (no text needed; any model).\n"
            "\n"
            "  --workload W[,W...]  chat, fewshot, unique, sweep (default chat)\n"
            "  --clients C          concurrent connections, one thread each (default 1)\n"
            "  --systems S          chat: distinct system prompts (default 1)\n"
            "  --system-tokens P    chat: system prompt length; fewshot: preamble length;\n"
            "                       unique: prompt length less U (default 1500)\n"
            "  --conversations N    chat: conversations; k uses system prompt k mod S and\n"
            "                       client k mod C (default: the larger of S and C)\n"
            "  --turns T            chat: turns per conversation (default 4)\n"
            "  --user-tokens U      new tokens per turn, question, or sweep suffix (default 40)\n"
            "  --reply-tokens R     tokens generated per request, the reply (default 16)\n"
            "  --think-ms T         chat: each client pauses T ms after a reply before its\n"
            "                       next request, as a user reads (default 0)\n"
            "  --requests Q         fewshot: questions; unique: prompts (default 8)\n"
            "  --lengths L,...      sweep: prompt lengths (default 128,256,512,1024,1536,2000,\n"
            "                       those that fit the model's context)\n"
            "  --warm               prefill each system prompt / preamble with WARM before timing\n"
            "  --runs N             repeat N times; run r uses seed + r - 1 (default 1)\n"
            "  --seed S             prompt seed (default 1)\n"
            "  --prefix-seed S      seed of the shared prefixes (system prompts, preamble) when\n"
            "                       it differs: new turns on prefixes cached earlier (default S)\n"
            "  --temp T             sampling temperature (default 0: greedy, reproducible)\n"
            "  --namespace NS       namespace of every request\n"
            "  --label NAME         the mode's name in the outputs (default 'default')\n"
            "  --csv FILE           one row per request (--append: add to FILE, header once)\n"
            "  --json FILE          per-workload summary: TTFT p50/p95/p99/mean, hit ratio,\n"
            "                       requests/s, tokens/s, by run and by turn\n"
            "  --quiet              no summary on stdout\n"
            "  --http URL           drive an OpenAI-compatible HTTP API instead of the socket\n"
            "                       (prefixd serve --http, llama-server): http://HOST:PORT or\n"
            "                       unix:/path; streaming POST /v1/completions of the same ids\n"
            "  --api-key KEY        --http: send 'Authorization: Bearer KEY'\n"
            "  --synthetic-replies  chat: a reply joins the history as synthetic ids of its\n"
            "                       length, as over --http (whose streams carry text, not ids)\n"
            "\n"
            "Exit codes: 0 ok, 1 daemon, connection or file error, 2 bad parameters.\n");
}

/* ---- synthetic prompts ---- */

static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static uint64_t stream_id(int kind, uint64_t a, uint64_t b)
{
    return ((uint64_t)kind << 56) ^ (a << 28) ^ b;
}

/* Appends n ids of stream (seed, stream) to out. */
static void fill_ids(int32_t *out, size_t n, uint64_t seed, uint64_t stream, int vocab)
{
    uint64_t base = mix64(mix64(seed) ^ stream);
    for (size_t i = 0; i < n; i++)
        out[i] = TOK_FIRST + (int32_t)(mix64(base + i) % (uint64_t)(vocab - TOK_FIRST));
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "prefixctl: bench: out of memory\n");
        exit(1);
    }
    return p;
}

/* ---- requests ---- */

static int add_row(bench_client *cl, bench_row *row, int conv, int turn);

static void fail(bench *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(bench *b, const char *fmt, ...)
{
    pthread_mutex_lock(&b->mu);
    if (!atomic_load(&b->failed)) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(b->fail_msg, sizeof b->fail_msg, fmt, ap);
        va_end(ap);
        atomic_store(&b->failed, 1);
    }
    pthread_mutex_unlock(&b->mu);
}

typedef struct reply_buf {
    int32_t *ids;
    size_t n, cap;
} reply_buf;

static int reply_token_cb(void *arg, int32_t id, const char *piece, size_t len)
{
    reply_buf *r = arg;
    if (r->n < r->cap)
        r->ids[r->n++] = id;
    return 0;
}

/* A reply of n synthetic ids (at most reply->cap) in place of the streamed one: what joins a
 * chat's history when the transport streams text (--http) or --synthetic-replies asks. */
static void synthetic_reply(bench_client *cl, reply_buf *reply, uint32_t n, int conv, int turn)
{
    size_t k = n < reply->cap ? n : reply->cap;
    fill_ids(reply->ids, k, cl->seed, stream_id(S_REPLY, (uint64_t)conv, (uint64_t)turn),
             cl->b->vocab);
    reply->n = k;
}

/* Names a request in messages: "conversation 3, turn 2", "request 5", "warming prefix 0". */
static void request_what(const bench_client *cl, int conv, int turn, char *what, size_t cap)
{
    if (turn < 0)
        snprintf(what, cap, "warming prefix %d", conv);
    else if (cl->wl == W_CHAT)
        snprintf(what, cap, "conversation %d, turn %d", conv, turn);
    else
        snprintf(what, cap, "request %d", conv);
}

/* The request over --http: a streaming completion of the same ids, its figures into *row. The
 * reply's ids go to reply when the server streams them. Returns 0, or -1 with the message in
 * hc_errmsg(). */
static int http_request(bench_client *cl, const int32_t *ids, size_t n, int conv, int turn,
                        reply_buf *reply, bench_row *row)
{
    bench *b = cl->b;
    hc_completion_req q = {.ids = ids,
                           .n_ids = n,
                           .max_tokens = turn < 0 ? 1 : (uint32_t)b->o.reply_tokens,
                           .temp = b->o.temp,
                           .seed = cl->seed * 1000003u + (uint64_t)conv * 1009u + (uint64_t)turn,
                           .cache_salt = b->o.ns};
    hc_completion_res r = {.reply_ids = reply ? reply->ids : NULL,
                           .reply_cap = reply ? reply->cap : 0};
    if (hc_complete(b->hconns[cl->idx], &q, &r) != 0)
        return -1;
    if (reply)
        reply->n = r.n_reply_ids;
    row->prompt_tokens = r.prompt_tokens;
    row->cached = r.cached_tokens;
    row->cached_disk = r.cached_tokens_disk;
    row->new_tokens = r.new_tokens;
    row->ttft_ms = r.ttft_ms;
    row->server_ttft_ms = r.server_ttft_ms;
    row->prefill_ms = r.prefill_ms;
    row->total_ms = r.total_ms;
    return 0;
}

/* Sends one GENERATE of ids (or WARM when turn < 0) on client cl's connection, or the same over
 * --http, and records its row. The reply's ids go to reply (at most reply->cap; may be NULL).
 * Returns 0, or -1 after fail(). */
static int bench_request(bench_client *cl, const int32_t *ids, size_t n, int conv, int turn,
                         reply_buf *reply)
{
    bench *b = cl->b;
    if (b->hconns) {
        bench_row row = {0};
        if (http_request(cl, ids, n, conv, turn, reply, &row) != 0) {
            char what[64];
            request_what(cl, conv, turn, what, sizeof what);
            fail(b, "%s run %d, client %d, %s: %s", wl_names[cl->wl], cl->run, cl->idx, what,
                 hc_errmsg(b->hconns[cl->idx]));
            return -1;
        }
        if (reply && reply->n == 0)
            synthetic_reply(cl, reply, row.new_tokens, conv, turn);
        return turn < 0 ? 0 : add_row(cl, &row, conv, turn);
    }
    pfx_conn *c = b->conns[cl->idx];
    pfx_gen g = {0};
    g.ids = ids;
    g.n_ids = n;
    g.max_new = (uint32_t)b->o.reply_tokens;
    g.temp = b->o.temp;
    g.top_p = 0;
    g.seed = cl->seed * 1000003u + (uint64_t)conv * 1009u + (uint64_t)turn;
    g.ns = b->o.ns;
    g.warm = turn < 0;
    reply_buf none = {0};
    double t0 = base_now_ms();
    pfx_result r;
    if (pfx_generate(c, &g, reply_token_cb, reply ? reply : &none, &r) != 0) {
        char what[64];
        request_what(cl, conv, turn, what, sizeof what);
        fail(b, "%s run %d, client %d, %s: %s", wl_names[cl->wl], cl->run, cl->idx, what,
             pfx_errmsg(c));
        return -1;
    }
    double total = base_now_ms() - t0;
    if (turn < 0)
        return 0; /* WARM: not timed */
    if (reply && b->o.synthetic_replies)
        synthetic_reply(cl, reply, (uint32_t)reply->n, conv, turn);
    bench_row row = {.prompt_tokens = r.done.prompt_tokens,
                     .cached = r.done.cached_tokens,
                     .cached_disk = r.done.cached_tokens_disk,
                     .new_tokens = r.done.new_tokens,
                     .ttft_ms = r.ttft_ms,
                     .server_ttft_ms = r.done.ttft_ms,
                     .prefill_ms = r.done.prefill_ms,
                     .total_ms = total};
    return add_row(cl, &row, conv, turn);
}

/* Records a timed request's row (the rest of it filled here). Returns 0, or -1 after fail(). */
static int add_row(bench_client *cl, bench_row *rowp, int conv, int turn)
{
    bench *b = cl->b;
    bench_row row = *rowp;
    row.wl = cl->wl;
    row.run = cl->run;
    row.client = cl->idx;
    row.conv = conv;
    row.turn = turn;
    pthread_mutex_lock(&b->mu);
    if (b->n_rows == b->cap_rows) {
        b->cap_rows = b->cap_rows ? b->cap_rows * 2 : 256;
        bench_row *nr = realloc(b->rows, b->cap_rows * sizeof *nr);
        if (!nr) {
            pthread_mutex_unlock(&b->mu);
            fail(b, "out of memory");
            return -1;
        }
        b->rows = nr;
    }
    b->rows[b->n_rows++] = row;
    pthread_mutex_unlock(&b->mu);
    atomic_fetch_add(&b->done, 1);
    return 0;
}

/* ---- workloads: each client thread runs its share ---- */

static void run_chat(bench_client *cl)
{
    bench *b = cl->b;
    const bench_opts *o = &b->o;
    int N = o->conversations, C = o->clients;
    size_t cap =
        1 + (size_t)o->system_tokens + (size_t)o->turns * (o->user_tokens + o->reply_tokens);
    int mine = 0;
    for (int k = cl->idx; k < N; k += C)
        mine++;
    if (mine == 0)
        return;
    int32_t **hist = xmalloc((size_t)mine * sizeof *hist);
    size_t *len = xmalloc((size_t)mine * sizeof *len);
    for (int i = 0; i < mine; i++) {
        int k = cl->idx + i * C;
        hist[i] = xmalloc(cap * sizeof(int32_t));
        hist[i][0] = 1; /* BOS */
        fill_ids(hist[i] + 1, (size_t)o->system_tokens, cl->pseed,
                 stream_id(S_SYSTEM, (uint64_t)(k % o->systems), 0), b->vocab);
        len[i] = 1 + (size_t)o->system_tokens;
    }
    for (int t = 1; t <= o->turns && !atomic_load(&b->failed); t++) {
        for (int i = 0; i < mine && !atomic_load(&b->failed); i++) {
            int k = cl->idx + i * C;
            fill_ids(hist[i] + len[i], (size_t)o->user_tokens, cl->seed,
                     stream_id(S_USER, (uint64_t)k, (uint64_t)t), b->vocab);
            len[i] += (size_t)o->user_tokens;
            /* The reply's ids, exactly as streamed back, join the history. */
            reply_buf rb = {hist[i] + len[i], 0, cap - len[i]};
            if (bench_request(cl, hist[i], len[i], k, t, &rb) != 0)
                break;
            len[i] += rb.n;
            if (o->think_ms > 0) {
                struct timespec ts = {o->think_ms / 1000, (long)(o->think_ms % 1000) * 1000000L};
                while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
                    ;
            }
        }
    }
    for (int i = 0; i < mine; i++)
        free(hist[i]);
    free(hist);
    free(len);
}

static void run_fewshot_unique(bench_client *cl)
{
    bench *b = cl->b;
    const bench_opts *o = &b->o;
    size_t n = 1 + (size_t)o->system_tokens + (size_t)o->user_tokens;
    int32_t *p = xmalloc(n * sizeof(int32_t));
    p[0] = 1;
    if (cl->wl == W_FEWSHOT)
        fill_ids(p + 1, (size_t)o->system_tokens, cl->pseed, stream_id(S_PREAMBLE, 0, 0), b->vocab);
    for (int q = cl->idx; q < o->requests && !atomic_load(&b->failed); q += o->clients) {
        if (cl->wl == W_FEWSHOT)
            fill_ids(p + 1 + o->system_tokens, (size_t)o->user_tokens, cl->seed,
                     stream_id(S_QUESTION, (uint64_t)q, 0), b->vocab);
        else
            fill_ids(p + 1, n - 1, cl->seed, stream_id(S_UNIQUE, (uint64_t)q, 0), b->vocab);
        if (bench_request(cl, p, n, q, 1, NULL) != 0)
            break;
    }
    free(p);
}

static void run_sweep(bench_client *cl)
{
    bench *b = cl->b;
    const bench_opts *o = &b->o;
    if (cl->idx != 0)
        return; /* one client: a sweep measures latency, not contention */
    int32_t *p = xmalloc((size_t)b->seq_len * sizeof(int32_t) + 4);
    for (int i = 0; i < o->n_lengths && !atomic_load(&b->failed); i++) {
        size_t L = (size_t)o->lengths[i], U = (size_t)o->user_tokens;
        p[0] = 1;
        fill_ids(p + 1, L - 1, cl->seed, stream_id(S_SWEEP, (uint64_t)i, 0), b->vocab);
        if (bench_request(cl, p, L, i, 1, NULL) != 0)
            break;
        fill_ids(p + L - U, U, cl->seed, stream_id(S_SWEEP_SUFFIX, (uint64_t)i, 0), b->vocab);
        if (bench_request(cl, p, L, i, 2, NULL) != 0)
            break;
    }
    free(p);
}

static void *client_main(void *arg)
{
    bench_client *cl = arg;
    switch (cl->wl) {
    case W_CHAT:
        run_chat(cl);
        break;
    case W_FEWSHOT:
    case W_UNIQUE:
        run_fewshot_unique(cl);
        break;
    default:
        run_sweep(cl);
        break;
    }
    atomic_fetch_sub(&cl->b->running, 1);
    return NULL;
}

/* WARM of each shared prefix (system prompts, the preamble) over client 0, not timed. */
static int warm_prefixes(bench *b, int wl, int run, uint64_t seed, uint64_t pseed)
{
    const bench_opts *o = &b->o;
    int n = wl == W_CHAT ? o->systems : wl == W_FEWSHOT ? 1 : 0;
    if (n == 0 || o->system_tokens == 0)
        return 0;
    bench_client cl = {.b = b, .idx = 0, .wl = wl, .run = run, .seed = seed, .pseed = pseed};
    int32_t *p = xmalloc((1 + (size_t)o->system_tokens) * sizeof(int32_t));
    int rc = 0;
    for (int s = 0; s < n && rc == 0; s++) {
        p[0] = 1;
        fill_ids(p + 1, (size_t)o->system_tokens, pseed,
                 wl == W_CHAT ? stream_id(S_SYSTEM, (uint64_t)s, 0) : stream_id(S_PREAMBLE, 0, 0),
                 b->vocab);
        rc = bench_request(&cl, p, 1 + (size_t)o->system_tokens, s, -1, NULL);
    }
    free(p);
    return rc;
}

static size_t phase_requests(const bench *b, int wl)
{
    const bench_opts *o = &b->o;
    switch (wl) {
    case W_CHAT:
        return (size_t)o->conversations * (size_t)o->turns;
    case W_FEWSHOT:
    case W_UNIQUE:
        return (size_t)o->requests;
    default:
        return 2 * (size_t)o->n_lengths;
    }
}

/* Runs one workload's one run on all clients; shows progress on a terminal. */
static int run_phase(bench *b, int wl, int run, int tty)
{
    const bench_opts *o = &b->o;
    uint64_t seed = o->seed + (uint64_t)run - 1;
    uint64_t pseed = (o->prefix_seed ? o->prefix_seed : o->seed) + (uint64_t)run - 1;
    if (o->warm && warm_prefixes(b, wl, run, seed, pseed) != 0)
        return -1;
    bench_client *cls = xmalloc((size_t)o->clients * sizeof *cls);
    pthread_t *th = xmalloc((size_t)o->clients * sizeof *th);
    atomic_store(&b->done, 0);
    atomic_store(&b->running, o->clients);
    size_t total = phase_requests(b, wl);
    double t0 = base_now_ms();
    int started = 0;
    for (int i = 0; i < o->clients; i++) {
        cls[i] =
            (bench_client){.b = b, .idx = i, .wl = wl, .run = run, .seed = seed, .pseed = pseed};
        if (pthread_create(&th[i], NULL, client_main, &cls[i]) != 0) {
            fail(b, "cannot start client thread %d", i);
            atomic_fetch_sub(&b->running, o->clients - i);
            break;
        }
        started++;
    }
    while (atomic_load(&b->running) > 0) {
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
        if (tty)
            fprintf(stderr, "\r\033[K[%s] %s run %d/%d: %zu/%zu requests, %.1f s", o->label,
                    wl_names[wl], run, o->runs, atomic_load(&b->done), total,
                    (base_now_ms() - t0) / 1e3);
    }
    for (int i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    double wall = (base_now_ms() - t0) / 1e3;
    if (tty)
        fprintf(stderr, "\r\033[K");
    free(cls);
    free(th);
    b->phases[b->n_phases++] = (bench_phase){.wl = wl, .run = run, .seed = seed, .wall_s = wall};
    return atomic_load(&b->failed) ? -1 : 0;
}

/* ---- statistics ---- */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Percentile q (0..100) of sorted v[n], linear between the closest ranks. */
static double percentile(const double *v, size_t n, double q)
{
    if (n == 0)
        return NAN;
    double pos = q / 100.0 * (double)(n - 1);
    size_t lo = (size_t)pos;
    if (lo + 1 >= n)
        return v[n - 1];
    return v[lo] + (v[lo + 1] - v[lo]) * (pos - (double)lo);
}

enum { F_ALL, F_HIT, F_MISS };

typedef struct row_filter {
    int wl, run, turn, hit; /* run, turn: 0 = any; hit: F_* */
} row_filter;

static int row_match(const bench_row *r, const row_filter *f)
{
    if (r->wl != f->wl || (f->run && r->run != f->run) || (f->turn && r->turn != f->turn))
        return 0;
    if (f->hit == F_HIT)
        return r->cached > 0;
    if (f->hit == F_MISS)
        return r->cached == 0;
    return 1;
}

typedef struct row_stats {
    size_t n;
    double p50, p95, p99, mean, min, max, server_p50;
    double prompt_tokens, cached, cached_disk, new_tokens; /* sums */
} row_stats;

static row_stats stats_of(const bench *b, const row_filter *f)
{
    row_stats s = {0};
    double *v = xmalloc(b->n_rows * sizeof(double) + 8);
    double *sv = xmalloc(b->n_rows * sizeof(double) + 8);
    double sum = 0;
    for (size_t i = 0; i < b->n_rows; i++) {
        const bench_row *r = &b->rows[i];
        if (!row_match(r, f))
            continue;
        sv[s.n] = r->server_ttft_ms;
        v[s.n++] = r->ttft_ms;
        sum += r->ttft_ms;
        s.prompt_tokens += r->prompt_tokens;
        s.cached += r->cached;
        s.cached_disk += r->cached_disk;
        s.new_tokens += r->new_tokens;
    }
    qsort(v, s.n, sizeof(double), cmp_double);
    qsort(sv, s.n, sizeof(double), cmp_double);
    s.p50 = percentile(v, s.n, 50);
    s.p95 = percentile(v, s.n, 95);
    s.p99 = percentile(v, s.n, 99);
    s.server_p50 = percentile(sv, s.n, 50);
    s.mean = s.n ? sum / (double)s.n : NAN;
    s.min = s.n ? v[0] : NAN;
    s.max = s.n ? v[s.n - 1] : NAN;
    free(v);
    free(sv);
    return s;
}

/* cJSON has no NaN: an empty set's statistics are null. */
static void add_num(cJSON *o, const char *k, double v)
{
    if (isnan(v))
        cJSON_AddNullToObject(o, k);
    else
        cJSON_AddNumberToObject(o, k, round(v * 1000) / 1000);
}

static cJSON *ttft_json(const row_stats *s)
{
    cJSON *t = cJSON_CreateObject();
    add_num(t, "p50", s->p50);
    add_num(t, "p95", s->p95);
    add_num(t, "p99", s->p99);
    add_num(t, "mean", s->mean);
    add_num(t, "min", s->min);
    add_num(t, "max", s->max);
    return t;
}

static cJSON *workload_json(const bench *b, int wl)
{
    const bench_opts *o = &b->o;
    cJSON *w = cJSON_CreateObject();
    cJSON_AddStringToObject(w, "workload", wl_names[wl]);
    cJSON_AddStringToObject(w, "label", o->label);
    cJSON_AddStringToObject(w, "transport", o->http ? "http" : "socket");
    cJSON *p = cJSON_AddObjectToObject(w, "params");
    cJSON_AddNumberToObject(p, "clients", wl == W_SWEEP ? 1 : o->clients);
    if (wl == W_CHAT) {
        cJSON_AddNumberToObject(p, "systems", o->systems);
        cJSON_AddNumberToObject(p, "system_tokens", o->system_tokens);
        cJSON_AddNumberToObject(p, "conversations", o->conversations);
        cJSON_AddNumberToObject(p, "turns", o->turns);
    } else if (wl != W_SWEEP) {
        cJSON_AddNumberToObject(p, wl == W_FEWSHOT ? "preamble_tokens" : "body_tokens",
                                o->system_tokens);
        cJSON_AddNumberToObject(p, "requests", o->requests);
    } else {
        cJSON *ls = cJSON_AddArrayToObject(p, "lengths");
        for (int i = 0; i < o->n_lengths; i++)
            cJSON_AddItemToArray(ls, cJSON_CreateNumber(o->lengths[i]));
    }
    cJSON_AddNumberToObject(p, "user_tokens", o->user_tokens);
    cJSON_AddNumberToObject(p, "reply_tokens", o->reply_tokens);
    if (wl == W_CHAT)
        cJSON_AddNumberToObject(p, "think_ms", o->think_ms);
    cJSON_AddNumberToObject(p, "runs", o->runs);
    cJSON_AddNumberToObject(p, "seed", (double)o->seed);
    cJSON_AddNumberToObject(p, "prefix_seed", (double)(o->prefix_seed ? o->prefix_seed : o->seed));
    cJSON_AddNumberToObject(p, "temp", o->temp);
    cJSON_AddBoolToObject(p, "warm", o->warm);
    cJSON_AddBoolToObject(p, "synthetic_replies", o->http || o->synthetic_replies);

    row_filter all = {wl, 0, 0, F_ALL}, hit = {wl, 0, 0, F_HIT}, miss = {wl, 0, 0, F_MISS};
    row_stats s = stats_of(b, &all), sh = stats_of(b, &hit), sm = stats_of(b, &miss);
    double wall = 0;
    for (size_t i = 0; i < b->n_phases; i++)
        if (b->phases[i].wl == wl)
            wall += b->phases[i].wall_s;
    cJSON_AddNumberToObject(w, "count", (double)s.n);
    cJSON_AddItemToObject(w, "ttft_ms", ttft_json(&s));
    add_num(w, "server_ttft_p50_ms", s.server_p50);
    add_num(w, "hit_ratio", s.prompt_tokens > 0 ? s.cached / s.prompt_tokens : NAN);
    add_num(w, "disk_hit_ratio", s.prompt_tokens > 0 ? s.cached_disk / s.prompt_tokens : NAN);
    cJSON_AddNumberToObject(w, "requests_hit", (double)sh.n);
    add_num(w, "prompt_tokens", s.prompt_tokens);
    add_num(w, "cached_tokens", s.cached);
    add_num(w, "cached_tokens_disk", s.cached_disk);
    add_num(w, "new_tokens", s.new_tokens);
    add_num(w, "wall_s", wall);
    add_num(w, "requests_per_s", wall > 0 ? (double)s.n / wall : NAN);
    add_num(w, "tokens_per_s", wall > 0 ? s.new_tokens / wall : NAN);
    add_num(w, "prompt_tokens_per_s", wall > 0 ? s.prompt_tokens / wall : NAN);
    cJSON *h = cJSON_AddObjectToObject(w, "hits");
    cJSON_AddNumberToObject(h, "count", (double)sh.n);
    cJSON_AddItemToObject(h, "ttft_ms", ttft_json(&sh));
    cJSON *m = cJSON_AddObjectToObject(w, "misses");
    cJSON_AddNumberToObject(m, "count", (double)sm.n);
    cJSON_AddItemToObject(m, "ttft_ms", ttft_json(&sm));

    /* Per run: the p50s whose median over runs is the headline figure. */
    cJSON *runs = cJSON_AddArrayToObject(w, "by_run");
    double *p50s = xmalloc((size_t)o->runs * sizeof(double));
    size_t np = 0;
    for (size_t i = 0; i < b->n_phases; i++) {
        const bench_phase *ph = &b->phases[i];
        if (ph->wl != wl)
            continue;
        row_filter fa = {wl, ph->run, 0, F_ALL}, fh = {wl, ph->run, 0, F_HIT},
                   fm = {wl, ph->run, 0, F_MISS};
        row_stats ra = stats_of(b, &fa), rh = stats_of(b, &fh), rm = stats_of(b, &fm);
        cJSON *r = cJSON_CreateObject();
        cJSON_AddNumberToObject(r, "run", ph->run);
        cJSON_AddNumberToObject(r, "seed", (double)ph->seed);
        cJSON_AddNumberToObject(r, "count", (double)ra.n);
        add_num(r, "ttft_p50_ms", ra.p50);
        add_num(r, "hit_ttft_p50_ms", rh.p50);
        add_num(r, "miss_ttft_p50_ms", rm.p50);
        add_num(r, "hit_ratio", ra.prompt_tokens > 0 ? ra.cached / ra.prompt_tokens : NAN);
        add_num(r, "wall_s", ph->wall_s);
        cJSON_AddItemToArray(runs, r);
        if (!isnan(ra.p50))
            p50s[np++] = ra.p50;
    }
    qsort(p50s, np, sizeof(double), cmp_double);
    add_num(w, "ttft_p50_median_of_runs_ms", percentile(p50s, np, 50));
    free(p50s);

    /* By turn (chat) or by step (sweep: 1 uncached, 2 cached prefix). */
    if (wl == W_CHAT || wl == W_SWEEP) {
        cJSON *turns = cJSON_AddArrayToObject(w, wl == W_CHAT ? "by_turn" : "by_step");
        int nt = wl == W_CHAT ? o->turns : 2;
        for (int t = 1; t <= nt; t++) {
            row_filter ft = {wl, 0, t, F_ALL};
            row_stats st = stats_of(b, &ft);
            cJSON *r = cJSON_CreateObject();
            cJSON_AddNumberToObject(r, wl == W_CHAT ? "turn" : "step", t);
            cJSON_AddNumberToObject(r, "count", (double)st.n);
            add_num(r, "prompt_tokens_mean", st.n ? st.prompt_tokens / (double)st.n : NAN);
            add_num(r, "cached_tokens_mean", st.n ? st.cached / (double)st.n : NAN);
            add_num(r, "cached_tokens_disk_mean", st.n ? st.cached_disk / (double)st.n : NAN);
            cJSON_AddItemToObject(r, "ttft_ms", ttft_json(&st));
            cJSON_AddItemToArray(turns, r);
        }
    }
    return w;
}

/* ---- output ---- */

#define CSV_HEADER                                                                                 \
    "workload,label,run,seed,client,conversation,turn,prompt_tokens,cached_tokens,"                \
    "cached_tokens_disk,ttft_ms,server_ttft_ms,prefill_ms,new_tokens,total_ms,transport"

/* Whether the CSV needs its header: 1 (no file, an empty one, or no --append), 0 (--append to a
 * file with this header), or -1 after a message (--append to a file with another header: one
 * of an older prefixctl, without the transport column; checked before the bench runs). */
static int csv_append_header(const bench_opts *o)
{
    if (!o->append)
        return 1;
    FILE *r = fopen(o->csv, "rb");
    if (!r)
        return 1;
    char line[512] = "";
    int empty = !fgets(line, sizeof line, r);
    fclose(r);
    if (empty)
        return 1;
    line[strcspn(line, "\r\n")] = '\0';
    if (!strcmp(line, CSV_HEADER))
        return 0;
    fprintf(stderr,
            "prefixctl: bench: --csv '%s' --append: the file has other columns (an older "
            "prefixctl's, without 'transport'?): give a new file\n",
            o->csv);
    return -1;
}

static int write_csv(const bench *b)
{
    const bench_opts *o = &b->o;
    int header = csv_append_header(o) == 1;
    FILE *f = fopen(o->csv, o->append ? "ab" : "wb");
    if (!f) {
        fprintf(stderr, "prefixctl: bench: --csv '%s': %s\n", o->csv, strerror(errno));
        return -1;
    }
    if (header)
        fprintf(f, "%s\n", CSV_HEADER);
    for (size_t i = 0; i < b->n_rows; i++) {
        const bench_row *r = &b->rows[i];
        fprintf(f, "%s,%s,%d,%llu,%d,%d,%d,%u,%u,%u,%.3f,%.3f,%.3f,%u,%.3f,%s\n", wl_names[r->wl],
                o->label, r->run, (unsigned long long)(o->seed + (uint64_t)r->run - 1), r->client,
                r->conv, r->turn, r->prompt_tokens, r->cached, r->cached_disk, r->ttft_ms,
                r->server_ttft_ms, r->prefill_ms, r->new_tokens, r->total_ms,
                o->http ? "http" : "socket");
    }
    if (fclose(f) != 0) {
        fprintf(stderr, "prefixctl: bench: --csv '%s': %s\n", o->csv, strerror(errno));
        return -1;
    }
    return 0;
}

static int write_json(const bench *b, cJSON *doc)
{
    char *s = cJSON_Print(doc);
    FILE *f = s ? fopen(b->o.json, "wb") : NULL;
    int ok = f && fputs(s, f) >= 0 && fputc('\n', f) != EOF;
    if (f && fclose(f) != 0)
        ok = 0;
    free(s);
    if (!ok) {
        fprintf(stderr, "prefixctl: bench: --json '%s': %s\n", b->o.json, strerror(errno));
        return -1;
    }
    return 0;
}

static void print_summary(const bench *b, cJSON *wls)
{
    printf("%-12s %-8s %8s %9s %9s %9s %6s %8s %8s\n", "label", "workload", "requests", "p50 ms",
           "p95 ms", "p99 ms", "hits", "req/s", "tok/s");
    cJSON *w;
    cJSON_ArrayForEach(w, wls)
    {
        cJSON *t = cJSON_GetObjectItem(w, "ttft_ms");
        double hr = cJSON_GetNumberValue(cJSON_GetObjectItem(w, "hit_ratio"));
        printf("%-12s %-8s %8.0f %9.1f %9.1f %9.1f %5.0f%% %8.2f %8.1f\n", b->o.label,
               cJSON_GetStringValue(cJSON_GetObjectItem(w, "workload")),
               cJSON_GetNumberValue(cJSON_GetObjectItem(w, "count")),
               cJSON_GetNumberValue(cJSON_GetObjectItem(t, "p50")),
               cJSON_GetNumberValue(cJSON_GetObjectItem(t, "p95")),
               cJSON_GetNumberValue(cJSON_GetObjectItem(t, "p99")), isnan(hr) ? 0 : 100 * hr,
               cJSON_GetNumberValue(cJSON_GetObjectItem(w, "requests_per_s")),
               cJSON_GetNumberValue(cJSON_GetObjectItem(w, "tokens_per_s")));
        cJSON *bt = cJSON_GetObjectItem(w, "by_turn");
        if (!bt)
            bt = cJSON_GetObjectItem(w, "by_step");
        cJSON *r;
        cJSON_ArrayForEach(r, bt)
        {
            cJSON *turn = cJSON_GetObjectItem(r, "turn");
            printf("  %s %-3.0f prompt %7.1f tokens, cached %7.1f (disk %.1f), p50 TTFT %.1f ms\n",
                   turn ? "turn" : "step",
                   cJSON_GetNumberValue(turn ? turn : cJSON_GetObjectItem(r, "step")),
                   cJSON_GetNumberValue(cJSON_GetObjectItem(r, "prompt_tokens_mean")),
                   cJSON_GetNumberValue(cJSON_GetObjectItem(r, "cached_tokens_mean")),
                   cJSON_GetNumberValue(cJSON_GetObjectItem(r, "cached_tokens_disk_mean")),
                   cJSON_GetNumberValue(
                       cJSON_GetObjectItem(cJSON_GetObjectItem(r, "ttft_ms"), "p50")));
        }
    }
}

/* ---- options ---- */

static int parse_int(const char *name, const char *s, long lo, long hi, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi) {
        fprintf(stderr, "prefixctl: bench: %s '%s': expected a whole number from %ld to %ld\n",
                name, s, lo, hi);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static int parse_workloads(const char *s, bench_opts *o)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", s);
    o->n_order = 0;
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        int k = 0;
        while (k < W_COUNT && strcmp(t, wl_names[k]) != 0)
            k++;
        if (k == W_COUNT) {
            fprintf(stderr,
                    "prefixctl: bench: --workload '%s': unknown workload '%s' (chat, fewshot, "
                    "unique, sweep)\n",
                    s, t);
            return -1;
        }
        for (int j = 0; j < o->n_order; j++)
            if (o->order[j] == k) {
                fprintf(stderr, "prefixctl: bench: --workload '%s': '%s' named twice\n", s, t);
                return -1;
            }
        o->order[o->n_order++] = k;
    }
    if (o->n_order == 0) {
        fprintf(stderr, "prefixctl: bench: --workload '%s': name at least one workload\n", s);
        return -1;
    }
    return 0;
}

static int parse_lengths(const char *s, bench_opts *o)
{
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", s);
    o->n_lengths = 0;
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (o->n_lengths == MAX_LENGTHS) {
            fprintf(stderr, "prefixctl: bench: --lengths: at most %d lengths\n", MAX_LENGTHS);
            return -1;
        }
        if (parse_int("--lengths", t, 2, 1 << 24, &o->lengths[o->n_lengths]) != 0)
            return -1;
        o->n_lengths++;
    }
    if (o->n_lengths == 0) {
        fprintf(stderr, "prefixctl: bench: --lengths '%s': give at least one length\n", s);
        return -1;
    }
    o->lengths_given = 1;
    return 0;
}

static int parse_opts(int argc, char **argv, bench_opts *o)
{
    enum {
        O_WL = 256,
        O_CLIENTS,
        O_SYSTEMS,
        O_SYSTOK,
        O_CONV,
        O_TURNS,
        O_USER,
        O_REPLY,
        O_THINK,
        O_REQ,
        O_LEN,
        O_WARM,
        O_RUNS,
        O_SEED,
        O_PSEED,
        O_TEMP,
        O_NS,
        O_LABEL,
        O_CSV,
        O_APPEND,
        O_JSON,
        O_QUIET,
        O_HELP,
        O_SOCK,
        O_HTTP,
        O_KEY,
        O_SYNTH
    };
    static const struct option opts[] = {{"workload", required_argument, 0, O_WL},
                                         {"clients", required_argument, 0, O_CLIENTS},
                                         {"systems", required_argument, 0, O_SYSTEMS},
                                         {"system-tokens", required_argument, 0, O_SYSTOK},
                                         {"conversations", required_argument, 0, O_CONV},
                                         {"turns", required_argument, 0, O_TURNS},
                                         {"user-tokens", required_argument, 0, O_USER},
                                         {"reply-tokens", required_argument, 0, O_REPLY},
                                         {"think-ms", required_argument, 0, O_THINK},
                                         {"requests", required_argument, 0, O_REQ},
                                         {"lengths", required_argument, 0, O_LEN},
                                         {"warm", no_argument, 0, O_WARM},
                                         {"runs", required_argument, 0, O_RUNS},
                                         {"seed", required_argument, 0, O_SEED},
                                         {"prefix-seed", required_argument, 0, O_PSEED},
                                         {"temp", required_argument, 0, O_TEMP},
                                         {"namespace", required_argument, 0, O_NS},
                                         {"label", required_argument, 0, O_LABEL},
                                         {"csv", required_argument, 0, O_CSV},
                                         {"append", no_argument, 0, O_APPEND},
                                         {"json", required_argument, 0, O_JSON},
                                         {"quiet", no_argument, 0, O_QUIET},
                                         {"help", no_argument, 0, O_HELP},
                                         {"socket", required_argument, 0, O_SOCK},
                                         {"http", required_argument, 0, O_HTTP},
                                         {"api-key", required_argument, 0, O_KEY},
                                         {"synthetic-replies", no_argument, 0, O_SYNTH},
                                         {0, 0, 0, 0}};
    optind = 1;
    int ch;
    char *end;
    while ((ch = getopt_long(argc, argv, "hn:", opts, NULL)) != -1) {
        switch (ch) {
        case O_WL:
            if (parse_workloads(optarg, o) != 0)
                return 2;
            break;
        case O_CLIENTS:
            if (parse_int("--clients", optarg, 1, 256, &o->clients) != 0)
                return 2;
            break;
        case O_SYSTEMS:
            if (parse_int("--systems", optarg, 1, 100000, &o->systems) != 0)
                return 2;
            break;
        case O_SYSTOK:
            if (parse_int("--system-tokens", optarg, 0, 1 << 24, &o->system_tokens) != 0)
                return 2;
            break;
        case O_CONV:
            if (parse_int("--conversations", optarg, 1, 1000000, &o->conversations) != 0)
                return 2;
            break;
        case O_TURNS:
            if (parse_int("--turns", optarg, 1, 100000, &o->turns) != 0)
                return 2;
            break;
        case O_USER:
            if (parse_int("--user-tokens", optarg, 1, 1 << 24, &o->user_tokens) != 0)
                return 2;
            break;
        case O_THINK:
            if (parse_int("--think-ms", optarg, 0, 3600 * 1000, &o->think_ms) != 0)
                return 2;
            break;
        case 'n':
        case O_REPLY:
            if (parse_int("--reply-tokens", optarg, 1, 1 << 24, &o->reply_tokens) != 0)
                return 2;
            break;
        case O_REQ:
            if (parse_int("--requests", optarg, 1, 1000000, &o->requests) != 0)
                return 2;
            break;
        case O_LEN:
            if (parse_lengths(optarg, o) != 0)
                return 2;
            break;
        case O_WARM:
            o->warm = 1;
            break;
        case O_RUNS:
            if (parse_int("--runs", optarg, 1, 10000, &o->runs) != 0)
                return 2;
            break;
        case O_SEED:
        case O_PSEED: {
            errno = 0;
            uint64_t x = strtoull(optarg, &end, 10);
            if (errno || *end || end == optarg || optarg[0] == '-' || x == 0) {
                fprintf(stderr, "prefixctl: bench: %s '%s': expected a whole number >= 1\n",
                        ch == O_SEED ? "--seed" : "--prefix-seed", optarg);
                return 2;
            }
            *(ch == O_SEED ? &o->seed : &o->prefix_seed) = x;
            break;
        }
        case O_TEMP:
            o->temp = strtof(optarg, &end);
            if (*end || end == optarg || !(o->temp >= 0)) {
                fprintf(stderr, "prefixctl: bench: --temp '%s': expected a number >= 0\n", optarg);
                return 2;
            }
            break;
        case O_NS:
            o->ns = optarg;
            break;
        case O_LABEL:
            if (!optarg[0] || strpbrk(optarg, ",\"\n\r")) {
                fprintf(stderr,
                        "prefixctl: bench: --label '%s': give a non-empty name without commas, "
                        "quotes or newlines\n",
                        optarg);
                return 2;
            }
            o->label = optarg;
            break;
        case O_CSV:
            o->csv = optarg;
            break;
        case O_APPEND:
            o->append = 1;
            break;
        case O_JSON:
            o->json = optarg;
            break;
        case O_QUIET:
            o->quiet = 1;
            break;
        case O_SOCK:
            o->socket = optarg;
            break;
        case O_HTTP:
            o->http = optarg;
            break;
        case O_KEY:
            o->api_key = optarg;
            break;
        case O_SYNTH:
            o->synthetic_replies = 1;
            break;
        case 'h':
        case O_HELP:
            usage(stdout);
            return -1;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "prefixctl: bench: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (o->append && !o->csv) {
        fprintf(stderr, "prefixctl: bench: --append needs --csv FILE\n");
        return 2;
    }
    if (o->api_key && !o->http) {
        fprintf(stderr, "prefixctl: bench: --api-key needs --http URL\n");
        return 2;
    }
    if (o->http && o->socket) {
        fprintf(stderr, "prefixctl: bench: give --http URL or --socket PATH, not both\n");
        return 2;
    }
    return 0;
}

/* Checks the parameters against the model (context, vocabulary). Returns 0 or 2. */
static int check_fit(bench *b)
{
    bench_opts *o = &b->o;
    long seq = b->seq_len;
    if (b->vocab <= TOK_FIRST) {
        fprintf(stderr, "prefixctl: bench: the model's vocabulary (%d) has no ids past BOS/EOS\n",
                b->vocab);
        return 2;
    }
    for (int i = 0; i < o->n_order; i++) {
        int wl = o->order[i];
        long P = o->system_tokens, U = o->user_tokens, R = o->reply_tokens, T = o->turns;
        if (wl == W_CHAT && 1 + P + T * (U + R) > seq) {
            fprintf(stderr,
                    "prefixctl: bench: chat: the last turn's prompt and reply (1 + %ld + %ld x "
                    "(%ld + %ld) = %ld tokens) do not fit the model's context of %ld; lower "
                    "--system-tokens, --turns, --user-tokens or --reply-tokens\n",
                    P, T, U, R, 1 + P + T * (U + R), seq);
            return 2;
        }
        if ((wl == W_FEWSHOT || wl == W_UNIQUE) && 1 + P + U + R > seq) {
            fprintf(stderr,
                    "prefixctl: bench: %s: a prompt and its reply (1 + %ld + %ld + %ld = %ld "
                    "tokens) do not fit the model's context of %ld; lower --system-tokens, "
                    "--user-tokens or --reply-tokens\n",
                    wl_names[wl], P, U, R, 1 + P + U + R, seq);
            return 2;
        }
        if (wl != W_SWEEP)
            continue;
        if (!o->lengths_given) {
            static const int def[] = {128, 256, 512, 1024, 1536, 2000};
            o->n_lengths = 0;
            for (size_t k = 0; k < sizeof def / sizeof def[0]; k++)
                if (def[k] + R <= seq && def[k] > U)
                    o->lengths[o->n_lengths++] = def[k];
            if (o->n_lengths == 0) {
                fprintf(stderr,
                        "prefixctl: bench: sweep: no default length fits the model's context "
                        "of %ld; give --lengths\n",
                        seq);
                return 2;
            }
        }
        for (int k = 0; k < o->n_lengths; k++) {
            long L = o->lengths[k];
            if (L <= U || L + R > seq) {
                fprintf(stderr,
                        "prefixctl: bench: sweep: length %ld must exceed --user-tokens (%ld) and "
                        "leave room for --reply-tokens (%ld) in the model's context of %ld\n",
                        L, U, R, seq);
                return 2;
            }
        }
    }
    return 0;
}

/* --http: one handle per client, and the model's figures from the server. Returns 0, 2 (a bad
 * URL or key) or 1 (the server could not be reached or said too little). */
static int http_connect(bench *b)
{
    const bench_opts *o = &b->o;
    b->hconns = calloc((size_t)o->clients, sizeof *b->hconns);
    if (!b->hconns)
        return 1;
    for (int i = 0; i < o->clients; i++) {
        char err[1024];
        if (hc_open(o->http, o->api_key, &b->hconns[i], err, sizeof err) != 0) {
            fprintf(stderr, "prefixctl: bench: --http %s\n", err);
            return 2;
        }
    }
    hc_server_info info = {0};
    if (hc_server_info_get(b->hconns[0], &info) != 0) {
        fprintf(stderr, "prefixctl: bench: %s\n", hc_errmsg(b->hconns[0]));
        return 1;
    }
    b->vocab = info.vocab;
    b->seq_len = info.seq_len;
    b->block_tokens = 0; /* not told over HTTP */
    snprintf(b->model, sizeof b->model, "%s", info.model);
    return 0;
}

int bench_main(const char *sock, int argc, char **argv)
{
    bench *b = calloc(1, sizeof *b);
    if (!b) {
        fprintf(stderr, "prefixctl: bench: out of memory\n");
        return 1;
    }
    bench_opts *o = &b->o;
    *o = (bench_opts){.order = {W_CHAT},
                      .n_order = 1,
                      .clients = 1,
                      .systems = 1,
                      .system_tokens = 1500,
                      .turns = 4,
                      .user_tokens = 40,
                      .reply_tokens = 16,
                      .requests = 8,
                      .runs = 1,
                      .seed = 1,
                      .label = "default"};
    int rc = parse_opts(argc, argv, o);
    if (rc != 0) {
        free(b);
        return rc < 0 ? 0 : rc;
    }
    if (o->conversations == 0)
        o->conversations = o->systems > o->clients ? o->systems : o->clients;
    if (o->csv && csv_append_header(o) < 0) {
        free(b);
        return 1;
    }
    pthread_mutex_init(&b->mu, NULL);
    if (o->http) {
        rc = http_connect(b);
        if (rc == 0)
            rc = check_fit(b);
    } else {
        b->conns = calloc((size_t)o->clients, sizeof *b->conns);
        rc = b->conns ? 0 : 1;
    }
    for (int i = 0; !o->http && i < o->clients && rc == 0; i++) {
        char err[1024];
        if (pfx_connect(o->socket ? o->socket : sock, &b->conns[i], err, sizeof err) != 0) {
            fprintf(stderr, "prefixctl: bench: client %d: %s\n", i, err);
            rc = 1;
        }
    }
    if (rc == 0 && !o->http) {
        const proto_hello_ok *h = pfx_server(b->conns[0]);
        b->vocab = (int)h->vocab_size;
        b->seq_len = (int)h->seq_len;
        b->block_tokens = (int)h->block_tokens;
        snprintf(b->model, sizeof b->model, "%.*s", (int)h->model.len, h->model.p);
        rc = check_fit(b);
    }
    if (rc == 0) {
        b->phases = xmalloc((size_t)o->n_order * (size_t)o->runs * sizeof *b->phases);
        int tty = isatty(2);
        for (int i = 0; i < o->n_order && rc == 0; i++)
            for (int r = 1; r <= o->runs && rc == 0; r++)
                if (run_phase(b, o->order[i], r, tty) != 0) {
                    fprintf(stderr, "prefixctl: bench: %s\n", b->fail_msg);
                    rc = 1;
                }
    }
    if (rc == 0 || b->n_rows > 0) {
        /* Even after a failure, what was measured is written out. */
        cJSON *doc = cJSON_CreateObject();
        cJSON_AddStringToObject(doc, "label", o->label);
        cJSON_AddStringToObject(doc, "transport", o->http ? "http" : "socket");
        if (o->http)
            cJSON_AddStringToObject(doc, "url", o->http);
        cJSON *srv = cJSON_AddObjectToObject(doc, "server");
        cJSON_AddStringToObject(srv, "model", b->model);
        cJSON_AddNumberToObject(srv, "vocab_size", b->vocab);
        cJSON_AddNumberToObject(srv, "seq_len", b->seq_len);
        cJSON_AddNumberToObject(srv, "block_tokens", b->block_tokens);
        cJSON *wls = cJSON_AddArrayToObject(doc, "workloads");
        for (int i = 0; i < o->n_order; i++)
            cJSON_AddItemToArray(wls, workload_json(b, o->order[i]));
        if (o->csv && write_csv(b) != 0)
            rc = 1;
        if (o->json && write_json(b, doc) != 0)
            rc = 1;
        if (!o->quiet)
            print_summary(b, wls);
        cJSON_Delete(doc);
    }
    for (int i = 0; b->conns && i < o->clients; i++)
        pfx_close(b->conns[i]);
    for (int i = 0; b->hconns && i < o->clients; i++)
        hc_close(b->hconns[i]);
    free(b->conns);
    free(b->hconns);
    free(b->rows);
    free(b->phases);
    pthread_mutex_destroy(&b->mu);
    free(b);
    return rc;
}
