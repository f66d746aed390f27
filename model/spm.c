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
 * Cost: vocab.c's merge loop, with the tokens' scores as integer ranks: a plain scan for short
 * words, rank buckets for long ones, so a fragment of n characters takes O(n log n) whatever
 * its shape, in the reference's order (highest score first, leftmost on ties).
 */
#include "model.h"
#include "vocab.h"

#include <stdlib.h>
#include <string.h>

/* Words up to this many symbols merge by the plain scan, longer ones from buckets. */
#define SHORT_WORD 24

typedef struct spm_arg {
    const model__vocab *v;
    const char *buf;
} spm_arg;

/* A pair merges when its text is a token; its rank is that token's score rank. */
static void spm_pair(void *arg, const model__sym *s, int32_t i, int32_t *rank, int32_t *res)
{
    const spm_arg *A = arg;
    int32_t j = s[i].next,
            id = j >= 0 ? model__vocab_find(A->v, A->buf + s[i].off, (size_t)s[i].len + s[j].len)
                        : -1;
    rank[i] = id >= 0 ? A->v->srank[id] : INT32_MAX;
    res[i] = id;
}

/* Grows the word's symbol buffer and the merger's arrays to cap. */
static int room(model__merger *m, size_t *have, size_t cap)
{
    model__sym *s = realloc(m->s, cap * sizeof *s);
    if (s)
        m->s = s;
    int32_t *r = s ? realloc(m->rank, cap * sizeof *r) : NULL;
    if (r)
        m->rank = r;
    int32_t *q = r ? realloc(m->res, cap * sizeof *q) : NULL;
    if (!q)
        return -1;
    m->res = q;
    *have = cap;
    return 0;
}

/* Merges the word's ns symbols and appends its ids at out + *n. */
static int word(const model__vocab *v, model__merger *m, const char *buf, int32_t ns, int naive,
                int32_t *out, long *n)
{
    model__sym *s = m->s;
    for (int32_t i = 0; i < ns; i++) {
        s[i].prev = i - 1;
        s[i].next = i + 1 < ns ? i + 1 : -1;
    }
    if (ns <= SHORT_WORD || naive)
        model__merge_scan(m, 0);
    else if (model__merge_buckets(m, 0))
        return -1;
    for (int32_t i = 0; i >= 0; i = s[i].next) {
        int32_t id = s[i].id >= 0 ? s[i].id : model__vocab_find(v, buf + s[i].off, s[i].len);
        if (id >= 0) {
            out[(*n)++] = id;
            continue;
        }
        for (uint32_t j = 0; j < s[i].len; j++) {
            int32_t bt = v->byte_id[(unsigned char)buf[s[i].off + j]];
            out[(*n)++] = bt >= 0 ? bt : v->unk >= 0 ? v->unk : 0;
        }
    }
    return 0;
}

static long encode(const model__vocab *v, const char *text, size_t len, int prefix, int32_t *out,
                   int naive)
{
    /* The escaped text: each space (and the prefix) is three bytes. */
    size_t spaces = 0;
    for (size_t i = 0; i < len; i++)
        spaces += text[i] == ' ';
    size_t blen = len + 2 * spaces + (prefix ? 3 : 0);
    char *buf = malloc(blen + 1);
    spm_arg A = {v, buf};
    model__merger m = {.pair = spm_pair, .arg = &A, .nranks = (size_t)v->n_srank};
    size_t have = 0;
    long n_out = -1;
    if (!buf || room(&m, &have, 64))
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
    /* Characters are the symbols, one word at a time in a buffer grown to the longest: a word
     * runs up to the next "▁" that follows another character, when the vocabulary has no token
     * that could span that boundary; else the whole fragment is one. */
    long n = 0;
    int32_t ns = 0;
    int prev_space = 0;
    for (size_t i = 0; i < blen;) {
        size_t k = model__utf8_len((unsigned char)buf[i]);
        if (k > blen - i)
            k = blen - i;
        int space = k == 3 && memcmp(buf + i, "\xE2\x96\x81", 3) == 0;
        if (v->spm_words && space && ns > 0 && !prev_space) {
            if (word(v, &m, buf, ns, naive, out, &n))
                goto out;
            ns = 0;
        }
        if ((size_t)ns == have && room(&m, &have, 2 * have))
            goto out;
        m.s[ns++] = (model__sym){i, (uint32_t)k, -2, -1, -1, 0};
        prev_space = space;
        i += k;
    }
    if (ns > 0 && word(v, &m, buf, ns, naive, out, &n))
        goto out;
    n_out = n;
out:
    free(buf);
    free(m.s);
    model__merger_free(&m);
    return n_out;
}

long model__spm_encode(const model__vocab *v, const char *text, size_t len, int prefix,
                       int32_t *out)
{
    return encode(v, text, len, prefix, out, 0);
}

long model__spm_encode_naive(const model__vocab *v, const char *text, size_t len, int prefix,
                             int32_t *out)
{
    return encode(v, text, len, prefix, out, 1);
}
