/* test_engine.c — the engine in-process on stories260K: cached runs give exactly the uncached
 * greedy tokens, chats reuse their history, batches do not change a request's tokens, collisions
 * are refused, bad input is reported. */
#include "disk_thread.h"
#include "engine.h"
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MODEL_260K PREFIXD_MODELS_DIR "/stories260K.bin"
#define TOK512 PREFIXD_MODELS_DIR "/tok512.bin"

#define MAX_REQ 64
#define MAX_OUT 600

/* What the events said, per handle. */
typedef struct result {
    int32_t toks[MAX_OUT];
    int n;
    engine_logprobs lp[4]; /* the first tokens' log-probabilities, when asked */
    int n_lp;
    int done, error, code;
    engine_done d;
    char msg[256];
} result;

static result res[MAX_REQ];
static int kv_type; /* the K/V type of every engine new_engine() makes */
static model *M;
static model_tokenizer *T;

static void emit_cb(void *arg, const engine_event *ev)
{
    (void)arg;
    result *r = &res[ev->handle];
    switch (ev->type) {
    case ENGINE_EV_TOKEN:
        if (r->n < MAX_OUT)
            r->toks[r->n++] = ev->token;
        if (ev->logprobs && r->n_lp < 4)
            r->lp[r->n_lp++] = *ev->logprobs;
        break;
    case ENGINE_EV_DONE:
        r->done = 1;
        r->d = ev->done;
        break;
    case ENGINE_EV_ERROR:
        r->error = 1;
        r->code = ev->code;
        snprintf(r->msg, sizeof r->msg, "%s", ev->msg);
        break;
    }
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

static engine *new_engine(int no_cache, size_t mem, int key_bits, int max_batch, int max_queue)
{
    char msg[512];
    engine_opts o = {0};
    o.no_cache = no_cache;
    o.cache_mem = mem;
    o.test_key_bits = key_bits;
    o.max_batch = max_batch;
    o.max_queue = max_queue;
    o.threads = 2;
    o.kv_type = kv_type;
    o.emit = emit_cb;
    engine *e = NULL;
    CHECK_MSG(engine_new(M, T, &o, &e, msg, sizeof msg) == 0, "%s", msg);
    return e;
}

static void run_all(engine *e)
{
    for (int i = 0; i < 100000 && engine_step(e) > 0; i++)
        ;
    CHECK_EQ_INT(engine_live(e), 0);
}

static void submit_ids(engine *e, uint64_t h, const int32_t *ids, size_t n, uint32_t max_new)
{
    memset(&res[h], 0, sizeof res[h]);
    engine_request q = {0};
    q.handle = h;
    q.kind = ENGINE_REQ_GENERATE;
    q.tokens = ids;
    q.n_tokens = n;
    q.max_new = max_new;
    q.ns = "test";
    q.ns_len = 4;
    engine_submit(e, &q);
}

/* A prompt of n ids: BOS then a deterministic pseudo-random walk over the vocabulary. */
static void prompt_ids(int32_t *t, int n, unsigned seed)
{
    t[0] = MODEL_TOK_BOS;
    for (int i = 1; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        t[i] = 3 + (int32_t)((seed >> 9) % 509);
    }
}

static void check_same(const result *a, const result *b, const char *what, int len)
{
    CHECK_MSG(a->done && b->done, "%s (len %d): not done (%s / %s)", what, len, a->msg, b->msg);
    CHECK_MSG(a->n == b->n, "%s (len %d): %d vs %d tokens", what, len, a->n, b->n);
    for (int i = 0; i < a->n; i++)
        CHECK_MSG(a->toks[i] == b->toks[i], "%s (len %d): token %d is %d vs %d", what, len, i,
                  a->toks[i], b->toks[i]);
}

/* For prompts of 1 to 300 tokens: after a run of a shorter prompt sharing its prefix (on and
 * off block boundaries), the full prompt gives exactly the uncached greedy tokens, and the
 * cached token count is the shared prefix's full blocks. */
static void cached_equals_uncached_on(const int *lens, int nl)
{
    engine *ref = new_engine(1, 64 << 20, 0, 4, 4);
    engine *e = new_engine(0, 64 << 20, 0, 4, 4);
    static int32_t ids[310];
    for (int li = 0; li < nl; li++) {
        int n = lens[li];
        prompt_ids(ids, n, (unsigned)n * 7919u);
        submit_ids(ref, 1, ids, (size_t)n, 24);
        run_all(ref);
        /* Warm the cache with a prefix of k tokens, then ask for all n. */
        int k = n * 2 / 3;
        if (k > 0) {
            submit_ids(e, 2, ids, (size_t)k, 4);
            run_all(e);
        }
        submit_ids(e, 3, ids, (size_t)n, 24);
        run_all(e);
        check_same(&res[1], &res[3], "cached vs uncached", n);
        int B = 16;
        int expect = k > 0 ? (k / B) * B : 0; /* k's full blocks (k's own last-token rule) */
        if (k > 0 && k % B == 0)
            expect = ((k - 1) / B) * B; /* ...unless k's run kept its last block from itself */
        /* The second run of k published its prompt's full blocks, plus generated ones (and a
         * block it filled may give this run the rows it shares: never the last token). */
        int cap = ((n - 1) / B) * B;
        CHECK_MSG((int)res[3].d.cached_tokens <= (n - 1 > 0 ? n - 1 : 0), "len %d: cached %u > %d",
                  n, res[3].d.cached_tokens, n - 1);
        CHECK_MSG((int)res[3].d.cached_tokens >= (expect < cap ? expect : cap),
                  "len %d: cached %u, expected at least %d", n, res[3].d.cached_tokens, expect);
        /* And once more: now everything but the last token comes from the cache: the full
         * blocks, and the rows of the last partial block, copied from the block the previous
         * run filled (with no full block before it, there is no parent to find it under). */
        submit_ids(e, 4, ids, (size_t)n, 24);
        run_all(e);
        check_same(&res[1], &res[4], "fully cached vs uncached", n);
        CHECK_EQ_INT(res[4].d.cached_tokens, cap >= B ? n - 1 : 0);
    }
    engine_free(ref);
    engine_free(e);
}

static void test_cached_equals_uncached(void)
{
    setup();
    int lens[80], nl = 0;
    for (int n = 1; n <= 300; n += 11)
        lens[nl++] = n;
    int edges[] = {15, 16, 17, 31, 32, 33, 48, 64, 65, 127, 128, 129, 255, 256, 257, 300};
    for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++)
        lens[nl++] = edges[i];
    cached_equals_uncached_on(lens, nl);
}

/* A synthetic GGUF model of the vocabulary T has (512) in weight type type_name, architecture
 * arch, weights drawn from seed; loaded (the caller frees it). */
static model *synth_gguf_model(const char *type_name, const char *arch, unsigned seed)
{
    char msg[512], path[PATH_MAX];
    model_config c;
    int type;
    model *m = NULL;
    CHECK_MSG(model_shape_parse("256,512,2,4,2,512,512", &c, msg, sizeof msg) == 0, "%s", msg);
    CHECK(model_type_parse(type_name, &type) == 0);
    snprintf(path, sizeof path, "%s/%s-%s-%u.gguf", harness_tmpdir(), type_name, arch, seed);
    CHECK_MSG(model_synth_write_gguf(path, &c, arch, type, seed, msg, sizeof msg) == 0, "%s", msg);
    CHECK_MSG(model_load(path, &m, msg, sizeof msg) == 0, "%s", msg);
    fprintf(stderr, "  [%s %s]\n", type_name, arch);
    return m;
}

/* The same on synthetic GGUF models of every weight type (rows of 256 and 512, so every type
 * applies; the byte-level vocabulary of 512 that T has), on block edges and between them. */
static void test_cached_equals_uncached_types(void)
{
    static const char *const types[] = {"f32",  "f16",  "bf16", "q8_0", "q4_0", "q4_1",
                                        "q5_0", "q5_1", "q4_k", "q5_k", "q6_k", "q4_k_m"};
    int lens[] = {1, 17, 129};
    setup();
    model *keep = M;
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        M = synth_gguf_model(types[i], i % 2 ? "qwen2" : "llama", 3);
        cached_equals_uncached_on(lens, (int)(sizeof lens / sizeof lens[0]));
        model_free(M);
    }
    M = keep;
}

/* Turn 2 = turn 1's prompt + its reply + new ids: the whole history's full blocks are cached. */
static void test_chat_history_cached(void)
{
    setup();
    engine *ref = new_engine(1, 64 << 20, 0, 4, 4);
    engine *e = new_engine(0, 64 << 20, 0, 4, 4);
    static int32_t conv[600];
    int n = 40;
    prompt_ids(conv, n, 99);
    for (int turn = 0; turn < 4; turn++) {
        submit_ids(e, 1, conv, (size_t)n, 30);
        run_all(e);
        submit_ids(ref, 2, conv, (size_t)n, 30);
        run_all(ref);
        check_same(&res[2], &res[1], "chat turn", turn);
        if (turn > 0) {
            /* Everything up to the last full block before the new user ids is cached. */
            CHECK_MSG((int)res[1].d.cached_tokens >= ((n - 12) / 16) * 16 - 16,
                      "turn %d: cached %u of %d", turn, res[1].d.cached_tokens, n);
        }
        memcpy(conv + n, res[1].toks, (size_t)res[1].n * sizeof(int32_t));
        n += res[1].n;
        int32_t user[12];
        prompt_ids(user, 12, (unsigned)turn + 5);
        memcpy(conv + n, user + 1, 11 * sizeof(int32_t));
        n += 11;
    }
    engine_free(ref);
    engine_free(e);
}

/* Eight requests at once give each exactly its tokens when run alone. */
static void test_batch_independent(void)
{
    setup();
    engine *e = new_engine(0, 64 << 20, 0, 8, 8);
    static int32_t ids[8][100];
    result alone[8];
    for (int i = 0; i < 8; i++) {
        prompt_ids(ids[i], 20 + 9 * i, 1000 + (unsigned)i);
        submit_ids(e, 10, ids[i], (size_t)(20 + 9 * i), 40);
        run_all(e);
        alone[i] = res[10];
    }
    engine_free(e);
    e = new_engine(1, 64 << 20, 0, 8, 8);
    for (int i = 0; i < 8; i++)
        submit_ids(e, (uint64_t)i + 1, ids[i], (size_t)(20 + 9 * i), 40);
    run_all(e);
    for (int i = 0; i < 8; i++)
        check_same(&alone[i], &res[i + 1], "batched vs alone", i);
    engine_free(e);
}

/* Keys cut to 3 bits: nearly every block collides; the token and parent checks refuse the wrong
 * blocks and the outputs stay right. */
static void test_collisions(void)
{
    setup();
    engine *ref = new_engine(1, 64 << 20, 0, 4, 4);
    engine *e = new_engine(0, 64 << 20, 3, 4, 4);
    static int32_t ids[200];
    for (int r = 0; r < 12; r++) {
        int n = 40 + 13 * r;
        prompt_ids(ids, n, 500 + (unsigned)(r % 4));
        submit_ids(ref, 1, ids, (size_t)n, 16);
        run_all(ref);
        submit_ids(e, 2, ids, (size_t)n, 16);
        run_all(e);
        check_same(&res[1], &res[2], "collision run", n);
    }
    cache_stats st;
    cache_get_stats(engine_cache(e), &st);
    CHECK_MSG(st.collisions > 0, "no collision happened (%llu)", (unsigned long long)st.collisions);
    engine_free(ref);
    engine_free(e);
}

/* A cache of a few blocks: constant eviction, outputs unchanged. */
static void test_eviction_pressure(void)
{
    setup();
    const model_config *c = model_get_config(M);
    size_t block = model_kv_block_floats(c, 16) * sizeof(float);
    engine *ref = new_engine(1, 64 << 20, 0, 4, 4);
    engine *e = new_engine(0, block * 40, 0, 2, 8);
    static int32_t ids[4][300];
    for (int i = 0; i < 4; i++)
        prompt_ids(ids[i], 200, 77 + (unsigned)i);
    for (int round = 0; round < 3; round++)
        for (int i = 0; i < 4; i++) {
            int n = 100 + 30 * ((i + round) % 4);
            submit_ids(ref, 1, ids[i], (size_t)n, 20);
            run_all(ref);
            submit_ids(e, 2, ids[i], (size_t)n, 20);
            run_all(e);
            check_same(&res[1], &res[2], "under eviction", n);
        }
    cache_stats st;
    cache_get_stats(engine_cache(e), &st);
    CHECK(st.evictions > 0);
    CHECK_EQ_U64(st.slots_used, st.slots_cached); /* no private block left behind */
    engine_free(ref);
    engine_free(e);
}

static void test_bad_input(void)
{
    setup();
    engine *e = new_engine(0, 64 << 20, 0, 1, 1);
    int32_t ids[600];
    prompt_ids(ids, 600, 1);
    submit_ids(e, 1, ids, 513, 5);
    CHECK(res[1].error && res[1].code == ENGINE_ETOOLONG);
    CHECK_STR_CONTAINS(res[1].msg, "513");
    ids[5] = 512;
    submit_ids(e, 2, ids, 10, 5);
    CHECK(res[2].error && res[2].code == ENGINE_EBADTOKEN);
    CHECK_STR_CONTAINS(res[2].msg, "512");
    submit_ids(e, 3, ids, 0, 5);
    CHECK(res[3].error && res[3].code == ENGINE_EINVAL);
    ids[5] = 7;
    /* One running + one queued fill the engine; the third is BUSY. */
    submit_ids(e, 4, ids, 10, 50);
    submit_ids(e, 5, ids, 10, 50);
    submit_ids(e, 6, ids, 10, 50);
    CHECK(!res[4].error && !res[5].error);
    CHECK(res[6].error && res[6].code == ENGINE_EBUSY);
    /* Cancel mid-generation: DONE with CANCELLED. */
    for (int i = 0; i < 5; i++)
        engine_step(e);
    CHECK(res[4].n > 0 && !res[4].done);
    CHECK_EQ_INT(engine_cancel(e, 4), 0);
    CHECK(res[4].done && res[4].d.finish == ENGINE_FINISH_CANCELLED);
    CHECK_EQ_INT(engine_cancel(e, 4), ENGINE_ENOTFOUND);
    run_all(e);
    CHECK(res[5].done && res[5].d.finish == ENGINE_FINISH_LENGTH && res[5].n == 50);
    /* A prompt that fills the context: one token, then finish LENGTH. */
    submit_ids(e, 7, ids, 512, 10);
    run_all(e);
    CHECK(res[7].done && res[7].d.finish == ENGINE_FINISH_LENGTH);
    CHECK_EQ_INT(res[7].n, 1);
    engine_free(e);
}

static void test_warm_and_pin(void)
{
    setup();
    const model_config *c = model_get_config(M);
    size_t block = model_kv_block_floats(c, 16) * sizeof(float);
    char msg[256];
    engine_opts o = {0};
    o.cache_mem = block * 64;
    o.pin_max = block * 10;
    o.emit = emit_cb;
    o.threads = 1;
    engine *e = NULL;
    CHECK_MSG(engine_new(M, T, &o, &e, msg, sizeof msg) == 0, "%s", msg);
    int32_t ids[400];
    prompt_ids(ids, 400, 3);
    engine_request q = {0};
    q.kind = ENGINE_REQ_WARM;
    q.tokens = ids;
    q.n_tokens = 160; /* 10 blocks: exactly the budget */
    q.pin = 1;
    q.handle = 1;
    q.ns = "test";
    q.ns_len = 4;
    engine_submit(e, &q);
    run_all(e);
    CHECK_MSG(res[1].done && !res[1].error, "warm+pin failed: %s", res[1].msg);
    CHECK_EQ_INT(res[1].n, 0);
    cache_stats st;
    cache_get_stats(engine_cache(e), &st);
    CHECK_EQ_U64(st.slots_pinned, 10);
    /* Another pinned prefix is beyond the budget: refused, nothing pinned. */
    q.handle = 2;
    q.tokens = ids + 200;
    q.n_tokens = 32;
    engine_submit(e, &q);
    run_all(e);
    CHECK(res[2].error && res[2].code == ENGINE_EPINMAX);
    /* Heavy traffic evicts everything but the pinned blocks: the warm prefix still hits. */
    for (int i = 0; i < 6; i++) {
        int32_t other[300];
        prompt_ids(other, 300, 1000 + (unsigned)i);
        submit_ids(e, 3, other, 300, 4);
        run_all(e);
    }
    submit_ids(e, 4, ids, 170, 4);
    run_all(e);
    CHECK_EQ_INT(res[4].d.cached_tokens, 160);
    engine_free(e);
}

/* ---- The disk tier ------------------------------------------------------------------------ */

/* The case's scratch directory (harness.h: removed when the case ends, passed or failed). */
static char tmpdir[256];

static void make_tmpdir(void)
{
    CHECK(snprintf(tmpdir, sizeof tmpdir, "%s", harness_tmpdir()) < (int)sizeof tmpdir);
}

static void remove_tmpdir(void)
{
    harness_tmpdir_remove();
    tmpdir[0] = 0;
}

static void nop_wake(void *arg)
{
    (void)arg;
}

/* An engine with a disk tier in dir; returns the engine_new() code, message in msg. */
static int new_engine_disk(const model *m, const char *dir, size_t mem, int max_batch, int reset,
                           int with_wake, engine **e, char *msg, size_t msglen)
{
    engine_opts o = {0};
    o.cache_mem = mem;
    o.max_batch = max_batch;
    o.max_queue = 16;
    o.threads = 2;
    o.emit = emit_cb;
    o.disk_dir = dir;
    o.disk_reset = reset;
    o.kv_type = kv_type;
    if (with_wake)
        o.wake = nop_wake;
    *e = NULL;
    return engine_new(m, m == M ? T : NULL, &o, e, msg, msglen);
}

static engine *new_engine_disk_ok(const char *dir, size_t mem, int max_batch)
{
    char msg[512];
    engine *e;
    CHECK_MSG(new_engine_disk(M, dir, mem, max_batch, 0, 0, &e, msg, sizeof msg) == 0, "%s", msg);
    return e;
}

static size_t block_bytes(void)
{
    return model_kv_block_floats(model_get_config(M), 16) * sizeof(float);
}

/* One engine life on dir: runs ids[0..n) (4 new tokens, as handle h) and closes, which writes its
 * blocks to the disk tier. */
static void disk_life(const char *dir, const int32_t *ids, size_t n, uint64_t h)
{
    engine *e = new_engine_disk_ok(dir, 64 << 20, 2);
    submit_ids(e, h, ids, n, 4);
    run_all(e);
    engine_free(e);
}

/* A daemon's life, then a restart on the same directory: every full block of every prompt comes
 * back from disk (RAM is empty), and the tokens are exactly the uncached ones. */
static void test_disk_restart(void)
{
    setup();
    make_tmpdir();
    engine *ref = new_engine(1, 64 << 20, 0, 4, 4);
    engine *e = new_engine_disk_ok(tmpdir, 64 << 20, 4);
    static int32_t ids[6][200];
    static result want[6];
    for (int i = 0; i < 6; i++) {
        int n = 40 + 29 * i;
        prompt_ids(ids[i], n, 300 + (unsigned)i);
        submit_ids(ref, 1, ids[i], (size_t)n, 12);
        run_all(ref);
        want[i] = res[1];
        submit_ids(e, 2, ids[i], (size_t)n, 12);
        run_all(e);
        check_same(&want[i], &res[2], "first life", n);
        CHECK_EQ_INT(res[2].d.cached_tokens_disk, 0);
    }
    engine_free(e); /* writes what is only in RAM to disk */
    e = new_engine_disk_ok(tmpdir, 64 << 20, 4);
    for (int i = 0; i < 6; i++) {
        int n = 40 + 29 * i;
        submit_ids(e, 3, ids[i], (size_t)n, 12);
        run_all(e);
        check_same(&want[i], &res[3], "after restart", n);
        CHECK_EQ_INT(res[3].d.cached_tokens_disk, ((n - 1) / 16) * 16);
        CHECK_EQ_INT(res[3].d.cached_tokens, ((n - 1) / 16) * 16);
    }
    disk_thread_stats ds;
    CHECK_EQ_INT(engine_disk_stats(e, &ds), 0);
    CHECK(ds.load_blocks > 0 && ds.loads >= 6);
    engine_free(e);
    engine_free(ref);
    remove_tmpdir();
}

/* The disk tier with K/V stored as f16 and as q8_0: a restart loads every full block back, with
 * exactly the uncached tokens. A directory written with one type is another geometry for
 * another: refused by name, or wiped with disk_reset. */
static void test_disk_kv_types(void)
{
    int types[] = {MODEL_TYPE_F16, MODEL_TYPE_Q8_0};
    for (int i = 0; i < 2; i++) {
        kv_type = types[i];
        fprintf(stderr, "  [%s K/V]\n", model_type_name(kv_type));
        test_disk_restart();
    }
    setup();
    make_tmpdir();
    static int32_t ids[100];
    prompt_ids(ids, 100, 77);
    kv_type = MODEL_TYPE_F16;
    disk_life(tmpdir, ids, 100, 1);
    char msg[512];
    engine *e;
    int rc;
    kv_type = MODEL_TYPE_Q8_0;
    rc = new_engine_disk(M, tmpdir, 64 << 20, 2, 0, 0, &e, msg, sizeof msg);
    CHECK_EQ_INT(rc, ENGINE_EDISK);
    CHECK_STR_CONTAINS(msg, "of f16 K/V, this daemon uses");
    CHECK_STR_CONTAINS(msg, "q8_0 K/V");
    kv_type = MODEL_TYPE_F32;
    rc = new_engine_disk(M, tmpdir, 64 << 20, 2, 0, 0, &e, msg, sizeof msg);
    CHECK_EQ_INT(rc, ENGINE_EDISK);
    kv_type = MODEL_TYPE_Q8_0;
    CHECK_MSG(new_engine_disk(M, tmpdir, 64 << 20, 2, 1, 0, &e, msg, sizeof msg) == 0, "%s", msg);
    submit_ids(e, 2, ids, 100, 4);
    run_all(e);
    CHECK_EQ_INT(res[2].d.cached_tokens, 0); /* wiped: nothing of the f16 life */
    engine_free(e);
    kv_type = MODEL_TYPE_F32;
    remove_tmpdir();
}

/* RAM for a few requests' blocks, many prompts sharing prefixes: blocks constantly spill and
 * come back, and every output equals the uncached one. */
static void test_disk_pressure(void)
{
    setup();
    make_tmpdir();
    engine *ref = new_engine(1, 64 << 20, 0, 4, 4);
    engine *e = new_engine_disk_ok(tmpdir, block_bytes() * 24, 2);
    static int32_t fam[5][200], ids[200];
    for (int f = 0; f < 5; f++)
        prompt_ids(fam[f], 200, 900 + (unsigned)f);
    unsigned seed = 12345;
    int disk_hits = 0;
    for (int r = 0; r < 60; r++) {
        seed = seed * 1664525u + 1013904223u;
        int f = (int)((seed >> 8) % 5), n = 20 + (int)((seed >> 16) % 130);
        memcpy(ids, fam[f], sizeof ids);
        if ((seed >> 4) % 3 == 0) /* a different tail now and then */
            prompt_ids(ids + n / 2, n - n / 2, seed);
        submit_ids(ref, 1, ids, (size_t)n, 10);
        run_all(ref);
        /* Two at a time, so loads and spills overlap with another request's compute. */
        submit_ids(e, 2, ids, (size_t)n, 10);
        submit_ids(e, 3, fam[(f + 1) % 5], (size_t)(n / 2 + 1), 6);
        run_all(e);
        check_same(&res[1], &res[2], "under spilling", n);
        disk_hits += res[2].d.cached_tokens_disk > 0;
    }
    disk_thread_stats ds;
    engine_disk_stats(e, &ds);
    CHECK_MSG(disk_hits > 5 && ds.disk.puts > 20 && ds.load_blocks > 20,
              "no real spilling: %d requests hit disk, %llu spills, %llu blocks loaded", disk_hits,
              (unsigned long long)ds.disk.puts, (unsigned long long)ds.load_blocks);
    cache_stats st;
    cache_get_stats(engine_cache(e), &st);
    CHECK_EQ_U64(st.slots_used, st.slots_cached); /* no private block left behind */
    engine_free(e);
    engine_free(ref);
    remove_tmpdir();
}

/* Another model of the very same shape (other weights) on the same directory never hits. */
static void test_disk_model_isolation(void)
{
    setup();
    make_tmpdir();
    char path[512], msg[512];
    snprintf(path, sizeof path, "%s/other.bin", tmpdir);
    CHECK_MSG(model_synth_write(path, model_get_config(M), 4242, msg, sizeof msg) == 0, "%s", msg);
    model *other = NULL;
    CHECK_MSG(model_load(path, &other, msg, sizeof msg) == 0, "%s", msg);
    char dir[300];
    snprintf(dir, sizeof dir, "%s/disk", tmpdir);
    static int32_t ids[120];
    prompt_ids(ids, 120, 5);
    disk_life(dir, ids, 120, 1);
    engine *o = NULL;
    CHECK_MSG(new_engine_disk(other, dir, 64 << 20, 2, 0, 0, &o, msg, sizeof msg) == 0, "%s", msg);
    submit_ids(o, 2, ids, 120, 4);
    run_all(o);
    CHECK(res[2].done);
    CHECK_EQ_INT(res[2].d.cached_tokens, 0);
    engine_free(o);
    /* ...while the first model, back on it, does hit. */
    engine *e = new_engine_disk_ok(dir, 64 << 20, 2);
    submit_ids(e, 3, ids, 120, 4);
    run_all(e);
    CHECK_EQ_INT(res[3].d.cached_tokens_disk, 112);
    check_same(&res[1], &res[3], "back on disk", 120);
    engine_free(e);
    model_free(other);
    remove_tmpdir();
}

/* Cancelled while its blocks are being loaded: DONE (cancelled) at once; the slots the disk
 * thread writes into are freed only when the load comes back (ASan checks no use after free). */
static void test_disk_cancel_loading(void)
{
    setup();
    make_tmpdir();
    static int32_t ids[300];
    prompt_ids(ids, 300, 8);
    disk_life(tmpdir, ids, 300, 1);
    engine *e;
    char msg[512];
    for (int k = 0; k < 20; k++) {
        CHECK_MSG(new_engine_disk(M, tmpdir, 64 << 20, 2, 0, 1, &e, msg, sizeof msg) == 0, "%s",
                  msg);
        submit_ids(e, 2, ids, 300, 4);
        engine_step(e); /* admitted: its load is out */
        if (k % 2 == 0)
            CHECK_EQ_INT(engine_cancel(e, 2), 0);
        else
            CHECK_EQ_INT(engine_cancel_matching(e, 0, 0), 1);
        CHECK(res[2].done && res[2].d.finish == ENGINE_FINISH_CANCELLED);
        CHECK_EQ_INT(engine_live(e), 0);
        if (k % 4 == 0) {
            /* Still usable: the same prompt again, all from disk or RAM. */
            submit_ids(e, 3, ids, 300, 4);
            /* As the daemon's engine thread does: sleep while nothing is runnable. */
            for (int i = 0; i < 20000 && engine_live(e) > 0; i++) {
                if (!engine_runnable(e))
                    usleep(1000);
                engine_step(e);
            }
            CHECK_MSG(res[3].done && res[3].d.cached_tokens == 288,
                      "done %d cached %u disk %u err %s", res[3].done, res[3].d.cached_tokens,
                      res[3].d.cached_tokens_disk, res[3].msg);
            check_same(&res[1], &res[3], "after a cancelled load", 300);
        }
        engine_free(e); /* waits for the load still out */
    }
    remove_tmpdir();
}

/* A working set larger than RAM: six system prompts, RAM for four. After each prompt's first
 * turn, every turn finds its whole system prompt cached, in RAM or on disk (nothing dropped),
 * with the uncached tokens. */
static void test_disk_working_set(void)
{
    setup();
    make_tmpdir();
    engine *ref = new_engine(1, 64 << 20, 0, 4, 4);
    engine *e = new_engine_disk_ok(tmpdir, block_bytes() * (4 * 10 + 12), 1);
    static int32_t sys[6][200];
    for (int k = 0; k < 6; k++)
        prompt_ids(sys[k], 180, 4000 + (unsigned)k);
    int from_disk = 0;
    for (int round = 0; round < 4; round++)
        for (int k = 0; k < 6; k++) {
            /* 160 system ids (10 blocks), then this turn's 20 user ids. */
            prompt_ids(sys[k] + 160, 20, (unsigned)(round * 6 + k));
            sys[k][160] = 13;
            submit_ids(ref, 1, sys[k], 180, 8);
            run_all(ref);
            submit_ids(e, 2, sys[k], 180, 8);
            run_all(e);
            check_same(&res[1], &res[2], "working set > RAM", round * 6 + k);
            if (round > 0)
                CHECK_MSG(res[2].d.cached_tokens >= 160,
                          "round %d, prompt %d: only %u tokens cached (%u from disk)", round, k,
                          res[2].d.cached_tokens, res[2].d.cached_tokens_disk);
            from_disk += res[2].d.cached_tokens_disk >= 160;
        }
    disk_thread_stats ds;
    engine_disk_stats(e, &ds);
    CHECK_MSG(from_disk >= 6, "only %d turns came from disk", from_disk);
    CHECK_EQ_U64(ds.spills_dropped, 0);
    engine_free(e);
    engine_free(ref);
    remove_tmpdir();
}

/* Directories that cannot be used: errors that name the directory and the problem. */
static void test_disk_errors(void)
{
    setup();
    make_tmpdir();
    char dir[400], msg[512];
    engine *e = NULL;
    snprintf(dir, sizeof dir, "%s/missing/disk", tmpdir);
    CHECK(new_engine_disk(M, dir, 1 << 20, 2, 0, 0, &e, msg, sizeof msg) != 0 && !e);
    CHECK_STR_CONTAINS(msg, dir);
    snprintf(dir, sizeof dir, "%s/file", tmpdir);
    int fd = open(dir, O_CREAT | O_WRONLY, 0600);
    CHECK(fd >= 0);
    close(fd);
    CHECK(new_engine_disk(M, dir, 1 << 20, 2, 0, 0, &e, msg, sizeof msg) != 0 && !e);
    CHECK_STR_CONTAINS(msg, dir);
    /* One daemon per directory. */
    snprintf(dir, sizeof dir, "%s/disk", tmpdir);
    engine *first = new_engine_disk_ok(dir, 1 << 20, 2);
    CHECK_EQ_INT(new_engine_disk(M, dir, 1 << 20, 2, 0, 0, &e, msg, sizeof msg), ENGINE_EDISKBUSY);
    CHECK_STR_CONTAINS(msg, "in use");
    engine_free(first);
    /* Another block geometry: refused unless a reset is asked for. */
    engine_opts o = {0};
    o.cache_mem = 1 << 20;
    o.block_tokens = 32;
    o.emit = emit_cb;
    o.threads = 1;
    o.disk_dir = dir;
    CHECK_EQ_INT(engine_new(M, T, &o, &e, msg, sizeof msg), ENGINE_EDISK);
    CHECK_STR_CONTAINS(msg, "incompatible");
    CHECK_STR_CONTAINS(msg, dir);
    o.disk_reset = 1;
    CHECK_MSG(engine_new(M, T, &o, &e, msg, sizeof msg) == 0, "%s", msg);
    engine_free(e);
    remove_tmpdir();
}

static void teardown(void)
{
    model_tokenizer_free(T);
    model_free(M);
}

/* The K/V blocks of tokens[0..n) as engine e's cache holds them (namespace "test"): count of
 * full blocks found, payload pointers in out. */
static size_t cached_blocks(engine *e, const int32_t *tokens, size_t n, const float **out)
{
    cache *c = engine_cache(e);
    cache_block *hit[64];
    size_t found = 0;
    cache_lookup(c, cache_root(c, "test", 4), tokens, n, hit, NULL, 64, &found);
    for (size_t i = 0; i < found; i++) {
        out[i] = cache_block_data(hit[i]);
        cache_unref(c, hit[i]);
    }
    return found;
}

/* Issue 18: a prompt whose cached run ends on a block boundary, going on into a block another
 * prompt filled, copies the rows they share (1, 5 or 15 of 16, on and off the point where the
 * two diverge) instead of computing them; its tokens and every K/V block it publishes are
 * bitwise those of the same prompt run alone on a fresh engine. */
static void test_partial_block_reuse(void)
{
    setup();
    int B = 16;
    size_t bytes = model_kv_block_bytes(model_get_config(M), B, kv_type);
    int shares[] = {1, 5, 15};
    for (size_t si = 0; si < sizeof shares / sizeof *shares; si++) {
        int share = shares[si];
        static int32_t p[128], a[128], seq[256];
        int n = 2 * B + share + 1 + (int)si; /* room for share rows before the last token */
        prompt_ids(p, n, 4242u + (unsigned)si);
        memcpy(a, p, sizeof p);
        prompt_ids(a + 2 * B + share, 20, 99u + (unsigned)si); /* diverges at row `share` */
        for (int i = 2 * B + share; i < 3 * B + 4; i++)
            a[i] = a[i] == p[i] ? 3 + (p[i] + 1 - 3) % 509 : a[i];
        engine *ref = new_engine(0, 64 << 20, 0, 4, 4), *e = new_engine(0, 64 << 20, 0, 4, 4);
        submit_ids(ref, 1, p, (size_t)n, 30);
        run_all(ref);
        submit_ids(e, 2, a, (size_t)(3 * B + 4), 2); /* publishes a's third block */
        run_all(e);
        submit_ids(e, 3, p, (size_t)n, 30);
        run_all(e);
        check_same(&res[1], &res[3], "with copied rows vs alone", n);
        CHECK_EQ_INT(res[3].d.cached_tokens, 2 * B + share);
        CHECK_EQ_INT(res[1].d.cached_tokens, 0);
        /* The whole sequence's blocks, prompt and generated, bit for bit. */
        memcpy(seq, p, (size_t)n * sizeof *seq);
        memcpy(seq + n, res[1].toks, (size_t)res[1].n * sizeof *seq);
        const float *want[64], *got[64];
        size_t nw = cached_blocks(ref, seq, (size_t)(n + res[1].n), want);
        size_t ng = cached_blocks(e, seq, (size_t)(n + res[1].n), got);
        /* Every position but the last sampled one has K/V (that token was never fed back). */
        CHECK_EQ_INT((int)nw, (n + res[1].n - 1) / B);
        CHECK_EQ_INT((int)ng, (int)nw);
        for (size_t i = 0; i < nw; i++)
            CHECK_MSG(memcmp(want[i], got[i], bytes) == 0, "share %d: block %zu differs", share, i);
        engine_free(e);
        engine_free(ref);
    }
}

/* With K/V stored as f16 and as q8_0 (stories260K: q8_0 rows of four heads): cached runs give
 * exactly the uncached greedy tokens (prompts on and off block edges, a chat's history, rows
 * copied from a block another prompt filled), and a batch gives each request its lone tokens. */
static void test_kv_types(void)
{
    int lens[] = {1, 17, 31, 32, 33, 100, 129, 257};
    int types[] = {MODEL_TYPE_F16, MODEL_TYPE_Q8_0};
    for (int i = 0; i < 2; i++) {
        kv_type = types[i];
        fprintf(stderr, "  [%s K/V]\n", model_type_name(kv_type));
        setup();
        cached_equals_uncached_on(lens, (int)(sizeof lens / sizeof lens[0]));
        test_chat_history_cached();
        test_batch_independent();
        test_partial_block_reuse();
    }
    kv_type = MODEL_TYPE_F32;
}

/* A K/V type the model cannot take is refused by name: q8_0 on a model whose kv rows are 8
 * elements (one kv head of 8). */
static void test_kv_type_refused(void)
{
    setup();
    char msg[512], path[PATH_MAX];
    model_config c;
    CHECK(model_shape_parse("16,32,1,2,1,512,64", &c, msg, sizeof msg) == 0);
    snprintf(path, sizeof path, "%s/kv8.bin", harness_tmpdir());
    CHECK_MSG(model_synth_write(path, &c, 3, msg, sizeof msg) == 0, "%s", msg);
    model *m = NULL;
    CHECK_MSG(model_load(path, &m, msg, sizeof msg) == 0, "%s", msg);
    engine_opts o = {0};
    o.kv_type = MODEL_TYPE_Q8_0;
    o.emit = emit_cb;
    engine *e = NULL;
    CHECK_EQ_INT(engine_new(m, T, &o, &e, msg, sizeof msg), ENGINE_ECONFIG);
    CHECK(e == NULL);
    CHECK_STR_CONTAINS(msg, "q8_0");
    o.kv_type = MODEL_TYPE_F16;
    CHECK_MSG(engine_new(m, T, &o, &e, msg, sizeof msg) == 0, "%s", msg);
    engine_free(e);
    model_free(m);
}

/* Issue 10 F1: a max_new of 2^32 - 1 (or 2^31 - 1) is "as many as fit", clamped to the
 * context: it must not shrink the block reservation (it once wrapped to -1 and failed the whole
 * decode batch) nor disturb the requests beside it, which finish with exactly their lone
 * outputs. */
static void test_huge_max_new(void)
{
    setup();
    engine *ref = new_engine(1, 64 << 20, 0, 4, 4);
    engine *e = new_engine(0, 64 << 20, 0, 4, 4);
    static int32_t ids[3][40];
    static result want[3];
    int seq = model_get_config(M)->seq_len;
    for (int i = 0; i < 3; i++) {
        prompt_ids(ids[i], 20 + 7 * i, 31u + (unsigned)i);
        submit_ids(ref, 1, ids[i], (size_t)(20 + 7 * i), 40);
        run_all(ref);
        want[i] = res[1];
    }
    uint32_t huge[] = {0xffffffffu, 0x7fffffffu, (uint32_t)seq + 5};
    for (size_t k = 0; k < sizeof huge / sizeof *huge; k++) {
        static int32_t big[30];
        prompt_ids(big, 30, 977u + (unsigned)k);
        for (int i = 0; i < 3; i++)
            submit_ids(e, (uint64_t)(1 + i), ids[i], (size_t)(20 + 7 * i), 40);
        submit_ids(e, 4, big, 30, huge[k]);
        run_all(e);
        for (int i = 0; i < 3; i++)
            check_same(&want[i], &res[1 + i], "beside a huge max_new", 20 + 7 * i);
        CHECK_MSG(res[4].done && !res[4].error, "max_new %u: %s", huge[k], res[4].msg);
        /* At most what the context leaves: seq + 1 - prompt (the last token needs no K/V). */
        CHECK_MSG((int)res[4].d.new_tokens <= seq + 1 - 30, "max_new %u: %u new tokens", huge[k],
                  res[4].d.new_tokens);
        CHECK(res[4].d.finish == ENGINE_FINISH_LENGTH || res[4].d.finish == ENGINE_FINISH_STOP);
    }
    engine_free(e);
    engine_free(ref);
}

/* engine_new() returns the real cause, never a bare -1. */
static void test_new_errors(void)
{
    setup();
    char msg[512];
    engine *e = NULL;
    engine_opts o = {0};
    o.threads = 1;
    CHECK_EQ_INT(engine_new(M, T, &o, &e, msg, sizeof msg), ENGINE_ECONFIG); /* no emit */
    CHECK(!e);
    o.emit = emit_cb;
    o.cache_mem = 1024; /* less than one block */
    CHECK_EQ_INT(engine_new(M, T, &o, &e, msg, sizeof msg), ENGINE_ECONFIG);
    CHECK_STR_CONTAINS(msg, "cache");
    CHECK(!e);
    CHECK_STR_EQ(engine_strerror(ENGINE_EDISKBUSY),
                 "the disk directory is in use by another process");
    CHECK_STR_EQ(engine_strerror(12345), "unknown error");
}

/* The logits of the last token of tokens[0..n) computed over two histories: the first nb blocks
 * taken from a (the cached run) and from b (an uncached prefill of the same ids), the rest
 * prefilled on copies; 1 when they are bitwise equal. */
static int same_next_logits(const float *const *a, const float *const *b, size_t nb,
                            const int32_t *tokens, int n)
{
    const model_config *c = model_get_config(M);
    int B = 16;
    size_t floats = model_kv_block_floats(c, B);
    int nblocks = (n + B - 1) / B, from = (int)nb * B;
    CHECK(from < n && nblocks <= 64);
    model_state_opts so = {.block_tokens = B, .threads = 2};
    float *logits[2], *blocks[2][64];
    for (int side = 0; side < 2; side++) {
        model_state *s = NULL;
        CHECK(model_state_new(M, &so, &s) == 0);
        for (int i = 0; i < nblocks; i++) {
            blocks[side][i] = calloc(floats, sizeof(float));
            CHECK(blocks[side][i]);
            if ((size_t)i < nb)
                memcpy(blocks[side][i], (side ? b : a)[i], floats * sizeof(float));
        }
        logits[side] = malloc((size_t)c->vocab_size * sizeof(float));
        CHECK(logits[side]);
        model_kv kv = {blocks[side], nblocks};
        CHECK(model_prefill(s, &kv, from, tokens + from, n - from, logits[side]) == 0);
        model_state_free(s);
    }
    int same = memcmp(logits[0], logits[1], (size_t)c->vocab_size * sizeof(float)) == 0;
    for (int side = 0; side < 2; side++) {
        for (int i = 0; i < nblocks; i++)
            free(blocks[side][i]);
        free(logits[side]);
    }
    return same;
}

/* Issue 18: a 5-turn chat whose every turn reads its history from the cache (its replies too):
 * after each turn, every full block of the conversation so far is bitwise the block an uncached
 * prefill of the same ids writes, the logits of the next position computed over the cached
 * history are bitwise those computed over the uncached one, and each turn's tokens are those of
 * the same prompt on an engine without a cache; with decode_history (blocks published as decode
 * wrote them) the reply's blocks differ, which shows the test sees the difference. With a disk
 * tier, each turn runs on a new engine over the same store (a restart), so the history comes back
 * from disk. */
static void exact_history_run(int with_disk, int decode_history)
{
    static int32_t conv[700];
    int n = 40, B = 16, differ = 0;
    size_t floats = model_kv_block_floats(model_get_config(M), B);
    prompt_ids(conv, n, 77);
    engine *e = NULL;
    char msg[512];
    if (!with_disk) {
        e = new_engine(0, 64 << 20, 0, 4, 4);
        engine_opts o = *engine_get_opts(e);
        engine_free(e);
        o.decode_history = decode_history;
        CHECK_MSG(engine_new(M, T, &o, &e, msg, sizeof msg) == 0, "%s", msg);
    }
    for (int turn = 0; turn < 5; turn++) {
        if (with_disk)
            CHECK_MSG(
                new_engine_disk(M, harness_tmpdir(), 64 << 20, 4, 0, 0, &e, msg, sizeof msg) == 0,
                "%s", msg);
        submit_ids(e, 1, conv, (size_t)n, 24);
        run_all(e);
        CHECK_MSG(res[1].done && !res[1].error, "turn %d: %s", turn, res[1].msg);
        if (turn > 0)
            CHECK_MSG((int)res[1].d.cached_tokens >= n - 12 - B, "turn %d: cached %u of %d", turn,
                      res[1].d.cached_tokens, n);
        if (with_disk && turn > 0)
            CHECK_MSG(res[1].d.cached_tokens_disk > 0, "turn %d: nothing from disk", turn);
        engine *nc = new_engine(1, 64 << 20, 0, 4, 4);
        submit_ids(nc, 3, conv, (size_t)n, 24);
        run_all(nc);
        engine_free(nc);
        check_same(&res[3], &res[1], "exact history turn", turn);
        memcpy(conv + n, res[1].toks, (size_t)res[1].n * sizeof(int32_t));
        int total = n + res[1].n;
        /* The reference: the whole conversation so far as one uncached prompt. */
        engine *ref = new_engine(0, 64 << 20, 0, 4, 4);
        submit_ids(ref, 2, conv, (size_t)total, 1);
        run_all(ref);
        const float *want[64], *got[64];
        size_t nw = cached_blocks(ref, conv, (size_t)total, want);
        size_t ng = cached_blocks(e, conv, (size_t)total, got);
        CHECK_EQ_INT((int)nw, total / B);
        CHECK_MSG((int)ng >= (total - 1) / B, "turn %d: %zu blocks cached of %d", turn, ng,
                  (total - 1) / B);
        for (size_t i = 0; i < ng && i < nw; i++)
            if (memcmp(want[i], got[i], floats * sizeof(float)) != 0) {
                CHECK_MSG(decode_history, "turn %d: block %zu differs from an uncached prefill",
                          turn, i);
                differ = 1;
            }
        if (!decode_history) {
            size_t nb = ng < nw ? ng : nw;
            if ((int)nb * B >= total)
                nb--;
            CHECK_MSG(same_next_logits(got, want, nb, conv, total),
                      "turn %d: the logits over the cached history differ from the uncached", turn);
        }
        engine_free(ref);
        n = total;
        int32_t user[12];
        prompt_ids(user, 12, (unsigned)turn + 15);
        memcpy(conv + n, user + 1, 11 * sizeof(int32_t));
        n += 11;
        if (with_disk) {
            engine_free(e);
            e = NULL;
        }
    }
    if (decode_history)
        CHECK_MSG(differ, "decode-written history never differed: the test cannot tell");
    engine_free(e);
}

static void test_exact_history(void)
{
    setup();
    exact_history_run(0, 0);
    exact_history_run(1, 0);
    exact_history_run(0, 1);
}

/* The same on quantized GGUF models (Q8_0, and Q4_K_M's mix of Q4_K, Q6_K and Q8_0) of both
 * architectures, with and without the disk tier; decode-written history differs there too. */
static void test_exact_history_quantized(void)
{
    static const char *const types[] = {"q8_0", "q4_k_m"};
    setup();
    model *keep = M;
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        M = synth_gguf_model(types[i], i % 2 ? "qwen2" : "llama", 5);
        exact_history_run(0, 0);
        exact_history_run(1, 0);
        exact_history_run(0, 1);
        model_free(M);
    }
    M = keep;
}

/* A chat's next turn sent at once, while its reply's recompute still waits (another request
 * computes): the new prompt covers the reply, so the recompute is dropped, not done twice
 * (history_superseded), and the turn's blocks are still bitwise an uncached prefill's. */
static void test_history_superseded(void)
{
    setup();
    engine *e = new_engine(0, 64 << 20, 0, 4, 4);
    static int32_t conv[200], other[300];
    int n = 40, B = 16;
    prompt_ids(conv, n, 31);
    prompt_ids(other, 300, 32);
    submit_ids(e, 1, conv, (size_t)n, 24);
    for (int i = 0; i < 10000 && res[1].n < 20; i++)
        engine_step(e);
    submit_ids(e, 3, other, 300, 40); /* computing when turn 1 ends: no recompute then */
    for (int i = 0; i < 10000 && !res[1].done; i++)
        engine_step(e);
    CHECK(res[1].done && res[1].n == 24 && !res[3].done);
    engine_stats st;
    engine_get_stats(e, &st);
    CHECK_EQ_INT(st.background, 1);
    CHECK_EQ_INT((int)st.history_tokens, 0);
    memcpy(conv + n, res[1].toks, 24 * sizeof(int32_t));
    int total = n + 24;
    prompt_ids(conv + total, 12, 33);
    conv[total] = 7; /* not BOS */
    total += 12;
    submit_ids(e, 2, conv, (size_t)total, 4);
    run_all(e);
    engine_get_stats(e, &st);
    CHECK_EQ_INT((int)st.history_superseded, 1);
    CHECK_EQ_INT(st.background, 0);
    /* Request 3's reply and maybe turn 2's, never turn 1's 23 positions on top. */
    CHECK_MSG((int)st.history_tokens <= res[3].n - 1 + res[2].n - 1, "recomputed %llu",
              (unsigned long long)st.history_tokens);
    engine *ref = new_engine(1, 64 << 20, 0, 4, 4);
    submit_ids(ref, 4, conv, (size_t)total, 4);
    run_all(ref);
    check_same(&res[4], &res[2], "turn 2 after a superseded recompute", 4);
    engine_free(ref);
    ref = new_engine(0, 64 << 20, 0, 4, 4);
    submit_ids(ref, 4, conv, (size_t)total, 1);
    run_all(ref);
    const float *want[64], *got[64];
    size_t nw = cached_blocks(ref, conv, (size_t)total, want);
    size_t ng = cached_blocks(e, conv, (size_t)total, got);
    CHECK_MSG((int)ng == (total - 1) / B && nw >= ng, "%zu blocks cached, %zu in the reference", ng,
              nw);
    size_t floats = model_kv_block_floats(model_get_config(M), B);
    for (size_t i = 0; i < ng; i++)
        CHECK_MSG(memcmp(want[i], got[i], floats * sizeof(float)) == 0, "block %zu differs", i);
    engine_free(ref);
    engine_free(e);
}

/* logprobs: a TOKEN event's log-probabilities are the log-softmax of the logits a plain prefill
 * of the same ids computes (in double), the sampled greedy token is the most likely, the
 * alternatives are the top ids in order; none unless asked; top_logprobs > 20 refused. */
static void test_logprobs(void)
{
    setup();
    engine *e = new_engine(0, 64 << 20, 0, 4, 4);
    int32_t p[24];
    prompt_ids(p, 24, 5);
    engine_request q = {.handle = 1,
                        .kind = ENGINE_REQ_GENERATE,
                        .tokens = p,
                        .n_tokens = 24,
                        .max_new = 3,
                        .logprobs = 1,
                        .top_logprobs = 5,
                        .ns = "test",
                        .ns_len = 4};
    CHECK(engine_submit(e, &q) == 0);
    submit_ids(e, 2, p, 24, 3); /* the same without logprobs */
    run_all(e);
    CHECK_MSG(res[1].done && res[1].n_lp == 3, "%d entries: %s", res[1].n_lp, res[1].msg);
    CHECK_EQ_INT(res[2].n_lp, 0);
    check_same(&res[1], &res[2], "logprobs change nothing", 3);
    const model_config *c = model_get_config(M);
    int V = c->vocab_size;
    model_state_opts so = {.block_tokens = 16, .threads = 1};
    model_state *s = NULL;
    CHECK(model_state_new(M, &so, &s) == 0);
    float *blocks[4], *logits = malloc((size_t)V * sizeof(float));
    for (int i = 0; i < 4; i++)
        CHECK((blocks[i] = calloc(model_kv_block_floats(c, 16), sizeof(float))) != NULL);
    model_kv kv = {blocks, 4};
    int32_t seq[27];
    memcpy(seq, p, sizeof p);
    memcpy(seq + 24, res[1].toks, 3 * sizeof(int32_t));
    for (int k = 0; k < 3; k++) {
        CHECK(model_prefill(s, &kv, k == 0 ? 0 : 23 + k, seq + (k == 0 ? 0 : 23 + k),
                            k == 0 ? 24 : 1, logits) == 0);
        double mx = logits[0], sum = 0;
        for (int i = 1; i < V; i++)
            mx = logits[i] > mx ? logits[i] : mx;
        for (int i = 0; i < V; i++)
            sum += exp(logits[i] - mx);
        double norm = mx + log(sum);
        const engine_logprobs *x = &res[1].lp[k];
        int32_t t = res[1].toks[k];
        CHECK_MSG(fabs(x->logprob - (logits[t] - norm)) < 1e-4, "token %d: %g vs %g", k, x->logprob,
                  logits[t] - norm);
        CHECK_EQ_INT(x->prev, seq[23 + k]);
        CHECK_EQ_INT(x->n_top, 5);
        CHECK_EQ_INT(x->top_token[0], t); /* greedy: the most likely */
        for (int j = 0; j < 5; j++) {
            int32_t id = x->top_token[j];
            CHECK(fabs(x->top_logprob[j] - (logits[id] - norm)) < 1e-4);
            if (j > 0)
                CHECK(x->top_logprob[j] <= x->top_logprob[j - 1]);
            int above = 0; /* ids more likely than this one: exactly j */
            for (int i = 0; i < V; i++)
                above += logits[i] > logits[id] || (logits[i] == logits[id] && i < id);
            CHECK_MSG(above == j, "alternative %d of token %d is rank %d", j, k, above);
        }
    }
    for (int i = 0; i < 4; i++)
        free(blocks[i]);
    free(logits);
    model_state_free(s);
    q.handle = 3;
    q.top_logprobs = ENGINE_MAX_TOP_LOGPROBS + 1;
    CHECK_EQ_INT(engine_submit(e, &q), ENGINE_EINVAL);
    CHECK(res[3].error && res[3].code == ENGINE_EINVAL);
    CHECK_STR_CONTAINS(res[3].msg, "top_logprobs");
    engine_free(e);
}

static const harness_case cases[] = {
    {"cached_equals_uncached", test_cached_equals_uncached},
    {"cached_equals_uncached_types", test_cached_equals_uncached_types},
    {"kv_types", test_kv_types},
    {"kv_type_refused", test_kv_type_refused},
    {"chat_history_cached", test_chat_history_cached},
    {"batch_independent", test_batch_independent},
    {"collisions", test_collisions},
    {"eviction_pressure", test_eviction_pressure},
    {"bad_input", test_bad_input},
    {"huge_max_new", test_huge_max_new},
    {"partial_block_reuse", test_partial_block_reuse},
    {"exact_history", test_exact_history},
    {"exact_history_quantized", test_exact_history_quantized},
    {"logprobs", test_logprobs},
    {"history_superseded", test_history_superseded},
    {"new_errors", test_new_errors},
    {"warm_and_pin", test_warm_and_pin},
    {"disk_restart", test_disk_restart},
    {"disk_kv_types", test_disk_kv_types},
    {"disk_pressure", test_disk_pressure},
    {"disk_model_isolation", test_disk_model_isolation},
    {"disk_cancel_loading", test_disk_cancel_loading},
    {"disk_working_set", test_disk_working_set},
    {"disk_errors", test_disk_errors},
};

int main(int argc, char **argv)
{
    int rc = harness_main(argc, argv, cases, sizeof cases / sizeof cases[0]);
    teardown();
    return rc;
}
