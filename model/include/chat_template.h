/* chat_template.h — chat templates: the Jinja subset that models' tokenizer.chat_template uses,
 * the segments of a rendering (template text vs message content, turn ends) that keep rendered
 * chats token-prefix stable, and the template families with their built-in templates.
 *
 * A model ships its chat format as a Jinja template (Hugging Face's apply_chat_template renders
 * it with jinja2, trim_blocks and lstrip_blocks on). This is a small interpreter of our own for
 * the part of the language those templates use, with the same output byte for byte:
 *   text, {{ expr }}, {% if/elif/else/endif %}, {% for a[, b] in expr [if cond] %}...
 *   {% else %}{% endfor %} with loop.index, index0, first, last, length, revindex, revindex0,
 *   {% set name = expr %}, {% set ns.attr = expr %}, {% break %}, {% continue %},
 *   {% generation %}...{% endgeneration %}, {# comments #}, whitespace control ({%- -%} and
 *   trim_blocks, lstrip_blocks);
 *   literals (strings, integers, floats, true/false/none in either case, lists, dicts),
 *   attributes, subscripts and slices, calls, + - * / // % ~, comparisons, in / not in, and /
 *   or / not, x if c else y, `is [not]` tests (defined, undefined, none, string, number,
 *   integer, boolean, mapping, iterable, sequence, equalto, true, false, odd, even);
 *   filters: trim, length/count, string, list, tojson(indent=), join, items, upper, lower,
 *   title, capitalize, first, last, default/d, selectattr, rejectattr, select, reject, map
 *   (attribute=), int, float, abs, replace, unique, reverse, sort, safe, indent, wordcount;
 *   string methods: strip, lstrip, rstrip, replace, split, startswith, endswith, upper, lower,
 *   title, capitalize, find, count, format-free join; dict methods: items, keys, values, get;
 *   functions: raise_exception(msg), strftime_now(fmt), namespace(...), range(...).
 * Anything else is refused at parse time with its line ("unknown statement 'macro' at line 3"),
 * never rendered some other way. Rendering is bounded: nesting depth, output and memory size
 * (64 MB) are capped, so a hostile template fails with a message rather than exhausting the
 * machine.
 */
#ifndef PREFIXD_CHAT_TEMPLATE_H
#define PREFIXD_CHAT_TEMPLATE_H

#include "model.h"

#include <stddef.h>
#include <stdint.h>

typedef struct model_chat_template model_chat_template; /* opaque: a parsed template */

/* Parses src (len bytes). out: owned by the caller, freed with model_chat_template_free().
 * Returns 0, or MODEL_EFORMAT with a message naming the line and the problem in msg, or
 * MODEL_ENOMEM. */
int model_chat_template_parse(const char *src, size_t len, model_chat_template **out, char *msg,
                              size_t msglen);
void model_chat_template_free(model_chat_template *t);

typedef struct model_chat_opts {
    int add_generation_prompt;
    const char *bos_token; /* the vocabulary's BOS text ("<s>"), or NULL for "" */
    const char *eos_token;
    const char *vars_json; /* a JSON object of further variables (tools, documents...), or NULL */
} model_chat_opts;

/* Renders t for messages_json (a JSON array of messages, each an object with "role" and
 * "content" and whatever else the template reads) into *out (malloc'd, NUL-terminated, *out_len
 * bytes; the caller frees). Returns 0, MODEL_EINVAL (bad JSON, or the template raised:
 * raise_exception's message, an undefined value used, a type error) with msg, or
 * MODEL_ENOMEM / MODEL_ERANGE (the output or memory cap) with msg. */
int model_chat_template_render(const model_chat_template *t, const char *messages_json,
                               size_t json_len, const model_chat_opts *o, char **out,
                               size_t *out_len, char *msg, size_t msglen);

/* ---- Segments: what of a rendering is message content -----------------------------------
 * A rendered chat is tokenized per segment: template text with its special tokens matched
 * ("<|im_start|>" becomes that token), message content never (a user who writes "<|eot_id|>"
 * gets those characters), so no message can forge a turn. Segments also end at message
 * boundaries: where the rendering of the first k messages ends inside the rendering of more
 * (the k-th turn). Tokenized per segment, the ids up to turn k are the same in every longer
 * conversation: the token-prefix property a prefix cache lives on. A trailer that only ends a
 * conversation (Phi-3.5's EOS when no generation prompt follows) lies after the turn's end.
 * Spaces that end template text right before content go with the content, as tokenizers join a
 * space to the word after it. */
typedef struct model_chat_segment {
    size_t off, len; /* bytes of the rendered text */
    int content;     /* 1: message content (encode without special tokens); 0: template text */
    int turn;        /* > 0: the rendering of the first `turn` messages ends with this segment */
} model_chat_segment;

/* model_chat_template_render(), and the segments of the output in order (covering it, none
 * empty) in *segs (malloc'd, *nsegs of them; the caller frees). Contents are found by rendering
 * again with placeholders for them; a template that changes a content beyond trimming it, or
 * renders differently each time, is refused with MODEL_EINVAL and a message. Turn ends are
 * marked where the template keeps earlier turns as they were; a template that moves text
 * (a system prompt into the last user turn) gets no mark there. Costs two renderings per
 * message (of placeholders, so not of the contents' length). */
int model_chat_template_render_segments(const model_chat_template *t, const char *messages_json,
                                        size_t json_len, const model_chat_opts *o, char **out,
                                        size_t *out_len, model_chat_segment **segs, size_t *nsegs,
                                        char *msg, size_t msglen);

/* Tokenizes a rendering segment by segment: template text with MODEL_ENC_SPECIAL, contents
 * without, each piece continuing the one before (MODEL_ENC_CONTINUE unless that ended with a
 * special token). add_bos: put the BOS first when the vocabulary adds one (add_bos_token) and
 * the rendering does not start with it. *ids: malloc'd, *n_ids of them. ends: NULL, or nsegs
 * counts: the ids up to the end of each segment. Returns 0, MODEL_ENOMEM. */
int model_chat_tokenize(const model_tokenizer *tok, const char *text,
                        const model_chat_segment *segs, size_t nsegs, int add_bos, int32_t **ids,
                        size_t *n_ids, size_t *ends);

/* ---- Families ------------------------------------------------------------------------------
 * The chat formats of the common models, recognised from a template's text (its marker
 * strings: "<|start_header_id|>" is Llama 3, "<|im_start|>" ChatML, ...), each with a built-in
 * template written from its published format, so that a model without a template, or whose
 * template a user overrides, still renders its format. */
enum {
    MODEL_CHAT_UNKNOWN = 0,
    MODEL_CHAT_LLAMA2,            /* <s>[INST] <<SYS>>..<</SYS>> u [/INST] a </s> */
    MODEL_CHAT_LLAMA3,            /* <|start_header_id|>role<|end_header_id|>\n\n..<|eot_id|> */
    MODEL_CHAT_CHATML,            /* <|im_start|>role\n..<|im_end|>\n: Qwen, SmolLM, Hermes */
    MODEL_CHAT_MISTRAL_V1,        /* <s> [INST] u [/INST] a</s> */
    MODEL_CHAT_MISTRAL_V3,        /* <s>[INST] u[/INST] a</s> */
    MODEL_CHAT_MISTRAL_V3_TEKKEN, /* <s>[INST]u[/INST]a</s>: Nemo */
    MODEL_CHAT_MISTRAL_V7,        /* <s>[SYSTEM_PROMPT] s[/SYSTEM_PROMPT][INST] u[/INST] a</s> */
    MODEL_CHAT_MISTRAL_V7_TEKKEN, /* the same without the spaces: Small 3.x */
    MODEL_CHAT_PHI3,              /* <|role|>\n..<|end|>\n */
    MODEL_CHAT_GEMMA,             /* <start_of_turn>user\n..<end_of_turn>\n, model for assistant */
    MODEL_CHAT_ZEPHYR,            /* <|role|>\n..</s>\n */
    MODEL_CHAT_DEEPSEEK,          /* User: u\n\nAssistant: a<｜end▁of▁sentence｜> (LLM, V2) */
    MODEL_CHAT_DEEPSEEK3, /* <｜User｜>u<｜Assistant｜>a<｜end▁of▁sentence｜> (V3, R1) */
    MODEL_CHAT_GRANITE,   /* <|start_of_role|>role<|end_of_role|>..<|end_of_text|>\n */
    MODEL_CHAT_NFAMILIES
};

/* The family a template's text belongs to, or MODEL_CHAT_UNKNOWN. */
int model_chat_family_detect(const char *src, size_t len);
/* The family of a name or alias ("llama3", "qwen", "mistral-nemo"; any case), or 0. */
int model_chat_family_find(const char *name);
const char *model_chat_family_name(int family);  /* "llama3"; "unknown" */
const char *model_chat_family_about(int family); /* one line: the format */
const char *model_chat_family_names(void);       /* every name, comma-separated */
/* The built-in template (NUL-terminated Jinja), or NULL for MODEL_CHAT_UNKNOWN. */
const char *model_chat_family_source(int family);
/* The BOS and EOS texts the family's models use, for rendering without a vocabulary. */
void model_chat_family_tokens(int family, const char **bos, const char **eos);

/* Chooses and parses the template a model's chats render with. override: NULL, a family name
 * (its built-in template) or a Jinja file's path (--chat-template NAME|FILE); model_src: the
 * model's tokenizer.chat_template, or NULL. Without an override the model's own template
 * renders (as Hugging Face renders it), recognised or not: an unrecognised one is rendered as
 * written, and note (when not NULL) then says so and names --chat-template; note is "" when
 * the family is known. *family: the family chosen or recognised. Returns 0, or MODEL_EINVAL with
 * msg naming --chat-template: no template and no override, an override that is neither a name
 * nor a readable file, a template that does not parse. */
int model_chat_template_choose(const char *override, const char *model_src,
                               model_chat_template **out, int *family, char *note, size_t notelen,
                               char *msg, size_t msglen);

#endif
