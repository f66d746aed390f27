/* chat_prompt.c — a conversation rendered with the model's chat template and tokenized with its
 * contents kept apart from the template's markers and cut at message boundaries (see
 * chat_prompt.h): the messages become the JSON array the template reads, and
 * model_chat_template_render_segments() and model_chat_tokenize() (chat_template.c) do the rest,
 * so that the daemon, the HTTP API and `prefixd chat-template --ids` tokenize a chat the same way.
 */
#include "chat_prompt.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base.h"

/* ---- A growing buffer ---------------------------------------------------------------------- */

typedef struct sbuf {
    char *p;
    size_t n, cap;
    int oom;
} sbuf;

static void sb_add(sbuf *b, const void *p, size_t n)
{
    if (b->oom)
        return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np) {
            b->oom = 1;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->n, p, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void sb_str(sbuf *b, const char *s)
{
    sb_add(b, s, strlen(s));
}

/* A JSON string: quotes, backslashes and control bytes escaped; other bytes as they are. */
static void sb_json_str(sbuf *b, const char *s, size_t n)
{
    sb_add(b, "\"", 1);
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        sb_add(b, s + run, i - run);
        char esc[8];
        if (c == '"' || c == '\\')
            snprintf(esc, sizeof esc, "\\%c", c);
        else
            snprintf(esc, sizeof esc, "\\u%04x", c);
        sb_str(b, esc);
        run = i + 1;
    }
    sb_add(b, s + run, n - run);
    sb_add(b, "\"", 1);
}

/* The messages as the template's JSON array. */
static int messages_json(const model_chat_msg *m, size_t n, sbuf *b)
{
    b->n = 0;
    sb_add(b, "[", 1);
    for (size_t i = 0; i < n; i++) {
        sb_str(b, i ? ",{\"role\":" : "{\"role\":");
        sb_json_str(b, m[i].role, m[i].role_len);
        sb_str(b, ",\"content\":");
        sb_json_str(b, m[i].content, m[i].content_len);
        sb_add(b, "}", 1);
    }
    sb_add(b, "]", 1);
    return b->oom ? MODEL_ENOMEM : 0;
}

/* The BOS and EOS texts the template may write (a llama2.c vocabulary spells them "\n<s>\n":
 * white space is no part of the token's text). */
static void special_text(const model_tokenizer *tok, int32_t id, char *buf, size_t cap)
{
    buf[0] = 0;
    if (id < 0)
        return;
    size_t l;
    const char *p = model_token_text(tok, id, &l);
    while (l && (*p == '\n' || *p == ' '))
        p++, l--;
    while (l && (p[l - 1] == '\n' || p[l - 1] == ' '))
        l--;
    snprintf(buf, cap, "%.*s", (int)l, p);
}

/* ---- The prompt ---------------------------------------------------------------------------- */

/* The template's options: the vocabulary's BOS and EOS texts, the generation prompt. */
static void opts_init(model_chat_opts *o, const model_tokenizer *tok, int gen, char *bos, char *eos,
                      size_t cap)
{
    special_text(tok, model_token_bos(tok), bos, cap);
    special_text(tok, model_token_eos(tok), eos, cap);
    *o = (model_chat_opts){.add_generation_prompt = gen, .bos_token = bos, .eos_token = eos};
}

static int check_count(size_t n, char *msg, size_t msglen)
{
    if (n == 0)
        return base_fail(msg, msglen, MODEL_EINVAL, "a chat needs at least one message");
    if (n > MODEL_CHAT_MAX_MESSAGES)
        return base_fail(msg, msglen, MODEL_ERANGE, "%zu messages: at most %d are taken", n,
                         MODEL_CHAT_MAX_MESSAGES);
    return 0;
}

int model_chat_render(const model_chat_template *t, const model_tokenizer *tok,
                      const model_chat_msg *msgs, size_t n, int gen, char **text, size_t *len,
                      char *msg, size_t msglen)
{
    *text = NULL;
    *len = 0;
    int rc = check_count(n, msg, msglen);
    if (rc != 0)
        return rc;
    sbuf json = {0};
    if (messages_json(msgs, n, &json) != 0)
        return base_fail(msg, msglen, MODEL_ENOMEM, "out of memory rendering %zu messages", n);
    char bos[128], eos[128];
    model_chat_opts o;
    opts_init(&o, tok, gen, bos, eos, sizeof bos);
    rc = model_chat_template_render(t, json.p, json.n, &o, text, len, msg, msglen);
    free(json.p);
    return rc;
}

int model_chat_prompt(const model_chat_template *t, const model_tokenizer *tok,
                      const model_chat_msg *msgs, size_t n, int gen, int32_t **ids, size_t *n_ids,
                      size_t *cut_ids, char *msg, size_t msglen)
{
    *ids = NULL;
    *n_ids = 0;
    int rc = check_count(n, msg, msglen);
    if (rc != 0)
        return rc;
    sbuf json = {0};
    char *text = NULL;
    size_t len = 0, nsegs = 0, *ends = NULL;
    model_chat_segment *segs = NULL;
    if (messages_json(msgs, n, &json) != 0) {
        rc = base_fail(msg, msglen, MODEL_ENOMEM, "out of memory rendering %zu messages", n);
        goto out;
    }
    char bos[128], eos[128];
    model_chat_opts o;
    opts_init(&o, tok, gen, bos, eos, sizeof bos);
    rc = model_chat_template_render_segments(t, json.p, json.n, &o, &text, &len, &segs, &nsegs, msg,
                                             msglen);
    if (rc != 0)
        goto out;
    ends = malloc((nsegs + 1) * sizeof *ends);
    if (!ends || (rc = model_chat_tokenize(tok, text, segs, nsegs, 1, ids, n_ids, ends)) != 0) {
        rc = base_fail(msg, msglen, ends ? rc : MODEL_ENOMEM, "cannot tokenize a chat of %zu bytes",
                       len);
        goto out;
    }
    if (cut_ids) {
        /* Before the first message: the BOS model_chat_tokenize() put first, if any (the ids
         * of the first segment alone, as it encodes them, are the rest of ends[0]). */
        size_t lead = *n_ids;
        if (nsegs > 0) {
            int32_t *one = malloc(model_encode_cap(segs[0].len) * sizeof *one);
            size_t k = 0;
            if (!one || model_tokenize(tok, text + segs[0].off, segs[0].len,
                                       segs[0].content ? 0 : MODEL_ENC_SPECIAL, one,
                                       model_encode_cap(segs[0].len), &k) != 0) {
                free(one);
                free(*ids);
                *ids = NULL;
                *n_ids = 0;
                rc = base_fail(msg, msglen, MODEL_ENOMEM, "out of memory tokenizing a chat");
                goto out;
            }
            free(one);
            lead = ends[0] - k;
        }
        cut_ids[0] = lead;
        for (size_t k = 1; k <= n; k++)
            cut_ids[k] = 0;
        for (size_t i = 0; i < nsegs; i++)
            if (segs[i].turn > 0 && (size_t)segs[i].turn <= n)
                cut_ids[segs[i].turn] = ends[i];
        if (gen)
            cut_ids[n] = *n_ids;
    }
out:
    free(json.p);
    free(text);
    free(segs);
    free(ends);
    return rc;
}
