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
    int32_t *rank, *res; /* per symbol: its pair with the next one (INT32_MAX: no merge) */
    size_t cap;          /* bytes of enc; s, rank and res are sized from it */
    /* Long words: candidates chained in buckets by rank, the ranks with a candidate in a heap. */
    int32_t *head;  /* rank -> first node, -1 (v->merges_mask + 1 of them) */
    int32_t *rheap; /* min-heap of ranks */
    size_t nrh;
    struct node {
        int32_t left, next;
    } * pool;
    size_t npool, pool_cap;
    int32_t *lefts; /* one bucket's lefts, sorted */
    size_t lefts_cap;
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

/* A short word (most of them) merges without the heap: the rank of each symbol's pair with its
 * next neighbour is kept beside it, and each step scans them for the lowest (leftmost on ties),
 * which for a few symbols costs less than heap upkeep. Same order as the heap, so same ids. */
#define SHORT_WORD 24

static void pair_rank(work *w, int32_t i, int32_t *rank, int32_t *res)
{
    int32_t j = w->s[i].next;
    const model__merge *m = NULL;
    if (j >= 0 && w->s[i].id >= 0 && w->s[j].id >= 0)
        m = model__vocab_merge(w->v, w->s[i].id, w->s[j].id);
    rank[i] = m ? m->rank : INT32_MAX;
    res[i] = m ? m->result : -1;
}

static void short_word(work *w, int32_t ns)
{
    int32_t *rank = w->rank, *res = w->res;
    for (int32_t i = 0; i < ns; i++)
        pair_rank(w, i, rank, res);
    for (;;) {
        int32_t best = -1, br = INT32_MAX;
        for (int32_t i = 0; i >= 0; i = w->s[i].next)
            if (rank[i] < br) {
                br = rank[i];
                best = i;
            }
        if (best < 0)
            break;
        model__sym *l = &w->s[best], *r = &w->s[l->next];
        l->len += r->len;
        l->id = res[best];
        r->len = 0;
        l->next = r->next;
        if (r->next >= 0)
            w->s[r->next].prev = best;
        pair_rank(w, best, rank, res);
        if (l->prev >= 0)
            pair_rank(w, l->prev, rank, res);
    }
    for (int32_t i = 0; i >= 0; i = w->s[i].next)
        emit_sym(w, &w->s[i]);
}

/* A long word (a line without spaces can be a megabyte) merges rank by rank: every candidate
 * pair sits in the bucket of its rule's rank, and a heap holds the ranks whose bucket is not
 * empty. The lowest rank's bucket is taken whole and applied leftmost first. Applying rule r
 * never makes a new pair of rule r (the merged token is neither of r's halves), so the bucket
 * is complete when taken; a new pair of a lower rank (a vocabulary whose merges are not in
 * training order) puts the rest of the bucket back first. So the order is the heap's (rank,
 * then leftmost), with the heap of ranks small and the symbols visited left to right within a
 * rank, where one heap entry per pair made the 1 MB word cache-miss bound. A candidate is
 * stale when its left symbol's pair has another rank by now. */
static int rheap_push(work *w, int32_t r)
{
    size_t i = w->nrh++;
    while (i > 0 && w->rheap[(i - 1) / 2] > r) {
        w->rheap[i] = w->rheap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    w->rheap[i] = r;
    return 0;
}

static int32_t rheap_pop(work *w)
{
    int32_t top = w->rheap[0], last = w->rheap[--w->nrh];
    size_t i = 0, n = w->nrh;
    for (;;) {
        size_t l = 2 * i + 1, b = i;
        int32_t bv = last;
        if (l < n && w->rheap[l] < bv)
            bv = w->rheap[b = l];
        if (l + 1 < n && w->rheap[l + 1] < bv)
            b = l + 1;
        if (b == i)
            break;
        w->rheap[i] = w->rheap[b];
        i = b;
    }
    if (n > 0)
        w->rheap[i] = last;
    return top;
}

static int bucket_push(work *w, int32_t left)
{
    int32_t r = w->rank[left];
    if (r == INT32_MAX)
        return 0;
    if (w->npool == w->pool_cap) {
        size_t cap = w->pool_cap ? w->pool_cap * 2 : 4096;
        struct node *p = realloc(w->pool, cap * sizeof *p);
        if (!p)
            return -1;
        w->pool = p;
        w->pool_cap = cap;
    }
    if (w->head[r] < 0)
        rheap_push(w, r);
    w->pool[w->npool] = (struct node){left, w->head[r]};
    w->head[r] = (int32_t)w->npool++;
    return 0;
}

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

static int long_word(work *w, int32_t ns)
{
    size_t nr = w->v->merges_mask + 1;
    if (!w->head) {
        w->head = malloc(nr * sizeof *w->head);
        w->rheap = malloc(nr * sizeof *w->rheap);
        if (!w->head || !w->rheap)
            return -1;
        memset(w->head, 0xFF, nr * sizeof *w->head);
    }
    w->npool = 0;
    w->nrh = 0;
    for (int32_t i = 0; i < ns; i++) {
        pair_rank(w, i, w->rank, w->res);
        if (bucket_push(w, i))
            return -1;
    }
    while (w->nrh > 0) {
        int32_t r = rheap_pop(w);
        size_t n = 0;
        int sorted = 1;
        for (int32_t k = w->head[r]; k >= 0; k = w->pool[k].next) {
            if (n == w->lefts_cap) {
                size_t cap = w->lefts_cap ? w->lefts_cap * 2 : 1024;
                int32_t *l = realloc(w->lefts, cap * sizeof *l);
                if (!l)
                    return -1;
                w->lefts = l;
                w->lefts_cap = cap;
            }
            w->lefts[n++] = w->pool[k].left;
        }
        w->head[r] = -1;
        /* Chained newest first: reversed, the first pushes (left to right) come out sorted. */
        for (size_t a = 0, b = n ? n - 1 : 0; a < b; a++, b--) {
            int32_t t = w->lefts[a];
            w->lefts[a] = w->lefts[b];
            w->lefts[b] = t;
        }
        for (size_t k = 1; k < n && sorted; k++)
            sorted = w->lefts[k - 1] <= w->lefts[k];
        if (!sorted)
            qsort(w->lefts, n, sizeof *w->lefts, cmp_i32);
        for (size_t k = 0; k < n; k++) {
            int32_t best = w->lefts[k];
            if (w->rank[best] != r || (k > 0 && w->lefts[k - 1] == best))
                continue;
            model__sym *l = &w->s[best], *rs = &w->s[l->next];
            l->len += rs->len;
            l->id = w->res[best];
            rs->len = 0;
            w->rank[l->next] = INT32_MAX; /* absorbed: its pair is gone */
            l->next = rs->next;
            if (rs->next >= 0)
                w->s[rs->next].prev = best;
            pair_rank(w, best, w->rank, w->res);
            if (bucket_push(w, best))
                return -1;
            int32_t lo = w->rank[best];
            if (l->prev >= 0) {
                pair_rank(w, l->prev, w->rank, w->res);
                if (bucket_push(w, l->prev))
                    return -1;
                lo = w->rank[l->prev] < lo ? w->rank[l->prev] : lo;
            }
            if (lo < r) { /* a lower rank appeared: it goes first, the rest waits */
                for (size_t j = k + 1; j < n; j++)
                    if (w->rank[w->lefts[j]] == r && bucket_push(w, w->lefts[j]))
                        return -1;
                break;
            }
        }
    }
    for (int32_t i = 0; i >= 0; i = w->s[i].next)
        emit_sym(w, &w->s[i]);
    return 0;
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
        int32_t *rank = s ? realloc(w->rank, cap * sizeof *rank) : NULL;
        if (rank)
            w->rank = rank;
        int32_t *res = rank ? realloc(w->res, cap * sizeof *res) : NULL;
        if (!res)
            return -1;
        w->res = res;
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
    if (ns <= SHORT_WORD || w->naive) {
        short_word(w, ns);
        return 0;
    }
    return long_word(w, ns);
}

static long encode(const model__vocab *v, const char *text, size_t len, int32_t *out, int naive)
{
    work w = {.v = v, .a = get_alphabet(), .out = out, .naive = naive};
    int rc = model__pretok_split(v->pre, text, len, word, &w);
    free(w.enc);
    free(w.s);
    free(w.rank);
    free(w.res);
    free(w.head);
    free(w.rheap);
    free(w.pool);
    free(w.lefts);
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
