/* bpe.c — byte-level BPE encoding of one raw fragment, as GPT-2's tokenizer and llama.cpp's
 * llm_tokenizer_bpe do.
 *
 * The pre-tokenizer (pretok.c) cuts the fragment into words. Each word's bytes are written in
 * GPT-2's byte alphabet (bytes_to_unicode: the printable bytes stand for themselves, the others
 * for the code points from U+0100 on, in order), whose characters are the first symbols; then,
 * as long as some pair of neighbours is a merge rule, the rule of lowest rank applies (leftmost
 * on ties). A word that is a token is taken whole first when the pre-tokenizer says so
 * (ignore_merges: Llama 3). A symbol that is no token (a vocabulary lacking a byte character)
 * falls back to its single-byte tokens, as llama.cpp does.
 *
 * Merge rules are found by the ids of their halves (an open-addressed table built at load), so
 * a candidate costs one hash probe. Short words (most of them) merge by a plain scan for the
 * lowest rank; long ones rank by rank from buckets (long_word), O(n log n) for n characters
 * with the symbols visited left to right, so a 1 MB line without spaces takes a tenth of a
 * second rather than a cache-missing heap's half second.
 */
#include "model.h"
#include "vocab.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* bytes_to_unicode: byte b is code point b when printable (33-126, 161-172, 174-255), else
 * 256 + its rank among the others. */
static int is_printable(unsigned b)
{
    return (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
}

static uint32_t byte_cp(unsigned b)
{
    if (is_printable(b))
        return b;
    uint32_t k = 0;
    for (unsigned x = 0; x < b; x++)
        k += !is_printable(x);
    return 256 + k;
}

typedef struct alphabet {
    char enc[256][2];
    unsigned char len[256];
    int16_t dec[324]; /* code point -> byte, -1 */
} alphabet;

static const alphabet *get_alphabet(void)
{
    static alphabet a;
    static int ready; /* filled once, before any thread can ask: model__vocab_load calls first */
    if (!ready) {
        for (int i = 0; i < 324; i++)
            a.dec[i] = -1;
        for (unsigned b = 0; b < 256; b++) {
            uint32_t cp = byte_cp(b);
            a.dec[cp] = (int16_t)b;
            if (cp < 0x80) {
                a.enc[b][0] = (char)cp;
                a.len[b] = 1;
            } else {
                a.enc[b][0] = (char)(0xC0 | (cp >> 6));
                a.enc[b][1] = (char)(0x80 | (cp & 0x3F));
                a.len[b] = 2;
            }
        }
        ready = 1;
    }
    return &a;
}

const char *model__bpe_byte_char(unsigned b, size_t *len)
{
    const alphabet *a = get_alphabet();
    *len = a->len[b & 255];
    return a->enc[b & 255];
}

int model__bpe_char_byte(uint32_t cp)
{
    return cp < 324 ? get_alphabet()->dec[cp] : -1;
}

/* Scratch reused across the words of one call. */
typedef struct work {
    const model__vocab *v;
    const alphabet *a;
    char *enc;
    model__sym *s;
    size_t cap; /* bytes of enc; s and the merger's arrays are sized from it */
    model__merger m;
    int32_t *out;
    long n;
    int naive; /* every word through short_word (the tests' reference) */
} work;

static void emit_sym(work *w, const model__sym *s)
{
    if (s->id >= 0) {
        w->out[w->n++] = s->id;
        return;
    }
    /* No token: its single bytes that are tokens (an ASCII byte can be; the halves of a
     * two-byte character cannot, they are no UTF-8). */
    for (uint32_t j = 0; j < s->len; j++) {
        char c = w->enc[s->off + j];
        int32_t id = (unsigned char)c < 0x80 ? model__vocab_find(w->v, &c, 1) : -1;
        if (id >= 0)
            w->out[w->n++] = id;
    }
}

/* Words up to this many symbols merge by the plain scan, longer ones from buckets. */
#define SHORT_WORD 24

static void bpe_pair(void *arg, const model__sym *s, int32_t i, int32_t *rank, int32_t *res)
{
    const model__vocab *v = arg;
    int32_t j = s[i].next;
    const model__merge *m = NULL;
    if (j >= 0 && s[i].id >= 0 && s[j].id >= 0)
        m = model__vocab_merge(v, s[i].id, s[j].id);
    rank[i] = m ? m->rank : INT32_MAX;
    res[i] = m ? m->result : -1;
}

static int word(void *arg, const char *text, size_t len)
{
    work *w = arg;
    const model__vocab *v = w->v;
    if (2 * len > w->cap) {
        size_t cap = 2 * len > 256 ? 2 * len : 256;
        char *enc = realloc(w->enc, cap);
        model__sym *s = enc ? realloc(w->s, cap * sizeof *s) : NULL;
        if (enc)
            w->enc = enc;
        if (s)
            w->s = s;
        int32_t *rank = s ? realloc(w->m.rank, cap * sizeof *rank) : NULL;
        if (rank)
            w->m.rank = rank;
        int32_t *res = rank ? realloc(w->m.res, cap * sizeof *res) : NULL;
        if (!res)
            return -1;
        w->m.res = res;
        w->cap = cap;
    }
    /* Encode into the alphabet; the symbols are its characters. */
    size_t o = 0;
    int32_t ns = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char b = (unsigned char)text[i];
        memcpy(w->enc + o, w->a->enc[b], w->a->len[b]);
        w->s[ns] = (model__sym){o, w->a->len[b], v->char_id[b], ns - 1, ns + 1, 0};
        o += w->a->len[b];
        ns++;
    }
    if (ns == 0)
        return 0;
    w->s[ns - 1].next = -1;
    if (v->ignore_merges) {
        int32_t id = model__vocab_find(v, w->enc, o);
        if (id >= 0) {
            w->out[w->n++] = id;
            return 0;
        }
    }
    if (ns == 1) {
        emit_sym(w, &w->s[0]);
        return 0;
    }
    w->m.s = w->s;
    if (ns <= SHORT_WORD || w->naive)
        model__merge_scan(&w->m, 0);
    else if (model__merge_buckets(&w->m, 0))
        return -1;
    for (int32_t i = 0; i >= 0; i = w->s[i].next)
        emit_sym(w, &w->s[i]);
    return 0;
}

static long encode(const model__vocab *v, const char *text, size_t len, int32_t *out, int naive)
{
    work w = {.v = v, .a = get_alphabet(), .out = out, .naive = naive};
    w.m.pair = bpe_pair;
    w.m.arg = (void *)v;
    w.m.nranks = v->merges_mask + 1;
    int rc = model__pretok_split(v->pre, text, len, word, &w);
    free(w.enc);
    free(w.s);
    model__merger_free(&w.m);
    return rc ? -1 : w.n;
}

long model__bpe_encode(const model__vocab *v, const char *text, size_t len, int32_t *out)
{
    return encode(v, text, len, out, 0);
}

long model__bpe_encode_naive(const model__vocab *v, const char *text, size_t len, int32_t *out)
{
    return encode(v, text, len, out, 1);
}
