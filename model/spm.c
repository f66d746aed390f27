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

static int is_space(const char *buf, const model__sym *s)
{
    return s->len == 3 && memcmp(buf + s->off, "\xE2\x96\x81", 3) == 0;
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
    model__sym *s = malloc((blen + 1) * sizeof *s);
    spm_arg A = {v, buf};
    model__merger m = {.s = s, .pair = spm_pair, .arg = &A, .nranks = (size_t)v->n_srank};
    m.rank = malloc((blen + 1) * sizeof *m.rank);
    m.res = malloc((blen + 1) * sizeof *m.res);
    long n_out = -1;
    if (!buf || !s || !m.rank || !m.res)
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
        if (b - a <= SHORT_WORD || naive)
            model__merge_scan(&m, a);
        else if (model__merge_buckets(&m, a))
            goto out;
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
