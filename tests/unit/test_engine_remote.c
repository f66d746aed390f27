/* test_engine_remote.c — the engine in-process (stories260K) with the remote tier on a real
 * redis-server: two engines with separate RAM share blocks through it with exactly the uncached
 * greedy tokens; a chain goes RAM -> disk -> remote; a request cancelled while its remote load
 * is held up is freed when the load comes back; an unreachable server costs nothing but misses.
 * Cases that need redis-server pass with a "skipped" line when it is not installed. */
#include "engine.h"
#include "harness.h"
#include "redis_server.h"
#include "remote_thread.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MODEL_260K PREFIXD_MODELS_DIR "/stories260K.bin"
#define TOK512 PREFIXD_MODELS_DIR "/tok512.bin"
#define MAX_REQ 8
#define MAX_OUT 64

typedef struct result {
    int32_t toks[MAX_OUT];
    int n, done, error;
    engine_done d;
} result;

static result res[MAX_REQ];
static model *M;
static model_tokenizer *T;
static int kv_type; /* the K/V type of every engine new_engine() makes */

static void emit_cb(void *arg, const engine_event *ev)
{
    (void)arg;
    result *r = &res[ev->handle];
    if (ev->type == ENGINE_EV_TOKEN && r->n < MAX_OUT)
        r->toks[r->n++] = ev->token;
    else if (ev->type == ENGINE_EV_DONE)
        r->done = 1, r->d = ev->done;
    else if (ev->type == ENGINE_EV_ERROR)
        r->error = 1;
}

static void setup(void)
{
    char msg[512];
    if (!M)
        CHECK_MSG(model_load(MODEL_260K, &M, msg, sizeof msg) == 0, "%s", msg);
    if (!T)
        CHECK_MSG(model_tokenizer_load(TOK512, 512, &T, msg, sizeof msg) == 0, "%s", msg);
    memset(res, 0, sizeof res);
}

/* url NULL: no remote tier; disk NULL: no disk tier. With the test's redis-server running, waits
 * until the remote thread has connected (it connects in the background: a request before that
 * finds nothing remote and its blocks are not written). */
static engine *new_engine(const char *url, const char *disk, int no_cache, double timeout_ms)
{
    char msg[512];
    engine_opts o = {0};
    o.no_cache = no_cache;
    o.cache_mem = (size_t)8 << 20;
    o.threads = 2;
    o.emit = emit_cb;
    o.remote_url = url;
    o.remote_timeout_ms = timeout_ms;
    o.kv_type = kv_type;
    o.disk_dir = disk;
    engine *e = NULL;
    CHECK_MSG(engine_new(M, T, &o, &e, msg, sizeof msg) == 0, "%s", msg);
    remote_thread_stats st = {0};
    for (int i = 0; url && redis_pid > 0 && i < 1000 && !st.connected; i++) {
        engine_remote_stats(e, &st);
        if (!st.connected)
            usleep(10000);
    }
    CHECK(!url || redis_pid == 0 || st.connected);
    return e;
}

static void run_all(engine *e)
{
    for (int i = 0; i < 100000 && engine_step(e) > 0; i++)
        ;
    CHECK_EQ_INT(engine_live(e), 0);
}

static void submit(engine *e, uint64_t h, const int32_t *ids, size_t n, uint32_t max_new)
{
    memset(&res[h], 0, sizeof res[h]);
    engine_request q = {.handle = h,
                        .kind = ENGINE_REQ_GENERATE,
                        .tokens = ids,
                        .n_tokens = n,
                        .max_new = max_new,
                        .ns = "t",
                        .ns_len = 1};
    engine_submit(e, &q);
}

static void prompt_ids(int32_t *t, int n, unsigned seed)
{
    t[0] = MODEL_TOK_BOS;
    for (int i = 1; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        t[i] = 3 + (int32_t)((seed >> 9) % 509);
    }
}

static void check_same(const result *a, const result *b)
{
    CHECK(a->done && b->done);
    CHECK_EQ_INT(a->n, b->n);
    for (int i = 0; i < a->n; i++)
        CHECK_MSG(a->toks[i] == b->toks[i], "token %d: %d vs %d", i, a->toks[i], b->toks[i]);
}

/* The uncached tokens of ids into res[h]. */
static void reference(uint64_t h, const int32_t *ids, size_t n)
{
    engine *e = new_engine(NULL, NULL, 1, 0);
    submit(e, h, ids, n, 20);
    run_all(e);
    engine_free(e);
}

/* Waits until the engine's remote writes are all sent. */
static void flush_remote(engine *e)
{
    remote_thread_stats st;
    for (int i = 0; i < 500; i++) {
        CHECK_EQ_INT(engine_remote_stats(e, &st), 0);
        if (st.write_pending == 0 && st.writes_queued > 0)
            return;
        usleep(10000);
    }
    HARNESS_FAIL("remote writes still pending: %llu", (unsigned long long)st.write_pending);
}

static char url[700];

static int start_redis(void)
{
    if (!have_redis()) {
        printf("skipped: no redis-server\n");
        CHECK(1);
        return 0;
    }
    redis_start("");
    snprintf(url, sizeof url, "unix:%s", redis_sock);
    return 1;
}

static void test_share(void)
{
    setup();
    if (!start_redis())
        return;
    int32_t ids[200];
    prompt_ids(ids, 200, 7);
    reference(0, ids, 200);
    engine *a = new_engine(url, NULL, 0, 1000), *b = new_engine(url, NULL, 0, 1000);
    submit(a, 1, ids, 150, 20); /* the first 150 tokens: 9 full blocks */
    run_all(a);
    flush_remote(a);
    submit(b, 2, ids, 200, 20);
    run_all(b);
    check_same(&res[0], &res[2]);
    /* 9 full blocks, and the first 6 rows of a's tenth block (its prompt's last 6 tokens, then
     * what it generated), found through their partial pointer where the chain ended. */
    CHECK_EQ_INT(res[2].d.cached_tokens_remote, 150);
    CHECK_EQ_INT(res[2].d.cached_tokens, 150);
    engine_stats st;
    engine_get_stats(b, &st);
    CHECK_EQ_U64(st.cached_tokens_remote, 150);
    /* Now in b's RAM: no remote load. */
    submit(b, 3, ids, 200, 20);
    run_all(b);
    check_same(&res[0], &res[3]);
    CHECK_EQ_INT(res[3].d.cached_tokens_remote, 0);
    CHECK(res[3].d.cached_tokens >= 192);
    engine_free(a);
    engine_free(b);
    redis_stop();
}

/* Sharing through Redis with K/V stored as f16 and as q8_0; and daemons of different K/V types
 * on one server never read each other's blocks (the type is in the root key and the header). */
static void test_share_kv_types(void)
{
    int types[] = {MODEL_TYPE_F16, MODEL_TYPE_Q8_0};
    for (int i = 0; i < 2; i++) {
        kv_type = types[i];
        fprintf(stderr, "  [%s K/V]\n", model_type_name(kv_type));
        test_share();
    }
    setup();
    if (!start_redis()) {
        kv_type = MODEL_TYPE_F32;
        return;
    }
    int32_t ids[200];
    prompt_ids(ids, 200, 9);
    kv_type = MODEL_TYPE_Q8_0;
    reference(0, ids, 200);
    kv_type = MODEL_TYPE_F16;
    engine *a = new_engine(url, NULL, 0, 1000);
    submit(a, 1, ids, 150, 20);
    run_all(a);
    flush_remote(a);
    kv_type = MODEL_TYPE_Q8_0;
    engine *b = new_engine(url, NULL, 0, 1000);
    submit(b, 2, ids, 200, 20);
    run_all(b);
    check_same(&res[0], &res[2]);
    CHECK_EQ_INT(res[2].d.cached_tokens_remote, 0);
    engine_free(a);
    engine_free(b);
    redis_stop();
    kv_type = MODEL_TYPE_F32;
}

/* Disk holds the first blocks, Redis the rest: one request takes both, in chain order. */
static void test_disk_then_remote(void)
{
    setup();
    if (!start_redis())
        return;
    char disk[600];
    snprintf(disk, sizeof disk, "%s/disk", harness_tmpdir());
    int32_t ids[200];
    prompt_ids(ids, 200, 11);
    reference(0, ids, 200);
    engine *b = new_engine(NULL, disk, 0, 0);
    submit(b, 1, ids, 49, 1); /* 3 full blocks, written to disk at engine_free */
    run_all(b);
    engine_free(b);
    engine *a = new_engine(url, NULL, 0, 1000);
    submit(a, 2, ids, 150, 1);
    run_all(a);
    flush_remote(a);
    engine_free(a);
    b = new_engine(url, disk, 0, 1000);
    submit(b, 3, ids, 200, 20);
    run_all(b);
    check_same(&res[0], &res[3]);
    CHECK_EQ_INT(res[3].d.cached_tokens_disk, 48);
    CHECK_EQ_INT(res[3].d.cached_tokens_remote, 96);
    CHECK_EQ_INT(res[3].d.cached_tokens, 144);
    engine_free(b);
    redis_stop();
}

/* Cancelled while its load is held up by a stopped server: freed when the load comes back (past
 * the deadline); the engine goes on. */
static void test_cancel_while_loading(void)
{
    setup();
    if (!start_redis())
        return;
    int32_t ids[200];
    prompt_ids(ids, 200, 13);
    reference(0, ids, 200);
    engine *a = new_engine(url, NULL, 0, 1000);
    submit(a, 1, ids, 150, 1);
    run_all(a);
    flush_remote(a);
    engine *b = new_engine(url, NULL, 0, 300);
    remote_thread_stats st;
    kill(redis_pid, SIGSTOP);
    submit(b, 2, ids, 200, 20);
    engine_step(b); /* admitted: its remote load is out */
    CHECK_EQ_INT(engine_cancel(b, 2), 0);
    CHECK(res[2].done && res[2].d.finish == ENGINE_FINISH_CANCELLED);
    submit(b, 3, ids, 200, 20);
    run_all(b); /* waits out the deadline, then computes */
    kill(redis_pid, SIGCONT);
    check_same(&res[0], &res[3]);
    CHECK_EQ_INT(res[3].d.cached_tokens_remote, 0);
    engine_remote_stats(b, &st);
    CHECK(st.remote.timeouts >= 1);
    engine_free(a);
    engine_free(b);
    redis_stop();
}

/* Nobody listens: the engine starts, serves, counts what it could not write. */
static void test_unreachable(void)
{
    setup();
    char u[700];
    snprintf(u, sizeof u, "unix:%s/nobody.sock", harness_tmpdir());
    int32_t ids[100];
    prompt_ids(ids, 100, 17);
    reference(0, ids, 100);
    engine *e = new_engine(u, NULL, 0, 50);
    submit(e, 1, ids, 100, 20);
    run_all(e);
    check_same(&res[0], &res[1]);
    remote_thread_stats st;
    for (int i = 0; i < 200; i++) {
        engine_remote_stats(e, &st);
        if (st.writes_failed > 0)
            break;
        usleep(10000);
    }
    CHECK(st.writes_failed > 0 && !st.connected && st.remote.connect_fails >= 1);
    engine_free(e);
    /* A URL that cannot be used is refused by engine_new with a message. */
    char msg[512];
    engine_opts o = {
        .cache_mem = (size_t)8 << 20, .threads = 2, .emit = emit_cb, .remote_url = "http://nope"};
    engine *bad = NULL;
    CHECK_EQ_INT(engine_new(M, T, &o, &bad, msg, sizeof msg), ENGINE_EREMOTE);
    CHECK_STR_CONTAINS(msg, "not a URL");
    CHECK(bad == NULL);
}

static const harness_case cases[] = {
    {"share", test_share},
    {"share_kv_types", test_share_kv_types},
    {"disk_then_remote", test_disk_then_remote},
    {"cancel_while_loading", test_cancel_while_loading},
    {"unreachable", test_unreachable},
};

HARNESS_MAIN(cases)
