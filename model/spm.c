/* spm.c — SentencePiece BPE encoding of one raw fragment, as llama.cpp's llm_tokenizer_spm does.
 *
 * The fragment's spaces become U+2581 ("▁"), with one more in front when the caller asks (the
 * space prefix rule: at the start of the text and after a special token, when the vocabulary's
 * add_space_prefix is set). Its UTF-8 characters are the first symbols; then, as long as some
 * pair of neighbours concatenates to a token, the pair whose token has the highest score merges
 * (leftmost on ties). A symbol that is a token is emitted as that token; a character that is not
 * falls back to its bytes' "<0xHH>" tokens (the unknown token where a vocabulary has no byte
 * token). The merged symbols always are tokens, since a merge is only ever queued for one.
 *
 * Cost: the pairs wait in a heap, so a fragment of n characters takes O(n log n) whatever its
 * shape (the reference's priority queue does the same).
 */
#include "model.h"
#include "vocab.h"

#include <stdlib.h>
#include <string.h>

static void consider(const model__vocab *v, const char *buf, model__sym *s, int32_t a, int32_t b,
                     model__cand *h, size_t *nh)
{
    if (a < 0 || b < 0)
        return;
    int32_t id = model__vocab_find(v, buf + s[a].off, (size_t)s[a].len + s[b].len);
    if (id < 0)
        return;
    model__heap_push(h, nh, (model__cand){-(double)v->score[id], a, b, s[a].ver, s[b].ver, id});
}

static int is_space(const char *buf, const model__sym *s)
{
    return s->len == 3 && memcmp(buf + s->off, "\xE2\x96\x81", 3) == 0;
}

long model__spm_encode(const model__vocab *v, const char *text, size_t len, int prefix,
                       int32_t *out)
{
    /* The escaped text: each space (and the prefix) is three bytes. */
    size_t spaces = 0;
    for (size_t i = 0; i < len; i++)
        spaces += text[i] == ' ';
    size_t blen = len + 2 * spaces + (prefix ? 3 : 0);
    char *buf = malloc(blen + 1);
    model__sym *s = malloc((blen + 1) * sizeof *s);
    model__cand *h = malloc((blen + 1) * 3 * sizeof *h);
    long n_out = -1;
    if (!buf || !s || !h)
        goto out;
    size_t o = 0;
    if (prefix) {
        memcpy(buf, "\xE2\x96\x81", 3);
        o = 3;
    }
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ') {
            memcpy(buf + o, "\xE2\x96\x81", 3);
            o += 3;
        } else {
            buf[o++] = text[i];
        }
    }
    int32_t ns = 0;
    for (size_t i = 0; i < blen;) {
        size_t k = model__utf8_len((unsigned char)buf[i]);
        if (k > blen - i)
            k = blen - i;
        s[ns] = (model__sym){i, (uint32_t)k, -2, ns - 1, -1, 0};
        if (ns > 0)
            s[ns - 1].next = ns;
        ns++;
        i += k;
    }
    long n = 0;
    for (int32_t a = 0, b; a < ns; a = b) {
        /* The word [a, b): up to the next "▁" that follows another character, when the
         * vocabulary has no token that could span that boundary; else the whole fragment. */
        b = a + 1;
        if (v->spm_words)
            while (b < ns && !(is_space(buf, &s[b]) && !is_space(buf, &s[b - 1])))
                b++;
        else
            b = ns;
        s[a].prev = -1;
        s[b - 1].next = -1;
        size_t nh = 0;
        for (int32_t i = a; i + 1 < b; i++)
            consider(v, buf, s, i, i + 1, h, &nh);
        while (nh > 0) {
            model__cand c = model__heap_pop(h, &nh);
            model__sym *l = &s[c.left], *r = &s[c.right];
            if (l->len == 0 || r->len == 0 || l->ver != c.lver || r->ver != c.rver ||
                l->next != c.right)
                continue;
            l->len += r->len;
            l->id = c.id;
            l->ver++;
            r->len = 0;
            r->ver++;
            l->next = r->next;
            if (r->next >= 0)
                s[r->next].prev = c.left;
            consider(v, buf, s, l->prev, c.left, h, &nh);
            consider(v, buf, s, c.left, l->next, h, &nh);
        }
        for (int32_t i = a; i >= 0; i = s[i].next) {
            int32_t id = s[i].id >= 0 ? s[i].id : model__vocab_find(v, buf + s[i].off, s[i].len);
            if (id >= 0) {
                out[n++] = id;
                continue;
            }
            for (uint32_t j = 0; j < s[i].len; j++) {
                int32_t bt = v->byte_id[(unsigned char)buf[s[i].off + j]];
                out[n++] = bt >= 0 ? bt : v->unk >= 0 ? v->unk : 0;
            }
        }
    }
    n_out = n;
out:
    free(buf);
    free(s);
    free(h);
    return n_out;
}
