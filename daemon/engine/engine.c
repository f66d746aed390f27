/* engine.c — the scheduler: requests in, token events out, blocks shared through the cache.
 *
 * A request goes WAITING -> PREFILL -> DECODE -> (ended). Admission looks up the longest cached
 * run of the prompt's full blocks (never the last prompt token: its logits are needed, so at most
 * floor((n - 1) / B) blocks come from the cache) and allocates private blocks for every position
 * the request may still write (prompt and max_new, within the context), so a running request can
 * never run out of K/V memory; a request that does not fit waits until others end. Each step
 * prefills one chunk (<= prefill_chunk tokens, round robin over prefilling requests) and then
 * decodes one token for every decoding request in one batched model_decode().
 *
 * Sharing: a request's prompt blocks are published when its prefill completes, its generated
 * blocks when it ends. Two requests prefilling the same new prefix at once both compute it; the
 * second to publish finds the first's block and switches to it (cache_publish() dedupes), so
 * nobody waits on anybody. With no_cache the same code runs without lookups or publishes.
 */
#include "engine.h"

#include "base.h"
#include "disk_thread.h"
#include "remote_thread.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* LOADING: the disk thread (then the remote thread, for what the disk did not have) is copying
 * the blocks after the RAM hits into the request's own private slots; nothing else touches them
 * until the load comes back. */
typedef enum rq_state { RQ_WAITING, RQ_LOADING, RQ_PREFILL, RQ_DECODE } rq_state;

typedef struct request {
    uint64_t handle;
    uint32_t owner;
    engine_request_kind kind;
    rq_state state;
    int32_t *tok; /* prompt, then sampled tokens; capacity tok_cap */
    int tok_cap;
    int n_prompt;
    int n_tok;         /* ids known (prompt + sampled) */
    int kv_done;       /* positions whose K/V are computed */
    cache_block **blk; /* the block table's handles */
    float **ptr;       /* the block table's payload pointers (what the model reads) */
    int n_blk;         /* blocks allocated or hit */
    int n_pub;         /* blocks [0, n_pub) are published */
    int cached;        /* prompt tokens taken from the cache (RAM and disk) */
    int cached_disk;   /* of those, loaded from the disk tier */
    cache_key *keys;   /* the prompt's block keys (with a disk tier) */
    disk_thread_load load;
    int zombie; /* ended while LOADING: freed when the load comes back */
    struct request *zombie_next;
    uint32_t max_new;
    int n_new;
    float temp, top_p;
    uint64_t rng;
    int logprobs, top_logprobs;
    int pin;
    cache_key root;
    int history_pos; /* background: positions [history_pos, kv_done) still to recompute */
    struct request *bg_next;
    double t_recv, t_first, t_end;
    double prefill_ms;
    model_detok dt; /* the streamed pieces: whole UTF-8 characters only */

    /* The remote tier (keys above are also filled with a remote tier and no disk tier). */
    remote_thread_load rload;
    int cached_remote;          /* prompt tokens loaded from the remote tier */
    int load_end;               /* the lower tiers are asked for blocks up to this one */
    int remote_from, remote_to; /* blocks [from, to) came from the remote tier: not written back */
} request;

struct engine {
    engine_opts o;
    const model *m;
    const model_tokenizer *tok;
    model_config c;
    model_state *ms;
    cache *cache;
    disk_thread *disk; /* NULL: no disk tier */
    int n_loading;     /* requests (live or zombie) whose load is out */
    request *zombies;  /* ended while LOADING */
    int admit_blocked; /* the first waiting request did not fit; cleared when blocks free */
    model_sampler *sampler;
    float *lp_logits; /* vocab_size: the raw logits of a request that asked for logprobs */
    request **live;   /* waiting and running, in arrival order */
    int n_live, cap_live;
    int rr;                     /* round robin among prefilling requests */
    float *logits;              /* (max_batch, vocab) */
    model_kv *kv;               /* (max_batch) */
    int *pos;                   /* (max_batch) */
    int32_t *toks;              /* (max_batch) */
    request **rows;             /* (max_batch) */
    request *bg_head, *bg_tail; /* ended requests whose history is recomputed (FIFO) */
    int n_bg;
    engine_stats st;
    pthread_t prefault;       /* populates the cache's arena (cache_prefault) */
    int prefault_started;     /* joined in engine_free() */
    atomic_int prefault_stop; /* set by engine_free(): stop at the next chunk */

    remote_thread *remote; /* NULL: no remote tier */
    int n_loading_remote;  /* of n_loading, waiting for the remote tier */
};

const char *engine_strerror(int err)
{
    switch (err) {
#define X(name, code, msg)                                                                         \
    case code:                                                                                     \
        return msg;
        ENGINE_ERRNO_MAP(X)
#undef X
    }
    return "unknown error";
}

/* ---- Events ------------------------------------------------------------------------------- */

static void emit_error(engine *e, uint64_t handle, uint32_t owner, int code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static void emit_error(engine *e, uint64_t handle, uint32_t owner, int code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    engine_event ev = {
        .type = ENGINE_EV_ERROR, .handle = handle, .owner = owner, .code = code, .msg = msg};
    e->st.requests_failed++;
    e->o.emit(e->o.emit_arg, &ev);
}

/* last: no token follows, so nothing is held back for one. lp: NULL, or the token's
 * log-probabilities. */
static void emit_token(engine *e, request *r, int32_t t, int last, const engine_logprobs *lp)
{
    size_t len = 0;
    const char *piece = e->tok && r->dt.buf ? model_detok_push(e->tok, &r->dt, t, last, &len) : "";
    engine_event ev = {.type = ENGINE_EV_TOKEN,
                       .handle = r->handle,
                       .owner = r->owner,
                       .token = t,
                       .piece = piece,
                       .piece_len = len,
                       .logprobs = lp};
    e->o.emit(e->o.emit_arg, &ev);
}

/* ---- Blocks --------------------------------------------------------------------------------- */

static int blocks_for(const engine *e, int positions)
{
    int B = e->o.block_tokens;
    return (positions + B - 1) / B;
}

/* Queues a block newly published in RAM for the remote tier, holding a reference on it until
 * the remote thread is done with it (collect_written()). A full queue drops the write. */
static void remote_write_behind(engine *e, cache_block *b, cache_key parent_key)
{
    if (!e->remote)
        return;
    cache_remote_item it = {cache_block_key(b), parent_key, cache_block_tokens(b),
                            cache_block_data(b)};
    cache_ref(e->cache, b);
    if (remote_thread_write(e->remote, b, &it) != 0)
        cache_unref(e->cache, b);
}

/* Publishes the full blocks whose K/V are all computed, from n_pub on. A block that cannot be
 * published (its key collides, or its parent stayed private) ends the chain: the rest stay
 * private, which is correct, just not shared. */
static void publish_upto(engine *e, request *r, int positions)
{
    if (e->o.no_cache)
        return;
    int B = e->o.block_tokens;
    int full = positions / B;
    if (full > r->n_tok / B)
        full = r->n_tok / B;
    while (r->n_pub < full) {
        int i = r->n_pub;
        cache_block *parent = i > 0 ? r->blk[i - 1] : NULL;
        if (parent && !cache_block_published(parent))
            return;
        cache_key pk = parent ? cache_block_key(parent) : r->root;
        cache_block *out;
        if (cache_publish(e->cache, parent, pk, r->tok + (size_t)i * B, r->blk[i], &out) != 0)
            return;
        if (!cache_block_published(out))
            return; /* a collision: stays private */
        if (out == r->blk[i] && !(i >= r->remote_from && i < r->remote_to))
            remote_write_behind(e, out, pk); /* new in RAM, not from the remote tier */
        r->blk[i] = out;
        r->ptr[i] = cache_block_data(out);
        r->n_pub++;
    }
}

static void publish_ready(engine *e, request *r)
{
    publish_upto(e, r, r->kv_done);
}

static void release_blocks(engine *e, request *r)
{
    if (r->n_blk > 0)
        e->admit_blocked = 0;
    for (int i = 0; i < r->n_blk; i++)
        cache_unref(e->cache, r->blk[i]);
    r->n_blk = 0;
    r->n_pub = 0;
}

/* ---- Request life ------------------------------------------------------------------------- */

static void request_free(request *r)
{
    if (!r)
        return;
    free(r->tok);
    free(r->keys);
    free(r->blk);
    free(r->ptr);
    model_detok_free(&r->dt);
    free(r);
}

static void remove_live(engine *e, request *r)
{
    for (int i = 0; i < e->n_live; i++)
        if (e->live[i] == r) {
            memmove(&e->live[i], &e->live[i + 1], (size_t)(e->n_live - i - 1) * sizeof *e->live);
            e->n_live--;
            if (e->rr > i)
                e->rr--;
            return;
        }
}

/* Ends a request: publishes what it computed, releases its blocks, emits DONE, frees it. */
static void finish(engine *e, request *r, engine_finish reason)
{
    r->t_end = base_now_ms();
    /* A request cancelled while the disk thread writes into its slots keeps them (and itself)
     * until the load comes back (collect_loads()). */
    int loading = r->state == RQ_LOADING;
    /* Exact history: the positions decode wrote (from the first sampled token on) are
     * recomputed by prefill before their blocks are published; until then only the prompt's. */
    int background = reason != ENGINE_FINISH_CANCELLED && !loading && !e->o.no_cache &&
                     !e->o.decode_history && r->kv_done > r->n_prompt &&
                     r->kv_done / e->o.block_tokens > r->n_pub;
    if (background)
        publish_upto(e, r, r->n_prompt);
    else if (reason != ENGINE_FINISH_CANCELLED)
        publish_ready(e, r);
    if (!loading && !background)
        release_blocks(e, r);
    engine_event ev = {.type = ENGINE_EV_DONE, .handle = r->handle, .owner = r->owner};
    engine_done *d = &ev.done;
    d->finish = reason;
    d->prompt_tokens = (uint32_t)r->n_prompt;
    d->cached_tokens = (uint32_t)r->cached;
    d->cached_tokens_disk = (uint32_t)r->cached_disk;
    d->cached_tokens_remote = (uint32_t)r->cached_remote;
    d->new_tokens = (uint32_t)r->n_new;
    d->ttft_ms = r->t_first > 0 ? r->t_first - r->t_recv : 0;
    d->prefill_ms = r->prefill_ms;
    double dt = r->t_first > 0 ? r->t_end - r->t_first : 0;
    d->decode_tokens_per_s = r->n_new > 1 && dt > 0 ? (r->n_new - 1) / (dt / 1e3) : 0;
    d->total_ms = r->t_end - r->t_recv;
    if (reason == ENGINE_FINISH_CANCELLED)
        e->st.requests_cancelled++;
    else
        e->st.requests_done++;
    remove_live(e, r);
    e->o.emit(e->o.emit_arg, &ev);
    if (loading) {
        r->zombie = 1;
        r->zombie_next = e->zombies;
        e->zombies = r;
        return;
    }
    if (background) {
        r->history_pos = r->n_prompt;
        r->bg_next = NULL;
        if (e->bg_tail)
            e->bg_tail->bg_next = r;
        else
            e->bg_head = r;
        e->bg_tail = r;
        e->n_bg++;
        return;
    }
    request_free(r);
}

/* ---- Exact history (background) ------------------------------------------------------------ */

static request *bg_pop(engine *e)
{
    request *r = e->bg_head;
    e->bg_head = r->bg_next;
    if (!e->bg_head)
        e->bg_tail = NULL;
    e->n_bg--;
    return r;
}

/* Recomputes one chunk of the oldest ended request's generated positions with prefill (the
 * same kernel and order as an uncached prompt's, so the K/V are its bits) over the slots that
 * decode wrote; when all are done, publishes its blocks and lets it go. */
static void history_step(engine *e)
{
    request *r = e->bg_head;
    int n = r->kv_done - r->history_pos;
    if (n > e->o.prefill_chunk)
        n = e->o.prefill_chunk;
    model_kv kv = {r->ptr, r->n_blk};
    double t0 = base_now_ms();
    int rc = model_prefill(e->ms, &kv, r->history_pos, r->tok + r->history_pos, n, NULL);
    e->st.history_ms += base_now_ms() - t0;
    if (rc == 0) {
        r->history_pos += n;
        e->st.history_tokens += (uint64_t)n;
    }
    if (rc != 0 || r->history_pos == r->kv_done) {
        bg_pop(e);
        if (rc == 0)
            publish_ready(e, r);
        release_blocks(e, r);
        request_free(r);
    }
}

/* Gives up the oldest pending recompute (its generated blocks are not published; a later
 * request that needs them computes them itself). Returns 1 if there was one. */
static int history_drop(engine *e)
{
    if (!e->bg_head)
        return 0;
    request *r = bg_pop(e);
    e->st.history_dropped++;
    release_blocks(e, r);
    request_free(r);
    return 1;
}

/* Drops the pending recomputes that request r covers: same namespace, and every position the
 * ended request computed is in r's prompt with the same ids. r's prefill computes those positions
 * with the same kernel (the same bits) and publishes them, so they are not computed twice (a chat's
 * next turn sent at once, before the user could read the reply). */
static void history_supersede(engine *e, const request *r)
{
    request *prev = NULL;
    for (request *b = e->bg_head; b;) {
        request *next = b->bg_next;
        if (b->kv_done <= r->n_prompt && cache_key_eq(b->root, r->root) &&
            memcmp(b->tok, r->tok, (size_t)b->kv_done * sizeof(int32_t)) == 0) {
            if (prev)
                prev->bg_next = next;
            else
                e->bg_head = next;
            if (e->bg_tail == b)
                e->bg_tail = prev;
            e->n_bg--;
            e->st.history_superseded++;
            release_blocks(e, b);
            request_free(b);
        } else {
            prev = b;
        }
        b = next;
    }
}

static void history_finish_all(engine *e)
{
    while (e->bg_head)
        history_step(e);
}

static void fail_request(engine *e, request *r, int code, const char *what)
{
    release_blocks(e, r);
    remove_live(e, r);
    emit_error(e, r->handle, r->owner, code, "%s", what);
    request_free(r);
}

/* When the cached run ends on a block boundary and the prompt goes on into a block another
 * request has filled (a system prompt that ends mid-block, a turn that diverges mid-block), copy
 * the rows they share from that cached child into the request's own next block instead of
 * computing them: the copy is the bits a prefill writes, so nothing downstream can tell. Never
 * the last prompt token, whose logits are needed. */
static void reuse_partial(engine *e, request *r)
{
    int B = e->o.block_tokens;
    int full = r->kv_done / B;
    if (e->o.no_cache || r->kv_done % B != 0 || full < 1 || full >= r->n_blk ||
        !cache_block_published(r->blk[full - 1]))
        return;
    int rem = r->n_prompt - 1 - r->kv_done;
    if (rem <= 0)
        return;
    if (rem > B - 1)
        rem = B - 1;
    const cache_block *child;
    size_t k =
        cache_best_child(e->cache, r->blk[full - 1], r->tok + r->kv_done, (size_t)rem, &child);
    if (k == 0)
        return;
    model_kv_copy_rows(&e->c, B, e->o.kv_type, r->ptr[full], cache_block_data(child), (int)k);
    r->kv_done += (int)k;
    r->cached += (int)k;
    e->st.cached_tokens += k;
}

/* Asks the remote tier for the blocks after the request's cached run, up to load_end, straight
 * into its private slots. Returns 1 if a load went out (the request is LOADING), else 0. */
static int load_remote(engine *e, request *r)
{
    int B = e->o.block_tokens, from = r->cached / B;
    if (!e->remote || from >= r->load_end)
        return 0;
    remote_thread_load *l = &r->rload;
    l->owner = r;
    l->parent = from ? r->keys[from - 1] : r->root;
    l->keys = r->keys + from;
    l->tokens = r->tok + (size_t)from * B;
    l->dst = r->ptr + from;
    l->n = (size_t)(r->load_end - from);
    /* The prompt's tokens after its full blocks (but its last, prefilled for its logits): if the
     * whole chain comes, the block that goes on with them may be in the remote tier too. */
    int rem = r->n_prompt - 1 - r->load_end * B;
    l->partial_n = rem > 0 && r->load_end < r->n_blk ? (size_t)(rem < B ? rem : B - 1) : 0;
    l->partial_tokens = r->tok + (size_t)r->load_end * B;
    l->partial_dst = l->partial_n ? r->ptr[r->load_end] : NULL;
    r->state = RQ_LOADING;
    e->n_loading++;
    e->n_loading_remote++;
    remote_thread_load_async(e->remote, l);
    return 1;
}

/* Looks up the cached prefix and allocates blocks for every position the request may write.
 * Returns 0, or CACHE_ENOSPC with nothing held. */
static int admit(engine *e, request *r)
{
    int B = e->o.block_tokens;
    int last_pos = r->n_prompt; /* positions that may get K/V: [0, last_pos) */
    if (r->kind == ENGINE_REQ_GENERATE && r->max_new > 1)
        last_pos = r->n_prompt + (int)r->max_new - 1;
    if (last_pos > e->c.seq_len)
        last_pos = e->c.seq_len;
    int need = blocks_for(e, last_pos);
    /* Never the whole prompt: the last prompt token is prefilled for its logits (WARM only needs
     * full blocks, so it may take them all). */
    size_t cap =
        r->kind == ENGINE_REQ_WARM ? (size_t)r->n_prompt / B : (size_t)(r->n_prompt - 1) / B;
    size_t hit = 0;
    if (!e->o.no_cache)
        cache_lookup(e->cache, r->root, r->tok, (size_t)r->n_prompt, r->blk, r->keys, cap, &hit);
    for (size_t i = 0; i < hit; i++)
        r->ptr[i] = cache_block_data(r->blk[i]);
    r->n_blk = (int)hit;
    r->n_pub = (int)hit;
    for (int i = (int)hit; i < need; i++) {
        if (cache_alloc(e->cache, &r->blk[i]) != 0) {
            release_blocks(e, r);
            return CACHE_ENOSPC;
        }
        r->ptr[i] = cache_block_data(r->blk[i]);
        r->n_blk++;
    }
    r->cached = (int)hit * B;
    r->kv_done = r->cached;
    r->state = RQ_PREFILL;
    if (e->bg_head)
        history_supersede(e, r);
    e->st.cached_tokens += (uint64_t)r->cached;
    r->load_end = (int)cap;
    if (e->disk && hit < cap) {
        /* The chain goes on past the RAM hits: ask the disk tier for the next blocks, straight
         * into this request's private slots. */
        disk_thread_load *l = &r->load;
        l->owner = r;
        l->parent = hit ? r->keys[hit - 1] : r->root;
        l->keys = r->keys + hit;
        l->tokens = r->tok + hit * (size_t)B;
        l->dst = r->ptr + hit;
        l->n = cap - hit;
        r->state = RQ_LOADING;
        e->n_loading++;
        disk_thread_load_async(e->disk, l);
        return 0;
    }
    if (load_remote(e, r))
        return 0;
    reuse_partial(e, r);
    return 0;
}

/* A load came back for a request that ended meanwhile: frees it now. Returns 1 if r was one. */
static int reap_zombie(engine *e, request *r)
{
    if (!r->zombie)
        return 0;
    request **p = &e->zombies;
    while (*p != r)
        p = &(*p)->zombie_next;
    *p = r->zombie_next;
    release_blocks(e, r);
    request_free(r);
    return 1;
}

/* Blocks [cached / B, + n) of r came from a lower tier (remote: 1 for the remote tier, 0 for the
 * disk): they count as cached and are published, so other requests share them. Blocks from disk
 * are marked as on disk (evicting them spills nothing); blocks from the remote tier are not
 * written back to it, and spill to disk normally. */
static void loaded_from(engine *e, request *r, int n, int remote)
{
    int B = e->o.block_tokens, first = r->cached / B;
    r->cached += n * B;
    r->kv_done = r->cached;
    e->st.cached_tokens += (uint64_t)n * B;
    if (remote) {
        r->cached_remote += n * B;
        e->st.cached_tokens_remote += (uint64_t)n * B;
        r->remote_from = first;
        r->remote_to = first + n;
    } else {
        r->cached_disk += n * B;
        e->st.cached_tokens_disk += (uint64_t)n * B;
    }
    publish_ready(e, r);
    if (!remote)
        for (int i = first; i < first + n && i < r->n_pub; i++)
            cache_block_set_on_disk(r->blk[i]);
}

/* Takes the loads the disk thread has finished; a chain the disk did not finish goes on to the
 * remote tier. */
static void collect_loads(engine *e)
{
    if (!e->disk || e->n_loading == e->n_loading_remote)
        return;
    for (disk_thread_load *l = disk_thread_poll(e->disk), *next; l; l = next) {
        next = l->next;
        request *r = l->owner;
        e->n_loading--;
        e->admit_blocked = 0;
        if (reap_zombie(e, r))
            continue;
        loaded_from(e, r, (int)l->n_loaded, 0);
        if (load_remote(e, r))
            continue;
        r->state = RQ_PREFILL;
        reuse_partial(e, r);
    }
}

/* Takes the loads the remote thread has finished. */
static void collect_remote(engine *e)
{
    if (!e->remote || e->n_loading_remote == 0)
        return;
    for (remote_thread_load *l = remote_thread_poll(e->remote), *next; l; l = next) {
        next = l->next;
        request *r = l->owner;
        e->n_loading--;
        e->n_loading_remote--;
        e->admit_blocked = 0;
        if (reap_zombie(e, r))
            continue;
        loaded_from(e, r, (int)l->n_loaded, 1);
        r->state = RQ_PREFILL;
        if (l->partial_loaded > 0) {
            /* Rows of the next block, loaded into its private slot: its first tokens' K/V. */
            int k = (int)l->partial_loaded;
            r->kv_done += k;
            r->cached += k;
            r->cached_remote += k;
            e->st.cached_tokens += (uint64_t)k;
            e->st.cached_tokens_remote += (uint64_t)k;
            continue;
        }
        reuse_partial(e, r);
    }
}

/* Drops the references held for the remote tier's writes that are done. */
static void collect_written(engine *e)
{
    if (!e->remote)
        return;
    void *done[256];
    size_t n;
    while ((n = remote_thread_take_written(e->remote, done, 256)) > 0) {
        for (size_t i = 0; i < n; i++)
            cache_unref(e->cache, done[i]);
        e->admit_blocked = 0;
    }
}

/* Waits (in-process use, no wake callback) until a lower tier answers. */
static void wait_loads(engine *e)
{
    if (e->n_loading_remote == e->n_loading)
        remote_thread_wait(e->remote, 100);
    else
        disk_thread_wait(e->disk, e->n_loading_remote ? 5 : 100);
}

int engine_submit(engine *e, const engine_request *q)
{
    int seq = e->c.seq_len, vocab = e->c.vocab_size;
    request *r = NULL;
    int32_t *text_ids = NULL; /* the tokenized text prompt */
    const int32_t *ids = q->tokens;
    size_t n = q->n_tokens;
    char what[256];
    int rc = 0;
    /* Checks first, on the request as given; nothing is allocated for a request refused here
     * but the tokenizer's output (needed to know a text prompt's length). */
    if (e->n_live >= e->cap_live) {
        rc = base_fail(what, sizeof what, ENGINE_EBUSY,
                       "too many requests: %d running or queued (--max-batch %d, --max-queue %d)",
                       e->n_live, e->o.max_batch, e->o.max_queue);
        goto out;
    }
    if (!ids) {
        if (!e->tok) {
            rc = base_fail(what, sizeof what, ENGINE_EINVAL, "no tokenizer: send token ids");
            goto out;
        }
        size_t cap = model_encode_cap(q->text_len);
        if (cap > SIZE_MAX / sizeof(int32_t) || !(text_ids = malloc(cap * sizeof(int32_t)))) {
            rc = base_fail(what, sizeof what, ENGINE_ENOMEM,
                           "out of memory tokenizing a prompt of %zu bytes", q->text_len);
            goto out;
        }
        if (model_encode(e->tok, q->text ? q->text : "", q->text_len, 1, text_ids, cap, &n) != 0) {
            rc = base_fail(what, sizeof what, ENGINE_EINVAL, "cannot tokenize the prompt");
            goto out;
        }
        ids = text_ids;
    }
    if (n == 0) {
        rc = base_fail(what, sizeof what, ENGINE_EINVAL, "empty prompt: give at least one id");
        goto out;
    }
    if (q->logprobs && (q->top_logprobs < 0 || q->top_logprobs > ENGINE_MAX_TOP_LOGPROBS)) {
        rc = base_fail(what, sizeof what, ENGINE_EINVAL, "top_logprobs %d is outside [0, %d]",
                       q->top_logprobs, ENGINE_MAX_TOP_LOGPROBS);
        goto out;
    }
    if (n > (size_t)seq) {
        rc = base_fail(what, sizeof what, ENGINE_ETOOLONG,
                       "prompt is %zu tokens, the model's context is %d", n, seq);
        goto out;
    }
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= vocab) {
            rc = base_fail(what, sizeof what, ENGINE_EBADTOKEN,
                           "token id %d at index %zu is out of range [0, %d)", ids[i], i, vocab);
            goto out;
        }
    /* The request: room for the whole context (prompt and every token it may sample). */
    int nb = blocks_for(e, seq) + 1;
    r = calloc(1, sizeof *r);
    if (r) {
        r->tok_cap = seq + 1;
        r->tok = malloc((size_t)r->tok_cap * sizeof(int32_t));
        r->blk = calloc((size_t)nb, sizeof *r->blk);
        r->ptr = calloc((size_t)nb, sizeof *r->ptr);
        if (e->disk || e->remote)
            r->keys = calloc((size_t)nb, sizeof *r->keys);
    }
    if (!r || !r->tok || !r->blk || !r->ptr || ((e->disk || e->remote) && !r->keys)) {
        rc = base_fail(what, sizeof what, ENGINE_ENOMEM, "out of memory");
        goto out;
    }
    r->handle = q->handle;
    r->owner = q->owner;
    r->kind = q->kind;
    /* A request can sample at most seq + 1 - n tokens: the last one needs no K/V. Clamping
     * here keeps every later size computation (the block reservation) inside the context,
     * whatever max_new the client sent (2^32 - 1 is "as many as fit"). */
    uint32_t room = (uint32_t)(seq + 1 - (int)n);
    r->max_new = q->kind == ENGINE_REQ_WARM ? 0 : q->max_new < room ? q->max_new : room;
    r->temp = q->temp;
    r->top_p = q->top_p;
    r->logprobs = q->logprobs != 0;
    r->top_logprobs = q->logprobs ? q->top_logprobs : 0;
    r->rng = model_rng_seed(q->seed);
    r->pin = q->pin;
    r->t_recv = q->t_received_ms > 0 ? q->t_received_ms : base_now_ms();
    memcpy(r->tok, ids, n * sizeof(int32_t));
    if (e->tok && model_detok_init(&r->dt, e->tok, ids[n - 1]) != 0) {
        rc = base_fail(what, sizeof what, ENGINE_ENOMEM, "out of memory");
        goto out;
    }
    r->n_prompt = (int)n;
    r->n_tok = r->n_prompt;
    if (!e->o.no_cache)
        r->root = cache_root(e->cache, q->ns, q->ns ? q->ns_len : 0);
    r->state = RQ_WAITING;
    e->live[e->n_live++] = r;
    e->st.requests++;
    e->st.prompt_tokens += (uint64_t)r->n_prompt;
out:
    free(text_ids);
    if (rc != 0) {
        request_free(r);
        emit_error(e, q->handle, q->owner, rc, "%s", what);
    }
    return rc;
}

int engine_cancel(engine *e, uint64_t handle)
{
    for (int i = 0; i < e->n_live; i++)
        if (e->live[i]->handle == handle) {
            finish(e, e->live[i], ENGINE_FINISH_CANCELLED);
            return 0;
        }
    return ENGINE_ENOTFOUND;
}

int engine_cancel_matching(engine *e, uint64_t value, uint64_t mask)
{
    int n = 0;
    for (int i = e->n_live - 1; i >= 0; i--)
        if ((e->live[i]->handle & mask) == value) {
            finish(e, e->live[i], ENGINE_FINISH_CANCELLED);
            n++;
        }
    return n;
}

/* ---- The step ----------------------------------------------------------------------------- */

static int running(const engine *e)
{
    int n = 0;
    for (int i = 0; i < e->n_live; i++)
        n += e->live[i]->state != RQ_WAITING;
    return n;
}

static void admit_waiting(engine *e)
{
    int run = running(e);
    for (int i = 0; i < e->n_live && run < e->o.max_batch; i++) {
        request *r = e->live[i];
        if (r->state != RQ_WAITING)
            continue;
        if (admit(e, r) != 0 && history_drop(e)) {
            i--; /* its blocks are free now: try this request again */
            continue;
        }
        if (r->state == RQ_WAITING) {
            if (run == 0) {
                char what[200];
                snprintf(what, sizeof what,
                         "K/V cache full: the request needs %d blocks of %d tokens, the cache "
                         "holds fewer free ones (raise --cache-mem)",
                         blocks_for(e, r->n_prompt + (int)r->max_new), e->o.block_tokens);
                fail_request(e, r, ENGINE_ENOSPC, what);
                i--;
                continue;
            }
            e->admit_blocked = 1;
            return; /* wait for running requests to free blocks; keep arrival order */
        }
        run++;
    }
}

/* The log-softmax's normaliser of logits[0..n) and the k largest (ids, logits), largest first,
 * lower id first on ties. */
static double log_norm_top(const float *logits, int n, int k, int32_t *top, float *top_l)
{
    float mx = logits[0];
    for (int i = 1; i < n; i++)
        if (logits[i] > mx)
            mx = logits[i];
    double sum = 0;
    for (int i = 0; i < n; i++)
        sum += exp((double)logits[i] - mx);
    int have = 0;
    for (int i = 0; i < n && k > 0; i++) {
        float l = logits[i];
        if (have == k && l <= top_l[k - 1])
            continue;
        int j = have < k ? have++ : k - 1;
        while (j > 0 && top_l[j - 1] < l) {
            top[j] = top[j - 1];
            top_l[j] = top_l[j - 1];
            j--;
        }
        top[j] = i;
        top_l[j] = l;
    }
    return mx + log(sum);
}

/* Samples from logits (modified), appends, emits; returns 1 if the request goes on. */
static int take_token(engine *e, request *r, float *logits)
{
    engine_logprobs lp, *lpp = NULL;
    double norm = 0;
    if (r->logprobs) {
        /* Before sampling, which changes logits: the model's own distribution. */
        norm = log_norm_top(logits, e->c.vocab_size, r->top_logprobs, lp.top_token, lp.top_logprob);
        lp.n_top = r->top_logprobs;
        lp.prev = r->tok[r->n_tok - 1];
        for (int i = 0; i < lp.n_top; i++)
            lp.top_logprob[i] = (float)(lp.top_logprob[i] - norm);
        memcpy(e->lp_logits, logits, (size_t)e->c.vocab_size * sizeof(float));
        lpp = &lp;
    }
    int32_t t = model_sample(e->sampler, logits, r->temp, r->top_p, &r->rng);
    if (lpp)
        lp.logprob = (float)(e->lp_logits[t] - norm);
    if (r->t_first == 0)
        r->t_first = base_now_ms();
    /* The vocabulary says which ids end the text (EOS, EOT, <|im_end|>, ...); a sampled BOS
     * starts another text, so it ends this one too (llama2.c's reference stops on it). */
    if (e->tok ? model_token_is_eog(e->tok, t) || t == model_token_bos(e->tok)
               : t == MODEL_TOK_BOS || t == MODEL_TOK_EOS) {
        finish(e, r, ENGINE_FINISH_STOP);
        return 0;
    }
    r->tok[r->n_tok++] = t;
    r->n_new++;
    e->st.generated_tokens++;
    /* Another token needs this one's K/V at position n_tok - 1, inside the context. */
    int last = (uint32_t)r->n_new >= r->max_new || r->n_tok > e->c.seq_len;
    emit_token(e, r, t, last, lpp);
    if (last) {
        finish(e, r, ENGINE_FINISH_LENGTH);
        return 0;
    }
    return 1;
}

static void prefill_one(engine *e)
{
    request *r = NULL;
    for (int k = 0; k < e->n_live; k++) {
        request *q = e->live[(e->rr + k) % e->n_live];
        if (q->state == RQ_PREFILL) {
            r = q;
            e->rr = (e->rr + k + 1) % e->n_live;
            break;
        }
    }
    if (!r)
        return;
    int todo = r->n_prompt - r->kv_done;
    if (todo > 0) {
        int n = todo < e->o.prefill_chunk ? todo : e->o.prefill_chunk;
        int last = r->kv_done + n == r->n_prompt;
        model_kv kv = {r->ptr, r->n_blk};
        double t0 = base_now_ms();
        int rc = model_prefill(e->ms, &kv, r->kv_done, r->tok + r->kv_done, n,
                               last && r->kind == ENGINE_REQ_GENERATE ? e->logits : NULL);
        double dt = base_now_ms() - t0;
        r->prefill_ms += dt;
        e->st.prefill_ms += dt;
        if (rc != 0) {
            fail_request(e, r, ENGINE_EMODEL, "prefill failed");
            return;
        }
        r->kv_done += n;
        e->st.prefill_tokens += (uint64_t)n;
        if (!last)
            return;
    }
    /* The prompt is in: share its blocks, then the first token (or, for WARM, the pins). */
    publish_ready(e, r);
    if (r->kind == ENGINE_REQ_WARM) {
        if (r->pin && !e->o.no_cache) {
            int B = e->o.block_tokens;
            int full = r->n_prompt / B;
            if (r->n_pub < full) {
                fail_request(e, r, ENGINE_EPINMAX,
                             "cannot pin: some of the prompt's blocks could not be published");
                return;
            }
            if (cache_pin(e->cache, r->blk, (size_t)full) != 0) {
                char what[200];
                cache_stats cs;
                cache_get_stats(e->cache, &cs);
                snprintf(what, sizeof what,
                         "pin budget exceeded: %d blocks asked, %llu of %llu bytes already "
                         "pinned (--pin-max)",
                         full,
                         (unsigned long long)(cs.slots_pinned * (cs.bytes_total / cs.slots_total)),
                         (unsigned long long)cs.pin_bytes_max);
                fail_request(e, r, ENGINE_EPINMAX, what);
                return;
            }
        }
        r->t_first = base_now_ms();
        finish(e, r, ENGINE_FINISH_STOP);
        return;
    }
    r->state = RQ_DECODE;
    if (r->max_new == 0) {
        r->t_first = base_now_ms();
        finish(e, r, ENGINE_FINISH_LENGTH);
        return;
    }
    take_token(e, r, e->logits);
}

static void decode_all(engine *e)
{
    int b = 0;
    for (int i = 0; i < e->n_live && b < e->o.max_batch; i++) {
        request *r = e->live[i];
        if (r->state != RQ_DECODE)
            continue;
        e->rows[b] = r;
        e->kv[b] = (model_kv){r->ptr, r->n_blk};
        e->pos[b] = r->n_tok - 1;
        e->toks[b] = r->tok[r->n_tok - 1];
        b++;
    }
    if (b == 0)
        return;
    double t0 = base_now_ms();
    int rc = model_decode(e->ms, e->kv, e->pos, e->toks, b, e->logits);
    e->st.decode_ms += base_now_ms() - t0;
    for (int i = 0; i < b; i++) {
        request *r = e->rows[i];
        if (rc != 0) {
            fail_request(e, r, ENGINE_EMODEL, "decode failed");
            continue;
        }
        r->kv_done = r->n_tok;
        take_token(e, r, e->logits + (size_t)i * e->c.vocab_size);
    }
}

static int computing(const engine *e)
{
    for (int i = 0; i < e->n_live; i++)
        if (e->live[i]->state == RQ_PREFILL || e->live[i]->state == RQ_DECODE)
            return 1;
    return 0;
}

static int admissible(const engine *e)
{
    if (e->admit_blocked)
        return 0;
    for (int i = 0; i < e->n_live; i++)
        if (e->live[i]->state == RQ_WAITING)
            return 1;
    return 0;
}

int engine_runnable(engine *e)
{
    if (computing(e) || admissible(e) || e->n_bg > 0)
        return 1;
    collect_written(e); /* cheap, and needs no step: an idle engine is not stepped */
    if (e->remote && e->n_loading_remote > 0 && remote_thread_has_done(e->remote))
        return 1;
    return e->disk && e->n_loading > e->n_loading_remote && disk_thread_has_done(e->disk);
}

int engine_step(engine *e)
{
    collect_loads(e);
    collect_remote(e);
    collect_written(e);
    admit_waiting(e);
    if (!e->o.wake && e->n_loading > 0 && !computing(e)) {
        /* In-process use: nothing to compute until a tier answers, so wait for it here. */
        wait_loads(e);
        collect_loads(e);
        collect_remote(e);
    }
    prefill_one(e);
    decode_all(e);
    /* Background work only while no live request computes: it never delays a first token or
     * a decode step (a chat's reply is recomputed while its user reads it). */
    if (e->bg_head && !computing(e) && !admissible(e))
        history_step(e);
    return e->n_live + e->n_bg;
}

int engine_live(const engine *e)
{
    return e->n_live;
}

cache *engine_cache(engine *e)
{
    return e->o.no_cache ? NULL : e->cache;
}

int engine_remote_stats(engine *e, struct remote_thread_stats *out)
{
    if (!e->remote)
        return ENGINE_ENOTFOUND;
    remote_thread_get_stats(e->remote, out);
    return 0;
}

int engine_disk_stats(engine *e, struct disk_thread_stats *out)
{
    if (!e->disk)
        return ENGINE_ENOTFOUND;
    disk_thread_get_stats(e->disk, out);
    return 0;
}

static void evict_cb(void *arg, const cache_evicted *ev)
{
    engine *e = arg;
    if (!ev->on_disk)
        disk_thread_spill(e->disk, ev); /* never waits: a full spill buffer drops the block */
}

typedef struct flush_ctx {
    disk_thread *disk;
    size_t n;
} flush_ctx;

static int flush_cb(void *arg, const cache_evicted *ev)
{
    flush_ctx *f = arg;
    if (ev->on_disk)
        return 0;
    disk_thread_spill_wait(f->disk, ev);
    f->n++;
    return 1;
}

size_t engine_flush_disk(engine *e)
{
    if (!e->disk)
        return 0;
    history_finish_all(e); /* what ended last is published, so it is written too */
    flush_ctx f = {e->disk, 0};
    cache_visit(e->cache, flush_cb, &f);
    disk_thread_flush(e->disk);
    return f.n;
}

void engine_get_stats(const engine *e, engine_stats *out)
{
    *out = e->st;
    out->background = e->n_bg;
    out->running = running(e);
    out->waiting = e->n_live - out->running;
}

/* ---- Creation ----------------------------------------------------------------------------- */

/* The default K/V memory when none is given: enough for ENGINE_DEFAULT_CONTEXTS full contexts,
 * at least 64 MiB (a small model's contexts are tiny, and a cache holds many prefixes), at most
 * a quarter of the machine's memory. A fixed 1 GiB made a 1 MB model take 1 GB of RSS and a
 * 100B-parameter one thrash. The choice and its reason are logged. */
static size_t default_cache_mem(const model_config *c, int block_tokens, size_t block_bytes)
{
    size_t ctx = (size_t)((c->seq_len + block_tokens - 1) / block_tokens) * block_bytes;
    size_t want = ENGINE_DEFAULT_CONTEXTS * ctx, floor = (size_t)64 << 20, mem = want;
    const char *why = "";
    if (mem < floor) {
        mem = floor;
        why = ", raised to the 64 MiB floor";
    }
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
    size_t quarter = pages > 0 && page > 0 ? (size_t)pages / 4 * (size_t)page : 0;
    if (quarter && mem > quarter) {
        mem = quarter;
        why = ", capped at a quarter of the machine's memory";
    }
    base_log(BASE_LOG_INFO,
             "cache: %.0f MB of K/V memory by default: %d contexts of %d tokens take %.1f MB%s "
             "(machine: %.0f MB; set it with --cache-mem)",
             mem / 1e6, ENGINE_DEFAULT_CONTEXTS, c->seq_len, want / 1e6, why,
             (double)pages * (double)page / 1e6);
    return mem;
}

static void *prefault_main(void *arg)
{
    engine *e = arg;
    double t0 = base_now_ms();
    int rc = cache_prefault(e->cache, &e->prefault_stop);
    size_t mb = cache_arena_bytes(e->cache) >> 20;
    if (rc == 0)
        base_log(BASE_LOG_DEBUG, "cache: %zu MiB of K/V memory populated in %.0f ms", mb,
                 base_now_ms() - t0);
    else if (rc < 0)
        base_log(BASE_LOG_DEBUG,
                 "cache: K/V memory not populated ahead (%s): pages fault in on "
                 "first use",
                 cache_strerror(rc));
    return NULL;
}

/* Starts the remote thread (which connects in the background). Returns 0 or an ENGINE_E* code
 * with a message. */
static int open_remote(engine *e, const cache_opts *co, char *msg, size_t msglen)
{
    const engine_opts *o = &e->o;
    remote_thread_opts ro = {0};
    ro.remote.url = o->remote_url;
    ro.cluster = o->remote_cluster;
    ro.remote.password = o->remote_password;
    memcpy(ro.remote.fingerprint, co->fingerprint, 16);
    ro.remote.block_tokens = co->block_tokens;
    ro.remote.block_floats = co->block_floats;
    ro.remote.kv_type = co->kv_type;
    ro.remote.timeout_ms = o->remote_timeout_ms;
    ro.remote.ttl_s = o->remote_ttl_s;
    /* The queue holds references on published blocks until they are sent: a quarter of the
     * pool at most, so the rest stays evictable. */
    size_t q = o->remote_queue;
    if (!q)
        q = o->cache_mem / 4 < ((size_t)256 << 20) ? o->cache_mem / 4 : (size_t)256 << 20;
    ro.queue_bytes = q;
    ro.wake = o->wake;
    ro.wake_arg = o->wake_arg;
    int rc = remote_thread_open(&ro, &e->remote, msg, msglen);
    e->o.remote_password = NULL; /* the store has its copy; the caller's is not kept */
    if (rc == 0)
        return 0;
    return rc == CACHE_ENOMEM ? ENGINE_ENOMEM : ENGINE_EREMOTE;
}

int engine_new(const model *m, const model_tokenizer *tok, const engine_opts *opts, engine **out,
               char *msg, size_t msglen)
{
    *out = NULL;
    engine_opts o = *opts;
    if (!o.emit)
        return base_fail(msg, msglen, ENGINE_ECONFIG, "engine: no event callback");
    if (o.block_tokens == 0)
        o.block_tokens = 16;
    if (o.max_batch == 0)
        o.max_batch = 32;
    if (o.max_queue == 0)
        o.max_queue = 256;
    if (o.prefill_chunk == 0)
        o.prefill_chunk = 512;
    engine *e = calloc(1, sizeof *e);
    if (!e)
        return base_fail(msg, msglen, ENGINE_ENOMEM, "engine: out of memory");
    e->o = o;
    e->m = m;
    e->tok = tok;
    e->c = *model_get_config(m);
    if (model_kv_type_check(&e->c, o.kv_type, msg, msglen) != 0) {
        engine_free(e);
        return ENGINE_ECONFIG;
    }
    size_t block_bytes = model_kv_block_bytes(&e->c, o.block_tokens, o.kv_type);
    if (o.cache_mem == 0)
        e->o.cache_mem = o.cache_mem = default_cache_mem(&e->c, o.block_tokens, block_bytes);
    model_state_opts so = {o.block_tokens, o.prefill_chunk, o.max_batch, o.threads, o.kv_type};
    int rc = model_state_new(m, &so, &e->ms);
    if (rc != 0) {
        engine_free(e);
        return base_fail(msg, msglen, rc == MODEL_ENOMEM ? ENGINE_ENOMEM : ENGINE_ECONFIG,
                         "engine: cannot make the model state: %s", model_strerror(rc));
    }
    cache_opts co = {0};
    co.mem_bytes = o.cache_mem;
    co.pin_bytes = o.pin_max;
    co.block_tokens = o.block_tokens;
    co.block_floats = block_bytes / sizeof(float); /* a multiple of 4 bytes (model.h) */
    co.kv_type = o.kv_type;
    memcpy(co.fingerprint, model_fingerprint(m), 16);
    co.n_layers = e->c.n_layers;
    co.n_kv_heads = e->c.n_kv_heads;
    co.head_size = e->c.head_size;
    co.test_key_bits = o.test_key_bits;
    if (o.disk_dir && !o.no_cache) {
        co.on_evict = evict_cb;
        co.on_evict_arg = e;
    }
    if ((rc = cache_open(&co, &e->cache, msg, msglen)) != 0) {
        engine_free(e);
        return rc == CACHE_ENOMEM ? ENGINE_ENOMEM : ENGINE_ECONFIG;
    }
    if (o.disk_dir && !o.no_cache) {
        disk_thread_opts dw = {0};
        dw.disk.dir = o.disk_dir;
        dw.disk.max_bytes = o.disk_max;
        memcpy(dw.disk.fingerprint, co.fingerprint, 16);
        dw.disk.block_tokens = co.block_tokens;
        dw.disk.block_floats = co.block_floats;
        dw.disk.kv_type = co.kv_type;
        dw.disk.reset_incompatible = o.disk_reset;
        /* The spill buffer takes a burst of evictions while the disk thread writes: one
         * admission may evict as many blocks as a whole context holds, and a burst bigger than
         * the buffer drops spills (later misses). So at least two contexts' worth, and a quarter
         * of the pool up to 256 MiB. The arena is only reserved: pages are touched when used. */
        size_t spill = o.disk_spill;
        if (!spill) {
            size_t burst =
                2 * (size_t)blocks_for(e, e->c.seq_len) * co.block_floats * sizeof(float);
            spill = o.cache_mem / 4 < ((size_t)256 << 20) ? o.cache_mem / 4 : (size_t)256 << 20;
            if (spill < burst)
                spill = burst;
        }
        dw.spill_bytes = spill;
        dw.wake = o.wake;
        dw.wake_arg = o.wake_arg;
        if ((rc = disk_thread_open(&dw, &e->disk, msg, msglen)) != 0) {
            engine_free(e);
            /* The cache's code, translated once here; msg names the directory. */
            return rc == CACHE_EBUSY    ? ENGINE_EDISKBUSY
                   : rc == CACHE_ENOMEM ? ENGINE_ENOMEM
                                        : ENGINE_EDISK;
        }
    }
    if (o.remote_url && !o.no_cache && (rc = open_remote(e, &co, msg, msglen)) != 0) {
        engine_free(e);
        return rc;
    }
    e->cap_live = o.max_batch + o.max_queue;
    e->live = calloc((size_t)e->cap_live, sizeof *e->live);
    size_t B = (size_t)o.max_batch;
    e->logits = malloc(B * (size_t)e->c.vocab_size * sizeof(float));
    e->kv = calloc(B, sizeof *e->kv);
    e->pos = calloc(B, sizeof *e->pos);
    e->toks = calloc(B, sizeof *e->toks);
    e->rows = calloc(B, sizeof *e->rows);
    e->sampler = model_sampler_new(e->c.vocab_size);
    e->lp_logits = malloc((size_t)e->c.vocab_size * sizeof(float));
    if (!e->live || !e->logits || !e->kv || !e->pos || !e->toks || !e->rows || !e->sampler ||
        !e->lp_logits) {
        engine_free(e);
        return base_fail(msg, msglen, ENGINE_ENOMEM, "engine: out of memory");
    }
    /* The arena's pages are populated beside the engine's work, not before it starts. Without
     * the thread they fault in on first use: slower first requests, nothing worse. */
    if (!o.no_prefault) {
        int prc = pthread_create(&e->prefault, NULL, prefault_main, e);
        if (prc == 0)
            e->prefault_started = 1;
        else
            base_log(BASE_LOG_WARN,
                     "cache: cannot start the thread that populates the K/V "
                     "memory (%s): pages fault in on first use",
                     strerror(prc));
    }
    *out = e;
    return 0;
}

void engine_free(engine *e)
{
    if (!e)
        return;
    if (e->prefault_started) {
        atomic_store(&e->prefault_stop, 1);
        pthread_join(e->prefault, NULL);
    }
    /* Loads still out write into requests' slots: let them come back first. */
    while (e->n_loading > 0) {
        wait_loads(e);
        collect_loads(e);
        collect_remote(e);
    }
    while (e->n_live > 0) {
        request *r = e->live[e->n_live - 1];
        release_blocks(e, r);
        e->n_live--;
        request_free(r);
    }
    /* Ended requests' history first: published now, it is then sent to the remote tier and
     * written to disk below. */
    if (e->disk || e->remote)
        history_finish_all(e);
    while (history_drop(e))
        ;
    if (e->remote) {
        /* Sends what is queued (or drops it), then gives the blocks' references back. */
        remote_thread_stop(e->remote);
        collect_written(e);
        remote_thread_free(e->remote);
    }
    if (e->disk) {
        engine_flush_disk(e);
        disk_thread_close(e->disk);
    }
    free(e->live);
    free(e->logits);
    free(e->kv);
    free(e->pos);
    free(e->toks);
    free(e->rows);
    model_sampler_free(e->sampler);
    free(e->lp_logits);
    cache_close(e->cache);
    model_state_free(e->ms);
    free(e);
}

const engine_opts *engine_get_opts(const engine *e)
{
    return &e->o;
}
