/* vocab.h — a GGUF vocabulary (SentencePiece or byte-level BPE), private to model/ (the tests
 * include it).
 *
 * model__vocab_load() reads `tokenizer.ggml.*` from a parsed GGUF file into a model__vocab that
 * owns copies of everything (the file may be unmapped afterwards): the token texts, scores and
 * types, the merges, the special ids and the pre-tokenizer. The encoders are spm.c (model
 * "llama") and bpe.c with pretok.c (model "gpt2"); vocab.c holds the loader, the special-token
 * split and the merge loop shared by both, and decoding. Everything follows llama.cpp's
 * llama-vocab.cpp, whose test files (HF tokenizers' ids) the tests check byte for byte.
 */
#ifndef PREFIXD_MODEL_VOCAB_H
#define PREFIXD_MODEL_VOCAB_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"

typedef struct model__gguf model__gguf;

/* Vocabulary kinds (tokenizer.ggml.model). */
enum { MODEL__VOCAB_SPM = 1, MODEL__VOCAB_BPE = 2 };

/* Token attributes, from tokenizer.ggml.token_type (GGUF's ids: 1 normal, 2 unknown, 3 control,
 * 4 user defined, 5 unused, 6 byte; anything else is undefined). */
enum {
    MODEL__TOK_NORMAL = 1,
    MODEL__TOK_UNKNOWN = 2,
    MODEL__TOK_CONTROL = 3,
    MODEL__TOK_USER = 4,
    MODEL__TOK_UNUSED = 5,
    MODEL__TOK_BYTE = 6,
    MODEL__TOK_UNDEFINED = 0,
};

typedef struct model__pretok model__pretok; /* pretok.c: compiled regular expressions */

/* One merge rule of a BPE vocabulary, found by the ids of its two halves. */
typedef struct model__merge {
    int32_t a, b;   /* the halves' ids; a < 0: an empty slot */
    int32_t rank;   /* position in tokenizer.ggml.merges: lower merges first */
    int32_t result; /* the id of a + b's text, or -1 when that text is no token */
} model__merge;

typedef struct model__vocab {
    int kind; /* MODEL__VOCAB_* */
    int n;    /* tokens */
    const char **text;
    uint32_t *len;
    float *score;    /* SPM: the merge priority of each token */
    int32_t *srank;  /* SPM: each token's score as a rank, 0 the highest (equal scores, equal
                        ranks), for the merge loop's integer priorities */
    int32_t n_srank; /* SPM: distinct scores */
    uint8_t *type;   /* MODEL__TOK_* */
    uint8_t *eog;    /* 1: this id ends generation */
    char *blob;      /* storage of the texts and the decoded pieces */
    int32_t *map;    /* open-addressed text -> id, -1 empty */
    size_t map_mask;
    int32_t bos, eos, eot, eom, unk, pad; /* -1: none */
    int add_bos, add_eos, add_space_prefix;
    int32_t *special; /* control, user-defined and unknown ids, longest text first */
    int n_special;
    /* Finding them: special[] indices chained by first byte (one-byte texts) and by first two
     * bytes (the others), -1 ending a chain. */
    int32_t spec_head1[256];
    int32_t *spec_head2;  /* (65536) */
    int32_t *spec_next;   /* (n_special) */
    int spm_words;        /* SPM: no token holds "▁" after another character, so a "▁" that
                             follows a character starts a word no merge crosses */
    int32_t byte_id[256]; /* SPM: the id of "<0xHH>", -1 if absent */
    /* BPE: */
    model__merge *merges; /* open-addressed on (a, b) */
    size_t merges_mask;
    int32_t char_id[256]; /* the id of byte b's byte-level character, -1 if absent */
    model__pretok *pre;
    int ignore_merges; /* a word that is a token is taken whole (llama-bpe, tekken) */
    char pre_name[48];
    /* Decoding: each id's text as it is printed (special tokens empty). */
    const char **piece;
    uint32_t *piece_len;
    uint32_t max_piece;
    char *chat_template; /* tokenizer.chat_template, NUL-terminated, or NULL */
    size_t chat_template_len;
} model__vocab;

/* Reads the vocabulary of a parsed GGUF file (path names it in messages). vocab: the model's
 * vocabulary size the token list must match, 0 for any. Refuses by name: a missing or
 * inconsistent array (lengths that differ, a score or type array of the wrong element type), a
 * duplicate token text, a special id out of range, an unknown tokenizer.ggml.model or
 * tokenizer.ggml.pre, a merge that is not "left right". Returns 0 or a MODEL_* code with msg. */
int model__vocab_load(const model__gguf *g, const char *path, int vocab, model__vocab **out,
                      char *msg, size_t msglen);
void model__vocab_free(model__vocab *v);

/* The id of a text, or -1. */
int32_t model__vocab_find(const model__vocab *v, const char *s, size_t n);

/* Encodes text (flags: model.h's MODEL_ENC_*) into out (cap ids; model_encode_cap(len) always
 * suffices). Returns 0, MODEL_ERANGE (cap too small) or MODEL_ENOMEM. */
int model__vocab_encode(const model__vocab *v, const char *text, size_t len, unsigned flags,
                        int32_t *out, size_t cap, size_t *n_out);

/* The encoders of one fragment of raw text (no special tokens in it), appending to out, which
 * has room for at least len + 1 more ids. Return the ids written, or -1 (out of memory).
 * spm.c: prefix: prepend the SentencePiece space. */
long model__spm_encode(const model__vocab *v, const char *s, size_t len, int prefix, int32_t *out);
long model__bpe_encode(const model__vocab *v, const char *s, size_t len, int32_t *out);
/* The same with every word merged by the plain quadratic scan (lowest rank, leftmost first)
 * that short words use: the references the tests hold the long-word path to. */
long model__bpe_encode_naive(const model__vocab *v, const char *s, size_t len, int32_t *out);
long model__spm_encode_naive(const model__vocab *v, const char *s, size_t len, int prefix,
                             int32_t *out);

/* bpe.c: the byte-level alphabet (GPT-2's bytes_to_unicode): the UTF-8 of byte b's character
 * (1 or 2 bytes) in enc[b], and the inverse for a code point below 324 (-1: no byte). */
const char *model__bpe_byte_char(unsigned b, size_t *len);
int model__bpe_char_byte(uint32_t cp);

/* pretok.c: the pre-tokenizer of a tokenizer.ggml.pre name, compiled; NULL with *known 0 for
 * an unknown name, NULL with *known 1 when out of memory or a regular expression does not
 * compile (msg says which). ignore_merges, add_bos: that pre-tokenizer's defaults. */
model__pretok *model__pretok_new(const char *name, int *known, int *ignore_merges, int *add_bos,
                                 char *msg, size_t msglen);
void model__pretok_free(model__pretok *p);

/* Splits s into words as the expressions do one after another (every match and every gap
 * between matches becomes a word), calling fn for each word in order. Returns 0, or -1 when
 * out of memory or fn returned nonzero. */
int model__pretok_split(const model__pretok *p, const char *s, size_t len,
                        int (*fn)(void *arg, const char *w, size_t n), void *arg);

/* Names the pre-tokenizers pretok.c knows, comma-separated (for messages and the README). */
const char *model__pretok_names(void);

/* ---- The merge queue both encoders use -------------------------------------------------------
 * A binary heap of candidate merges ordered by key (SentencePiece: minus the merged token's
 * score; BPE: the merge's rank), then by the left symbol's index: the best merge, leftmost on
 * ties, as the references pick. A candidate made stale by an earlier merge is recognised by its
 * symbols' versions. */
typedef struct model__cand {
    double key;
    int32_t left, right;
    uint32_t lver, rver;
    int32_t id; /* the merged token, or -1 */
} model__cand;

static inline int model__cand_before(const model__cand *a, const model__cand *b)
{
    if (a->key != b->key)
        return a->key < b->key;
    return a->left < b->left;
}

static inline void model__heap_push(model__cand *h, size_t *n, model__cand c)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!model__cand_before(&c, &h[parent]))
            break;
        h[i] = h[parent];
        i = parent;
    }
    h[i] = c;
}

static inline model__cand model__heap_pop(model__cand *h, size_t *n)
{
    model__cand top = h[0], last = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, best = i;
        const model__cand *bv = &last;
        if (l < *n && model__cand_before(&h[l], bv)) {
            best = l;
            bv = &h[l];
        }
        if (r < *n && model__cand_before(&h[r], bv))
            best = r;
        if (best == i)
            break;
        h[i] = h[best];
        i = best;
    }
    if (*n > 0)
        h[i] = last;
    return top;
}

/* A symbol of the text being merged: bytes [off, off + len) of the subject. */
typedef struct model__sym {
    size_t off;
    uint32_t len;
    int32_t id; /* its token, or -1 */
    int32_t prev, next;
    uint32_t ver;
} model__sym;

/* The byte length of the UTF-8 sequence that lead byte c starts (1 for a stray continuation
 * byte), as llama.cpp's unicode_len_utf8 reads it. */
static inline size_t model__utf8_len(unsigned char c)
{
    static const unsigned char lens[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return lens[c >> 4];
}

const model__merge *model__vocab_merge(const model__vocab *v, int32_t a, int32_t b);

/* ---- The merge loop both encoders use ---------------------------------------------------------
 * A word's symbols (a chain through next) merge pair by pair: the pair of lowest rank first
 * (BPE: the merge rule's position; SentencePiece: the merged token's score as a rank), leftmost
 * on ties, until no pair merges, exactly as the references' priority queues order them. The
 * encoder says what a pair is through pair(): the rank of symbol i with its next one
 * (INT32_MAX: they do not merge) and the token they make. Merging adds the right symbol's
 * bytes to the left one (symbols are contiguous) and unlinks the right. */
typedef struct model__merger {
    model__sym *s;
    int32_t *rank, *res; /* per symbol, room for as many as s: its pair's rank and token */
    void (*pair)(void *arg, const model__sym *s, int32_t i, int32_t *rank, int32_t *res);
    void *arg;
    size_t nranks; /* ranks are below this */
    /* Long words (model__merge_buckets): owned, kept across words, model__merger_free(). */
    int32_t *head, *rheap;
    size_t nrh;
    struct model__mnode {
        int32_t left, next;
    } * pool;
    size_t npool, pool_cap;
    int32_t *lefts;
    size_t lefts_cap;
} model__merger;

/* For a few symbols: each step scans the pairs' ranks for the lowest. O(n^2). */
void model__merge_scan(model__merger *m, int32_t first);
/* For many: rank by rank from buckets, O(n log n) with the symbols visited left to right.
 * Returns 0, or -1 when out of memory. */
int model__merge_buckets(model__merger *m, int32_t first);
void model__merger_free(model__merger *m);

#endif
