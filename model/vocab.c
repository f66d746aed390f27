/* vocab.c — a GGUF vocabulary: loading and checking it, the special-token split, decoding.
 *
 * Loading follows llama.cpp's llama_vocab::load: token texts, scores and types come from
 * `tokenizer.ggml.tokens`, `.scores` and `.token_type`; the special ids from `.bos_token_id` and
 * its siblings; `add_bos_token`, `add_eos_token` and `add_space_prefix` default per kind and
 * pre-tokenizer; the end-of-turn tokens that files do not name (`<|eot_id|>`, `<|im_end|>`,
 * `<end_of_turn>`, ...) are found by their text and become control tokens, and every id that ends
 * generation (EOS, EOT, EOM and those texts) is marked. What llama.cpp only warns about and
 * works around, this loader refuses by name: lengths that disagree, a special id out of range, a
 * duplicate text, add_bos_token with no BOS, an unknown pre-tokenizer.
 *
 * The special-token split is llama.cpp's tokenizer_st_partition: the special tokens (control,
 * user-defined, unknown), longest text first, each cut out of the raw fragments left by the
 * longer ones. Control and unknown tokens take part only when the caller asks
 * (MODEL_ENC_SPECIAL): a user's text that contains "<|eot_id|>" otherwise encodes as the
 * characters it is. User-defined tokens always match, as in Hugging Face's tokenizers.
 */
#include "gguf.h"
#include "model.h"
#include "vocab.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

__attribute__((format(printf, 5, 6))) static int fail(char *msg, size_t msglen, const char *path,
                                                      int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    model__gguf_vfail(msg, msglen, path, code, fmt, ap);
    va_end(ap);
    return code;
}

static size_t slot_of(const char *s, size_t n, size_t mask)
{
    return (size_t)XXH3_64bits(s, n) & mask;
}

int32_t model__vocab_find(const model__vocab *v, const char *s, size_t n)
{
    for (size_t i = slot_of(s, n, v->map_mask);; i = (i + 1) & v->map_mask) {
        int32_t id = v->map[i];
        if (id < 0)
            return -1;
        if (v->len[id] == n && memcmp(v->text[id], s, n) == 0)
            return id;
    }
}

static int str_eq(const model__gguf_kv *kv, const char *want)
{
    return kv && kv->type == MODEL__GGUF_STRING && kv->v.s.len == strlen(want) &&
           memcmp(kv->v.s.p, want, kv->v.s.len) == 0;
}

/* A printable copy of a string value for messages (at most 40 bytes). */
static const char *shown(const model__gguf_kv *kv, char *buf, size_t cap)
{
    if (!kv || kv->type != MODEL__GGUF_STRING)
        return "?";
    size_t n = kv->v.s.len < cap - 1 ? (size_t)kv->v.s.len : cap - 1;
    n = n > 40 ? 40 : n;
    memcpy(buf, kv->v.s.p, n);
    buf[n] = 0;
    return buf;
}

/* A boolean key (bool or integer 0/1) into *out when present. */
static int get_bool(const model__gguf *g, const char *path, const char *key, int *out, char *msg,
                    size_t msglen)
{
    const model__gguf_kv *kv = model__gguf_find(g, key);
    int64_t b;
    if (!kv)
        return 0;
    if (model__gguf_int(kv, 0, 1, &b) != 0)
        return fail(msg, msglen, path, MODEL_EFORMAT, "metadata key '%s' is not a boolean", key);
    *out = (int)b;
    return 0;
}

/* A special token id key: absent or "none" (-1 or 2^32 - 1, as converters write it) leaves *out;
 * an id outside the vocabulary is refused. */
static int get_id(const model__gguf *g, const char *path, const char *key, int n, int32_t *out,
                  char *msg, size_t msglen)
{
    const model__gguf_kv *kv = model__gguf_find(g, key);
    int64_t id;
    if (!kv)
        return 0;
    if (model__gguf_int(kv, INT64_MIN, INT64_MAX, &id) != 0)
        return fail(msg, msglen, path, MODEL_EFORMAT, "metadata key '%s' is not an integer", key);
    if (id == -1 || id == 0xFFFFFFFFll) {
        *out = -1;
        return 0;
    }
    if (id < 0 || id >= n)
        return fail(msg, msglen, path, MODEL_EVOCAB,
                    "metadata key '%s' is %lld, outside the vocabulary of %d tokens", key,
                    (long long)id, n);
    *out = (int32_t)id;
    return 0;
}

static size_t merge_slot(int32_t a, int32_t b, size_t mask)
{
    uint64_t k = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    k ^= k >> 31;
    k *= 0x9E3779B97F4A7C15ull;
    k ^= k >> 29;
    return (size_t)k & mask;
}

const model__merge *model__vocab_merge(const model__vocab *v, int32_t a, int32_t b)
{
    for (size_t i = merge_slot(a, b, v->merges_mask);; i = (i + 1) & v->merges_mask) {
        const model__merge *m = &v->merges[i];
        if (m->a < 0)
            return NULL;
        if (m->a == a && m->b == b)
            return m;
    }
}

/* Reads tokenizer.ggml.merges ("left right" each) into the merge table. */
static int load_merges(model__vocab *v, const model__gguf *g, const char *path, char *msg,
                       size_t msglen)
{
    const model__gguf_kv *kv = model__gguf_find(g, "tokenizer.ggml.merges");
    if (!kv)
        return fail(msg, msglen, path, MODEL_EFORMAT,
                    "tokenizer.ggml.merges is missing (a gpt2 vocabulary needs its merges)");
    if (kv->type != MODEL__GGUF_ARRAY || kv->arr_type != MODEL__GGUF_STRING)
        return fail(msg, msglen, path, MODEL_EFORMAT,
                    "tokenizer.ggml.merges is not an array of strings");
    if (kv->arr_n > (uint64_t)INT32_MAX / 4)
        return fail(msg, msglen, path, MODEL_ERANGE, "tokenizer.ggml.merges holds %llu merges",
                    (unsigned long long)kv->arr_n);
    size_t cap = 16;
    while (cap < kv->arr_n * 2)
        cap <<= 1;
    v->merges = malloc(cap * sizeof *v->merges);
    char *buf = NULL;
    size_t buf_cap = 0;
    if (!v->merges)
        return fail(msg, msglen, path, MODEL_ENOMEM, "out of memory");
    for (size_t i = 0; i < cap; i++)
        v->merges[i].a = -1;
    v->merges_mask = cap - 1;
    uint64_t pos = 0;
    int rc = 0;
    for (uint64_t r = 0; r < kv->arr_n; r++) {
        model__gguf_str s = model__gguf_arr_str(kv, &pos);
        /* The halves split at the first space after the first byte (a half may start with
         * one, as llama.cpp reads them). */
        const char *sp = s.len > 1 ? memchr(s.p + 1, ' ', (size_t)s.len - 1) : NULL;
        if (!sp) {
            rc = fail(msg, msglen, path, MODEL_EFORMAT,
                      "tokenizer.ggml.merges[%llu] is not \"left right\"", (unsigned long long)r);
            break;
        }
        size_t la = (size_t)(sp - s.p), lb = (size_t)s.len - la - 1;
        int32_t a = model__vocab_find(v, s.p, la), b = model__vocab_find(v, sp + 1, lb);
        if (a < 0 || b < 0)
            continue; /* halves that are no tokens never meet as symbols */
        if (la + lb > buf_cap) {
            buf_cap = (la + lb) * 2;
            char *nb = realloc(buf, buf_cap);
            if (!nb) {
                rc = fail(msg, msglen, path, MODEL_ENOMEM, "out of memory");
                break;
            }
            buf = nb;
        }
        memcpy(buf, s.p, la);
        memcpy(buf + la, sp + 1, lb);
        size_t i = merge_slot(a, b, v->merges_mask);
        while (v->merges[i].a >= 0 && !(v->merges[i].a == a && v->merges[i].b == b))
            i = (i + 1) & v->merges_mask;
        if (v->merges[i].a >= 0)
            continue; /* a repeated rule: the first (lowest rank) stands */
        v->merges[i] = (model__merge){a, b, (int32_t)r, model__vocab_find(v, buf, la + lb)};
    }
    free(buf);
    return rc;
}

static int is_eog_text(const char *s, size_t n)
{
    static const char *const names[] = {"<|eot_id|>",    "<|im_end|>", "<|end|>", "<end_of_turn>",
                                        "<|endoftext|>", "<|eom_id|>", "<EOT>"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strlen(names[i]) == n && memcmp(names[i], s, n) == 0)
            return 1;
    return 0;
}

static int special_cmp(const void *pa, const void *pb, void *arg)
{
    const model__vocab *v = arg;
    int32_t a = *(const int32_t *)pa, b = *(const int32_t *)pb;
    if (v->len[a] != v->len[b])
        return v->len[a] > v->len[b] ? -1 : 1;
    return a < b ? -1 : a > b;
}

/* The printed form of token id into dst (NULL: only measure). */
static int score_cmp(const void *pa, const void *pb, void *arg)
{
    const model__vocab *v = arg;
    float a = v->score[*(const int32_t *)pa], b = v->score[*(const int32_t *)pb];
    return (a < b) - (a > b);
}

static size_t piece_of(const model__vocab *v, int32_t id, char *dst)
{
    const char *s = v->text[id];
    size_t n = v->len[id], o = 0;
    switch (v->type[id]) {
    case MODEL__TOK_USER:
        if (dst)
            memcpy(dst, s, n);
        return n;
    case MODEL__TOK_NORMAL:
        break;
    case MODEL__TOK_BYTE:
        if (v->kind == MODEL__VOCAB_SPM) {
            unsigned b;
            if (n == 6 && sscanf(s, "<0x%2X>", &b) == 1) {
                if (dst)
                    dst[0] = (char)b;
                return 1;
            }
        }
        return 0;
    default:
        return 0; /* control, unknown, unused: no text */
    }
    if (v->kind == MODEL__VOCAB_SPM) {
        for (size_t i = 0; i < n; i++, o++) {
            if (i + 2 < n && (unsigned char)s[i] == 0xE2 && (unsigned char)s[i + 1] == 0x96 &&
                (unsigned char)s[i + 2] == 0x81) {
                if (dst)
                    dst[o] = ' ';
                i += 2;
            } else if (dst) {
                dst[o] = s[i];
            }
        }
        return o;
    }
    /* Byte-level: each character stands for one byte; a character outside the alphabet (no
     * vocabulary we know has one) is kept as it is. */
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        uint32_t cp = c;
        size_t k = 1;
        if (c >= 0xC0 && c < 0xE0 && i + 1 < n) {
            cp = ((uint32_t)(c & 0x1F) << 6) | ((unsigned char)s[i + 1] & 0x3F);
            k = 2;
        }
        int b = model__bpe_char_byte(cp);
        if (b >= 0 && (k == 2 || c < 0x80)) {
            if (dst)
                dst[o] = (char)b;
            o++;
            i += k;
        } else {
            if (dst)
                dst[o] = (char)c;
            o++;
            i++;
        }
    }
    return o;
}

int model__vocab_load(const model__gguf *g, const char *path, int vocab, model__vocab **out,
                      char *msg, size_t msglen)
{
    *out = NULL;
    char sh[48];
    const model__gguf_kv *kind = model__gguf_find(g, "tokenizer.ggml.model");
    const model__gguf_kv *tok = model__gguf_find(g, "tokenizer.ggml.tokens");
    if (!kind || !tok)
        return fail(msg, msglen, path, MODEL_EFORMAT,
                    "no vocabulary (tokenizer.ggml.model and .tokens) in the file: give a "
                    "tokenizer");
    int k = str_eq(kind, "llama") ? MODEL__VOCAB_SPM : str_eq(kind, "gpt2") ? MODEL__VOCAB_BPE : 0;
    if (!k)
        return fail(msg, msglen, path, MODEL_ENOTSUP,
                    "vocabulary kind '%s' (tokenizer.ggml.model) is not supported (llama: "
                    "SentencePiece, gpt2: byte-level BPE)",
                    shown(kind, sh, sizeof sh));
    if (tok->type != MODEL__GGUF_ARRAY || tok->arr_type != MODEL__GGUF_STRING)
        return fail(msg, msglen, path, MODEL_EFORMAT,
                    "tokenizer.ggml.tokens is not an array of strings");
    if (tok->arr_n < 1 || tok->arr_n > 4194304)
        return fail(msg, msglen, path, MODEL_EVOCAB, "tokenizer.ggml.tokens holds %llu tokens",
                    (unsigned long long)tok->arr_n);
    int n = (int)tok->arr_n;
    if (vocab > 0 && n != vocab)
        return fail(msg, msglen, path, MODEL_EVOCAB,
                    "tokenizer.ggml.tokens holds %d tokens, the model has a vocabulary of %d", n,
                    vocab);
    const model__gguf_kv *sc = model__gguf_find(g, "tokenizer.ggml.scores");
    const model__gguf_kv *ty = model__gguf_find(g, "tokenizer.ggml.token_type");
    if (sc && (sc->type != MODEL__GGUF_ARRAY || sc->arr_type != MODEL__GGUF_FLOAT32 ||
               sc->arr_n != tok->arr_n))
        return fail(msg, msglen, path, MODEL_EFORMAT,
                    "tokenizer.ggml.scores is not %d float32 values (one per token)", n);
    if (ty && (ty->type != MODEL__GGUF_ARRAY || ty->arr_type != MODEL__GGUF_INT32 ||
               ty->arr_n != tok->arr_n))
        return fail(msg, msglen, path, MODEL_EFORMAT,
                    "tokenizer.ggml.token_type is not %d int32 values (one per token)", n);
    if (k == MODEL__VOCAB_SPM && !sc)
        return fail(msg, msglen, path, MODEL_EFORMAT,
                    "tokenizer.ggml.scores is missing (a llama vocabulary merges by score)");

    int rc = 0;
    model__vocab *v = calloc(1, sizeof *v);
    if (!v)
        return fail(msg, msglen, path, MODEL_ENOMEM, "out of memory");
    v->kind = k;
    v->n = n;
    v->bos = v->eos = v->eot = v->eom = v->unk = v->pad = -1;
    if (k == MODEL__VOCAB_SPM) {
        v->unk = 0;
        v->bos = 1;
        v->eos = 2;
        v->add_bos = 1;
        v->add_space_prefix = 1;
    }

    /* Texts: one blob for the texts and the printed pieces (never longer than the texts, but
     * an empty text becomes "[EMPTY_i]", as llama.cpp names it). */
    uint64_t pos = 0, total = 0;
    for (int i = 0; i < n; i++) {
        model__gguf_str s = model__gguf_arr_str(tok, &pos);
        total += s.len ? s.len : 24;
    }
    v->text = malloc((size_t)n * sizeof *v->text);
    v->len = malloc((size_t)n * sizeof *v->len);
    v->score = calloc((size_t)n, sizeof *v->score);
    v->type = malloc((size_t)n);
    v->eog = calloc((size_t)n, 1);
    v->piece = malloc((size_t)n * sizeof *v->piece);
    v->piece_len = malloc((size_t)n * sizeof *v->piece_len);
    v->blob = malloc((size_t)total * 2 + 1);
    size_t cap = 16;
    while (cap < (size_t)n * 2)
        cap <<= 1;
    v->map = malloc(cap * sizeof *v->map);
    if (!v->text || !v->len || !v->score || !v->type || !v->eog || !v->piece || !v->piece_len ||
        !v->blob || !v->map) {
        rc = fail(msg, msglen, path, MODEL_ENOMEM, "out of memory");
        goto out;
    }
    memset(v->map, -1, cap * sizeof *v->map);
    v->map_mask = cap - 1;
    char *p = v->blob;
    pos = 0;
    for (int i = 0; i < n; i++) {
        model__gguf_str s = model__gguf_arr_str(tok, &pos);
        if (s.len == 0) {
            int w = snprintf(p, 24, "[EMPTY_%d]", i);
            v->len[i] = (uint32_t)w;
        } else {
            memcpy(p, s.p, (size_t)s.len);
            v->len[i] = (uint32_t)s.len;
        }
        v->text[i] = p;
        p += v->len[i];
        if (sc)
            memcpy(&v->score[i], sc->arr + (size_t)i * 4, 4);
        int32_t t = MODEL__TOK_NORMAL;
        if (ty)
            memcpy(&t, ty->arr + (size_t)i * 4, 4);
        v->type[i] = t >= 1 && t <= 6 ? (uint8_t)t : MODEL__TOK_UNDEFINED;
        size_t slot = slot_of(v->text[i], v->len[i], v->map_mask);
        for (; v->map[slot] >= 0; slot = (slot + 1) & v->map_mask) {
            int32_t o = v->map[slot];
            if (v->len[o] == v->len[i] && memcmp(v->text[o], v->text[i], v->len[i]) == 0) {
                rc = fail(msg, msglen, path, MODEL_EVOCAB,
                          "tokenizer.ggml.tokens: token %d repeats the text of token %d", i, o);
                goto out;
            }
        }
        v->map[slot] = i;
    }

    /* Pre-tokenizer (gpt2) and its defaults, then the keys that override them. */
    if (k == MODEL__VOCAB_BPE) {
        const model__gguf_kv *pre = model__gguf_find(g, "tokenizer.ggml.pre");
        if (pre && pre->type != MODEL__GGUF_STRING) {
            rc = fail(msg, msglen, path, MODEL_EFORMAT, "tokenizer.ggml.pre is not a string");
            goto out;
        }
        snprintf(v->pre_name, sizeof v->pre_name, "%s",
                 pre ? shown(pre, sh, sizeof sh) : "default");
        int known = 0;
        char why[256] = "";
        v->pre =
            model__pretok_new(v->pre_name, &known, &v->ignore_merges, &v->add_bos, why, sizeof why);
        if (!known) {
            rc = fail(msg, msglen, path, MODEL_ENOTSUP,
                      "pre-tokenizer '%s' (tokenizer.ggml.pre) is unknown; known: %s", v->pre_name,
                      model__pretok_names());
            goto out;
        }
        if (!v->pre) {
            rc = fail(msg, msglen, path, MODEL_ENOMEM, "%s", why);
            goto out;
        }
        if ((rc = load_merges(v, g, path, msg, msglen)))
            goto out;
    }
    if ((rc = get_id(g, path, "tokenizer.ggml.bos_token_id", n, &v->bos, msg, msglen)) ||
        (rc = get_id(g, path, "tokenizer.ggml.eos_token_id", n, &v->eos, msg, msglen)) ||
        (rc = get_id(g, path, "tokenizer.ggml.eot_token_id", n, &v->eot, msg, msglen)) ||
        (rc = get_id(g, path, "tokenizer.ggml.eom_token_id", n, &v->eom, msg, msglen)) ||
        (rc = get_id(g, path, "tokenizer.ggml.unknown_token_id", n, &v->unk, msg, msglen)) ||
        (rc = get_id(g, path, "tokenizer.ggml.padding_token_id", n, &v->pad, msg, msglen)) ||
        (rc = get_bool(g, path, "tokenizer.ggml.add_bos_token", &v->add_bos, msg, msglen)) ||
        (rc = get_bool(g, path, "tokenizer.ggml.add_eos_token", &v->add_eos, msg, msglen)) ||
        (rc = get_bool(g, path, "tokenizer.ggml.add_space_prefix", &v->add_space_prefix, msg,
                       msglen)))
        goto out;
    if (v->add_bos && v->bos < 0) {
        rc = fail(msg, msglen, path, MODEL_EVOCAB,
                  "tokenizer.ggml.add_bos_token is set but the vocabulary has no BOS token");
        goto out;
    }
    if (v->add_eos && v->eos < 0) {
        rc = fail(msg, msglen, path, MODEL_EVOCAB,
                  "tokenizer.ggml.add_eos_token is set but the vocabulary has no EOS token");
        goto out;
    }

    /* End of generation: EOS, EOT, EOM, and the end-of-turn texts (made control tokens). */
    for (int i = 0; i < n; i++) {
        if (!is_eog_text(v->text[i], v->len[i]))
            continue;
        v->eog[i] = 1;
        v->type[i] = MODEL__TOK_CONTROL;
        if (v->eot < 0 && !(v->len[i] == 10 && memcmp(v->text[i], "<|eom_id|>", 10) == 0))
            v->eot = i;
    }
    if (v->eos >= 0)
        v->eog[v->eos] = 1;
    if (v->eot >= 0)
        v->eog[v->eot] = 1;
    if (v->eom >= 0)
        v->eog[v->eom] = 1;

    /* Special tokens, longest first. */
    for (int i = 0; i < n; i++)
        if (v->type[i] == MODEL__TOK_CONTROL || v->type[i] == MODEL__TOK_USER ||
            v->type[i] == MODEL__TOK_UNKNOWN)
            v->n_special++;
    v->special = malloc(((size_t)v->n_special + 1) * sizeof *v->special);
    if (!v->special) {
        rc = fail(msg, msglen, path, MODEL_ENOMEM, "out of memory");
        goto out;
    }
    v->n_special = 0;
    for (int i = 0; i < n; i++)
        if (v->type[i] == MODEL__TOK_CONTROL || v->type[i] == MODEL__TOK_USER ||
            v->type[i] == MODEL__TOK_UNKNOWN)
            v->special[v->n_special++] = i;
    qsort_r(v->special, (size_t)v->n_special, sizeof *v->special, special_cmp, v);
    v->spec_head2 = malloc(65536 * sizeof *v->spec_head2);
    v->spec_next = malloc(((size_t)v->n_special + 1) * sizeof *v->spec_next);
    if (!v->spec_head2 || !v->spec_next) {
        rc = fail(msg, msglen, path, MODEL_ENOMEM, "out of memory");
        goto out;
    }
    memset(v->spec_head1, -1, sizeof v->spec_head1);
    memset(v->spec_head2, -1, 65536 * sizeof *v->spec_head2);
    for (int r = v->n_special - 1; r >= 0; r--) {
        const unsigned char *t = (const unsigned char *)v->text[v->special[r]];
        int32_t *head =
            v->len[v->special[r]] == 1 ? &v->spec_head1[t[0]] : &v->spec_head2[(t[0] << 8) | t[1]];
        v->spec_next[r] = *head;
        *head = r;
    }
    /* SentencePiece: the scores as dense ranks, highest first. */
    if (k == MODEL__VOCAB_SPM) {
        int32_t *ord = malloc((size_t)n * sizeof *ord);
        v->srank = malloc((size_t)n * sizeof *v->srank);
        if (!ord || !v->srank) {
            free(ord);
            rc = fail(msg, msglen, path, MODEL_ENOMEM, "out of memory");
            goto out;
        }
        for (int i = 0; i < n; i++)
            ord[i] = i;
        qsort_r(ord, (size_t)n, sizeof *ord, score_cmp, v);
        int32_t r = 0;
        for (int i = 0; i < n; i++) {
            if (i > 0 && v->score[ord[i]] != v->score[ord[i - 1]])
                r++;
            v->srank[ord[i]] = r;
        }
        v->n_srank = r + 1;
        free(ord);
    }
    /* SentencePiece words: does any token hold "▁" right after another character? */
    v->spm_words = k == MODEL__VOCAB_SPM;
    for (int i = 0; i < n && v->spm_words; i++) {
        const char *t = v->text[i];
        for (uint32_t j = 1; j + 2 < v->len[i] + 0u && v->spm_words; j++)
            if (memcmp(t + j, "\xE2\x96\x81", 3) == 0 &&
                !(j >= 3 && memcmp(t + j - 3, "\xE2\x96\x81", 3) == 0))
                v->spm_words = 0;
    }

    for (int b = 0; b < 256; b++) {
        char name[8];
        size_t cl;
        const char *c = model__bpe_byte_char((unsigned)b, &cl);
        snprintf(name, sizeof name, "<0x%02X>", b);
        v->byte_id[b] = k == MODEL__VOCAB_SPM ? model__vocab_find(v, name, 6) : -1;
        v->char_id[b] = k == MODEL__VOCAB_BPE ? model__vocab_find(v, c, cl) : -1;
    }

    /* The printed pieces, after the texts in the blob. */
    for (int i = 0; i < n; i++) {
        size_t len = piece_of(v, i, p);
        v->piece[i] = p;
        v->piece_len[i] = (uint32_t)len;
        v->max_piece = len > v->max_piece ? (uint32_t)len : v->max_piece;
        p += len;
    }

    const model__gguf_kv *tpl = model__gguf_find(g, "tokenizer.chat_template");
    if (tpl && tpl->type == MODEL__GGUF_STRING) {
        v->chat_template = malloc((size_t)tpl->v.s.len + 1);
        if (!v->chat_template) {
            rc = fail(msg, msglen, path, MODEL_ENOMEM, "out of memory");
            goto out;
        }
        memcpy(v->chat_template, tpl->v.s.p, (size_t)tpl->v.s.len);
        v->chat_template[tpl->v.s.len] = 0;
        v->chat_template_len = (size_t)tpl->v.s.len;
    }
out:
    if (rc) {
        model__vocab_free(v);
        return rc;
    }
    *out = v;
    return 0;
}

void model__vocab_free(model__vocab *v)
{
    if (!v)
        return;
    free(v->text);
    free(v->len);
    free(v->score);
    free(v->srank);
    free(v->type);
    free(v->eog);
    free(v->blob);
    free(v->map);
    free(v->special);
    free(v->spec_head2);
    free(v->spec_next);
    free(v->merges);
    model__pretok_free(v->pre);
    free(v->piece);
    free(v->piece_len);
    free(v->chat_template);
    free(v);
}

/* ---- Encoding: special tokens, then the kind's encoder on each raw fragment ----------------- */

typedef struct frag {
    size_t off, len;
    int32_t id; /* a special token, or -1 for raw text */
} frag;

typedef struct frags {
    frag *v;
    size_t n, cap;
} frags;

static int frag_push(frags *f, frag x)
{
    if (f->n == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 16;
        frag *nv = realloc(f->v, cap * sizeof *nv);
        if (!nv)
            return -1;
        f->v = nv;
        f->cap = cap;
    }
    f->v[f->n++] = x;
    return 0;
}

typedef struct occ {
    int32_t rank; /* index in special[]: longest text first */
    size_t pos;
} occ;

static int occ_cmp(const void *pa, const void *pb)
{
    const occ *a = pa, *b = pb;
    if (a->rank != b->rank)
        return a->rank < b->rank ? -1 : 1;
    return a->pos < b->pos ? -1 : a->pos > b->pos;
}

static int occ_pos_cmp(const void *pa, const void *pb)
{
    const occ *a = pa, *b = pb;
    return a->pos < b->pos ? -1 : a->pos > b->pos;
}

/* Cuts the special tokens out of text into fragments, with the result of llama.cpp's passes
 * (each token, longest first, cut at its leftmost non-overlapping occurrences in what earlier
 * tokens left raw) but in one scan: every occurrence of every active token is found through
 * the first-byte chains, then taken in (token, position) order when none of its bytes is taken
 * yet, which is exactly what the passes take. */
static int split_special(const model__vocab *v, const char *text, size_t len, unsigned flags,
                         frags *out)
{
    occ *o = NULL;
    size_t no = 0, cap = 0;
    unsigned char *taken = NULL;
    int rc = -1;
    const unsigned char *u = (const unsigned char *)text;
    for (size_t i = 0; i < len; i++) {
        int32_t heads[2] = {v->spec_head1[u[i]],
                            i + 1 < len ? v->spec_head2[(u[i] << 8) | u[i + 1]] : -1};
        for (int h = 0; h < 2; h++)
            for (int32_t r = heads[h]; r >= 0; r = v->spec_next[r]) {
                int32_t id = v->special[r];
                if (!(flags & MODEL_ENC_SPECIAL) && v->type[id] != MODEL__TOK_USER)
                    continue;
                if (v->len[id] > len - i || memcmp(text + i, v->text[id], v->len[id]) != 0)
                    continue;
                if (no == cap) {
                    cap = cap ? cap * 2 : 64;
                    occ *n2 = realloc(o, cap * sizeof *o);
                    if (!n2)
                        goto out;
                    o = n2;
                }
                o[no++] = (occ){r, i};
            }
    }
    size_t nt = 0;
    if (no > 0) {
        taken = calloc(len, 1);
        if (!taken)
            goto out;
        qsort(o, no, sizeof *o, occ_cmp);
        for (size_t k = 0; k < no; k++) {
            size_t p = o[k].pos, l = v->len[v->special[o[k].rank]];
            int free_ = 1;
            for (size_t j = 0; j < l && free_; j++)
                free_ = !taken[p + j];
            if (!free_)
                continue;
            memset(taken + p, 1, l);
            o[nt++] = o[k];
        }
        qsort(o, nt, sizeof *o, occ_pos_cmp);
    }
    size_t at = 0;
    for (size_t k = 0; k < nt; k++) {
        int32_t id = v->special[o[k].rank];
        if ((o[k].pos > at && frag_push(out, (frag){at, o[k].pos - at, -1})) ||
            frag_push(out, (frag){o[k].pos, v->len[id], id}))
            goto out;
        at = o[k].pos + v->len[id];
    }
    if (at < len && frag_push(out, (frag){at, len - at, -1}))
        goto out;
    rc = 0;
out:
    free(o);
    free(taken);
    return rc;
}

int model__vocab_encode(const model__vocab *v, const char *text, size_t len, unsigned flags,
                        int32_t *out, size_t cap, size_t *n_out)
{
    *n_out = 0;
    frags a = {0};
    /* Room for the worst case: a space whose "▁" falls back to three byte tokens, and a prefix
     * "▁" after each special token (which took at least one byte). */
    size_t room = model_encode_cap(len);
    /* Straight into out when it has that room (the usual caller sizes it so); else into a
     * scratch array first (16 MB of page faults for 4 MB of text: a sixth of the time). */
    int direct = cap >= room;
    int32_t *ids = direct ? out : room < SIZE_MAX / sizeof *ids ? malloc(room * sizeof *ids) : NULL;
    int rc = MODEL_ENOMEM;
    if (!ids)
        return MODEL_ENOMEM;
    if (len > 0 && split_special(v, text, len, flags, &a))
        goto out;
    size_t n = 0;
    if ((flags & MODEL_ENC_ADD_SPECIAL) && v->add_bos)
        ids[n++] = v->bos;
    /* SentencePiece: a space before the first text (unless it continues other text) and after
     * a special token. */
    int prev_special = !(flags & MODEL_ENC_CONTINUE);
    for (size_t i = 0; i < a.n; i++) {
        frag f = a.v[i];
        if (f.id >= 0) {
            ids[n++] = f.id;
            prev_special = 1;
            continue;
        }
        long k = v->kind == MODEL__VOCAB_SPM
                     ? model__spm_encode(v, text + f.off, f.len,
                                         v->add_space_prefix && prev_special, ids + n)
                     : model__bpe_encode(v, text + f.off, f.len, ids + n);
        if (k < 0)
            goto out;
        n += (size_t)k;
        prev_special = 0;
    }
    if ((flags & MODEL_ENC_ADD_SPECIAL) && v->add_eos)
        ids[n++] = v->eos;
    if (n > cap) {
        rc = MODEL_ERANGE;
        goto out;
    }
    if (!direct)
        memcpy(out, ids, n * sizeof *ids);
    *n_out = n;
    rc = 0;
out:
    if (!direct)
        free(ids);
    free(a.v);
    return rc;
}

/* ---- The merge loop ---------------------------------------------------------------------------
 * Short words: the rank of each symbol's pair with its next neighbour is kept beside it, and
 * each step scans them for the lowest (leftmost on ties), which for a few symbols costs less
 * than heap upkeep.
 *
 * Long words (a line without spaces can be a megabyte) merge rank by rank: every candidate pair
 * sits in the bucket of its rank, and a heap holds the ranks whose bucket is not empty. The
 * lowest rank's bucket is taken whole, sorted by position, and applied leftmost first. A merge
 * that makes a new pair of a rank no higher than the bucket's (it cannot for BPE, whose merged
 * token is neither half of the rule; it can for SentencePiece tokens of equal score) puts the
 * rest of the bucket back, so the next step again takes the lowest rank, leftmost: the
 * references' order exactly. A candidate is stale when its left symbol's pair has another rank
 * by now. The rank heap stays small and the symbols are visited left to right within a rank,
 * where one heap entry per pair made a megabyte word cache-miss bound (0.6 s against 0.15). */

static void merge_apply(model__merger *m, int32_t best)
{
    model__sym *l = &m->s[best], *r = &m->s[l->next];
    l->len += r->len;
    l->id = m->res[best];
    r->len = 0;
    m->rank[l->next] = INT32_MAX; /* absorbed: its pair is gone */
    l->next = r->next;
    if (r->next >= 0)
        m->s[r->next].prev = best;
    m->pair(m->arg, m->s, best, m->rank, m->res);
    if (l->prev >= 0)
        m->pair(m->arg, m->s, l->prev, m->rank, m->res);
}

void model__merge_scan(model__merger *m, int32_t first)
{
    for (int32_t i = first; i >= 0; i = m->s[i].next)
        m->pair(m->arg, m->s, i, m->rank, m->res);
    for (;;) {
        int32_t best = -1, br = INT32_MAX;
        for (int32_t i = first; i >= 0; i = m->s[i].next)
            if (m->rank[i] < br) {
                br = m->rank[i];
                best = i;
            }
        if (best < 0)
            return;
        merge_apply(m, best);
    }
}

static void rheap_push(model__merger *m, int32_t r)
{
    size_t i = m->nrh++;
    while (i > 0 && m->rheap[(i - 1) / 2] > r) {
        m->rheap[i] = m->rheap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    m->rheap[i] = r;
}

static int32_t rheap_pop(model__merger *m)
{
    int32_t top = m->rheap[0], last = m->rheap[--m->nrh];
    size_t i = 0, n = m->nrh;
    for (;;) {
        size_t l = 2 * i + 1, b = i;
        int32_t bv = last;
        if (l < n && m->rheap[l] < bv)
            bv = m->rheap[b = l];
        if (l + 1 < n && m->rheap[l + 1] < bv)
            b = l + 1;
        if (b == i)
            break;
        m->rheap[i] = m->rheap[b];
        i = b;
    }
    if (n > 0)
        m->rheap[i] = last;
    return top;
}

static int bucket_push(model__merger *m, int32_t left)
{
    int32_t r = m->rank[left];
    if (r == INT32_MAX)
        return 0;
    if (m->npool == m->pool_cap) {
        size_t cap = m->pool_cap ? m->pool_cap * 2 : 4096;
        struct model__mnode *p = realloc(m->pool, cap * sizeof *p);
        if (!p)
            return -1;
        m->pool = p;
        m->pool_cap = cap;
    }
    if (m->head[r] < 0)
        rheap_push(m, r);
    m->pool[m->npool] = (struct model__mnode){left, m->head[r]};
    m->head[r] = (int32_t)m->npool++;
    return 0;
}

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

int model__merge_buckets(model__merger *m, int32_t first)
{
    if (!m->head) {
        m->head = malloc(m->nranks * sizeof *m->head);
        m->rheap = malloc(m->nranks * sizeof *m->rheap);
        if (!m->head || !m->rheap)
            return -1;
        memset(m->head, 0xFF, m->nranks * sizeof *m->head);
    }
    m->npool = 0;
    m->nrh = 0;
    for (int32_t i = first; i >= 0; i = m->s[i].next) {
        m->pair(m->arg, m->s, i, m->rank, m->res);
        if (bucket_push(m, i))
            return -1;
    }
    while (m->nrh > 0) {
        int32_t r = rheap_pop(m);
        size_t n = 0;
        for (int32_t k = m->head[r]; k >= 0; k = m->pool[k].next) {
            if (n == m->lefts_cap) {
                size_t cap = m->lefts_cap ? m->lefts_cap * 2 : 1024;
                int32_t *l = realloc(m->lefts, cap * sizeof *l);
                if (!l)
                    return -1;
                m->lefts = l;
                m->lefts_cap = cap;
            }
            m->lefts[n++] = m->pool[k].left;
        }
        m->head[r] = -1;
        /* Chained newest first: reversed, pushes made left to right come out sorted. */
        for (size_t a = 0, b = n ? n - 1 : 0; a < b; a++, b--) {
            int32_t t = m->lefts[a];
            m->lefts[a] = m->lefts[b];
            m->lefts[b] = t;
        }
        int sorted = 1;
        for (size_t k = 1; k < n && sorted; k++)
            sorted = m->lefts[k - 1] <= m->lefts[k];
        if (!sorted)
            qsort(m->lefts, n, sizeof *m->lefts, cmp_i32);
        for (size_t k = 0; k < n; k++) {
            int32_t best = m->lefts[k];
            if (m->rank[best] != r || (k > 0 && m->lefts[k - 1] == best))
                continue;
            merge_apply(m, best);
            int32_t prev = m->s[best].prev, lo = m->rank[best];
            if (bucket_push(m, best))
                return -1;
            if (prev >= 0) {
                if (bucket_push(m, prev))
                    return -1;
                lo = m->rank[prev] < lo ? m->rank[prev] : lo;
            }
            if (lo <= r) { /* a new pair goes first: the rest waits in its bucket */
                for (size_t j = k + 1; j < n; j++)
                    if (m->rank[m->lefts[j]] == r && bucket_push(m, m->lefts[j]))
                        return -1;
                break;
            }
        }
    }
    return 0;
}

void model__merger_free(model__merger *m)
{
    free(m->rank);
    free(m->res);
    free(m->head);
    free(m->rheap);
    free(m->pool);
    free(m->lefts);
}
