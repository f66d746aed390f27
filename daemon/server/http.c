/* http.c — the OpenAI-compatible HTTP API's connections, on the loop thread: bind --http (TCP
 * or a Unix socket), accept, read requests (http_parse.c), authenticate, route, and hand
 * generations to the engine thread through the same task queue as the native protocol.
 *
 * An HTTP connection is known to the engine thread only by its id, which has SRV_CONN_HTTP set:
 * the engine thread renders the answers of such ids as OpenAI JSON or Server-Sent Events
 * (http_emit.c) and queues the bytes, which srv__deliver_cb() hands to srv__http_deliver(). One
 * request is answered at a time per connection (HTTP/1.1 has no multiplexing); bytes of a
 * pipelined next request wait in the input buffer. Reading goes on while a request runs, so a
 * client that disconnects is seen at once and its request is cancelled.
 *
 * Isolation: over a Unix socket the peer's uid picks the namespace exactly as on the native
 * socket ("uid:N/", so both APIs share a user's blocks); with --api-key-file every request needs
 * a bearer key and the key's tenant is the namespace ("tenant:NAME/"); a loopback TCP address
 * without keys is one anonymous namespace ("http/"). A request's cache_salt is a namespace
 * inside that. The daemon's limits apply: --max-frame bounds a request body, --max-text a prompt,
 * --max-input-mem all input buffers, --max-conns-per-user the connections of one uid or one IP
 * address, --hello-timeout the time to send a whole request (and a new connection's first one),
 * --idle-timeout a keep-alive connection with nothing to do, --max-output unread output.
 */
#include "server_int.h"

#include "http_api.h"

#include <arpa/inet.h>
#include <cJSON.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define HTTP_READ_CHUNK ((size_t)64 << 10)
#define HTTP_MAX_KEY 512
#define HTTP_MAX_TENANT 48
#define HTTP_TCP_OWNER 0xfffffffeu /* the owner (stats row) of requests over TCP */

typedef union http_handle {
    uv_handle_t handle;
    uv_stream_t stream;
    uv_tcp_t tcp;
    uv_pipe_t pipe;
} http_handle;

typedef struct http_key {
    char *key;
    size_t len;
    char tenant[HTTP_MAX_TENANT + 1];
} http_key;

typedef struct http_conn {
    http_handle h;
    uv_shutdown_t shutdown;
    struct http_srv *hs;
    uint32_t id;
    int closing;  /* uv_close() called */
    int shutting; /* the last answer is being written, then the connection closes */
    int is_unix;
    uid_t uid;
    char peer[64]; /* "uid N" or the IP address: what --max-conns-per-user counts */
    hreq req;
    char *in; /* bytes read and not parsed yet */
    size_t in_len, in_cap;
    size_t body_counted; /* req.body_cap as counted in the input budget */
    int busy;            /* a complete request is being answered */
    int at_engine;       /* ... by the engine (cancelled if the client goes) */
    int in_process;
    int close_after; /* close when the current answer is written */
    int continue_sent;
    uint32_t seq, cur; /* request ids on this connection; the one being answered */
    double t_last;     /* accept, or the end of the last answer */
    double t_owed;     /* a request is owed since (accept, or its first byte); 0: none */
    char refuse[160];  /* over --max-conns-per-user: its request is answered 429 with this */
} http_conn;

typedef struct http_srv {
    server *s;
    int is_unix;
    http_handle ls;
    int ls_open;
    char unix_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    char addr_text[128];
    http_key *keys;
    int n_keys;
    http_conn *conns[SRV_MAX_CONNS];
    uint32_t next_id;
    uv_timer_t sweep;
    char model[256];
    long started;
    uint64_t seeds;
} http_srv;

/* An HTTP connection's handle has data == &conn_tag (the shutdown walk tells them apart). */
static char conn_tag;

static void process(http_conn *c);

static http_conn *find(http_srv *hs, uint32_t id)
{
    http_conn *c = hs ? hs->conns[id % SRV_MAX_CONNS] : NULL;
    return c && c->id == id ? c : NULL;
}

/* ---- Closing -------------------------------------------------------------------------------- */

static void budget_set(http_conn *c, size_t in_cap, size_t body_cap)
{
    server *s = c->hs->s;
    s->input_bytes = s->input_bytes - c->in_cap - c->body_counted + in_cap + body_cap;
    c->in_cap = in_cap;
    c->body_counted = body_cap;
}

static void close_cb(uv_handle_t *h)
{
    http_conn *c = container_of((http_handle *)h, http_conn, h);
    budget_set(c, 0, 0);
    hreq_free(&c->req);
    free(c->in);
    free(c);
}

/* Cancels the request at the engine (or being tokenized), if any. */
static void cancel_current(http_conn *c)
{
    server *s = c->hs->s;
    if (!c->at_engine)
        return;
    c->at_engine = 0;
    if (srv__tokenize_cancel(s, c->id, c->cur))
        return;
    srv_task *t = srv__task_new(SRV_TASK_CANCEL, c->id, c->cur, 0);
    if (t)
        srv__task_push(s, t);
    else
        base_log(BASE_LOG_ERROR, "http connection %#x: out of memory cancelling its request",
                 c->id);
}

static void http_close(http_conn *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    cancel_current(c);
    c->hs->conns[c->id % SRV_MAX_CONNS] = NULL;
    base_log(BASE_LOG_DEBUG, "http connection %#x closed", c->id);
    uv_close(&c->h.handle, close_cb);
}

static void shutdown_cb(uv_shutdown_t *r, int status)
{
    if (status < 0)
        http_close(r->data);
}

/* Ends the connection gently: what was written goes out, then our side is shut; what the peer
 * still sends is read and dropped until it closes (closing with unread input would reset the
 * connection, and the peer could lose the answer it has not read yet). The sweep closes a
 * connection that stays in this state. */
static void shut(http_conn *c)
{
    if (c->closing || c->shutting)
        return;
    c->shutting = 1;
    c->t_last = base_now_ms();
    c->shutdown.data = c;
    if (uv_shutdown(&c->shutdown, &c->h.stream, shutdown_cb) != 0)
        http_close(c);
}

int srv__http_walk_close(uv_handle_t *h)
{
    if (h->data != &conn_tag)
        return 0;
    http_close(container_of((http_handle *)h, http_conn, h));
    return 1;
}

/* ---- Writing -------------------------------------------------------------------------------- */

static void write_cb(uv_write_t *w, int status)
{
    (void)status; /* a failed write shows up as a read error or EOF */
    free(w->data);
    free(w);
}

static void http_write(http_conn *c, const void *p, size_t n)
{
    if (c->closing || n == 0)
        return;
    uv_write_t *w = malloc(sizeof *w);
    char *copy = malloc(n);
    if (!w || !copy) {
        free(w);
        free(copy);
        base_log(BASE_LOG_ERROR, "http connection %#x: out of memory writing %zu bytes: closing",
                 c->id, n);
        http_close(c);
        return;
    }
    memcpy(copy, p, n);
    w->data = copy;
    uv_buf_t b = uv_buf_init(copy, (unsigned)n);
    if (uv_write(w, &c->h.stream, &b, 1, write_cb) != 0) {
        free(copy);
        free(w);
        http_close(c);
    }
}

/* The current request is answered: read the next one (or close). */
static void request_done(http_conn *c)
{
    c->busy = 0;
    c->at_engine = 0;
    c->t_last = base_now_ms();
    /* Bytes of a next request already in owe one (process() sees to those it is parsing). */
    c->t_owed = !c->in_process && c->in_len > 0 ? c->t_last : 0;
    c->continue_sent = 0;
    if (c->close_after || !c->req.keep_alive) {
        shut(c);
        return;
    }
    hreq_next(&c->req);
    if (!c->in_process && c->in_len > 0)
        process(c);
}

/* Writes a whole answer to the current request and ends it. */
static void respond(http_conn *c, const hbuf *b)
{
    if (b->oom) {
        static const char r[] = "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n"
                                "Connection: close\r\n\r\n";
        http_write(c, r, sizeof r - 1);
        c->close_after = 1;
    } else {
        http_write(c, b->p, b->len);
    }
    request_done(c);
}

static void respond_error(http_conn *c, int status, const char *param, const char *code,
                          int retry_after, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

static void respond_error(http_conn *c, int status, const char *param, const char *code,
                          int retry_after, const char *fmt, ...)
{
    oai_error e;
    va_list ap;
    va_start(ap, fmt);
    char msg[sizeof e.msg];
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    oai_fail(&e, status, param, code, "%s", msg);
    hbuf b = {0};
    oai_http_error(&b, &e, c->req.keep_alive && !c->close_after, retry_after);
    respond(c, &b);
    hbuf_free(&b);
}

static void respond_json(http_conn *c, int status, cJSON *j)
{
    char *text = j ? cJSON_PrintUnformatted(j) : NULL;
    hbuf b = {0};
    if (text)
        oai_http_json(&b, status, text, strlen(text), c->req.keep_alive && !c->close_after, 0);
    else
        b.oom = 1;
    respond(c, &b);
    hbuf_free(&b);
    cJSON_free(text);
    cJSON_Delete(j);
}

/* An error outside any request (a malformed one, a refused connection): answered, then the
 * connection closes. */
static void fail_conn(http_conn *c, int status, int retry_after, const char *msg)
{
    oai_error e;
    oai_fail(&e, status, NULL, NULL, "%s", msg);
    hbuf b = {0};
    oai_http_error(&b, &e, 0, retry_after);
    if (!b.oom)
        http_write(c, b.p, b.len);
    hbuf_free(&b);
    shut(c);
}

/* ---- Requests ------------------------------------------------------------------------------- */

/* Compares without stopping at the first difference (a key's bytes are not timed one by one). */
static int same_bytes(const char *a, const char *b, size_t n)
{
    unsigned char d = 0;
    for (size_t i = 0; i < n; i++)
        d |= (unsigned char)(a[i] ^ b[i]);
    return d == 0;
}

/* The key of the request's bearer token, or NULL. */
static const http_key *authenticate(http_srv *hs, const hreq *r)
{
    if (r->auth_len < 7 || strncasecmp(r->auth, "Bearer ", 7) != 0)
        return NULL;
    const char *k = r->auth + 7;
    size_t len = r->auth_len - 7;
    while (len > 0 && *k == ' ')
        k++, len--;
    while (len > 0 && k[len - 1] == ' ')
        len--;
    const http_key *found = NULL;
    for (int i = 0; i < hs->n_keys; i++)
        if (hs->keys[i].len == len && same_bytes(hs->keys[i].key, k, len))
            found = &hs->keys[i];
    return found;
}

/* The namespace of a request: the daemon's part (tenant, uid or "http"), then cache_salt. */
static int namespace_of(http_conn *c, const http_key *key, const char *salt, char *buf, size_t cap)
{
    server *s = c->hs->s;
    if (key)
        return snprintf(buf, cap, "tenant:%s/%s", key->tenant, salt);
    if (c->is_unix)
        return s->o.share_across_users ? snprintf(buf, cap, "shared/%s", salt)
                                       : snprintf(buf, cap, "uid:%u/%s", (unsigned)c->uid, salt);
    return snprintf(buf, cap, "http/%s", salt);
}

static void submit(http_conn *c, oai_kind kind, const http_key *key)
{
    http_srv *hs = c->hs;
    server *s = hs->s;
    double t_received = base_now_ms(); /* TTFT counts the JSON mapping too */
    if (s->draining) {
        respond_error(c, 503, NULL, NULL, 0, "the daemon is shutting down");
        return;
    }
    oai_params p;
    oai_error e;
    if (oai_parse(kind, c->req.body, c->req.body_len, &p, &e) != 0) {
        hbuf b = {0};
        oai_http_error(&b, &e, c->req.keep_alive, 0);
        respond(c, &b);
        hbuf_free(&b);
        return;
    }
    const char *what = kind == OAI_CHAT ? "messages" : "prompt";
    if (!p.ids) {
        size_t bad = proto_utf8_check(p.text, p.text_len);
        if (bad != p.text_len) {
            respond_error(c, 400, what, "invalid_value", 0,
                          "'%s' is not valid UTF-8: bad byte 0x%02x at offset %zu", what,
                          (unsigned char)p.text[bad], bad);
            oai_params_free(&p);
            return;
        }
        if (p.text_len > s->o.max_text) {
            respond_error(c, 413, what, "prompt_too_large", 0,
                          "'%s' of %zu bytes is larger than the daemon's maximum (%zu, "
                          "--max-text)",
                          what, p.text_len, s->o.max_text);
            oai_params_free(&p);
            return;
        }
    }
    char ns[160], id[48];
    int nslen = namespace_of(c, key, p.cache_salt, ns, sizeof ns);
    snprintf(id, sizeof id, "%s-%x%08x", kind == OAI_CHAT ? "chatcmpl" : "cmpl",
             c->id & ~SRV_CONN_HTTP, c->cur);
    /* HTTP/1.0 has no chunks: a stream ends with the connection. */
    int chunked = c->req.p.http_minor >= 1;
    if (p.stream && !chunked)
        c->close_after = 1;
    oai_out *o = oai_out_new(&p, id, (long)time(NULL), hs->model,
                             c->req.keep_alive && !c->close_after, chunked);
    size_t off = ((size_t)nslen + 3) / 4 * 4;
    /* A chat goes through the model's chat template when it has one, as the native CHAT. */
    int by_template = kind == OAI_CHAT && s->chat && s->tok && p.chat_list;
    size_t payload = p.ids ? p.n_ids * sizeof(int32_t) : by_template ? p.chat_list_len : p.text_len;
    srv_task *t = o ? srv__task_new(SRV_TASK_SUBMIT, c->id, c->cur, off + payload + 1) : NULL;
    if (!t) {
        oai_out_free(o);
        oai_params_free(&p);
        respond_error(c, 500, NULL, NULL, 0, "out of memory for a request of %zu bytes", payload);
        return;
    }
    t->oai = o;
    memcpy(t->data, ns, (size_t)nslen);
    engine_request *r = &t->r;
    r->handle = (uint64_t)c->id << 32 | c->cur;
    r->kind = ENGINE_REQ_GENERATE;
    if (p.ids) {
        memcpy(t->data + off, p.ids, payload);
        r->tokens = (const int32_t *)(void *)(t->data + off);
        r->n_tokens = p.n_ids;
    } else {
        memcpy(t->data + off, by_template ? p.chat_list : p.text, payload);
        r->text = t->data + off;
        r->text_len = payload;
    }
    r->ns = t->data;
    r->ns_len = (size_t)nslen;
    r->max_new = p.max_tokens;
    r->temp = p.temperature;
    r->top_p = p.top_p;
    r->logprobs = p.logprobs;
    r->top_logprobs = p.top_logprobs;
    r->seed = p.has_seed ? p.seed
                         : (uint64_t)(base_now_ms() * 1e3) ^ (++hs->seeds * 0x9E3779B97F4A7C15ull);
    r->owner = c->is_unix ? (uint32_t)c->uid : HTTP_TCP_OWNER;
    r->t_received_ms = t_received;
    int by_text = !p.ids && s->tok;
    uint32_t n_msgs = p.n_msgs;
    oai_params_free(&p);
    c->at_engine = 1;
    if (by_text) {
        if ((by_template ? srv__tokenize_chat_id(s, c->id, t, (size_t)nslen, n_msgs)
                         : srv__tokenize_prompt_id(s, c->id, t, (size_t)nslen)) != 0) {
            srv__task_free(t);
            c->at_engine = 0;
            respond_error(c, 500, NULL, NULL, 0, "out of memory queueing a prompt");
        }
    } else {
        srv__task_push(s, t);
    }
}

void srv__http_tokenized(server *s, uint32_t conn_id, uint32_t req, int cancelled, int code,
                         const char *err, srv_task **task)
{
    http_conn *c = find(s->http, conn_id);
    if (!c || c->closing || !c->busy || c->cur != req || cancelled)
        return;
    if (err) {
        if (code == PROTO_ERR_BAD_REQUEST)
            respond_error(c, 400, "messages", "invalid_value", 0, "%s", err);
        else
            respond_error(c, 500, NULL, NULL, 0, "%s", err);
        return;
    }
    srv__task_push(s, *task);
    *task = NULL;
}

static void models(http_conn *c)
{
    http_srv *hs = c->hs;
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "object", "list");
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "id", hs->model);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", (double)hs->started);
    cJSON_AddStringToObject(m, "owned_by", "prefixd");
    cJSON_AddNumberToObject(m, "max_model_len", model_get_config(hs->s->m)->seq_len);
    cJSON_AddItemToArray(cJSON_AddArrayToObject(j, "data"), m);
    respond_json(c, 200, j);
}

static void health(http_conn *c)
{
    int up = !c->hs->s->draining;
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "status", up ? "ok" : "stopping");
    respond_json(c, up ? 200 : 503, j);
}

/* /metrics tells daemon-wide figures: only to those who may see daemon-wide STATS. */
static void metrics(http_conn *c, const http_key *key)
{
    server *s = c->hs->s;
    int all = s->o.stats_all_users || (key          ? 0
                                       : c->is_unix ? c->uid == 0 || c->uid == geteuid()
                                                    : 1);
    if (!all) {
        respond_error(c, 403, NULL, NULL, 0,
                      "/metrics shows daemon-wide counters: only the daemon's owner may read "
                      "them (or everyone, with --stats-all-users)");
        return;
    }
    srv_task *t = srv__task_new(SRV_TASK_METRICS, c->id, c->cur, 1);
    if (!t) {
        respond_error(c, 500, NULL, NULL, 0, "out of memory");
        return;
    }
    t->data[0] = (char)(c->req.keep_alive != 0);
    srv__task_push(s, t);
}

/* ---- /tokenize and /detokenize, on a worker ------------------------------------------------- */

typedef struct tok_work {
    uv_work_t w;
    server *s;
    uint32_t conn, req;
    int detok, keep_alive;
    char *text;
    size_t len;
    int32_t *ids;
    size_t n;
    hbuf out; /* the whole answer */
} tok_work;

static void tok_work_cb(uv_work_t *w)
{
    tok_work *j = container_of(w, tok_work, w);
    const model_tokenizer *tok = j->s->tok;
    cJSON *o = cJSON_CreateObject();
    oai_error e = {0};
    if (!j->detok) {
        size_t n = 0;
        int32_t *ids = malloc((j->len + 2) * sizeof *ids);
        if (!ids || model_encode(tok, j->text, j->len, 1, ids, j->len + 2, &n) != 0) {
            oai_fail(&e, 500, NULL, NULL, "cannot tokenize a text of %zu bytes", j->len);
        } else {
            cJSON *a = cJSON_AddArrayToObject(o, "tokens");
            for (size_t i = 0; i < n; i++)
                cJSON_AddItemToArray(a, cJSON_CreateNumber(ids[i]));
            cJSON_AddNumberToObject(o, "count", (double)n);
            cJSON_AddNumberToObject(o, "max_model_len", model_get_config(j->s->m)->seq_len);
        }
        free(ids);
    } else {
        int vocab = model_get_config(j->s->m)->vocab_size;
        hbuf text = {0};
        for (size_t i = 0; i < j->n && !e.status; i++) {
            if (j->ids[i] < 0 || j->ids[i] >= vocab) {
                oai_fail(&e, 400, "tokens", "invalid_value",
                         "'tokens[%zu]' = %d is out of range [0, %d)", i, j->ids[i], vocab);
                break;
            }
            size_t pl;
            const char *p =
                model_decode_piece(tok, i ? j->ids[i - 1] : MODEL_TOK_BOS, j->ids[i], &pl);
            hbuf_add(&text, p, pl);
        }
        hbuf clean = {0};
        oai_utf8_clean(&clean, text.p ? text.p : "", text.len);
        hbuf_add(&clean, "", 0);
        cJSON_AddStringToObject(o, "prompt", clean.p ? clean.p : "");
        hbuf_free(&clean);
        hbuf_free(&text);
    }
    char *json = e.status ? NULL : cJSON_PrintUnformatted(o);
    if (e.status)
        oai_http_error(&j->out, &e, j->keep_alive, 0);
    else if (json)
        oai_http_json(&j->out, 200, json, strlen(json), j->keep_alive, 0);
    else
        j->out.oom = 1;
    cJSON_free(json);
    cJSON_Delete(o);
}

static void tok_after_cb(uv_work_t *w, int status)
{
    tok_work *j = container_of(w, tok_work, w);
    http_conn *c = find(j->s->http, j->conn);
    if (status == 0 && c && !c->closing && c->busy && c->cur == j->req)
        respond(c, &j->out);
    hbuf_free(&j->out);
    free(j->text);
    free(j->ids);
    free(j);
}

static void tokenize(http_conn *c, int detok)
{
    server *s = c->hs->s;
    const char *end = NULL;
    cJSON *o = cJSON_ParseWithLengthOpts(c->req.body ? c->req.body : "", c->req.body_len, &end, 0);
    const char *name = detok ? "tokens" : "prompt";
    const cJSON *v = cJSON_IsObject(o) ? cJSON_GetObjectItemCaseSensitive(o, name) : NULL;
    tok_work *j = calloc(1, sizeof *j);
    int ok = j != NULL;
    if (ok && !o) {
        cJSON_Delete(o);
        free(j);
        respond_error(c, 400, NULL, "invalid_json", 0, "the request body is not valid JSON");
        return;
    }
    if (ok && !detok) {
        if (!cJSON_IsString(v)) {
            cJSON_Delete(o);
            free(j);
            respond_error(c, 400, "prompt", "invalid_type", 0, "'prompt' must be a string");
            return;
        }
        j->len = strlen(v->valuestring);
        if (proto_utf8_check(v->valuestring, j->len) != j->len || j->len > s->o.max_text) {
            cJSON_Delete(o);
            free(j);
            respond_error(c, 400, "prompt", "invalid_value", 0,
                          "'prompt' must be valid UTF-8 of at most %zu bytes (--max-text)",
                          s->o.max_text);
            return;
        }
        ok = (j->text = strdup(v->valuestring)) != NULL;
    } else if (ok) {
        int n = cJSON_IsArray(v) ? cJSON_GetArraySize(v) : -1;
        if (n < 0) {
            cJSON_Delete(o);
            free(j);
            respond_error(c, 400, "tokens", "invalid_type", 0,
                          "'tokens' must be an array of token ids");
            return;
        }
        ok = (j->ids = malloc(((size_t)n + 1) * sizeof *j->ids)) != NULL;
        for (const cJSON *t = ok ? v->child : NULL; t; t = t->next)
            j->ids[j->n++] =
                cJSON_IsNumber(t) && t->valuedouble >= INT32_MIN && t->valuedouble <= INT32_MAX
                    ? (int32_t)t->valuedouble
                    : -1;
    }
    cJSON_Delete(o);
    if (ok) {
        j->s = s;
        j->conn = c->id;
        j->req = c->cur;
        j->detok = detok;
        j->keep_alive = c->req.keep_alive;
        ok = uv_queue_work(s->loop, &j->w, tok_work_cb, tok_after_cb) == 0;
    }
    if (!ok) {
        if (j) {
            free(j->text);
            free(j->ids);
        }
        free(j);
        respond_error(c, 500, NULL, NULL, 0, "out of memory queueing a text");
    }
}

/* ---- Routing -------------------------------------------------------------------------------- */

enum route { R_HEALTH, R_MODELS, R_COMPLETIONS, R_CHAT, R_METRICS, R_TOKENIZE, R_DETOKENIZE };

static const struct {
    const char *path;
    enum http_method method;
    enum route route;
} routes[] = {
    {"/health", HTTP_GET, R_HEALTH},
    {"/v1/models", HTTP_GET, R_MODELS},
    {"/v1/completions", HTTP_POST, R_COMPLETIONS},
    {"/v1/chat/completions", HTTP_POST, R_CHAT},
    {"/metrics", HTTP_GET, R_METRICS},
    {"/tokenize", HTTP_POST, R_TOKENIZE},
    {"/detokenize", HTTP_POST, R_DETOKENIZE},
};

static void handle(http_conn *c)
{
    http_srv *hs = c->hs;
    const hreq *r = &c->req;
    if (c->refuse[0]) {
        c->close_after = 1;
        respond_error(c, 429, NULL, "too_many_connections", 1, "%s", c->refuse);
        return;
    }
    size_t plen = strcspn(r->url, "?#");
    int found = -1, path_known = 0;
    for (size_t i = 0; i < sizeof routes / sizeof *routes; i++)
        if (strlen(routes[i].path) == plen && memcmp(routes[i].path, r->url, plen) == 0) {
            path_known = 1;
            if (routes[i].method == (enum http_method)r->p.method)
                found = (int)i;
        }
    base_log(BASE_LOG_DEBUG, "http connection %#x: %s %.*s", c->id, hreq_method(r), (int)plen,
             r->url);
    if (found < 0) {
        if (path_known)
            respond_error(c, 405, NULL, "method_not_allowed", 0, "%s is not allowed on %.*s",
                          hreq_method(r), (int)plen, r->url);
        else
            respond_error(c, 404, NULL, "unknown_url", 0,
                          "no route %s %.*s: prefixd serves POST /v1/chat/completions, POST "
                          "/v1/completions, GET /v1/models, GET /health, GET /metrics, POST "
                          "/tokenize, POST /detokenize",
                          hreq_method(r), (int)(plen > 200 ? 200 : plen), r->url);
        return;
    }
    enum route route = routes[found].route;
    if (route == R_HEALTH) {
        health(c);
        return;
    }
    const http_key *key = NULL;
    if (hs->n_keys > 0 && !(key = authenticate(hs, r))) {
        respond_error(c, 401, NULL, "invalid_api_key", 0,
                      r->auth_len ? "invalid API key"
                                  : "missing API key: send the header 'Authorization: Bearer "
                                    "KEY' with a key of --api-key-file");
        return;
    }
    switch (route) {
    case R_MODELS:
        models(c);
        break;
    case R_COMPLETIONS:
        submit(c, OAI_COMPLETION, key);
        break;
    case R_CHAT:
        submit(c, OAI_CHAT, key);
        break;
    case R_METRICS:
        metrics(c, key);
        break;
    case R_TOKENIZE:
    case R_DETOKENIZE:
        if (!hs->s->tok)
            respond_error(c, 400, NULL, NULL, 0, "this daemon has no tokenizer");
        else
            tokenize(c, route == R_DETOKENIZE);
        break;
    case R_HEALTH:
        break;
    }
}

/* ---- Reading -------------------------------------------------------------------------------- */

/* Parses buffered bytes while no request is being answered. */
static void process(http_conn *c)
{
    server *s = c->hs->s;
    size_t off = 0;
    c->in_process = 1;
    while (!c->closing && !c->shutting && !c->busy && off < c->in_len) {
        long n = hreq_feed(&c->req, c->in + off, c->in_len - off);
        budget_set(c, c->in_cap, c->req.body_cap);
        if (n < 0) {
            base_log(BASE_LOG_DEBUG, "http connection %#x: %d %s", c->id, c->req.status,
                     c->req.err);
            fail_conn(c, c->req.status, 0, c->req.err);
            break;
        }
        off += (size_t)n;
        if (s->input_bytes > s->o.max_input_mem) {
            fail_conn(c, 429, 1, "daemon input memory budget exceeded (--max-input-mem): retry");
            break;
        }
        if (!c->req.complete) {
            if (c->req.want_continue && c->req.headers_done && !c->continue_sent) {
                static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
                http_write(c, cont, sizeof cont - 1);
                c->continue_sent = 1;
            }
            break;
        }
        c->busy = 1;
        if (++c->seq == 0)
            c->seq = 1;
        c->cur = c->seq;
        handle(c);
    }
    if (!c->closing) {
        memmove(c->in, c->in + off, c->in_len - off);
        c->in_len -= off;
        if (c->in_len == 0 && c->in_cap > 0) {
            free(c->in);
            c->in = NULL;
            budget_set(c, 0, c->body_counted);
        }
        if (c->in_len > 0 && !c->busy && c->t_owed == 0)
            c->t_owed = base_now_ms();
    }
    c->in_process = 0;
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    http_conn *c = container_of((http_handle *)h, http_conn, h);
    server *s = c->hs->s;
    *buf = uv_buf_init(NULL, 0);
    if (c->in_cap - c->in_len >= 4096) {
        *buf = uv_buf_init(c->in + c->in_len, (unsigned)(c->in_cap - c->in_len));
        return;
    }
    /* A request's headers and body, and a chunk more: larger input is refused. */
    size_t limit = s->o.max_frame + HREQ_MAX_HEADER + HTTP_READ_CHUNK;
    size_t want = c->in_len + HTTP_READ_CHUNK;
    if (want > limit || s->input_bytes - c->in_cap + want > s->o.max_input_mem)
        return; /* UV_ENOBUFS */
    char *nb = realloc(c->in, want);
    if (!nb)
        return;
    c->in = nb;
    budget_set(c, want, c->body_counted);
    *buf = uv_buf_init(c->in + c->in_len, (unsigned)(c->in_cap - c->in_len));
}

static void read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    (void)buf;
    http_conn *c = container_of((http_handle *)st, http_conn, h);
    if (c->shutting) { /* input after the last answer: dropped until the peer closes */
        if (nread < 0)
            http_close(c);
        return;
    }
    if (nread == UV_ENOBUFS) {
        base_log(BASE_LOG_WARN,
                 "http connection %#x: input refused (--max-input-mem or "
                 "--max-frame)",
                 c->id);
        if (c->busy)
            http_close(c);
        else
            fail_conn(c, 429, 1, "daemon input memory budget exceeded (--max-input-mem): retry");
        return;
    }
    if (nread < 0) {
        if (c->at_engine)
            base_log(BASE_LOG_INFO, "http connection %#x: client gone: cancelling its request",
                     c->id);
        http_close(c);
        return;
    }
    if (nread == 0)
        return;
    c->in_len += (size_t)nread;
    if (!c->busy && c->t_owed == 0)
        c->t_owed = base_now_ms();
    if (!c->busy)
        process(c);
}

/* ---- Answers from the engine thread --------------------------------------------------------- */

void srv__http_deliver(server *s, const srv_frame *f)
{
    http_conn *c = find(s->http, f->conn);
    if (!c || c->closing || !c->busy || c->cur != f->req)
        return; /* the client went away, or a request it no longer waits for */
    http_write(c, f->bytes, f->len);
    if (f->ends) {
        request_done(c);
        return;
    }
    size_t queued = uv_stream_get_write_queue_size(&c->h.stream);
    if (queued > s->o.max_output) {
        base_log(BASE_LOG_WARN,
                 "http connection %#x: %zu bytes unread (--max-output %zu): cancelling its "
                 "request and closing",
                 c->id, queued, s->o.max_output);
        http_close(c);
    }
}

/* ---- Timeouts ------------------------------------------------------------------------------- */

static void sweep_cb(uv_timer_t *t)
{
    http_srv *hs = t->data;
    server *s = hs->s;
    double now = base_now_ms();
    for (int i = 0; i < SRV_MAX_CONNS; i++) {
        http_conn *c = hs->conns[i];
        if (c && c->shutting && !c->closing && now - c->t_last > 5000) {
            http_close(c); /* the peer neither read its last answer nor closed within 5 s */
            continue;
        }
        if (!c || c->closing || c->shutting || c->busy)
            continue;
        if (c->t_owed > 0 && s->o.hello_timeout_ms > 0 && now - c->t_owed > s->o.hello_timeout_ms) {
            if (c->req.started || c->in_len > 0) {
                char msg[160];
                snprintf(msg, sizeof msg,
                         "request not received in full within %.0f s (--hello-timeout)",
                         s->o.hello_timeout_ms / 1e3);
                fail_conn(c, 408, 0, msg);
            } else {
                http_close(c); /* never sent a byte */
            }
        } else if (c->t_owed == 0 && s->o.idle_timeout_ms > 0 &&
                   now - c->t_last > s->o.idle_timeout_ms) {
            base_log(BASE_LOG_DEBUG, "http connection %#x: idle: closing", c->id);
            http_close(c);
        }
    }
}

/* ---- Accepting ------------------------------------------------------------------------------ */

static void peer_of(http_conn *c)
{
    if (c->is_unix) {
        uv_os_fd_t fd;
        struct ucred cred;
        socklen_t len = sizeof cred;
        c->uid = (uid_t)-1;
        if (uv_fileno(&c->h.handle, &fd) == 0 &&
            getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0)
            c->uid = cred.uid;
        snprintf(c->peer, sizeof c->peer, "uid %u", (unsigned)c->uid);
        return;
    }
    struct sockaddr_storage ss;
    int len = sizeof ss;
    snprintf(c->peer, sizeof c->peer, "?");
    if (uv_tcp_getpeername(&c->h.tcp, (struct sockaddr *)&ss, &len) != 0)
        return;
    if (ss.ss_family == AF_INET6)
        uv_ip6_name((struct sockaddr_in6 *)&ss, c->peer, sizeof c->peer);
    else
        uv_ip4_name((struct sockaddr_in *)&ss, c->peer, sizeof c->peer);
}

static void accept_cb(uv_stream_t *ls, int status)
{
    http_srv *hs = ls->data;
    server *s = hs->s;
    if (status < 0) {
        base_log(BASE_LOG_WARN, "http accept: %s", uv_strerror(status));
        return;
    }
    http_conn *c = calloc(1, sizeof *c);
    if (!c) {
        base_log(BASE_LOG_ERROR, "http accept: out of memory");
        return;
    }
    c->hs = hs;
    c->is_unix = hs->is_unix;
    int rc = c->is_unix ? uv_pipe_init(s->loop, &c->h.pipe, 0) : uv_tcp_init(s->loop, &c->h.tcp);
    if (rc != 0) {
        free(c);
        return;
    }
    c->h.handle.data = &conn_tag;
    c->closing = 1; /* until it has an id: closed directly */
    if (uv_accept(ls, &c->h.stream) != 0) {
        uv_close(&c->h.handle, close_cb);
        return;
    }
    for (int tries = 0; tries < SRV_MAX_CONNS && !c->id; tries++) {
        uint32_t id = (++hs->next_id & ~SRV_CONN_HTTP) | SRV_CONN_HTTP;
        if (id != SRV_CONN_HTTP && !hs->conns[id % SRV_MAX_CONNS])
            c->id = id;
    }
    if (!c->id) {
        base_log(BASE_LOG_WARN, "too many HTTP connections (%d)", SRV_MAX_CONNS);
        uv_close(&c->h.handle, close_cb);
        return;
    }
    c->closing = 0;
    hs->conns[c->id % SRV_MAX_CONNS] = c;
    if (!c->is_unix)
        uv_tcp_nodelay(&c->h.tcp, 1); /* a token's event goes out now, not after an ACK */
    peer_of(c);
    hreq_init(&c->req, s->o.max_frame);
    c->t_last = c->t_owed = base_now_ms();
    if (s->o.max_conns_per_user > 0) {
        int mine = 0;
        for (int i = 0; i < SRV_MAX_CONNS; i++)
            mine += hs->conns[i] && !hs->conns[i]->closing && !hs->conns[i]->refuse[0] &&
                    hs->conns[i] != c && strcmp(hs->conns[i]->peer, c->peer) == 0;
        if (mine >= s->o.max_conns_per_user) {
            /* Answered once its request is read (an answer before it could be lost). */
            snprintf(c->refuse, sizeof c->refuse,
                     "too many connections from %s (%d, --max-conns-per-user)", c->peer, mine);
            base_log(BASE_LOG_WARN, "%s: refusing one", c->refuse);
        }
    }
    base_log(BASE_LOG_DEBUG, "http connection %#x from %s", c->id, c->peer);
    rc = uv_read_start(&c->h.stream, alloc_cb, read_cb);
    if (rc != 0)
        http_close(c);
}

/* ---- Start and stop ------------------------------------------------------------------------- */

/* 1 for 127.0.0.0/8, ::1 and ::ffff:127.0.0.0/104. */
static int is_loopback(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
    const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
    if (IN6_IS_ADDR_LOOPBACK(a))
        return 1;
    return IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127;
}

/* "host:port" or "[v6]:port" (host an IP literal, or localhost). Returns 0 or -1. */
static int parse_tcp(const char *a, struct sockaddr_storage *ss)
{
    char host[64];
    const char *colon = strrchr(a, ':');
    if (!colon || colon == a)
        return -1;
    size_t hl = (size_t)(colon - a);
    const char *port_s = colon + 1;
    char *end;
    long port = strtol(port_s, &end, 10);
    if (!*port_s || *end || port < 0 || port > 65535)
        return -1;
    if (a[0] == '[') {
        if (hl < 3 || a[hl - 1] != ']' || hl - 2 >= sizeof host)
            return -1;
        memcpy(host, a + 1, hl - 2);
        host[hl - 2] = 0;
        return uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)ss) == 0 ? 0 : -1;
    }
    if (hl >= sizeof host)
        return -1;
    memcpy(host, a, hl);
    host[hl] = 0;
    if (strcmp(host, "localhost") == 0)
        strcpy(host, "127.0.0.1");
    return uv_ip4_addr(host, (int)port, (struct sockaddr_in *)ss) == 0 ? 0 : -1;
}

static int valid_name(const char *s, size_t max)
{
    size_t n = strlen(s);
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
              (s[i] >= '0' && s[i] <= '9') || s[i] == '.' || s[i] == '_' || s[i] == '-'))
            return 0;
    return n > 0 && n <= max;
}

/* "key [tenant]" lines ('#' comments and blank lines skipped). Returns 0 or -1 (logged). */
static int load_keys(http_srv *hs, const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        base_log(BASE_LOG_ERROR, "--api-key-file '%s': %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && (st.st_mode & 077))
        base_log(BASE_LOG_WARN, "--api-key-file '%s' can be read by other users (mode %04o)", path,
                 (unsigned)(st.st_mode & 0777));
    char line[1024];
    int lineno = 0, rc = 0;
    while (rc == 0 && fgets(line, sizeof line, f)) {
        lineno++;
        if (!strchr(line, '\n') && !feof(f)) {
            base_log(BASE_LOG_ERROR, "--api-key-file '%s' line %d: longer than %zu bytes", path,
                     lineno, sizeof line - 2);
            rc = -1;
            break;
        }
        char *save = NULL, *key = strtok_r(line, " \t\r\n", &save);
        if (!key || key[0] == '#')
            continue;
        char *tenant = strtok_r(NULL, " \t\r\n", &save), *more = strtok_r(NULL, " \t\r\n", &save);
        if (more || strlen(key) > HTTP_MAX_KEY ||
            (tenant && !valid_name(tenant, HTTP_MAX_TENANT))) {
            base_log(BASE_LOG_ERROR,
                     "--api-key-file '%s' line %d: expected 'KEY [TENANT]' (a key of at most %d "
                     "bytes; a tenant of at most %d letters, digits, '.', '_', '-')",
                     path, lineno, HTTP_MAX_KEY, HTTP_MAX_TENANT);
            rc = -1;
            break;
        }
        http_key *grown = realloc(hs->keys, (size_t)(hs->n_keys + 1) * sizeof *grown);
        if (!grown || !(grown[hs->n_keys].key = strdup(key))) {
            if (grown)
                hs->keys = grown;
            base_log(BASE_LOG_ERROR, "--api-key-file: out of memory");
            rc = -1;
            break;
        }
        hs->keys = grown;
        http_key *k = &hs->keys[hs->n_keys++];
        k->len = strlen(key);
        if (tenant) {
            snprintf(k->tenant, sizeof k->tenant, "%s", tenant);
        } else {
            /* A key without a tenant is its own tenant, named by a hash of the key (so the key
             * itself never shows in a namespace or a log). */
            uint64_t h = 1469598103934665603ull;
            for (size_t i = 0; i < k->len; i++)
                h = (h ^ (unsigned char)key[i]) * 1099511628211ull;
            snprintf(k->tenant, sizeof k->tenant, "key-%016llx", (unsigned long long)h);
        }
    }
    fclose(f);
    if (rc == 0 && hs->n_keys == 0) {
        base_log(BASE_LOG_ERROR, "--api-key-file '%s' holds no key", path);
        rc = -1;
    }
    return rc;
}

static int bind_unix(http_srv *hs, const char *path)
{
    server *s = hs->s;
    if (strlen(path) >= sizeof hs->unix_path) {
        base_log(BASE_LOG_ERROR, "--http unix:%s: path too long (at most %zu bytes)", path,
                 sizeof hs->unix_path - 1);
        return 2;
    }
    struct stat st;
    if (lstat(path, &st) == 0) {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        memcpy(sa.sun_path, path, strlen(path) + 1);
        int fd = S_ISSOCK(st.st_mode) ? socket(AF_UNIX, SOCK_STREAM, 0) : -1;
        int live = fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
        if (fd >= 0)
            close(fd);
        if (!S_ISSOCK(st.st_mode) || live) {
            base_log(BASE_LOG_ERROR, "--http unix:%s: %s", path,
                     live ? "another daemon is serving there" : "exists and is not a socket");
            return 2;
        }
        unlink(path);
    }
    int rc = uv_pipe_init(s->loop, &hs->ls.pipe, 0);
    if (rc != 0)
        return 1;
    hs->ls.handle.data = hs;
    hs->ls_open = 1;
    mode_t old = umask(0177);
    rc = uv_pipe_bind(&hs->ls.pipe, path);
    umask(old);
    if (rc == 0)
        rc = uv_listen(&hs->ls.stream, 128, accept_cb);
    if (rc == 0 && chmod(path, s->o.socket_mode) != 0)
        rc = -errno;
    if (rc != 0) {
        base_log(BASE_LOG_ERROR, "--http unix:%s: %s", path, uv_strerror(rc));
        return 2;
    }
    snprintf(hs->unix_path, sizeof hs->unix_path, "%s", path);
    snprintf(hs->addr_text, sizeof hs->addr_text, "unix:%s", path);
    return 0;
}

static int bind_tcp(http_srv *hs, const char *addr)
{
    server *s = hs->s;
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    if (parse_tcp(addr, &ss) != 0) {
        base_log(BASE_LOG_ERROR,
                 "--http '%s': expected HOST:PORT with an IP address (127.0.0.1:8080), "
                 "[IPV6]:PORT ([::1]:8080) or unix:/path",
                 addr);
        return 2;
    }
    if (!is_loopback((struct sockaddr *)&ss) && !s->o.api_key_file && !s->o.http_insecure) {
        base_log(BASE_LOG_ERROR,
                 "--http '%s' is not a loopback address: anyone who can reach it could use the "
                 "daemon; give --api-key-file FILE (or --http-insecure to serve it open)",
                 addr);
        return 2;
    }
    int rc = uv_tcp_init(s->loop, &hs->ls.tcp);
    if (rc != 0)
        return 1;
    hs->ls.handle.data = hs;
    hs->ls_open = 1;
    rc = uv_tcp_bind(&hs->ls.tcp, (struct sockaddr *)&ss, 0);
    if (rc == 0)
        rc = uv_listen(&hs->ls.stream, 128, accept_cb);
    if (rc != 0) {
        base_log(BASE_LOG_ERROR, "--http '%s': %s", addr, uv_strerror(rc));
        return 2;
    }
    int len = sizeof ss;
    char ip[64] = "?";
    if (uv_tcp_getsockname(&hs->ls.tcp, (struct sockaddr *)&ss, &len) == 0) {
        if (ss.ss_family == AF_INET6)
            uv_ip6_name((struct sockaddr_in6 *)&ss, ip, sizeof ip);
        else
            uv_ip4_name((struct sockaddr_in *)&ss, ip, sizeof ip);
    }
    int port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                              : ((struct sockaddr_in *)&ss)->sin_port);
    snprintf(hs->addr_text, sizeof hs->addr_text,
             ss.ss_family == AF_INET6 ? "http://[%s]:%d" : "http://%s:%d", ip, port);
    return 0;
}

int srv__http_start(server *s)
{
    if (!s->o.http_addr)
        return 0;
    http_srv *hs = calloc(1, sizeof *hs);
    if (!hs)
        return 1;
    s->http = hs;
    hs->s = s;
    hs->started = (long)time(NULL);
    const char *base = strrchr(s->o.model_path, '/');
    snprintf(hs->model, sizeof hs->model, "%s", base ? base + 1 : s->o.model_path);
    if (s->o.api_key_file && load_keys(hs, s->o.api_key_file) != 0)
        return 2;
    const char *a = s->o.http_addr;
    hs->is_unix = strncmp(a, "unix:", 5) == 0;
    int rc = hs->is_unix ? bind_unix(hs, a + 5) : bind_tcp(hs, a);
    if (rc != 0)
        return rc;
    if (uv_timer_init(s->loop, &hs->sweep) != 0)
        return 1;
    hs->sweep.data = hs;
    uv_timer_start(&hs->sweep, sweep_cb, 1000, 1000);
    base_log(BASE_LOG_INFO, "HTTP API on %s (%s)", hs->addr_text,
             hs->n_keys    ? "API keys required"
             : hs->is_unix ? "peer uid namespaces"
                           : "no API key");
    return 0;
}

void srv__http_stop_listening(server *s)
{
    http_srv *hs = s->http;
    if (!hs || !hs->ls_open)
        return;
    hs->ls_open = 0;
    uv_close(&hs->ls.handle, NULL);
    if (hs->unix_path[0])
        unlink(hs->unix_path);
}

void srv__http_free(server *s)
{
    http_srv *hs = s->http;
    if (!hs)
        return;
    for (int i = 0; i < hs->n_keys; i++) {
        memset(hs->keys[i].key, 0, hs->keys[i].len);
        free(hs->keys[i].key);
    }
    free(hs->keys);
    free(hs);
    s->http = NULL;
}
