/* chat.c — `prefixctl chat`: a conversation with the daemon, one line of input per turn.
 *
 * The conversation is kept as token ids, each message beside its text: the ids are what is sent
 * (BOS, the system prompt, then every turn, resent whole each turn), so the daemon finds all of
 * it but the new line in its prefix cache, and the model's reply joins exactly as it was sampled
 * (re-tokenizing its text could split it differently and miss the cache). The text is what
 * /save writes beside the ids and what /load falls back to when the ids do not fit the model.
 * When the daemon's model has a chat template (HELLO_OK's CHAT capability), each turn is a CHAT
 * instead: the messages' texts (the system prompt, every turn, the new line) go to the daemon,
 * which renders them with the model's template and tokenizes them so that each turn's prompt
 * is a token prefix of the next one's: the cache finds the history as well. Without a template,
 * turns are plain continuations of the text, as ids.
 *
 * At a terminal, lines are read with libedit (editing, history); from a pipe, with getline(), so
 * scripts keep working line by line. Ctrl-C is ours only at a terminal: its handler just sets a
 * flag, which libprefixd watches while a reply streams (it sends CANCEL, and the partial reply
 * stays in the conversation, marked) and which makes el_gets() return at the prompt (read()
 * fails with EINTR, since the handler is installed without SA_RESTART).
 *
 * The context: before each turn, the oldest turns after the system prompt are dropped until the
 * prompt leaves room for a whole reply (-n, at most half the context), so the system prompt's
 * blocks stay cached; --context-policy stop sends the conversation as it is and ends the chat
 * when the daemon refuses it. A daemon that went away is reconnected to (a few tries over ~5 s)
 * and the turn resent, conversation and all: after a restart its blocks come from the disk tier.
 */
#include "chat.h"
#include "prefixd_client.h"

#include <cJSON.h>
#include <errno.h>
#include <histedit.h>
#include <locale.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define RECONNECT_TRIES 20 /* 250 ms apart: a daemon has ~5 s to come back */
#define RECONNECT_WAIT_MS 250
#define HISTORY_SIZE 1000
#define SAVE_FORMAT 1 /* "prefixd_chat" in a /save file */

enum role { ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT };
static const char *const role_names[] = {"system", "user", "assistant"};

/* How a reply ended, as /save writes it. */
enum reply_end { END_STOP, END_LENGTH, END_CONTEXT, END_CANCELLED, END_COUNT };
static const char *const end_names[END_COUNT] = {"stop", "length", "context", "cancelled"};

typedef struct chat_msg {
    int role;     /* enum role */
    char *text;   /* malloc'd, NUL-terminated */
    int32_t *ids; /* malloc'd (may be NULL when n is 0) */
    size_t n;
    int end; /* enum reply_end, for ROLE_ASSISTANT */
} chat_msg;

typedef struct turn_stat {
    int turn;
    uint32_t prompt, cached, cached_disk, new_tokens;
    double ttft_ms;
    int end;
} turn_stat;

typedef struct chat {
    const chat_opts *o;
    pfx_conn *c;
    int tty;
    chat_msg sys;   /* ROLE_SYSTEM; text NULL when there is none */
    chat_msg *msgs; /* the turns: user, assistant, user, ... */
    size_t n_msgs, cap_msgs;
    turn_stat *stats; /* this conversation's turns, for /stats */
    size_t n_stats, cap_stats;
    int turn;        /* turns sent since the start (the seed's offset) */
    char model[256]; /* the model the ids belong to */
    uint32_t vocab;
    EditLine *el;
    History *hist;
} chat;

/* Set by SIGINT at a terminal; read by libprefixd while a reply streams, and after el_gets(). */
static volatile sig_atomic_t interrupted;

static void chat_sigint_cb(int sig)
{
    (void)sig;
    interrupted = 1;
}

static void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q) {
        fprintf(stderr, "prefixctl: out of memory\n");
        exit(1);
    }
    return q;
}

static char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    return memcpy(xrealloc(NULL, n), s, n);
}

static void msg_free(chat_msg *m)
{
    free(m->text);
    free(m->ids);
    m->text = NULL;
    m->ids = NULL;
    m->n = 0;
}

static void msgs_clear(chat *ch)
{
    for (size_t i = 0; i < ch->n_msgs; i++)
        msg_free(&ch->msgs[i]);
    ch->n_msgs = 0;
    ch->n_stats = 0;
}

/* Appends a message; takes text and ids (malloc'd) over. */
static void msgs_push(chat *ch, int role, char *text, int32_t *ids, size_t n, int end)
{
    if (ch->n_msgs == ch->cap_msgs) {
        ch->cap_msgs = ch->cap_msgs ? 2 * ch->cap_msgs : 16;
        ch->msgs = xrealloc(ch->msgs, ch->cap_msgs * sizeof *ch->msgs);
    }
    ch->msgs[ch->n_msgs++] = (chat_msg){role, text, ids, n, end};
}

/* Tokens the conversation holds: BOS, the system prompt and every turn. */
static size_t conv_tokens(const chat *ch)
{
    size_t n = 1 + ch->sys.n;
    for (size_t i = 0; i < ch->n_msgs; i++)
        n += ch->msgs[i].n;
    return n;
}

/* Appends n ids at *at (memcpy must not see the NULL of an empty message). */
static void put_ids(int32_t *dst, size_t *at, const int32_t *ids, size_t n)
{
    if (n)
        memcpy(dst + *at, ids, n * sizeof *ids);
    *at += n;
}

/* The conversation's ids followed by extra (k ids): malloc'd, *n set. */
static int32_t *conv_ids(const chat *ch, const int32_t *extra, size_t k, size_t *n)
{
    size_t total = conv_tokens(ch) + k, at = 0;
    int32_t *ids = xrealloc(NULL, total * sizeof *ids);
    ids[at++] = 1; /* BOS */
    put_ids(ids, &at, ch->sys.ids, ch->sys.n);
    for (size_t i = 0; i < ch->n_msgs; i++)
        put_ids(ids, &at, ch->msgs[i].ids, ch->msgs[i].n);
    put_ids(ids, &at, extra, k);
    *n = total;
    return ids;
}

/* ---- The connection: calls that reconnect once when the daemon went away ------------------ */

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void remember_model(chat *ch)
{
    const proto_hello_ok *h = pfx_server(ch->c);
    snprintf(ch->model, sizeof ch->model, "%.*s", (int)h->model.len, h->model.p);
    ch->vocab = h->vocab_size;
}

static int retokenize_all(chat *ch);

/* Reconnects after a call failed with PFX_EIO: a few tries, RECONNECT_WAIT_MS apart (Ctrl-C
 * gives up). A daemon serving another model gets the conversation re-tokenized from its text.
 * Returns 0, or -1 after a message. */
static int chat_reconnect(chat *ch)
{
    fprintf(stderr, "[the daemon went away (%s); reconnecting]\n", pfx_errmsg(ch->c));
    int rc = -1;
    for (int i = 0; i < RECONNECT_TRIES && !interrupted; i++) {
        if ((rc = pfx_reconnect(ch->c)) == 0 || rc != PFX_ECONNECT)
            break;
        sleep_ms(RECONNECT_WAIT_MS);
    }
    if (rc != 0) {
        fprintf(stderr, "[cannot reconnect: %s]\n", pfx_errmsg(ch->c));
        return -1;
    }
    const proto_hello_ok *h = pfx_server(ch->c);
    if (h->vocab_size != ch->vocab || (int)h->model.len != (int)strlen(ch->model) ||
        memcmp(h->model.p, ch->model, h->model.len) != 0) {
        fprintf(stderr,
                "[the daemon now serves %.*s, not %s: the conversation is re-tokenized "
                "from its text]\n",
                (int)h->model.len, h->model.p, ch->model);
        remember_model(ch);
        if (retokenize_all(ch) != 0)
            return -1;
    }
    fprintf(stderr, "[reconnected]\n");
    return 0;
}

/* Tokenizes text as a continuation: the daemon's ids start with BOS (dropped here) and, for
 * non-empty text, the dummy-prefix space, which the continuation of a conversation also wants
 * as a word separator. Reconnects once if the daemon went away. */
static int chat_tokenize(chat *ch, const char *text, int32_t **ids, size_t *n)
{
    int32_t *all;
    size_t k;
    int rc = pfx_tokenize(ch->c, text, strlen(text), &all, &k);
    if (rc == PFX_EIO && chat_reconnect(ch) == 0)
        rc = pfx_tokenize(ch->c, text, strlen(text), &all, &k);
    if (rc != 0)
        return rc;
    if (k > 0 && all[0] == 1) {
        memmove(all, all + 1, (k - 1) * sizeof(int32_t));
        k--;
    }
    *ids = all;
    *n = k;
    return 0;
}

/* Re-tokenizes every message from its text (the ids belong to another model). */
static int retokenize_all(chat *ch)
{
    chat_msg **all = xrealloc(NULL, (1 + ch->n_msgs) * sizeof *all);
    size_t k = 0;
    if (ch->sys.text)
        all[k++] = &ch->sys;
    for (size_t i = 0; i < ch->n_msgs; i++)
        all[k++] = &ch->msgs[i];
    for (size_t i = 0; i < k; i++) {
        int32_t *ids;
        size_t n;
        if (chat_tokenize(ch, all[i]->text, &ids, &n) != 0) {
            fprintf(stderr, "prefixctl: %s\n", pfx_errmsg(ch->c));
            free(all);
            return -1;
        }
        free(all[i]->ids);
        all[i]->ids = ids;
        all[i]->n = n;
    }
    free(all);
    return 0;
}

/* ---- A turn -------------------------------------------------------------------------------- */

typedef struct reply {
    char *text;
    size_t len, cap;
    int32_t *ids;
    size_t n, idcap;
} reply;

static int reply_token_cb(void *arg, int32_t id, const char *piece, size_t len)
{
    reply *r = arg;
    fwrite(piece, 1, len, stdout);
    fflush(stdout);
    if (r->len + len + 1 > r->cap) {
        r->cap = (r->len + len + 1) * 2;
        r->text = xrealloc(r->text, r->cap);
    }
    if (r->n == r->idcap) {
        r->idcap = r->idcap ? 2 * r->idcap : 256;
        r->ids = xrealloc(r->ids, r->idcap * sizeof *r->ids);
    }
    memcpy(r->text + r->len, piece, len);
    r->len += len;
    r->text[r->len] = 0;
    r->ids[r->n++] = id;
    return 0;
}

/* Makes room for a turn of k more ids when the prompt would leave no room for a whole reply
 * (-n, at most half the context): drops the oldest turns (a user line with its reply) until the
 * turns hold at most half of the room that the system prompt, the new line and the reply leave,
 * telling the user. Half, not just enough for this turn (llama.cpp's context shift discards half
 * too): the turns that follow then extend a prefix the daemon has cached, where dropping one
 * turn each time would shift the conversation, and miss the cache after the system prompt, at
 * every turn. Returns 0, or -1 when the system prompt and the new line alone do not fit (nothing
 * is dropped then). */
static int fit_context(chat *ch, size_t k)
{
    size_t seq = pfx_server(ch->c)->seq_len;
    size_t reserve = ch->o->max_new < seq / 2 ? ch->o->max_new : seq / 2;
    size_t fixed = 1 + ch->sys.n + k; /* BOS, the system prompt, the new line */
    if (fixed + 1 > seq) {
        fprintf(stderr,
                "[this line is %zu tokens; with the system prompt (%zu) it does not fit the "
                "model's context of %zu tokens: not sent]\n",
                k, ch->sys.n, seq);
        return -1;
    }
    size_t turns_n = conv_tokens(ch) - 1 - ch->sys.n;
    if (fixed + turns_n + reserve <= seq)
        return 0;
    size_t keep = seq > fixed + reserve ? (seq - fixed - reserve) / 2 : 0;
    size_t drop = 0, dropped_tokens = 0, turns = 0;
    while (drop < ch->n_msgs && turns_n > keep) {
        if (ch->msgs[drop].role == ROLE_USER)
            turns++;
        turns_n -= ch->msgs[drop].n;
        dropped_tokens += ch->msgs[drop].n;
        drop++;
        /* A reply goes with its line. */
        if (drop < ch->n_msgs && ch->msgs[drop].role == ROLE_ASSISTANT) {
            turns_n -= ch->msgs[drop].n;
            dropped_tokens += ch->msgs[drop].n;
            drop++;
        }
    }
    if (drop == 0)
        return 0;
    for (size_t i = 0; i < drop; i++)
        msg_free(&ch->msgs[i]);
    memmove(ch->msgs, ch->msgs + drop, (ch->n_msgs - drop) * sizeof *ch->msgs);
    ch->n_msgs -= drop;
    fprintf(stderr,
            "[context: dropped the %zu oldest turn%s (%zu tokens) so that a reply of %zu tokens "
            "fits in the model's %zu; the system prompt stays]\n",
            turns, turns == 1 ? "" : "s", dropped_tokens, reserve, seq);
    return 0;
}

/* How a DONE ended, as the user reads it. */
static int reply_end_of(const chat *ch, const proto_done *d)
{
    if (d->finish == PROTO_FINISH_CANCELLED)
        return END_CANCELLED;
    if (d->finish == PROTO_FINISH_STOP)
        return END_STOP;
    return d->new_tokens >= ch->o->max_new ? END_LENGTH : END_CONTEXT;
}

static void record_stat(chat *ch, const pfx_result *r, int end)
{
    if (ch->n_stats == ch->cap_stats) {
        ch->cap_stats = ch->cap_stats ? 2 * ch->cap_stats : 16;
        ch->stats = xrealloc(ch->stats, ch->cap_stats * sizeof *ch->stats);
    }
    ch->stats[ch->n_stats++] = (turn_stat){ch->turn,
                                           r->done.prompt_tokens,
                                           r->done.cached_tokens,
                                           r->done.cached_tokens_disk,
                                           r->done.new_tokens,
                                           r->ttft_ms,
                                           end};
}

/* Exit code for a failed call: 2 for input the daemon refuses, else 1. */
static int failure_code(const chat *ch)
{
    switch (pfx_server_error(ch->c)) {
    case PROTO_ERR_PROMPT_TOO_LONG:
    case PROTO_ERR_BAD_UTF8:
    case PROTO_ERR_BAD_TOKEN:
    case PROTO_ERR_BAD_NAMESPACE:
        return 2;
    }
    return 1;
}

/* One turn: line is the user's text. Returns 0 (the turn happened, or was refused and the chat
 * goes on), or an exit code when the chat must end. */
static int chat_turn(chat *ch, const char *line)
{
    int32_t *ids;
    size_t k;
    if (chat_tokenize(ch, line, &ids, &k) != 0) {
        fprintf(stderr, "prefixctl: %s\n", pfx_errmsg(ch->c));
        return ch->tty ? 0 : failure_code(ch);
    }
    if (!ch->o->context_stop && fit_context(ch, k) != 0) {
        free(ids);
        return ch->tty ? 0 : 2;
    }
    size_t n;
    int32_t *prompt = conv_ids(ch, ids, k, &n);
    ch->turn++;
    pfx_gen g = {0};
    g.ids = prompt;
    g.n_ids = n;
    /* With the model's template: the messages as text, the daemon renders them (CHAT). */
    pfx_chat_msg *cm = xrealloc(NULL, (ch->n_msgs + 1) * sizeof *cm);
    for (size_t i = 0; i < ch->n_msgs; i++)
        cm[i] = (pfx_chat_msg){role_names[ch->msgs[i].role], ch->msgs[i].text,
                               strlen(ch->msgs[i].text)};
    cm[ch->n_msgs] = (pfx_chat_msg){"user", line, strlen(line)};
    if (pfx_has_chat(ch->c)) {
        g.msgs = cm;
        g.n_msgs = ch->n_msgs + 1;
        g.system = ch->sys.text;
    }
    g.max_new = ch->o->max_new;
    g.temp = ch->o->temp;
    g.top_p = ch->o->top_p;
    g.seed = ch->o->seed + (uint64_t)ch->turn;
    g.ns = ch->o->ns;
    reply rep = {0};
    pfx_result r;
    /* A Ctrl-C since the line was read (while tokenizing) cancels the reply at once. */
    int rc = pfx_generate(ch->c, &g, reply_token_cb, &rep, &r);
    if (rc == PFX_EIO && !interrupted) {
        if (rep.n > 0)
            printf("\n");
        fflush(stdout);
        free(rep.text);
        free(rep.ids);
        rep = (reply){0};
        if (chat_reconnect(ch) == 0) {
            fprintf(stderr, "[resending the conversation: %zu tokens]\n", n);
            /* The daemon that came back may have another model: with a template, or not. */
            g.msgs = pfx_has_chat(ch->c) ? cm : NULL;
            rc = pfx_generate(ch->c, &g, reply_token_cb, &rep, &r);
        }
    }
    free(prompt);
    free(cm);
    if (rep.n > 0 || rc == 0)
        printf("\n");
    fflush(stdout);
    if (rc != 0) {
        fprintf(stderr, "prefixctl: %s\n", pfx_errmsg(ch->c));
        if (pfx_server_error(ch->c) == PROTO_ERR_PROMPT_TOO_LONG && ch->o->context_stop)
            fprintf(stderr, "[the conversation is full (--context-policy stop): the chat ends]\n");
        free(ids);
        free(rep.text);
        free(rep.ids);
        int code = failure_code(ch);
        if (!ch->tty ||
            (ch->o->context_stop && pfx_server_error(ch->c) == PROTO_ERR_PROMPT_TOO_LONG))
            return code;
        return 0;
    }
    int end = reply_end_of(ch, &r.done);
    msgs_push(ch, ROLE_USER, xstrdup(line), ids, k, END_STOP);
    msgs_push(ch, ROLE_ASSISTANT, rep.text ? rep.text : xstrdup(""), rep.ids, rep.n, end);
    record_stat(ch, &r, end);
    if (end == END_CANCELLED)
        fprintf(stderr,
                "[cancelled: the partial reply (%zu tokens) stays in the conversation, "
                "marked]\n",
                rep.n);
    else if (end == END_LENGTH)
        fprintf(stderr, "[reply cut at -n %u tokens]\n", ch->o->max_new);
    else if (end == END_CONTEXT)
        fprintf(stderr, "[reply cut by the model's context (%u tokens)]\n",
                pfx_server(ch->c)->seq_len);
    fprintf(stderr, "[turn %d: prompt %u tokens, cached %u, TTFT %.1f ms]\n", ch->turn,
            r.done.prompt_tokens, r.done.cached_tokens, r.ttft_ms);
    interrupted = 0;
    return 0;
}

/* ---- /save and /load ----------------------------------------------------------------------- */

static cJSON *msg_json(const chat_msg *m)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "role", role_names[m->role]);
    cJSON_AddStringToObject(j, "content", m->text);
    cJSON *ids = cJSON_AddArrayToObject(j, "ids");
    for (size_t i = 0; i < m->n; i++)
        cJSON_AddItemToArray(ids, cJSON_CreateNumber(m->ids[i]));
    if (m->role == ROLE_ASSISTANT)
        cJSON_AddStringToObject(j, "finish", end_names[m->end]);
    return j;
}

static void chat_save(chat *ch, const char *path)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "prefixd_chat", SAVE_FORMAT);
    cJSON_AddStringToObject(j, "model", ch->model);
    cJSON_AddNumberToObject(j, "vocab_size", ch->vocab);
    cJSON *msgs = cJSON_AddArrayToObject(j, "messages");
    if (ch->sys.text)
        cJSON_AddItemToArray(msgs, msg_json(&ch->sys));
    for (size_t i = 0; i < ch->n_msgs; i++)
        cJSON_AddItemToArray(msgs, msg_json(&ch->msgs[i]));
    char *s = cJSON_Print(j);
    cJSON_Delete(j);
    if (!s) {
        fprintf(stderr, "prefixctl: out of memory\n");
        return;
    }
    FILE *f = fopen(path, "w");
    int ok = f && fputs(s, f) >= 0 && fputc('\n', f) != EOF;
    int err = errno;
    if (f && fclose(f) != 0 && ok) {
        ok = 0;
        err = errno;
    }
    free(s);
    if (!ok)
        fprintf(stderr, "[/save: cannot write '%s': %s]\n", path, strerror(err));
    else
        fprintf(stderr, "[saved %zu messages (%zu tokens) to '%s']\n",
                ch->n_msgs + (ch->sys.text ? 1 : 0), conv_tokens(ch), path);
}

static char *slurp(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s", strerror(errno));
        return NULL;
    }
    size_t n = 0, cap = 4096, r;
    char *b = xrealloc(NULL, cap);
    while ((r = fread(b + n, 1, cap - n - 1, f)) > 0) {
        n += r;
        if (cap - n - 1 == 0)
            b = xrealloc(b, cap *= 2);
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        snprintf(err, errlen, "read error");
        free(b);
        return NULL;
    }
    b[n] = 0;
    return b;
}

/* Reads one message of a /load file into m (its ids only if they suit the model: *ids_ok is
 * cleared otherwise). Returns 0, or -1 with the problem in err. */
static int msg_from_json(const cJSON *j, uint32_t vocab, chat_msg *m, int *ids_ok, char *err,
                         size_t errlen)
{
    const cJSON *role = cJSON_GetObjectItemCaseSensitive(j, "role");
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(j, "content");
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(j, "ids");
    const cJSON *fin = cJSON_GetObjectItemCaseSensitive(j, "finish");
    if (!cJSON_IsObject(j) || !cJSON_IsString(role) || !cJSON_IsString(content)) {
        snprintf(err, errlen, "not an object with a string \"role\" and \"content\"");
        return -1;
    }
    m->role = -1;
    for (int r = 0; r < 3; r++)
        if (!strcmp(role->valuestring, role_names[r]))
            m->role = r;
    if (m->role < 0) {
        snprintf(err, errlen, "role '%.40s' is none of system, user, assistant", role->valuestring);
        return -1;
    }
    m->end = END_STOP;
    if (cJSON_IsString(fin))
        for (int e = 0; e < END_COUNT; e++)
            if (!strcmp(fin->valuestring, end_names[e]))
                m->end = e;
    m->text = xstrdup(content->valuestring);
    m->ids = NULL;
    m->n = 0;
    if (!cJSON_IsArray(ids)) {
        *ids_ok = 0;
        return 0;
    }
    size_t n = (size_t)cJSON_GetArraySize(ids), i = 0;
    m->ids = xrealloc(NULL, n * sizeof *m->ids);
    const cJSON *it;
    cJSON_ArrayForEach(it, ids)
    {
        if (!cJSON_IsNumber(it) || it->valuedouble < 0 || it->valuedouble >= vocab ||
            it->valuedouble != (double)(int32_t)it->valuedouble) {
            *ids_ok = 0;
            break;
        }
        m->ids[i++] = (int32_t)it->valuedouble;
    }
    m->n = i;
    return 0;
}

static void chat_load(chat *ch, const char *path)
{
    char err[256];
    char *s = slurp(path, err, sizeof err);
    if (!s) {
        fprintf(stderr, "[/load: cannot read '%s': %s]\n", path, err);
        return;
    }
    cJSON *j = cJSON_Parse(s);
    free(s);
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(j, "messages");
    if (!cJSON_IsArray(msgs)) {
        fprintf(stderr, "[/load: '%s' is not a saved chat: %s]\n", path,
                j ? "no \"messages\" array" : "not JSON");
        cJSON_Delete(j);
        return;
    }
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(j, "model");
    int ids_ok = cJSON_IsString(model) && !strcmp(model->valuestring, ch->model);
    size_t n = (size_t)cJSON_GetArraySize(msgs), k = 0, at = 0;
    chat_msg *m = xrealloc(NULL, (n + 1) * sizeof *m);
    const cJSON *it;
    int bad = 0;
    cJSON_ArrayForEach(it, msgs)
    {
        if (msg_from_json(it, ch->vocab, &m[k], &ids_ok, err, sizeof err) != 0) {
            bad = 1;
        } else {
            k++;
            /* Only the first message may be the system prompt; turns alternate from a user's. */
            int want = k == 1 && m[0].role == ROLE_SYSTEM     ? ROLE_SYSTEM
                       : (k - (m[0].role == ROLE_SYSTEM)) % 2 ? ROLE_USER
                                                              : ROLE_ASSISTANT;
            if (m[k - 1].role != want) {
                snprintf(err, sizeof err, "a %s message where a %s message belongs",
                         role_names[m[k - 1].role], role_names[want]);
                bad = 1;
            }
        }
        if (bad) {
            fprintf(stderr, "[/load: '%s': messages[%zu]: %s; the conversation is unchanged]\n",
                    path, at, err);
            break;
        }
        at++;
    }
    cJSON_Delete(j);
    if (bad) {
        for (size_t i = 0; i < k; i++)
            msg_free(&m[i]);
        free(m);
        return;
    }
    msgs_clear(ch);
    msg_free(&ch->sys);
    size_t first = 0;
    if (k > 0 && m[0].role == ROLE_SYSTEM)
        ch->sys = m[first++];
    for (size_t i = first; i < k; i++)
        msgs_push(ch, m[i].role, m[i].text, m[i].ids, m[i].n, m[i].end);
    free(m);
    if (!ids_ok) {
        fprintf(stderr, "[/load: the file's token ids are missing or are another model's: "
                        "re-tokenizing its text]\n");
        if (retokenize_all(ch) != 0)
            return;
    }
    fprintf(stderr, "[loaded %zu messages (%zu tokens) from '%s'%s]\n", k, conv_tokens(ch), path,
            !ch->o->context_stop && conv_tokens(ch) >= pfx_server(ch->c)->seq_len
                ? "; the oldest turns will be dropped at the next turn to fit the context"
                : "");
}

/* ---- Commands ------------------------------------------------------------------------------ */

static void chat_help(void)
{
    fprintf(stderr,
            "Each line is one turn: the model continues the conversation. Commands:\n"
            "  /help          this list\n"
            "  /exit, /bye    leave (so do Ctrl-D, and 'exit' or 'quit' alone on a line at a "
            "terminal)\n"
            "  /system [TEXT] show the system prompt, or set it (it opens the conversation)\n"
            "  /clear         forget the turns (the system prompt stays)\n"
            "  /save FILE     write the conversation as JSON messages (text and token ids)\n"
            "  /load FILE     continue a saved conversation (its prefix is still cached)\n"
            "  /stats         this conversation's turns: prompt, cached share, TTFT\n"
            "  //TEXT         send '/TEXT' as a line\n"
            "Ctrl-C stops a reply (it stays in the conversation, marked); at the prompt it\n"
            "discards the line, and a second Ctrl-C at the empty prompt leaves.\n");
}

static void chat_stats(const chat *ch)
{
    if (ch->n_stats == 0) {
        fprintf(stderr, "[no turns yet]\n");
        return;
    }
    fprintf(stderr, "%5s %7s %7s %6s %9s %9s %6s  %s\n", "turn", "prompt", "cached", "share",
            "from disk", "TTFT ms", "reply", "end");
    uint64_t p = 0, c = 0;
    for (size_t i = 0; i < ch->n_stats; i++) {
        const turn_stat *s = &ch->stats[i];
        fprintf(stderr, "%5d %7u %7u %5.1f%% %9u %9.1f %6u  %s\n", s->turn, s->prompt, s->cached,
                s->prompt ? 100.0 * s->cached / s->prompt : 0.0, s->cached_disk, s->ttft_ms,
                s->new_tokens, end_names[s->end]);
        p += s->prompt;
        c += s->cached;
    }
    fprintf(stderr,
            "total: %llu of %llu prompt tokens cached (%.1f%%); the conversation holds "
            "%zu tokens of the model's %u\n",
            (unsigned long long)c, (unsigned long long)p, p ? 100.0 * (double)c / (double)p : 0.0,
            conv_tokens(ch), pfx_server(ch->c)->seq_len);
}

static void set_system(chat *ch, const char *text)
{
    int32_t *ids;
    size_t n;
    if (chat_tokenize(ch, text, &ids, &n) != 0) {
        fprintf(stderr, "prefixctl: %s\n", pfx_errmsg(ch->c));
        return;
    }
    msg_free(&ch->sys);
    ch->sys = (chat_msg){ROLE_SYSTEM, xstrdup(text), ids, n, END_STOP};
}

/* Returns 1 to leave the chat, else 0. */
static int chat_command(chat *ch, const char *line)
{
    const char *arg = line + strcspn(line, " \t");
    size_t len = (size_t)(arg - line);
    arg += strspn(arg, " \t");
#define IS(name) (len == sizeof(name) - 1 && !memcmp(line, name, len))
    if (IS("/exit") || IS("/bye") || IS("/quit"))
        return 1;
    if (IS("/help") || IS("/?")) {
        chat_help();
    } else if (IS("/system")) {
        if (*arg) {
            set_system(ch, arg);
            fprintf(stderr, "[system prompt set: %zu tokens]\n", ch->sys.n);
        } else {
            fprintf(stderr, "[system prompt: %s]\n", ch->sys.text ? ch->sys.text : "(none)");
        }
    } else if (IS("/clear")) {
        msgs_clear(ch);
        fprintf(stderr, "[the conversation is cleared; the system prompt stays]\n");
    } else if (IS("/save") || IS("/load")) {
        if (!*arg)
            fprintf(stderr, "[%.*s needs a FILE]\n", (int)len, line);
        else if (IS("/save"))
            chat_save(ch, arg);
        else
            chat_load(ch, arg);
    } else if (IS("/stats")) {
        chat_stats(ch);
    } else {
        fprintf(stderr, "[unknown command '%.*s': /help lists them; //TEXT sends '/TEXT']\n",
                (int)len, line);
    }
#undef IS
    return 0;
}

/* ---- Input --------------------------------------------------------------------------------- */

static const char *chat_prompt_cb(EditLine *el)
{
    (void)el;
    return "> ";
}

static void editor_open(chat *ch)
{
    setlocale(LC_CTYPE, ""); /* libedit edits multibyte characters by the locale */
    ch->el = el_init("prefixctl", stdin, stdout, stderr);
    ch->hist = history_init();
    if (!ch->el || !ch->hist) {
        fprintf(stderr, "prefixctl: cannot set up line editing; reading plain lines\n");
        if (ch->el)
            el_end(ch->el);
        if (ch->hist)
            history_end(ch->hist);
        ch->el = NULL;
        ch->hist = NULL;
        return;
    }
    HistEvent ev;
    history(ch->hist, &ev, H_SETSIZE, HISTORY_SIZE);
    history(ch->hist, &ev, H_SETUNIQUE, 1);
    el_set(ch->el, EL_EDITOR, "emacs");
    el_set(ch->el, EL_PROMPT, chat_prompt_cb);
    el_set(ch->el, EL_HIST, history, ch->hist);
    el_source(ch->el, NULL); /* the user's ~/.editrc, if any */
}

/* Reads the next line into *buf (NUL-terminated, no newline). Returns 1 for a line, 0 at the end
 * of input, -1 for Ctrl-C at the prompt (what was typed is discarded). */
static int read_line(chat *ch, char **buf, size_t *cap)
{
    if (!ch->el) {
        ssize_t n = getline(buf, cap, stdin);
        if (n < 0)
            return 0;
        (*buf)[strcspn(*buf, "\n")] = 0;
        return 1;
    }
    int count;
    interrupted = 0;
    const char *l = el_gets(ch->el, &count);
    if (!l && count < 0 && (interrupted || errno == EINTR)) {
        interrupted = 0;
        return -1;
    }
    if (!l || count <= 0)
        return 0;
    size_t n = strcspn(l, "\n");
    if (n + 1 > *cap) {
        *cap = n + 1;
        *buf = xrealloc(*buf, *cap);
    }
    memcpy(*buf, l, n);
    (*buf)[n] = 0;
    if (n > 0) {
        HistEvent ev;
        history(ch->hist, &ev, H_ENTER, *buf);
    }
    return 1;
}

/* A line that is 'exit' or 'quit' alone (blanks around allowed), as psql takes them. */
static int is_bare_exit(const char *line)
{
    line += strspn(line, " \t");
    size_t n = strcspn(line, " \t");
    if (line[n + strspn(line + n, " \t")] != 0)
        return 0;
    return (n == 4 && !memcmp(line, "exit", 4)) || (n == 4 && !memcmp(line, "quit", 4));
}

static int chat_loop(chat *ch)
{
    char *line = NULL;
    size_t cap = 0;
    int rc = 0, armed = 0; /* armed: the last prompt ended with Ctrl-C */
    for (;;) {
        int r = read_line(ch, &line, &cap);
        if (r == 0) {
            if (ch->el)
                printf("\n"); /* Ctrl-D leaves the cursor after "> " */
            break;
        }
        if (r < 0) {
            /* The first Ctrl-C discards the line; a second one, at the empty prompt, leaves. */
            printf("\n");
            fflush(stdout);
            if (armed)
                break;
            armed = 1;
            fprintf(stderr, "[Ctrl-C again to leave (or Ctrl-D, /exit)]\n");
            continue;
        }
        armed = 0;
        if (line[0] == '/' && line[1] != '/') {
            if (chat_command(ch, line))
                break;
            continue;
        }
        if (ch->tty && is_bare_exit(line))
            break;
        if ((rc = chat_turn(ch, line[0] == '/' ? line + 1 : line)) != 0)
            break;
    }
    fflush(stdout);
    free(line);
    return rc;
}

int chat_main(const chat_opts *o)
{
    chat ch = {.o = o};
    char err[1024];
    if (pfx_connect(o->socket, &ch.c, err, sizeof err) != 0) {
        fprintf(stderr, "prefixctl: %s\n", err);
        return 1;
    }
    remember_model(&ch);
    if (o->system) {
        int32_t *ids;
        size_t n;
        if (chat_tokenize(&ch, o->system, &ids, &n) != 0) {
            fprintf(stderr, "prefixctl: %s\n", pfx_errmsg(ch.c));
            int code = failure_code(&ch);
            pfx_close(ch.c);
            return code;
        }
        ch.sys = (chat_msg){ROLE_SYSTEM, xstrdup(o->system), ids, n, END_STOP};
    }
    ch.tty = isatty(STDIN_FILENO);
    struct sigaction old;
    if (ch.tty) {
        /* No SA_RESTART: the prompt's read() must return at Ctrl-C. */
        struct sigaction sa = {0};
        sa.sa_handler = chat_sigint_cb;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGINT, &sa, &old);
        pfx_set_cancel_flag(ch.c, &interrupted);
        editor_open(&ch);
        fprintf(stderr,
                "[prefixctl chat with %s (context %u tokens): /help lists the commands, "
                "Ctrl-D leaves]\n",
                ch.model, pfx_server(ch.c)->seq_len);
    }
    int rc = chat_loop(&ch);
    if (ch.el)
        el_end(ch.el);
    if (ch.hist)
        history_end(ch.hist);
    if (ch.tty)
        sigaction(SIGINT, &old, NULL);
    msgs_clear(&ch);
    msg_free(&ch.sys);
    free(ch.msgs);
    free(ch.stats);
    pfx_close(ch.c);
    return rc;
}
