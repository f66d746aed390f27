/* tokenize.c — tokenizing and detokenizing off the engine thread, on libuv's worker pool.
 *
 * A long text is real work (a 4 MB text takes seconds): done on the engine thread, it stalled
 * every other client's generation for that long. So the loop hands a text prompt, a TOKENIZE
 * and a DETOKENIZE to a worker (uv_queue_work); the worker produces the ids (a prompt, then
 * submitted to the engine as ids) or the encoded reply frame; the loop thread, in the after-work
 * callback, submits or writes it if the connection is still there. The tokenizer is read-only
 * and safe to use from several threads at once. Texts are capped at --max-text bytes.
 *
 * A chat (CHAT) is rendered with the model's chat template on the worker too and tokenized as
 * model_chat_prompt() does (contents never control tokens, cut at message boundaries), then goes
 * on as a text prompt's ids do.
 *
 * A request cancelled while its prompt is being tokenized is marked; when the worker is done it
 * ends with DONE (cancelled) without reaching the engine. A stop waits for the jobs in flight as
 * for running requests; when its grace runs out first, each is answered at once (a prompt with
 * DONE cancelled, as the engine's requests are; a TOKENIZE or DETOKENIZE with SHUTTING_DOWN).
 */
#include "server_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum tok_kind { TOK_PROMPT, TOK_CHAT, TOK_TOKENIZE, TOK_DETOKENIZE } tok_kind;

typedef struct tok_job {
    uv_work_t work;
    struct tok_job *next; /* the server's list of jobs in flight */
    server *s;
    tok_kind kind;
    uint32_t conn, req;
    int cancelled;   /* TOK_PROMPT, TOK_CHAT: the client cancelled meanwhile */
    int answered;    /* the daemon stopped and answered for the job (srv__tokenize_end_all) */
    srv_task *task;  /* TOK_PROMPT: the SUBMIT task; its text becomes ids in the worker */
    size_t ns_len;   /* TOK_PROMPT, TOK_CHAT: namespace bytes at the start of task->data */
    uint32_t n_msgs; /* TOK_CHAT: messages in the task's text (CHAT's list) */
    uint8_t *in;     /* TOKENIZE: text; DETOKENIZE: little-endian ids */
    size_t in_len;
    uint8_t *frame; /* TOKENIZE/DETOKENIZE: the reply, encoded */
    size_t frame_len;
    int err; /* a PROTO_ERR_* code for an ERROR reply, 0 if none */
    char msg[200];
} tok_job;

static void job_free(tok_job *j)
{
    if (j->task)
        srv__task_free(j->task);
    free(j->in);
    free(j->frame);
    free(j);
}

/* Encodes m into a new buffer (the worker's reply). Returns 0 or -1 when out of memory. */
static int encode_reply(tok_job *j, const proto_msg *m)
{
    size_t n = proto_encode(m, NULL, 0);
    j->frame = malloc(n);
    if (!j->frame)
        return -1;
    j->frame_len = proto_encode(m, j->frame, n);
    return 0;
}

/* The task's data becomes [namespace][n ids]: data holds room for the ids after the
 * namespace's padded length off. */
static void task_take_ids(tok_job *j, char *data, size_t off, size_t n)
{
    srv_task *t = j->task;
    int32_t *ids = (int32_t *)(void *)(data + off);
    memcpy(data, t->data, j->ns_len);
    free(t->data);
    t->data = data;
    t->len = off + n * sizeof(int32_t);
    t->r.ns = data;
    t->r.text = NULL;
    t->r.text_len = 0;
    t->r.tokens = ids;
    t->r.n_tokens = n;
}

/* Worker: the prompt's text -> ids, rebuilt in the task's data as [namespace][ids]. */
static void work_prompt(tok_job *j)
{
    srv_task *t = j->task;
    const model_tokenizer *tok = j->s->tok;
    size_t len = t->r.text_len, n = 0, off = (j->ns_len + 3) / 4 * 4;
    size_t cap = model_encode_cap(len);
    char *data =
        cap < (SIZE_MAX - off) / sizeof(int32_t) ? malloc(off + cap * sizeof(int32_t)) : NULL;
    if (!data) {
        j->err = PROTO_ERR_INTERNAL;
        snprintf(j->msg, sizeof j->msg, "out of memory tokenizing a prompt of %zu bytes", len);
        return;
    }
    int32_t *ids = (int32_t *)(void *)(data + off);
    if (model_encode(tok, t->r.text, len, 1, ids, cap, &n) != 0) {
        free(data);
        j->err = PROTO_ERR_INTERNAL;
        snprintf(j->msg, sizeof j->msg, "cannot tokenize a prompt of %zu bytes", len);
        return;
    }
    task_take_ids(j, data, off, n);
}

/* Worker: the chat's messages -> the rendered prompt's ids, as work_prompt() leaves them. */
static void work_chat(tok_job *j)
{
    srv_task *t = j->task;
    model_chat_msg *msgs = malloc((j->n_msgs ? j->n_msgs : 1) * sizeof *msgs);
    int32_t *ids = NULL;
    size_t n = 0, off = (j->ns_len + 3) / 4 * 4;
    if (!msgs) {
        j->err = PROTO_ERR_INTERNAL;
        snprintf(j->msg, sizeof j->msg, "out of memory reading %u messages", j->n_msgs);
        return;
    }
    proto_chat c = {.list = (const uint8_t *)t->r.text, .list_len = t->r.text_len};
    proto_chat_msg m;
    size_t at = 0, k = 0;
    while (k < j->n_msgs && proto_chat_next(&c, &at, &m))
        msgs[k++] = (model_chat_msg){m.role.p, m.role.len, m.content.p, m.content.len};
    char why[160];
    int rc = model_chat_prompt(j->s->chat, j->s->tok, msgs, k, 1, &ids, &n, NULL, why, sizeof why);
    free(msgs);
    char *data = rc == 0 && n < (SIZE_MAX - off) / sizeof(int32_t)
                     ? malloc(off + (n ? n : 1) * sizeof(int32_t))
                     : NULL;
    if (rc == MODEL_EINVAL || rc == MODEL_ERANGE) {
        j->err = PROTO_ERR_BAD_REQUEST;
        snprintf(j->msg, sizeof j->msg, "chat template: %s", why);
    } else if (rc != 0 || !data) {
        j->err = PROTO_ERR_INTERNAL;
        snprintf(j->msg, sizeof j->msg, "cannot render a chat of %u messages: %s", j->n_msgs,
                 rc ? why : "out of memory");
    } else {
        memcpy(data + off, ids, n * sizeof(int32_t));
        task_take_ids(j, data, off, n);
        data = NULL;
    }
    free(data);
    free(ids);
}

static void work_tokenize(tok_job *j)
{
    size_t n = 0, cap = model_encode_cap(j->in_len);
    int32_t *ids = cap < SIZE_MAX / 4 ? malloc(cap * sizeof(int32_t)) : NULL;
    uint8_t *le = cap < SIZE_MAX / 4 ? malloc(cap * 4) : NULL;
    if (!ids || !le ||
        model_encode(j->s->tok, (const char *)j->in, j->in_len, 1, ids, cap, &n) != 0) {
        j->err = PROTO_ERR_INTERNAL;
        snprintf(j->msg, sizeof j->msg, "cannot tokenize a text of %zu bytes: out of memory",
                 j->in_len);
    } else {
        for (size_t i = 0; i < n; i++)
            for (int b = 0; b < 4; b++)
                le[4 * i + (size_t)b] = (uint8_t)((uint32_t)ids[i] >> (8 * b));
        proto_msg m = {.type = PROTO_TOKENS, .id = j->req};
        m.u.ids = (proto_ids){le, (uint32_t)n};
        if (encode_reply(j, &m) != 0) {
            j->err = PROTO_ERR_INTERNAL;
            snprintf(j->msg, sizeof j->msg, "out of memory encoding %zu ids", n);
        }
    }
    free(ids);
    free(le);
}

static void work_detokenize(tok_job *j)
{
    proto_ids in = {j->in, (uint32_t)(j->in_len / 4)};
    int vocab = model_get_config(j->s->m)->vocab_size;
    size_t cap = 64, len = 0;
    char *text = malloc(cap);
    for (uint32_t i = 0; i < in.n && text; i++) {
        int32_t id = proto_ids_get(in, i), prev = i ? proto_ids_get(in, i - 1) : -1;
        if (id < 0 || id >= vocab) {
            j->err = PROTO_ERR_BAD_TOKEN;
            snprintf(j->msg, sizeof j->msg, "token id %d at index %u is out of range [0, %d)", id,
                     i, vocab);
            break;
        }
        size_t pl;
        const char *p = model_decode_piece(j->s->tok, prev, id, &pl);
        if (len + pl > cap) {
            cap = (len + pl) * 2;
            char *grown = realloc(text, cap);
            if (!grown) {
                free(text);
                text = NULL;
                break;
            }
            text = grown;
        }
        memcpy(text + len, p, pl);
        len += pl;
    }
    if (!j->err && !text) {
        j->err = PROTO_ERR_INTERNAL;
        snprintf(j->msg, sizeof j->msg, "out of memory detokenizing %u ids", in.n);
    }
    if (!j->err) {
        proto_msg m = {.type = PROTO_TEXT, .id = j->req};
        m.u.text = (proto_str){text, (uint32_t)len};
        if (encode_reply(j, &m) != 0) {
            j->err = PROTO_ERR_INTERNAL;
            snprintf(j->msg, sizeof j->msg, "out of memory encoding %zu bytes of text", len);
        }
    }
    free(text);
}

static void tok_work_cb(uv_work_t *w)
{
    tok_job *j = container_of(w, tok_job, work);
    if (j->kind == TOK_PROMPT)
        work_prompt(j);
    else if (j->kind == TOK_CHAT)
        work_chat(j);
    else if (j->kind == TOK_TOKENIZE)
        work_tokenize(j);
    else
        work_detokenize(j);
}

/* Loop thread: the job is done; submit or answer if its connection is still there. */
static void tok_after_cb(uv_work_t *w, int status)
{
    tok_job *j = container_of(w, tok_job, work);
    server *s = j->s;
    for (tok_job **p = &s->tok_jobs; *p; p = &(*p)->next)
        if (*p == j) {
            *p = j->next;
            break;
        }
    if (j->conn & SRV_CONN_HTTP) {
        if (status == 0 && (j->kind == TOK_PROMPT || j->kind == TOK_CHAT))
            srv__http_tokenized(s, j->conn, j->req, j->cancelled, j->err, j->err ? j->msg : NULL,
                                &j->task);
        job_free(j);
        return;
    }
    conn *c = srv__conn_find(s, j->conn);
    if (!c || status != 0 || j->answered) {
        job_free(j);
        return;
    }
    if (j->kind == TOK_PROMPT || j->kind == TOK_CHAT) {
        if (j->cancelled) {
            srv__conn_send_done_cancelled(c, j->req);
        } else if (j->err) {
            srv__conn_end_request(c, j->req, j->err, j->msg);
        } else {
            srv__task_push(s, j->task);
            j->task = NULL;
        }
    } else {
        if (j->err)
            srv__conn_reply_error(c, j->req, j->err, j->msg);
        else
            srv__conn_write(c, j->frame, j->frame_len);
        srv__conn_owed_done(c);
    }
    job_free(j);
}

static int queue_job(server *s, tok_job *j)
{
    j->s = s;
    int rc = uv_queue_work(s->loop, &j->work, tok_work_cb, tok_after_cb);
    if (rc != 0)
        return rc;
    j->next = s->tok_jobs;
    s->tok_jobs = j;
    return 0;
}

int srv__tokenize_prompt(conn *c, srv_task *t, size_t ns_len)
{
    return srv__tokenize_prompt_id(c->srv, c->id, t, ns_len);
}

int srv__tokenize_prompt_id(server *s, uint32_t conn_id, srv_task *t, size_t ns_len)
{
    tok_job *j = calloc(1, sizeof *j);
    if (!j)
        return -1;
    j->kind = TOK_PROMPT;
    j->conn = conn_id;
    j->req = t->req;
    j->task = t;
    j->ns_len = ns_len;
    if (queue_job(s, j) != 0) {
        j->task = NULL; /* the caller keeps it */
        job_free(j);
        return -1;
    }
    return 0;
}

int srv__tokenize_chat_id(server *s, uint32_t conn_id, srv_task *t, size_t ns_len, uint32_t n_msgs)
{
    tok_job *j = calloc(1, sizeof *j);
    if (!j)
        return -1;
    j->kind = TOK_CHAT;
    j->conn = conn_id;
    j->req = t->req;
    j->task = t;
    j->ns_len = ns_len;
    j->n_msgs = n_msgs;
    if (queue_job(s, j) != 0) {
        j->task = NULL; /* the caller keeps it */
        job_free(j);
        return -1;
    }
    return 0;
}

int srv__tokenize_reply(conn *c, uint32_t req, int detokenize, const void *in, size_t len)
{
    tok_job *j = calloc(1, sizeof *j);
    if (!j || !(j->in = malloc(len ? len : 1))) {
        free(j);
        return -1;
    }
    memcpy(j->in, in, len);
    j->in_len = len;
    j->kind = detokenize ? TOK_DETOKENIZE : TOK_TOKENIZE;
    j->conn = c->id;
    j->req = req;
    if (queue_job(c->srv, j) != 0) {
        job_free(j);
        return -1;
    }
    return 0;
}

void srv__tokenize_end_all(server *s)
{
    for (tok_job *j = s->tok_jobs; j; j = j->next) {
        conn *c = srv__conn_find(s, j->conn);
        if (!c || j->answered)
            continue;
        if (j->kind == TOK_PROMPT || j->kind == TOK_CHAT)
            srv__conn_send_done_cancelled(c, j->req);
        else {
            srv__conn_reply_error(c, j->req, PROTO_ERR_SHUTTING_DOWN,
                                  "daemon is shutting down: text not tokenized");
            srv__conn_owed_done(c);
        }
        j->answered = 1;
    }
}

int srv__tokenize_cancel(server *s, uint32_t conn_id, uint32_t req)
{
    for (tok_job *j = s->tok_jobs; j; j = j->next)
        if ((j->kind == TOK_PROMPT || j->kind == TOK_CHAT) && j->conn == conn_id && j->req == req) {
            j->cancelled = 1;
            return 1;
        }
    return 0;
}
