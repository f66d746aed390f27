/* test_template.c — the chat template interpreter against Python's jinja2 (the outputs in
 * tests/data/templates/expected, written by make_expected.py), the token-prefix property of
 * rendered conversations, and refused templates. */
#include "chat_template.h"
#include "harness.h"
#include "model.h"

#include <cJSON.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TPL_DIR PREFIXD_SOURCE_DIR "/tests/data/templates"

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    CHECK_MSG(f != NULL, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    char *b = malloc((size_t)n + 1);
    CHECK(fread(b, 1, (size_t)n, f) == (size_t)n);
    fclose(f);
    b[n] = 0;
    *len = (size_t)n;
    return b;
}

static const struct {
    const char *name, *bos, *eos;
} toks[] = {
    {"meta-llama-Llama-3.1-8B-Instruct", "<|begin_of_text|>", "<|eot_id|>"},
    {"Qwen-Qwen2.5-7B-Instruct", "", "<|im_end|>"},
    {"microsoft-Phi-3.5-mini-instruct", "<s>", "<|endoftext|>"},
    {"google-gemma-2-2b-it", "<bos>", "<eos>"},
    {"mistralai-Mistral-Nemo-Instruct-2407", "<s>", "</s>"},
    {"HuggingFaceTB-SmolLM3-3B", "", "<|im_end|>"},
    {"ibm-granite-granite-3.3-2B-Instruct", "", "<|end_of_text|>"},
};

static model_chat_template *load_tpl(const char *name)
{
    char path[600], msg[512];
    snprintf(path, sizeof path, "%s/%s.jinja", TPL_DIR, name);
    size_t n;
    char *src = slurp(path, &n);
    model_chat_template *t = NULL;
    CHECK_MSG(model_chat_template_parse(src, n, &t, msg, sizeof msg) == 0, "%s: %s", name, msg);
    free(src);
    return t;
}

/* Renders template name for case of messages.json; returns the output or NULL (msg). */
static char *render(model_chat_template *t, int tok_i, cJSON *spec, const cJSON *msgs, char *msg,
                    size_t msglen, int *rc)
{
    char *mj = cJSON_PrintUnformatted(msgs);
    cJSON *vars = cJSON_GetObjectItem(spec, "vars");
    char *vj = vars ? cJSON_PrintUnformatted(vars) : NULL;
    model_chat_opts o = {cJSON_IsTrue(cJSON_GetObjectItem(spec, "add_generation_prompt")),
                         toks[tok_i].bos, toks[tok_i].eos, vj};
    char *out = NULL;
    size_t len;
    *rc = model_chat_template_render(t, mj, strlen(mj), &o, &out, &len, msg, msglen);
    free(mj);
    free(vj);
    return out;
}

static void test_reference(void)
{
    size_t n;
    char *mj = slurp(TPL_DIR "/messages.json", &n);
    cJSON *cases = cJSON_Parse(mj);
    CHECK(cases != NULL);
    int checked = 0, errors = 0;
    for (size_t i = 0; i < sizeof toks / sizeof toks[0]; i++) {
        model_chat_template *t = load_tpl(toks[i].name);
        for (cJSON *c = cases->child; c; c = c->next) {
            char base[700], path[720], msg[512];
            snprintf(base, sizeof base, "%s/expected/%s.%s", TPL_DIR, toks[i].name, c->string);
            int rc;
            char *out =
                render(t, (int)i, c, cJSON_GetObjectItem(c, "messages"), msg, sizeof msg, &rc);
            snprintf(path, sizeof path, "%s.txt", base);
            FILE *f = fopen(path, "rb");
            if (f) {
                fclose(f);
                size_t el;
                char *want = slurp(path, &el);
                CHECK_MSG(rc == 0, "%s/%s: %s", toks[i].name, c->string, msg);
                CHECK_MSG(strlen(out) == el && memcmp(out, want, el) == 0,
                          "%s/%s differs:\n--- got\n%s\n--- want\n%s", toks[i].name, c->string, out,
                          want);
                free(want);
                checked++;
            } else {
                snprintf(path, sizeof path, "%s.error", base);
                f = fopen(path, "rb");
                if (f) {
                    fclose(f);
                    size_t el;
                    char *want = slurp(path, &el);
                    want[el - 1] = 0;
                    CHECK_EQ_INT(rc, MODEL_EINVAL);
                    CHECK_STR_CONTAINS(msg, want);
                    free(want);
                    errors++;
                }
            }
            free(out);
        }
        model_chat_template_free(t);
    }
    CHECK(checked >= 20);
    CHECK(errors >= 3);
    cJSON_Delete(cases);
    free(mj);
}

/* Bad templates are refused with the line and the problem, never rendered. */
static void test_bad_templates(void)
{
    static const struct {
        const char *src, *needle;
    } bad[] = {
        {"{% if x %}a", "no 'endif'"},
        {"{% for m in messages %}", "no 'endfor'"},
        {"{% macro f() %}{% endmacro %}", "unknown statement 'macro'"},
        {"a\n{{ 'open }}", "unclosed '{{' at line 2"},
        {"{{ 'x' | nosuchfilter }}", NULL},
        {"{{ (((((( }}", "expected a value"},
        {"{% endif %}", "unknown statement 'endif'"},
        {"{{ 1 +", "unclosed"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char msg[512] = "";
        model_chat_template *t = NULL;
        int rc = model_chat_template_parse(bad[i].src, strlen(bad[i].src), &t, msg, sizeof msg);
        if (!bad[i].needle) { /* parses; fails when rendered */
            CHECK_EQ_INT(rc, 0);
            char *out = NULL;
            size_t len;
            model_chat_opts o = {0};
            CHECK_EQ_INT(model_chat_template_render(t, "[]", 2, &o, &out, &len, msg, sizeof msg),
                         MODEL_EINVAL);
            CHECK_STR_CONTAINS(msg, "unknown filter 'nosuchfilter'");
            model_chat_template_free(t);
            continue;
        }
        CHECK_MSG(rc == MODEL_EFORMAT, "'%s' parsed", bad[i].src);
        CHECK_STR_CONTAINS(msg, bad[i].needle);
    }
    /* Runaway output is capped, not run to exhaustion. */
    const char *boom = "{% set ns = namespace(s='xxxxxxxxxxxxxxxx') %}{% for i in range(40) %}"
                       "{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}";
    char msg[512];
    model_chat_template *t = NULL;
    CHECK(model_chat_template_parse(boom, strlen(boom), &t, msg, sizeof msg) == 0);
    char *out = NULL;
    size_t len;
    model_chat_opts o = {0};
    CHECK_EQ_INT(model_chat_template_render(t, "[]", 2, &o, &out, &len, msg, sizeof msg),
                 MODEL_ERANGE);
    CHECK_STR_CONTAINS(msg, "MB");
    model_chat_template_free(t);
}

/* Expressions and whitespace rules beyond what the real templates use; each expected output is
 * what jinja2 3.1.6 renders (trim_blocks, lstrip_blocks, loopcontrols). */
static void test_language(void)
{
    static const struct {
        const char *src, *want;
    } cases[] = {
        {"{{ 1 + 2 * 3 }}|{{ 7 // 2 }}|{{ -7 % 3 }}|{{ 7 / 2 }}", "7|3|2|3.5"},
        {"{{ 'a' ~ 1 ~ none }}|{{ [1, 'b'] }}|{{ {'k': true} }}", "a1None|[1, 'b']|{'k': True}"},
        {"{% for x in [1,2,3] if x != 2 %}{{ loop.index }}{{ x }}{{ ',' if not loop.last }}"
         "{% endfor %}",
         "11,23"},
        {"{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }};{% endfor %}", "a=1;b=2;"},
        {"{% for x in [] %}x{% else %}empty{% endfor %}", "empty"},
        {"{% for x in range(5) %}{% if x == 3 %}{% break %}{% endif %}{{ x }}{% endfor %}", "012"},
        {"{{ '  hi  ' | trim }}|{{ 'a,b'.split(',') | join('-') }}|{{ 'Hey'.upper() }}",
         "hi|a-b|HEY"},
        {"{{ 'abc'[1:] }}{{ 'abc'[-1] }}{{ [1,2,3][:-1] | length }}", "bcc2"},
        {"{{ x is defined }}{{ none is none }}{{ 'a' is string }}{{ 3 is odd }}",
         "FalseTrueTrueTrue"},
        {"{{ {'a': [1, 'é']} | tojson }}|{{ [1] | tojson(indent=2) }}",
         "{\"a\": [1, \"é\"]}|[\n  1\n]"},
        {"  {% if true %}\n    x\n  {% endif %}\ny", "    x\ny"},
        {"a  {%- if true -%}  b  {%- endif -%}  c", "abc"},
        {"{% set x = 1 %}{% for i in [1] %}{% set x = 2 %}{% endfor %}{{ x }}", "1"},
        {"{{ 'x' if false }}|{{ 'a' if 1 > 2 else 'b' }}", "|b"},
        {"{{ ['b','a'] | sort | first }}{{ [1,1,2] | unique | list | length }}", "a2"},
        {"line\n", "line"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char msg[512];
        model_chat_template *t = NULL;
        CHECK_MSG(
            model_chat_template_parse(cases[i].src, strlen(cases[i].src), &t, msg, sizeof msg) == 0,
            "%s: %s", cases[i].src, msg);
        char *out = NULL;
        size_t len;
        model_chat_opts o = {0};
        CHECK_MSG(model_chat_template_render(t, "[]", 2, &o, &out, &len, msg, sizeof msg) == 0,
                  "%s: %s", cases[i].src, msg);
        CHECK_MSG(strcmp(out, cases[i].want) == 0, "%s: got '%s', want '%s'", cases[i].src, out,
                  cases[i].want);
        free(out);
        model_chat_template_free(t);
    }
}

static const harness_case cases[] = {
    {"reference", test_reference},
    {"bad_templates", test_bad_templates},
    {"language", test_language},
};

HARNESS_MAIN(cases)
