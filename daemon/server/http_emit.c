/* http_emit.c — the engine thread's half of the HTTP API: the engine's events for HTTP requests
 * rendered as OpenAI JSON and Server-Sent Events (openai.c), queued as bytes for the loop.
 *
 * An HTTP request's rendering (oai_out: stream or not, stop strings, the text so far) travels
 * with its SUBMIT task and is kept here, by handle, from submit to the request's last event; the
 * loop thread never sees it. This is the engine thread's counterpart of push_frame() for native
 * connections: the same queue, the same wake-up, bytes for a connection id.
 *
 * A stop string ends the answer here, at once (the text is cut before it); the engine is told
 * to cancel the request through the engine thread's own task queue, and the usage figures come
 * with the DONE event that follows (which counts the request as cancelled in STATS).
 */
#include "server_int.h"

#include "http_api.h"

#include <stdlib.h>
#include <string.h>

typedef struct oai_live {
    struct oai_live *next;
    uint64_t handle;
    oai_out *o;
} oai_live;

static unsigned bucket(uint64_t handle)
{
    return (unsigned)((handle * 0x9E3779B97F4A7C15ull) >> 40) % SRV_OAI_BUCKETS;
}

void srv__push_bytes(server *s, uint32_t conn_id, uint32_t req, int ends, const void *p, size_t n)
{
    srv_frame *f = malloc(sizeof *f + n);
    if (!f) {
        base_log(BASE_LOG_ERROR, "connection %#x: out of memory: %zu bytes of an answer lost",
                 conn_id, n);
        return;
    }
    memcpy(f->bytes, p, n);
    f->conn = conn_id;
    f->req = req;
    f->ends = ends;
    f->len = n;
    pthread_mutex_lock(&s->mu);
    base_queue_push(&s->frames, &f->node);
    pthread_mutex_unlock(&s->mu);
    uv_async_send(&s->wake);
}

void srv__http_register(server *s, srv_task *t)
{
    oai_live *l = malloc(sizeof *l);
    if (!l)
        return; /* the answer becomes a 500 at the request's end (srv__http_emit) */
    l->handle = t->r.handle;
    l->o = t->oai;
    t->oai = NULL;
    unsigned b = bucket(l->handle);
    l->next = s->oai_live[b];
    s->oai_live[b] = l;
}

/* The live rendering of handle; unlinked when take is set. */
static oai_live *find(server *s, uint64_t handle, int take)
{
    for (oai_live **p = &s->oai_live[bucket(handle)]; *p; p = &(*p)->next)
        if ((*p)->handle == handle) {
            oai_live *l = *p;
            if (take)
                *p = l->next;
            return l;
        }
    return NULL;
}

/* The engine's codes as HTTP statuses (and a Retry-After for the passing ones). */
static int http_status(int code, int *retry_after, const char **ocode)
{
    *retry_after = 0;
    *ocode = NULL;
    switch (code) {
    case ENGINE_EINVAL:
    case ENGINE_EBADTOKEN:
    case ENGINE_EPINMAX:
        return 400;
    case ENGINE_ETOOLONG:
        *ocode = "context_length_exceeded";
        return 400;
    case ENGINE_EBUSY:
        *retry_after = 1;
        return 429;
    case ENGINE_ENOSPC:
        *retry_after = 1;
        return 503;
    default:
        return 500;
    }
}

/* An answer that cannot be rendered (out of memory): a fixed 500, and the connection closes. */
static void push_oom(server *s, uint32_t conn_id, uint32_t req)
{
    static const char r[] =
        "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json"
        "\r\nContent-Length: 105\r\nConnection: close\r\n\r\n"
        "{\"error\":{\"message\":\"out of memory rendering the answer\",\"type\":"
        "\"server_error\",\"param\":null,\"code\":null}}";
    srv__push_bytes(s, conn_id, req, 1, r, sizeof r - 1);
}

static void cancel_handle(server *s, uint64_t handle)
{
    srv_task *t = srv__task_new(SRV_TASK_CANCEL, (uint32_t)(handle >> 32), (uint32_t)handle, 0);
    if (t)
        srv__task_push(s, t); /* taken on the engine thread's next turn */
}

static void render_done(oai_out *o, const engine_event *ev, hbuf *wire)
{
    const engine_done *d = &ev->done;
    if (d->finish == ENGINE_FINISH_CANCELLED && !o->stopped) {
        /* Not a stop string: the client went away (its bytes are dropped) or the daemon is
         * stopping. */
        oai_error e;
        oai_fail(&e, 503, NULL, "cancelled", "the request was cancelled: the daemon is stopping");
        oai_out_error(o, &e, 0, wire);
        return;
    }
    oai_usage u = {.prompt_tokens = d->prompt_tokens,
                   .cached_tokens = d->cached_tokens,
                   .cached_tokens_disk = d->cached_tokens_disk,
                   .cached_tokens_remote = d->cached_tokens_remote,
                   .completion_tokens = d->new_tokens,
                   .ttft_ms = d->ttft_ms,
                   .prefill_ms = d->prefill_ms,
                   .decode_tokens_per_s = d->decode_tokens_per_s,
                   .total_ms = d->total_ms};
    oai_out_done(o, d->finish == ENGINE_FINISH_LENGTH ? "length" : "stop", &u, wire);
}

/* A token event's log-probabilities with their token texts (the vocabulary's bytes for each id,
 * as model_decode_piece() spells it after the previous token): the token's own, then the
 * alternatives. Returns how many. */
static int token_lps(const server *s, const engine_event *ev, oai_token_lp *lp)
{
    const engine_logprobs *x = ev->logprobs;
    int n = 0;
    for (int k = -1; k < x->n_top && k < ENGINE_MAX_TOP_LOGPROBS; k++, n++) {
        int32_t id = k < 0 ? ev->token : x->top_token[k];
        lp[n].len = 0;
        lp[n].text = s->tok ? model_decode_piece(s->tok, x->prev, id, &lp[n].len) : "";
        lp[n].logprob = k < 0 ? x->logprob : x->top_logprob[k];
    }
    return n;
}

void srv__http_emit(server *s, const engine_event *ev)
{
    uint32_t conn_id = (uint32_t)(ev->handle >> 32), req = (uint32_t)ev->handle;
    int ends = ev->type != ENGINE_EV_TOKEN;
    oai_live *l = find(s, ev->handle, ends);
    if (!l) {
        if (ends)
            push_oom(s, conn_id, req);
        return;
    }
    hbuf wire = {0};
    if (ev->type == ENGINE_EV_TOKEN) {
        oai_token_lp lp[1 + ENGINE_MAX_TOP_LOGPROBS];
        int n_lp = ev->logprobs ? token_lps(s, ev, lp) : 0;
        if (oai_out_token(l->o, ev->piece, ev->piece_len, n_lp ? lp : NULL, n_lp, &wire))
            cancel_handle(s, ev->handle);
    } else if (ev->type == ENGINE_EV_DONE) {
        const engine_done *d = &ev->done;
        base_log(BASE_LOG_INFO,
                 "request %#x:%u (http): prompt %u tokens, cached %u (disk %u), TTFT %.1f ms, %u "
                 "new tokens, %.1f ms%s",
                 conn_id, req, d->prompt_tokens, d->cached_tokens, d->cached_tokens_disk,
                 d->ttft_ms, d->new_tokens, d->total_ms,
                 d->finish == ENGINE_FINISH_CANCELLED && !l->o->stopped ? ", cancelled" : "");
        render_done(l->o, ev, &wire);
    } else {
        base_log(BASE_LOG_INFO, "request %#x:%u (http): error: %s", conn_id, req, ev->msg);
        oai_error e;
        int retry;
        const char *code;
        int status = http_status(ev->code, &retry, &code);
        oai_fail(&e, status, ev->code == ENGINE_EBADTOKEN ? "prompt" : NULL, code, "%s", ev->msg);
        oai_out_error(l->o, &e, retry, &wire);
    }
    if (wire.oom)
        push_oom(s, conn_id, req);
    else if (wire.len > 0 || ends)
        srv__push_bytes(s, conn_id, req, ends, wire.p ? wire.p : "", wire.len);
    hbuf_free(&wire);
    if (ends) {
        oai_out_free(l->o);
        free(l);
    }
}
