/* pretok.c — the pre-tokenizers of byte-level BPE vocabularies: regular expressions (PCRE2, JIT
 * compiled, Unicode properties) chosen by tokenizer.ggml.pre.
 *
 * A pre-tokenizer is a list of expressions applied one after another, as Hugging Face's
 * `Split(..., behavior="isolated")` steps and llama.cpp's unicode_regex_split() do: the first
 * cuts the text into its matches and the gaps between them, the next cuts each of those pieces
 * the same way (anchors and look-arounds see only the piece), and so on. The expressions are the
 * ones llama.cpp's llama-vocab.cpp gives for each name (the originals from each model's
 * tokenizer.json, with `(?i:...)` spelled out case by case); a name not in the table is refused,
 * never split some default way. Subjects are matched with PCRE2_MATCH_INVALID_UTF, so invalid
 * UTF-8 never fails a match: its bytes fall into the gaps.
 *
 * Cost: each expression scans each piece once from left to right (no expression here can
 * backtrack further than its own match), so splitting is linear in the text.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "model.h"
#include "vocab.h"

#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_NAMES 8
#define MAX_RE 6

typedef struct pretok_def {
    const char *names[MAX_NAMES];
    const char *re[MAX_RE];
    int ignore_merges, add_bos;
} pretok_def;

/* Formatting off: the expressions stay whole, as llama-vocab.cpp spells them. */
// clang-format off
/* Each pre-tokenizer: the tokenizer.ggml.pre names that select it, its expressions in the order
 * they apply, and llama.cpp's defaults for it. */
static const pretok_def defs[] = {
    {{"default"},
     {"[\\p{P}\\$\\+<=>\\^~\\|]+", "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)", "\\p{N}+", "[0-9][0-9][0-9]"},
     0, 0},
    {{"gpt-2", "phi-2", "roberta-bpe", "mpt", "olmo", "jais", "jina-es", "jina-de"},
     {"'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)"},
     0, 0},
    {{"llama3", "llama-v3", "llama-bpe", "falcon3", "dbrx", "smaug-bpe"}, {"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}, 1, 1},
    {{"chatglm-bpe"}, {"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}, 0, 0},
    {{"qwen2", "stablelm2", "megrez"}, {"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}, 0, 0},
    {{"deepseek-llm"},
     {"[\r\n]",
          "\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+",
          "\\s?[!-/:-~！-／：-～‘-‟　-。]+",
          "\\s+$",
          "[一-龥ࠀ-一가-퟿]+",
          "\\p{N}+"},
     0, 0},
    {{"deepseek-coder"},
     {"[\r\n]",
          "\\s?\\p{L}+",
          "\\s?\\p{P}+",
          "[一-龥ࠀ-一가-퟿]+",
          "\\p{N}"},
     0, 0},
    {{"falcon"}, {"[\\p{P}\\$\\+<=>\\^~\\|`]+", "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)", "[0-9][0-9][0-9]"}, 0, 0},
    {{"starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b"},
     {"\\p{N}", "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)"},
     0, 0},
    {{"poro-chat", "bloom", "gpt3-finnish"}, {" ?[^(\\s|.,!?…。，、।۔،)]+"}, 0, 0},
    {{"viking"}, {" ?[^(\\s|.,!?…。，、।۔،)]+", "\\p{N}"}, 0, 0},
    {{"tekken"}, {"[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))*((?=[\\p{L}])([^A-Z]))+|[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))+((?=[\\p{L}])([^A-Z]))*|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}, 1, 1},
};
// clang-format on

struct model__pretok {
    pcre2_code *re[MAX_RE];
    int jit[MAX_RE]; /* compiled by the JIT: matched through pcre2_jit_match, which skips the
                        interpreter's checks of its arguments (a tenth of the time on words) */
    int n;
};

const char *model__pretok_names(void)
{
    static char names[1024];
    if (!names[0]) {
        size_t o = 0;
        for (size_t d = 0; d < sizeof defs / sizeof defs[0]; d++)
            for (int i = 0; i < MAX_NAMES && defs[d].names[i]; i++)
                o += (size_t)snprintf(names + o, sizeof names - o, "%s%s", o ? ", " : "",
                                      defs[d].names[i]);
    }
    return names;
}

model__pretok *model__pretok_new(const char *name, int *known, int *ignore_merges, int *add_bos,
                                 char *msg, size_t msglen)
{
    const pretok_def *def = NULL;
    for (size_t d = 0; d < sizeof defs / sizeof defs[0] && !def; d++)
        for (int i = 0; i < MAX_NAMES && defs[d].names[i]; i++)
            if (strcmp(defs[d].names[i], name) == 0)
                def = &defs[d];
    *known = def != NULL;
    if (!def)
        return NULL;
    *ignore_merges = def->ignore_merges;
    *add_bos = def->add_bos;
    model__pretok *p = calloc(1, sizeof *p);
    if (!p) {
        snprintf(msg, msglen, "out of memory");
        return NULL;
    }
    for (int i = 0; i < MAX_RE && def->re[i]; i++) {
        int err;
        PCRE2_SIZE off;
        p->re[i] = pcre2_compile((PCRE2_SPTR)def->re[i], PCRE2_ZERO_TERMINATED,
                                 PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &off, NULL);
        if (!p->re[i]) {
            PCRE2_UCHAR why[160];
            pcre2_get_error_message(err, why, sizeof why);
            snprintf(msg, msglen, "pre-tokenizer '%s': expression %d does not compile at %zu: %s",
                     name, i + 1, (size_t)off, (const char *)why);
            model__pretok_free(p);
            return NULL;
        }
        p->n = i + 1;
        /* Without the JIT (a kernel that forbids executable memory) the interpreter runs the
         * same expression, only slower. */
        p->jit[i] = pcre2_jit_compile(p->re[i], PCRE2_JIT_COMPLETE) == 0;
    }
    return p;
}

void model__pretok_free(model__pretok *p)
{
    if (!p)
        return;
    for (int i = 0; i < p->n; i++)
        pcre2_code_free(p->re[i]);
    free(p);
}

/* A growing list of pieces (offset, length) of the subject. */
typedef struct span {
    size_t off, len;
} span;

typedef struct spans {
    span *v;
    size_t n, cap;
} spans;

static int push(spans *s, size_t off, size_t len)
{
    if (len == 0)
        return 0;
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        span *v = realloc(s->v, cap * sizeof *v);
        if (!v)
            return -1;
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = (span){off, len};
    return 0;
}

/* Cuts one piece of s by expression re into out. */
static int cut(const pcre2_code *re, int jit, pcre2_match_data *md, const char *s, span in,
               spans *out)
{
    const char *sub = s + in.off;
    size_t pos = 0, gap = 0;
    while (pos <= in.len) {
        int rc = jit ? pcre2_jit_match(re, (PCRE2_SPTR)sub, in.len, pos, 0, md, NULL)
                     : pcre2_match(re, (PCRE2_SPTR)sub, in.len, pos, 0, md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH)
            break;
        if (rc < 0)
            return -1;
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t a = ov[0], b = ov[1];
        if (b == a) {
            /* An empty match splits nothing; step over one character. */
            pos = a + 1;
            while (pos < in.len && ((unsigned char)sub[pos] & 0xC0) == 0x80)
                pos++;
            continue;
        }
        if (push(out, in.off + gap, a - gap) || push(out, in.off + a, b - a))
            return -1;
        gap = pos = b;
    }
    return push(out, in.off + gap, in.len - gap);
}

/* Cuts piece in by expression level and each of its pieces by the next ones, depth first, so a
 * piece is finished while it is in cache (the words come out in the same order as cutting the
 * whole text by each expression in turn); lv[level] holds that level's pieces. */
static int split_level(const model__pretok *p, pcre2_match_data *md, spans *lv, int level,
                       const char *s, span in, int (*fn)(void *arg, const char *w, size_t n),
                       void *arg)
{
    if (level == p->n)
        return fn(arg, s + in.off, in.len) ? -1 : 0;
    spans *b = &lv[level];
    b->n = 0;
    if (cut(p->re[level], p->jit[level], md, s, in, b))
        return -1;
    for (size_t k = 0; k < b->n; k++)
        if (split_level(p, md, lv, level + 1, s, b->v[k], fn, arg))
            return -1;
    return 0;
}

int model__pretok_split(const model__pretok *p, const char *s, size_t len,
                        int (*fn)(void *arg, const char *w, size_t n), void *arg)
{
    spans lv[MAX_RE] = {{0}};
    int rc = -1;
    pcre2_match_data *md = pcre2_match_data_create(4, NULL);
    if (md)
        rc = len == 0 ? 0 : split_level(p, md, lv, 0, s, (span){0, len}, fn, arg);
    pcre2_match_data_free(md);
    for (int i = 0; i < MAX_RE; i++)
        free(lv[i].v);
    return rc;
}
