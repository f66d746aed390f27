/* tokenizer.c — the llama2.c tokenizer: loading, encoding by scored merges, decoding pieces.
 *
 * Encoding gives exactly the reference's ids, but in O(n log n): the reference rescans every
 * adjacent pair after each merge (quadratic in the prompt length); here the symbols form a linked
 * list and candidate merges wait in a binary heap ordered by (score descending, position
 * ascending), which is the reference's choice at every step (the best score, leftmost on ties).
 * A candidate made stale by an earlier merge is recognised by its symbols' versions and skipped.
 */
#include "gguf.h"
#include "base.h"
#include "model.h"
#include "vocab.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

struct model_tokenizer {
    model__vocab *v; /* a GGUF vocabulary (vocab.c), which every function below defers to; NULL
                        for a llama2.c tokenizer, which the fields below describe */
    int vocab;
    int max_len;            /* max_token_length from the file */
    float *scores;          /* (vocab) */
    char **pieces;          /* (vocab) NUL-terminated, lengths in lens */
    int *lens;              /* (vocab) */
    char *blob;             /* storage of every piece */
    int *map;               /* open-addressed piece -> id, -1 empty */
    size_t map_mask;        /* map size - 1 */
    int byte_id[256];       /* id of "<0xHH>" for each byte, -1 if absent */
    unsigned char raw[512]; /* byte b as a one-byte string at raw[2b] */
    int ascii_id[128];      /* the id of each one-byte ASCII piece, -1 if none */
    int32_t *srank;         /* (vocab) each score as a dense rank, 0 the highest */
    int32_t n_srank;
    int words; /* no piece holds a space right after another character: a space that follows
                  a character starts a word no merge crosses */
};

static size_t hash_bytes(const void *p, size_t n)
{
    return (size_t)XXH3_64bits(p, n);
}

static int lookup(const model_tokenizer *t, const char *s, size_t n)
{
    size_t i = hash_bytes(s, n) & t->map_mask;
    for (;;) {
        int id = t->map[i];
        if (id < 0)
            return -1;
        if ((size_t)t->lens[id] == n && memcmp(t->pieces[id], s, n) == 0)
            return id;
        i = (i + 1) & t->map_mask;
    }
}

static int score_cmp(const void *pa, const void *pb, void *arg)
{
    const float *sc = arg;
    float a = sc[*(const int32_t *)pa], b = sc[*(const int32_t *)pb];
    return (a < b) - (a > b);
}

static int build_map(model_tokenizer *t)
{
    size_t cap = 16;
    while (cap < (size_t)t->vocab * 2)
        cap <<= 1;
    t->map = malloc(cap * sizeof(int));
    if (!t->map)
        return -1;
    memset(t->map, -1, cap * sizeof(int));
    t->map_mask = cap - 1;
    for (int id = 0; id < t->vocab; id++) {
        if (lookup(t, t->pieces[id], (size_t)t->lens[id]) >= 0)
            continue; /* a duplicate piece: the lowest id wins */
        size_t i = hash_bytes(t->pieces[id], (size_t)t->lens[id]) & t->map_mask;
        while (t->map[i] >= 0)
            i = (i + 1) & t->map_mask;
        t->map[i] = id;
    }
    /* Scores as ranks for vocab.c's merge loop, and whether words can merge apart. */
    int32_t *ord = malloc((size_t)t->vocab * sizeof *ord);
    t->srank = malloc((size_t)t->vocab * sizeof *t->srank);
    if (!ord || !t->srank) {
        free(ord);
        return -1;
    }
    for (int i = 0; i < t->vocab; i++)
        ord[i] = i;
    qsort_r(ord, (size_t)t->vocab, sizeof *ord, score_cmp, t->scores);
    int32_t r = 0;
    for (int i = 0; i < t->vocab; i++) {
        if (i > 0 && t->scores[ord[i]] != t->scores[ord[i - 1]])
            r++;
        t->srank[ord[i]] = r;
    }
    t->n_srank = r + 1;
    free(ord);
    t->words = 1;
    for (int id = 0; id < t->vocab && t->words; id++)
        for (int j = 1; j < t->lens[id] && t->words; j++)
            if (t->pieces[id][j] == ' ' && t->pieces[id][j - 1] != ' ')
                t->words = 0;
    for (int c = 0; c < 128; c++) {
        char ch = (char)c;
        t->ascii_id[c] = lookup(t, &ch, 1);
    }
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        t->byte_id[b] = lookup(t, name, 6);
        t->raw[2 * b] = (unsigned char)b;
        t->raw[2 * b + 1] = 0;
    }
    return 0;
}

int model_tokenizer_load(const char *path, int vocab_size, model_tokenizer **out, char *msg,
                         size_t msglen)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return base_fail(msg, msglen, MODEL_EIO, "tokenizer '%s': %s", path, strerror(errno));
    if (fseek(f, 0, SEEK_END) != 0) {
        fclose(f);
        return base_fail(msg, msglen, MODEL_EIO, "tokenizer '%s': cannot seek (not a file?)", path);
    }
    long size = ftell(f);
    rewind(f);
    if (size < 0) {
        fclose(f);
        return base_fail(msg, msglen, MODEL_EIO, "tokenizer '%s': not a regular file", path);
    }
    unsigned char *buf = malloc(size ? (size_t)size : 1);
    if (!buf || fread(buf, 1, (size_t)size, f) != (size_t)size) {
        fclose(f);
        free(buf);
        return base_fail(msg, msglen, MODEL_EIO, "tokenizer '%s': cannot read", path);
    }
    fclose(f);
    char name[1100];
    snprintf(name, sizeof name, "tokenizer '%s'", path);
    int rc = model__tokenizer_parse(buf, (size_t)size, name, vocab_size, out, msg, msglen);
    free(buf);
    return rc;
}

/* A tokenizer around a GGUF vocabulary. */
static int from_gguf(const model__gguf *g, const char *path, int vocab, model_tokenizer **out,
                     char *msg, size_t msglen)
{
    model_tokenizer *t = calloc(1, sizeof *t);
    if (!t)
        return base_fail(msg, msglen, MODEL_ENOMEM, "model file '%s': out of memory", path);
    int rc = model__vocab_load(g, path, vocab, &t->v, msg, msglen);
    if (rc) {
        free(t);
        return rc;
    }
    t->vocab = t->v->n;
    *out = t;
    return 0;
}

int model_tokenizer_from_model(const model *m, model_tokenizer **out, char *msg, size_t msglen)
{
    *out = NULL;
    const model__gguf *g = model__get_gguf(m);
    if (!g)
        return base_fail(
            msg, msglen, MODEL_EINVAL,
            "model file '%s': a llama2.c checkpoint holds no vocabulary (give a tokenizer)",
            model__get_path(m));
    return from_gguf(g, model__get_path(m), model_get_config(m)->vocab_size, out, msg, msglen);
}

int model_tokenizer_open(const char *path, model_tokenizer **out, char *msg, size_t msglen)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return base_fail(msg, msglen, MODEL_EIO, "tokenizer '%s': %s", path, strerror(errno));
    struct stat st;
    char magic[4] = {0};
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return base_fail(msg, msglen, MODEL_EIO, "tokenizer '%s': not a regular file", path);
    }
    if (st.st_size < 4 || pread(fd, magic, 4, 0) != 4 || memcmp(magic, "GGUF", 4) != 0) {
        close(fd);
        return model_tokenizer_load(path, 0, out, msg, msglen); /* llama2.c's format */
    }
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED)
        return base_fail(msg, msglen, MODEL_EIO, "tokenizer '%s': cannot map: %s", path,
                         strerror(errno));
    model__gguf g;
    int rc = model__gguf_parse(map, (size_t)st.st_size, path, &g, msg, msglen);
    if (rc == 0) {
        rc = from_gguf(&g, path, 0, out, msg, msglen);
        model__gguf_free(&g);
    }
    munmap(map, (size_t)st.st_size);
    return rc;
}

/* Parses a llama2.c tokenizer held in buf; name ("tokenizer 'x.bin'") starts every message. */
int model__tokenizer_parse(const unsigned char *buf, size_t buf_len, const char *name,
                           int vocab_size, model_tokenizer **out, char *msg, size_t msglen)
{
    long size = (long)buf_len;
    int rc = 0;
    model_tokenizer *t = calloc(1, sizeof *t);
    size_t off = 4;
    int n = 0;
    *out = NULL;
    if (!t) {
        rc = base_fail(msg, msglen, MODEL_ENOMEM, "%s: out of memory", name);
        goto out;
    }
    if (size < 4) {
        rc = base_fail(msg, msglen, MODEL_ETRUNC, "%s: truncated: %ld bytes", name, size);
        goto out;
    }
    int32_t max_len;
    memcpy(&max_len, buf, 4);
    if (max_len <= 0 || max_len > 65536) {
        rc = base_fail(msg, msglen, MODEL_EFORMAT, "%s: max_token_length %d is impossible", name,
                       max_len);
        goto out;
    }
    /* First pass: count tokens and validate every length. */
    size_t text = 0;
    while (off < (size_t)size) {
        int32_t len;
        if ((size_t)size - off < 8) {
            rc = base_fail(msg, msglen, MODEL_ETRUNC, "%s: truncated inside token %d's header",
                           name, n);
            goto out;
        }
        memcpy(&len, buf + off + 4, 4);
        if (len < 0 || len > max_len) {
            rc = base_fail(msg, msglen, MODEL_EFORMAT,
                           "%s: token %d has length %d (max_token_length %d)", name, n, len,
                           max_len);
            goto out;
        }
        if ((size_t)size - off - 8 < (size_t)len) {
            rc = base_fail(msg, msglen, MODEL_ETRUNC,
                           "%s: truncated inside token %d (%d bytes announced)", name, n, len);
            goto out;
        }
        off += 8 + (size_t)len;
        text += (size_t)len + 1;
        n++;
    }
    if (n < 3) {
        rc = base_fail(msg, msglen, MODEL_EFORMAT,
                       "%s: holds %d tokens, needs at least <unk>, <s>, </s>", name, n);
        goto out;
    }
    if (vocab_size > 0 && n != vocab_size) {
        rc =
            base_fail(msg, msglen, MODEL_EVOCAB,
                      "%s: holds %d tokens, the model has a vocabulary of %d", name, n, vocab_size);
        goto out;
    }
    t->vocab = n;
    t->max_len = max_len;
    t->scores = malloc((size_t)n * sizeof(float));
    t->pieces = malloc((size_t)n * sizeof(char *));
    t->lens = malloc((size_t)n * sizeof(int));
    t->blob = malloc(text);
    if (!t->scores || !t->pieces || !t->lens || !t->blob) {
        rc = base_fail(msg, msglen, MODEL_ENOMEM, "%s: out of memory", name);
        goto out;
    }
    off = 4;
    char *p = t->blob;
    for (int i = 0; i < n; i++) {
        int32_t len;
        memcpy(&t->scores[i], buf + off, 4);
        memcpy(&len, buf + off + 4, 4);
        memcpy(p, buf + off + 8, (size_t)len);
        p[len] = 0;
        t->pieces[i] = p;
        t->lens[i] = len;
        p += len + 1;
        off += 8 + (size_t)len;
    }
    if (build_map(t) != 0)
        rc = base_fail(msg, msglen, MODEL_ENOMEM, "%s: out of memory", name);
out:
    if (rc) {
        model_tokenizer_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

void model_tokenizer_free(model_tokenizer *t)
{
    if (!t)
        return;
    model__vocab_free(t->v);
    free(t->scores);
    free(t->pieces);
    free(t->lens);
    free(t->blob);
    free(t->map);
    free(t->srank);
    free(t);
}

int model_tokenizer_vocab(const model_tokenizer *t)
{
    return t->vocab;
}

int model_token_is_eog(const model_tokenizer *t, int32_t id)
{
    if (t->v)
        return id >= 0 && id < t->v->n && t->v->eog[id];
    /* llama2.c: BOS or EOS ends the text (the reference stops on BOS). */
    return id == MODEL_TOK_BOS || id == MODEL_TOK_EOS;
}

int model_token_is_special(const model_tokenizer *t, int32_t id)
{
    if (t->v)
        return id >= 0 && id < t->v->n &&
               (t->v->type[id] == MODEL__TOK_CONTROL || t->v->type[id] == MODEL__TOK_USER ||
                t->v->type[id] == MODEL__TOK_UNKNOWN);
    return id == MODEL_TOK_BOS || id == MODEL_TOK_EOS;
}

int32_t model_token_bos(const model_tokenizer *t)
{
    return t->v ? t->v->bos : MODEL_TOK_BOS;
}

int32_t model_token_eos(const model_tokenizer *t)
{
    return t->v ? t->v->eos : MODEL_TOK_EOS;
}

const char *model_token_text(const model_tokenizer *t, int32_t id, size_t *len)
{
    if (id < 0 || id >= t->vocab) {
        *len = 0;
        return "";
    }
    if (t->v) {
        *len = t->v->len[id];
        return t->v->text[id];
    }
    *len = (size_t)t->lens[id];
    return t->pieces[id];
}

const char *model_tokenizer_kind(const model_tokenizer *t, char *buf, size_t cap)
{
    if (!t->v)
        snprintf(buf, cap, "llama2.c (SentencePiece BPE, %d tokens)", t->vocab);
    else if (t->v->kind == MODEL__VOCAB_SPM)
        snprintf(buf, cap, "llama (SentencePiece BPE, %d tokens)", t->vocab);
    else
        snprintf(buf, cap, "gpt2 (byte-level BPE, %d tokens, pre-tokenizer '%s')", t->vocab,
                 t->v->pre_name);
    return buf;
}

const char *model_tokenizer_chat_template(const model_tokenizer *t)
{
    return t->v ? t->v->chat_template : NULL;
}

/* ---- Streaming detokenization --------------------------------------------------------------- */

int model_detok_init(model_detok *d, const model_tokenizer *t, int32_t prev)
{
    size_t max = 0;
    if (t->v) {
        max = t->v->max_piece;
    } else {
        for (int i = 0; i < t->vocab; i++)
            max = (size_t)t->lens[i] > max ? (size_t)t->lens[i] : max;
    }
    memset(d, 0, sizeof *d);
    d->prev = prev;
    d->cap = max + 8;
    d->buf = malloc(d->cap);
    return d->buf ? 0 : MODEL_ENOMEM;
}

void model_detok_free(model_detok *d)
{
    free(d->buf);
    d->buf = NULL;
}

/* How many of the last bytes of p (n bytes) start a UTF-8 sequence that more bytes could
 * still complete: 0 when p ends on a boundary or with bytes no continuation could mend. */
static size_t incomplete_tail(const unsigned char *p, size_t n)
{
    for (size_t k = 1; k <= 3 && k <= n; k++) {
        unsigned char c = p[n - k];
        if ((c & 0xC0) == 0x80)
            continue; /* a continuation byte: look further back for its lead */
        size_t want = c >= 0xF0 && c <= 0xF4 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 ? 2 : 1;
        if (c >= 0xF5)
            want = 1;
        return want > k ? k : 0;
    }
    return 0;
}

const char *model_detok_push(const model_tokenizer *t, model_detok *d, int32_t tok, int last,
                             size_t *len)
{
    size_t pl;
    const char *p = model_decode_piece(t, d->prev, tok, &pl);
    d->prev = tok;
    memcpy(d->buf, d->tail, d->held);
    memcpy(d->buf + d->held, p, pl);
    size_t n = d->held + pl;
    size_t keep = last ? 0 : incomplete_tail((const unsigned char *)d->buf, n);
    memcpy(d->tail, d->buf + n - keep, keep);
    d->held = keep;
    *len = n - keep;
    return d->buf;
}

const char *model_detok_flush(model_detok *d, size_t *len)
{
    memcpy(d->buf, d->tail, d->held);
    *len = d->held;
    d->held = 0;
    return d->buf;
}

/* ---- Encoding ------------------------------------------------------------------------------- */

/* Merges go through vocab.c's loop (model__merger) with the scores as ranks: the highest score
 * first, then the leftmost pair, as llama2.c merges. A pair merges when the concatenation of
 * its two pieces is a token. */
typedef struct l2_arg {
    const model_tokenizer *t;
    char *buf; /* 2 * max_len + 8 bytes */
} l2_arg;

static void l2_pair(void *arg, const model__sym *s, int32_t i, int32_t *rank, int32_t *res)
{
    const l2_arg *A = arg;
    const model_tokenizer *t = A->t;
    int32_t j = s[i].next, id = -1;
    if (j >= 0) {
        size_t la = (size_t)t->lens[s[i].id], lb = (size_t)t->lens[s[j].id];
        if (la + lb <= 2 * (size_t)t->max_len + 8) {
            memcpy(A->buf, t->pieces[s[i].id], la);
            memcpy(A->buf + la, t->pieces[s[j].id], lb);
            id = lookup(t, A->buf, la + lb);
        }
    }
    rank[i] = id >= 0 ? t->srank[id] : INT32_MAX;
    res[i] = id;
}

/* The symbol buffer of one word, and its merger arrays. */
typedef struct l2_buf {
    model__sym *s;
    int32_t *rank, *res;
    size_t cap;
} l2_buf;

static int l2_room(l2_buf *B, model__merger *m, size_t cap)
{
    model__sym *s = realloc(B->s, cap * sizeof *s);
    if (s)
        B->s = s;
    int32_t *r = s ? realloc(B->rank, cap * sizeof *r) : NULL;
    if (r)
        B->rank = r;
    int32_t *q = r ? realloc(B->res, cap * sizeof *q) : NULL;
    if (!q)
        return MODEL_ENOMEM;
    B->res = q;
    B->cap = cap;
    m->s = B->s;
    m->rank = B->rank;
    m->res = B->res;
    return 0;
}

/* Merges the ns symbols in B and appends their ids (counted past cap). */
static int l2_word(l2_buf *B, model__merger *m, int32_t ns, int32_t *out, size_t cap, size_t *n)
{
    for (int32_t i = 0; i < ns; i++) {
        B->s[i].prev = i - 1;
        B->s[i].next = i + 1 < ns ? i + 1 : -1;
    }
    if (ns <= 24)
        model__merge_scan(m, 0);
    else if (model__merge_buckets(m, 0))
        return MODEL_ENOMEM;
    for (int32_t i = 0; i >= 0; i = B->s[i].next, (*n)++)
        if (*n < cap)
            out[*n] = B->s[i].id;
    return 0;
}

size_t model_encode_cap(size_t len)
{
    return len > (SIZE_MAX - 8) / 4 ? SIZE_MAX : 4 * len + 8;
}

int model_encode(const model_tokenizer *t, const char *text, size_t len, int bos, int32_t *out,
                 size_t cap, size_t *n_out)
{
    return model_tokenize(t, text, len, bos ? MODEL_ENC_ADD_SPECIAL : 0, out, cap, n_out);
}

static int l2c_encode(const model_tokenizer *t, const char *text, size_t len, int bos, int dummy,
                      int32_t *out, size_t cap, size_t *n_out);

int model_tokenize(const model_tokenizer *t, const char *text, size_t len, unsigned flags,
                   int32_t *out, size_t cap, size_t *n_out)
{
    if (t->v)
        return model__vocab_encode(t->v, text, len, flags, out, cap, n_out);
    return l2c_encode(t, text, len, (flags & MODEL_ENC_ADD_SPECIAL) != 0,
                      !(flags & MODEL_ENC_CONTINUE), out, cap, n_out);
}

/* The llama2.c tokenizer's encoder: BOS first when bos is set; the dummy-prefix space before a
 * non-empty text when dummy is set. */
static int l2c_encode(const model_tokenizer *t, const char *text, size_t len, int bos, int dummy,
                      int32_t *out, size_t cap, size_t *n_out)
{
    *n_out = 0;
    /* Symbols of one word at a time (the whole text when words can merge across spaces), in
     * a buffer grown to the longest word: merged and written out while in cache, rather than
     * 32 bytes of symbol per byte of text allocated up front. */
    l2_buf B = {0};
    char *buf = malloc(2 * (size_t)t->max_len + 8);
    l2_arg A = {t, buf};
    model__merger m = {.pair = l2_pair, .arg = &A, .nranks = (size_t)t->n_srank};
    int rc = buf && l2_room(&B, &m, 64) == 0 ? 0 : MODEL_ENOMEM;
    size_t n = 0;
    if (bos && n++ < cap)
        out[0] = MODEL_TOK_BOS;
    int sp = lookup(t, " ", 1);
    int32_t ns = 0;
    if (rc == 0 && len > 0 && dummy && sp >= 0)
        B.s[ns++] = (model__sym){0, 1, sp, -1, -1, 0};
    /* Code points as the reference reads them: a byte that is not a continuation byte starts a
     * new one, and up to three continuation bytes join it. */
    const unsigned char *u = (const unsigned char *)text;
    for (size_t i = 0; i < len && rc == 0;) {
        size_t j = i + 1;
        while (j < len && (u[j] & 0xC0) == 0x80 && j - i < 4)
            j++;
        int id = j - i == 1 && u[i] < 0x80 ? t->ascii_id[u[i]] : lookup(t, text + i, j - i);
        /* A space after another symbol starts a word no merge crosses (t->words). */
        if (t->words && id == sp && ns > 0 && B.s[ns - 1].id != sp) {
            rc = l2_word(&B, &m, ns, out, cap, &n);
            ns = 0;
        }
        if (rc == 0 && (size_t)ns + (j - i) > B.cap)
            rc = l2_room(&B, &m, 2 * B.cap + (j - i));
        if (rc)
            break;
        if (id >= 0) {
            B.s[ns++] = (model__sym){i, (uint32_t)(j - i), id, -1, -1, 0};
        } else {
            /* Byte fallback: "<0xHH>" is id HH + 3 in every llama2.c vocabulary, where the
             * reference assumes it; a vocabulary without it (a GGUF's may be anything) gets
             * <unk> rather than an id past its end. */
            for (size_t k = i; k < j; k++) {
                int b = t->byte_id[u[k]];
                B.s[ns++] = (model__sym){k, 1, b >= 0 ? b : MODEL_TOK_UNK, -1, -1, 0};
            }
        }
        i = j;
    }
    if (rc == 0 && ns > 0)
        rc = l2_word(&B, &m, ns, out, cap, &n);
    if (rc == 0 && n > cap)
        rc = MODEL_ERANGE;
    m.rank = m.res = NULL; /* B's */
    model__merger_free(&m);
    free(B.s);
    free(B.rank);
    free(B.res);
    free(buf);
    if (rc == 0)
        *n_out = n;
    return rc;
}

/* ---- Decoding ------------------------------------------------------------------------------- */

const char *model_decode_piece(const model_tokenizer *t, int32_t prev, int32_t tok, size_t *len)
{
    if (t->v) {
        const model__vocab *v = t->v;
        if (tok < 0 || tok >= v->n) {
            *len = 0;
            return "";
        }
        const char *p = v->piece[tok];
        size_t n = v->piece_len[tok];
        /* SentencePiece's prefix space is no part of the text: the first piece after BOS (or
         * at the start, prev < 0) loses its leading space. */
        if (v->kind == MODEL__VOCAB_SPM && v->add_space_prefix && (prev < 0 || prev == v->bos) &&
            n > 0 && p[0] == ' ') {
            p++;
            n--;
        }
        *len = n;
        return p;
    }
    /* BOS and EOS mark where a text begins and ends; they are no part of it (llama2.c's files
     * spell them "\n<s>\n" and "\n</s>\n"). */
    if (tok < 0 || tok >= t->vocab || tok == MODEL_TOK_BOS || tok == MODEL_TOK_EOS) {
        *len = 0;
        return "";
    }
    const char *p = t->pieces[tok];
    size_t n = (size_t)t->lens[tok];
    if ((prev == MODEL_TOK_BOS || prev < 0) && n > 0 && p[0] == ' ') {
        p++;
        n--;
    }
    unsigned byte;
    if (n == 6 && p[0] == '<' && p[1] == '0' && p[2] == 'x' && p[5] == '>' &&
        sscanf(p, "<0x%02X>", &byte) == 1 && byte < 256) {
        *len = 1;
        return (const char *)&t->raw[2 * byte];
    }
    *len = n;
    return p;
}

/* ---- Synthetic tokenizer -------------------------------------------------------------------- */

int model_tokenizer_synth_write(const char *path, int vocab_size, char *msg, size_t msglen)
{
    if (vocab_size < 259)
        return base_fail(msg, msglen, MODEL_EINVAL,
                         "synthetic tokenizer: vocab %d is too small (needs 3 + 256 byte tokens)",
                         vocab_size);
    /* Filler pieces: " " + two or three letters, unique by construction, so random models print
     * word-like text; they merge from byte-level pieces only where their halves are tokens. */
    static const char letters[] = "etaoinshrdlucmfwypvbgkjqxz";
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f)
        return base_fail(msg, msglen, MODEL_EIO, "cannot write '%s': %s", tmp, strerror(errno));
    int32_t max_len = 8;
    int bad = fwrite(&max_len, 4, 1, f) != 1;
    for (int id = 0; id < vocab_size && !bad; id++) {
        char piece[16];
        float score = 0.0f;
        if (id == 0)
            snprintf(piece, sizeof piece, "<unk>");
        else if (id == 1)
            snprintf(piece, sizeof piece, "\n<s>\n");
        else if (id == 2)
            snprintf(piece, sizeof piece, "\n</s>\n");
        else if (id < 259)
            snprintf(piece, sizeof piece, "<0x%02X>", id - 3);
        else {
            int k = id - 259;
            int a = k % 26, b = (k / 26) % 26, c = k / 676;
            if (c == 0)
                snprintf(piece, sizeof piece, " %c%c", letters[a], letters[b]);
            else
                snprintf(piece, sizeof piece, " %c%c%c%d", letters[a], letters[b],
                         letters[(c - 1) % 26], (c - 1) / 26);
            score = -(float)k;
        }
        int32_t len = (int32_t)strlen(piece);
        bad = fwrite(&score, 4, 1, f) != 1 || fwrite(&len, 4, 1, f) != 1 ||
              fwrite(piece, 1, (size_t)len, f) != (size_t)len;
    }
    if (fclose(f) != 0)
        bad = 1;
    if (bad || rename(tmp, path) != 0) {
        remove(tmp);
        return base_fail(msg, msglen, MODEL_EIO, "cannot write '%s': %s", path, strerror(errno));
    }
    return 0;
}
