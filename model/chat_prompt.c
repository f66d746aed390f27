/* chat_prompt.c — a conversation rendered with the model's chat template and tokenized with its
 * contents kept apart from the template's markers and cut at message boundaries (see
 * chat_prompt.h for why and how).
 *
 * The placeholder of message i's content is "\x01<i>\x02": no template writes those bytes, and
 * it has no white space for a `trim` filter to take. A template that inspects a content (a
 * `startswith`, a `split`) may take another branch on the placeholder than on the real text;
 * then the two renderings do not line up and the request is refused with a message naming the
 * message, never tokenized some other way.
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

/* The messages as the template's JSON array: real contents, or placeholders when ph is set. */
static int messages_json(const model_chat_msg *m, size_t n, int ph, sbuf *b)
{
    b->n = 0;
    sb_add(b, "[", 1);
    for (size_t i = 0; i < n; i++) {
        sb_str(b, i ? ",{\"role\":" : "{\"role\":");
        sb_json_str(b, m[i].role, m[i].role_len);
        sb_str(b, ",\"content\":");
        if (ph) {
            char p[40];
            snprintf(p, sizeof p, "\"\\u0001%zu\\u0002\"", i);
            sb_str(b, p);
        } else {
            sb_json_str(b, m[i].content, m[i].content_len);
        }
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

typedef struct renderer {
    const model_chat_template *t;
    model_chat_opts o;
    char bos[128], eos[128];
    sbuf json;
} renderer;

static int render(renderer *r, const model_chat_msg *m, size_t n, int ph, int gen, char **out,
                  size_t *len, char *msg, size_t msglen)
{
    int rc = messages_json(m, n, ph, &r->json);
    if (rc != 0)
        return base_fail(msg, msglen, rc, "out of memory rendering %zu messages", n);
    r->o.add_generation_prompt = gen;
    return model_chat_template_render(r->t, r->json.p, r->json.n, &r->o, out, len, msg, msglen);
}

static void renderer_init(renderer *r, const model_chat_template *t, const model_tokenizer *tok)
{
    memset(r, 0, sizeof *r);
    r->t = t;
    special_text(tok, model_token_bos(tok), r->bos, sizeof r->bos);
    special_text(tok, model_token_eos(tok), r->eos, sizeof r->eos);
    r->o.bos_token = r->bos;
    r->o.eos_token = r->eos;
}

/* ---- Lining the two renderings up ---------------------------------------------------------- */

/* One placeholder in the placeholder rendering P: at [p, p + plen), message msg; its content
 * lies at [r, r + rlen) in the real rendering R. */
typedef struct hole {
    size_t p, plen, r, rlen;
    size_t msg;
} hole;

/* Finds the placeholders in P (len bytes) into *holes. Returns their count, or -1 (memory). */
static long find_holes(const char *P, size_t len, size_t n_msgs, hole **holes)
{
    size_t n = 0, cap = 0;
    *holes = NULL;
    for (size_t i = 0; i < len; i++) {
        if (P[i] != '\x01')
            continue;
        size_t j = i + 1, k = 0;
        while (j < len && P[j] >= '0' && P[j] <= '9' && j - i < 12)
            k = k * 10 + (size_t)(P[j++] - '0');
        if (j == i + 1 || j >= len || P[j] != '\x02' || k >= n_msgs)
            continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            hole *h = realloc(*holes, cap * sizeof *h);
            if (!h)
                return -1;
            *holes = h;
        }
        (*holes)[n++] = (hole){i, j + 1 - i, 0, 0, k};
        i = j;
    }
    return (long)n;
}

static int starts(const char *s, size_t n, const char *pre, size_t pn)
{
    return pn <= n && memcmp(s, pre, pn) == 0;
}

/* Fills each hole's place in R: R must be P with each placeholder replaced by its message's
 * content, as written or trimmed of ASCII white space (Jinja's `trim`). Returns 0, or
 * MODEL_EINVAL naming the first message that does not line up. */
static int line_up(const char *P, size_t plen, const char *R, size_t rlen, hole *h, size_t nh,
                   const model_chat_msg *m, char *msg, size_t msglen)
{
    size_t pp = 0, rp = 0;
    for (size_t i = 0; i <= nh; i++) {
        size_t lit_end = i < nh ? h[i].p : plen;
        if (!starts(R + rp, rlen - rp, P + pp, lit_end - pp))
            break;
        rp += lit_end - pp;
        if (i == nh)
            return rp == rlen ? 0
                              : base_fail(msg, msglen, MODEL_EINVAL,
                                          "the chat template's rendering does not line up with "
                                          "its messages (it changes them)");
        pp = lit_end + h[i].plen;
        size_t next_end = i + 1 < nh ? h[i + 1].p : plen;
        const char *c = m[h[i].msg].content;
        size_t cl = m[h[i].msg].content_len;
        int ok = 0;
        for (int trim = 0; trim < 2 && !ok; trim++) {
            const char *tc = c;
            size_t tl = cl;
            while (trim && tl && strchr(" \t\n\r\f\v", *tc) && *tc)
                tc++, tl--;
            while (trim && tl && strchr(" \t\n\r\f\v", tc[tl - 1]) && tc[tl - 1])
                tl--;
            if (starts(R + rp, rlen - rp, tc, tl) &&
                starts(R + rp + tl, rlen - rp - tl, P + pp, next_end - pp)) {
                h[i].r = rp;
                h[i].rlen = tl;
                rp += tl;
                ok = 1;
            }
        }
        if (!ok)
            return base_fail(msg, msglen, MODEL_EINVAL,
                             "the chat template changes the content of message %zu (not "
                             "inserted as written or trimmed), so prefixd cannot keep it apart "
                             "from the template's control tokens",
                             h[i].msg);
    }
    return base_fail(msg, msglen, MODEL_EINVAL,
                     "the chat template's rendering depends on the messages' contents in a way "
                     "prefixd cannot follow");
}

/* The offset in R of offset x of P, or -1 when x falls inside a placeholder. */
static long map_offset(const hole *h, size_t nh, size_t x)
{
    long delta = 0;
    for (size_t i = 0; i < nh && h[i].p < x; i++) {
        if (x < h[i].p + h[i].plen)
            return -1;
        delta = (long)(h[i].r + h[i].rlen) - (long)(h[i].p + h[i].plen);
    }
    return (long)x + delta;
}

static int cmp_size(const void *a, const void *b)
{
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return x < y ? -1 : x > y;
}

/* ---- The prompt ---------------------------------------------------------------------------- */

int model_chat_render(const model_chat_template *t, const model_tokenizer *tok,
                      const model_chat_msg *msgs, size_t n, int gen, char **text, size_t *len,
                      char *msg, size_t msglen)
{
    *text = NULL;
    *len = 0;
    if (n == 0)
        return base_fail(msg, msglen, MODEL_EINVAL, "a chat needs at least one message");
    if (n > MODEL_CHAT_MAX_MESSAGES)
        return base_fail(msg, msglen, MODEL_ERANGE, "%zu messages: at most %d are taken", n,
                         MODEL_CHAT_MAX_MESSAGES);
    renderer r;
    renderer_init(&r, t, tok);
    int rc = render(&r, msgs, n, 0, gen, text, len, msg, msglen);
    free(r.json.p);
    return rc;
}

/* Where the text may be cut: after the rendering of each prefix of the conversation (and of
 * its generation prompt) that the whole placeholder rendering P starts with. */
static int find_cuts(renderer *r, const model_chat_msg *msgs, size_t n, const char *P, size_t plen,
                     const hole *h, size_t nh, size_t *cuts, size_t *n_cuts, size_t *msg_cut)
{
    *n_cuts = 0;
    for (size_t k = 1; k <= n; k++) {
        msg_cut[k] = (size_t)-1;
        /* The generation prompt matters only before an assistant's message (the reply it
         * asked for); the whole rendering's end needs no cut. */
        int gen_cut = k < n && msgs[k].role_len == 9 && !memcmp(msgs[k].role, "assistant", 9);
        for (int g = 0; g < 1 + gen_cut; g++) {
            char *Pk = NULL, scratch[8];
            size_t pk_len = 0;
            int rc = render(r, msgs, k, 1, g, &Pk, &pk_len, scratch, sizeof scratch);
            if (rc == MODEL_ENOMEM)
                return rc;
            long at = rc == 0 && starts(P, plen, Pk, pk_len) ? map_offset(h, nh, pk_len) : -1;
            free(Pk);
            if (at < 0)
                continue;
            cuts[(*n_cuts)++] = (size_t)at;
            if (!g)
                msg_cut[k] = (size_t)at;
        }
    }
    qsort(cuts, *n_cuts, sizeof *cuts, cmp_size);
    return 0;
}

/* The id of BOS when the vocabulary adds it to a text, else -1. */
static int32_t added_bos(const model_tokenizer *tok)
{
    int32_t ids[4];
    size_t k = 0;
    if (model_tokenize(tok, "", 0, MODEL_ENC_ADD_SPECIAL, ids, 4, &k) != 0 || k == 0)
        return -1;
    return ids[0] == model_token_bos(tok) ? ids[0] : -1;
}

int model_chat_prompt(const model_chat_template *t, const model_tokenizer *tok,
                      const model_chat_msg *msgs, size_t n, int gen, int32_t **ids, size_t *n_ids,
                      size_t *cut_ids, char *msg, size_t msglen)
{
    *ids = NULL;
    *n_ids = 0;
    char *R = NULL, *P = NULL;
    size_t rlen = 0, plen = 0, n_cuts = 0;
    hole *h = NULL;
    model_span *raw = NULL;
    size_t *cuts = NULL, *msg_cut = NULL, *cut_at = NULL;
    int32_t *out = NULL;
    renderer r;
    renderer_init(&r, t, tok);
    int rc = model_chat_render(t, tok, msgs, n, gen, &R, &rlen, msg, msglen);
    if (rc == 0)
        rc = render(&r, msgs, n, 1, gen, &P, &plen, msg, msglen);
    if (rc != 0)
        goto out;
    long nh = find_holes(P, plen, n, &h);
    cuts = malloc(2 * (n + 1) * sizeof *cuts);
    msg_cut = malloc((n + 1) * sizeof *msg_cut);
    cut_at = malloc(2 * (n + 1) * sizeof *cut_at);
    if (nh < 0 || !cuts || !msg_cut || !cut_at) {
        rc = base_fail(msg, msglen, MODEL_ENOMEM, "out of memory rendering %zu messages", n);
        goto out;
    }
    if ((rc = line_up(P, plen, R, rlen, h, (size_t)nh, msgs, msg, msglen)) != 0)
        goto out;
    if ((rc = find_cuts(&r, msgs, n, P, plen, h, (size_t)nh, cuts, &n_cuts, msg_cut)) != 0) {
        base_fail(msg, msglen, rc, "out of memory rendering %zu messages", n);
        goto out;
    }
    raw = malloc(((size_t)nh + 1) * sizeof *raw); /* the contents, in order as the holes */
    for (long i = 0; raw && i < nh; i++)
        raw[i] = (model_span){h[i].r, h[i].rlen};
    size_t cap = model_encode_cap(rlen) + 1, got = 0;
    out = cap < SIZE_MAX / sizeof *out ? malloc(cap * sizeof *out) : NULL;
    if (!out || !raw) {
        rc = base_fail(msg, msglen, MODEL_ENOMEM, "out of memory tokenizing %zu bytes", rlen);
        goto out;
    }
    int32_t bos = added_bos(tok);
    rc = model_tokenize_chat(tok, R, rlen, 0, raw, (size_t)nh, cuts, n_cuts, out + 1, cap - 1, &got,
                             cut_at);
    if (rc != 0) {
        base_fail(msg, msglen, rc, "cannot tokenize a chat of %zu bytes", rlen);
        goto out;
    }
    /* BOS first where the vocabulary wants it and the template did not write it. */
    size_t shift = bos >= 0 && (got == 0 || out[1] != bos);
    if (shift)
        out[0] = bos;
    else
        memmove(out, out + 1, got * sizeof *out);
    if (cut_ids) {
        cut_ids[0] = shift;
        for (size_t k = 1; k <= n; k++) {
            cut_ids[k] = 0;
            for (size_t c = 0; c < n_cuts && msg_cut[k] != (size_t)-1; c++)
                if (cuts[c] == msg_cut[k])
                    cut_ids[k] = cut_at[c] + shift;
        }
        if (gen)
            cut_ids[n] = got + shift;
    }
    *ids = out;
    *n_ids = got + shift;
    out = NULL;
out:
    free(R);
    free(P);
    free(h);
    free(raw);
    free(cuts);
    free(msg_cut);
    free(cut_at);
    free(out);
    free(r.json.p);
    return rc;
}
