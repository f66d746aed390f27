/* chat_template.h — chat templates: the Jinja subset that models' tokenizer.chat_template uses.
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

#include <stddef.h>

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

#endif
