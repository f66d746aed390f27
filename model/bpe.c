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
 * a candidate costs one hash probe; a word of n characters takes O(n log n).
 */
#include "model.h"
#include "vocab.h"

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
    model__cand *h;
    size_t cap; /* bytes of enc; s and h are sized from it */
    int32_t *out;
    long n;
} work;

static void consider(work *w, int32_t a, int32_t b, size_t *nh)
{
    if (a < 0 || b < 0 || w->s[a].id < 0 || w->s[b].id < 0)
        return;
    const model__merge *m = model__vocab_merge(w->v, w->s[a].id, w->s[b].id);
    if (!m)
        return;
    model__heap_push(w->h, nh,
                     (model__cand){(double)m->rank, a, b, w->s[a].ver, w->s[b].ver, m->result});
}

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
        model__cand *h = s ? realloc(w->h, cap * 3 * sizeof *h) : NULL;
        if (!h)
            return -1;
        w->h = h;
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
    size_t nh = 0;
    for (int32_t i = 0; i + 1 < ns; i++)
        consider(w, i, i + 1, &nh);
    while (nh > 0) {
        model__cand c = model__heap_pop(w->h, &nh);
        model__sym *l = &w->s[c.left], *r = &w->s[c.right];
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
            w->s[r->next].prev = c.left;
        consider(w, l->prev, c.left, &nh);
        consider(w, c.left, l->next, &nh);
    }
    for (int32_t i = 0; i >= 0; i = w->s[i].next)
        emit_sym(w, &w->s[i]);
    return 0;
}

long model__bpe_encode(const model__vocab *v, const char *text, size_t len, int32_t *out)
{
    work w = {.v = v, .a = get_alphabet(), .out = out};
    int rc = model__pretok_split(v->pre, text, len, word, &w);
    free(w.enc);
    free(w.s);
    free(w.h);
    return rc ? -1 : w.n;
}
