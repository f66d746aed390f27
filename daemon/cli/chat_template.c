/* chat_template.c — `prefixd chat-template`: renders a chat template for a list of messages.
 *
 *   prefixd chat-template (--model FILE | --template FILE.jinja | --chat-template NAME|FILE)
 *                         --messages FILE.json [--add-generation-prompt] [--bos TEXT]
 *                         [--eos TEXT] [--vars FILE.json] [--segments | --ids] [--quiet]
 *   prefixd chat-template (--model FILE | --chat-template NAME|FILE) --show-template
 *
 * --model takes the template from a GGUF file's tokenizer.chat_template and BOS/EOS texts from
 * its vocabulary; --chat-template NAME (a family: llama3, chatml, ...) or FILE overrides the
 * model's template, or stands alone (BOS/EOS then the family's usual texts); --template reads a
 * Jinja file (BOS/EOS from --bos/--eos, empty otherwise). The messages file is a JSON array of
 * {"role", "content"} objects; --vars a JSON object of further variables (tools, documents).
 * Prints the rendered prompt as it is, with no newline added, and on stderr the family
 * recognised ("chat template family: llama3 (...)"), or that none was and how to choose one
 * (--quiet drops the line, not the warning). --segments prints instead one line per segment:
 * "template" or "content", the turn it ends (0 for none) and its text as a JSON string.
 * --ids (with --model) prints instead the ids the prompt encodes to, space-separated on one
 * line: segment by segment, template text with its special tokens, contents as plain text, BOS
 * first when the vocabulary adds one and the prompt has none (model_chat_tokenize()).
 * --show-template prints the template that would render (a family's built-in one, or the
 * model's own) instead, and needs no messages. */
#include "chat_template.h"
#include "cmd.h"
#include "model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f,
            "usage: prefixd chat-template (--model FILE | --template FILE.jinja | "
            "--chat-template NAME|FILE)\n"
            "                             --messages FILE.json [--add-generation-prompt] "
            "[--bos TEXT] [--eos TEXT]\n"
            "                             [--vars FILE.json] [--segments] [--quiet]\n"
            "families: %s\n",
            model_chat_family_names());
}

/* A JSON string of s[0, n) on f. */
static void put_json(FILE *f, const char *s, size_t n)
{
    fputc('"', f);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c == '\n')
            fputs("\\n", f);
        else if (c == '\t')
            fputs("\\t", f);
        else if (c < 0x20 || c == 0x7f)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 65536, n = 0;
    char *b = malloc(cap + 1);
    for (size_t k; b && (k = fread(b + n, 1, cap - n, f)) > 0;) {
        n += k;
        if (n == cap) {
            char *nb = realloc(b, (cap *= 2) + 1);
            if (!nb) {
                free(b);
                b = NULL;
            } else
                b = nb;
        }
    }
    fclose(f);
    if (b)
        b[n] = 0;
    *len = n;
    return b;
}

int srv_cmd_chat_template(int argc, char **argv)
{
    const char *model_path = NULL, *tpl_path = NULL, *msgs_path = NULL, *vars_path = NULL,
               *override = NULL;
    int segments = 0, quiet = 0, show = 0, ids_out = 0;
    model_chat_opts o = {0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has = i + 1 < argc;
        if (!strcmp(a, "--model") && has)
            model_path = argv[++i];
        else if (!strcmp(a, "--template") && has)
            tpl_path = argv[++i];
        else if (!strcmp(a, "--chat-template") && has)
            override = argv[++i];
        else if (!strcmp(a, "--messages") && has)
            msgs_path = argv[++i];
        else if (!strcmp(a, "--vars") && has)
            vars_path = argv[++i];
        else if (!strcmp(a, "--bos") && has)
            o.bos_token = argv[++i];
        else if (!strcmp(a, "--eos") && has)
            o.eos_token = argv[++i];
        else if (!strcmp(a, "--add-generation-prompt"))
            o.add_generation_prompt = 1;
        else if (!strcmp(a, "--segments"))
            segments = 1;
        else if (!strcmp(a, "--quiet"))
            quiet = 1;
        else if (!strcmp(a, "--show-template"))
            show = 1;
        else if (!strcmp(a, "--ids"))
            ids_out = 1;
        else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "prefixd chat-template: unknown or incomplete option '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if ((!model_path && !tpl_path && !override) || (tpl_path && (model_path || override)) ||
        (!msgs_path && !show) || (ids_out && (!model_path || segments))) {
        fprintf(stderr, "prefixd chat-template: give --messages and --model, --template or "
                        "--chat-template (--template stands alone; --ids needs --model and no "
                        "--segments)\n");
        usage(stderr);
        return 2;
    }
    char msg[1024], note[1024];
    model_tokenizer *tok = NULL;
    char *msgs = NULL, *vars = NULL, *out = NULL;
    char bos[256] = "", eos[256] = "";
    size_t msgs_len, vars_len, out_len;
    model_chat_segment *segs = NULL;
    size_t nsegs = 0;
    model_chat_template *t = NULL;
    int rc = 2, family = MODEL_CHAT_UNKNOWN;
    const char *model_src = NULL;
    if (model_path) {
        if (model_tokenizer_open(model_path, &tok, msg, sizeof msg) != 0) {
            fprintf(stderr, "prefixd: %s\n", msg);
            goto out;
        }
        model_src = model_tokenizer_chat_template(tok);
        size_t l;
        const char *p;
        if (!o.bos_token && model_token_bos(tok) >= 0) {
            p = model_token_text(tok, model_token_bos(tok), &l);
            snprintf(bos, sizeof bos, "%.*s", (int)l, p);
            o.bos_token = bos;
        }
        if (!o.eos_token && model_token_eos(tok) >= 0) {
            p = model_token_text(tok, model_token_eos(tok), &l);
            snprintf(eos, sizeof eos, "%.*s", (int)l, p);
            o.eos_token = eos;
        }
    }
    if (tpl_path) {
        /* The file as given: no family defaults for BOS/EOS (--bos, --eos). */
        if (model_chat_template_choose(tpl_path, NULL, &t, &family, note, sizeof note, msg,
                                       sizeof msg) != 0) {
            fprintf(stderr, "prefixd: %s\n", msg);
            goto out;
        }
    } else {
        if (model_chat_template_choose(override, model_src, &t, &family, note, sizeof note, msg,
                                       sizeof msg) != 0) {
            if (model_path && !override)
                fprintf(stderr, "prefixd: '%s': %s\n", model_path, msg);
            else
                fprintf(stderr, "prefixd: %s\n", msg);
            goto out;
        }
        if (!model_path) {
            const char *fb, *fe;
            model_chat_family_tokens(family, &fb, &fe);
            if (!o.bos_token)
                o.bos_token = fb;
            if (!o.eos_token)
                o.eos_token = fe;
        }
    }
    if (show) {
        const char *src = model_chat_family_find(override ? override : "")
                              ? model_chat_family_source(model_chat_family_find(override))
                              : NULL;
        if (!src && !override)
            src = model_src;
        if (!src && (src = (override ? override : tpl_path)) != NULL) {
            size_t l;
            char *f = slurp(src, &l);
            if (f)
                fwrite(f, 1, l, stdout);
            free(f);
        } else if (src)
            fputs(src, stdout);
        rc = 0;
        goto out;
    }
    if (family)
        note[0] = 0;
    if (note[0])
        fprintf(stderr, "prefixd: warning: %s\n", note);
    else if (!quiet)
        fprintf(stderr, "chat template family: %s (%s)\n", model_chat_family_name(family),
                model_chat_family_about(family));
    if (!(msgs = slurp(msgs_path, &msgs_len))) {
        fprintf(stderr, "prefixd: cannot read messages '%s'\n", msgs_path);
        goto out;
    }
    if (vars_path && !(vars = slurp(vars_path, &vars_len))) {
        fprintf(stderr, "prefixd: cannot read variables '%s'\n", vars_path);
        goto out;
    }
    o.vars_json = vars;
    int r =
        segments || ids_out
            ? model_chat_template_render_segments(t, msgs, msgs_len, &o, &out, &out_len, &segs,
                                                  &nsegs, msg, sizeof msg)
            : model_chat_template_render(t, msgs, msgs_len, &o, &out, &out_len, msg, sizeof msg);
    if (r != 0) {
        fprintf(stderr, "prefixd: %s\n", msg);
        rc = r == MODEL_EINVAL ? 2 : 1;
        goto out;
    }
    if (ids_out) {
        int32_t *ids = NULL;
        size_t n = 0;
        if (model_chat_tokenize(tok, out, segs, nsegs, 1, &ids, &n, NULL) != 0) {
            fprintf(stderr, "prefixd: out of memory\n");
            rc = 1;
            goto out;
        }
        for (size_t i = 0; i < n; i++)
            printf("%s%d", i ? " " : "", ids[i]);
        putchar('\n');
        free(ids);
    } else if (segments)
        for (size_t i = 0; i < nsegs; i++) {
            printf("%s %d ", segs[i].content ? "content" : "template", segs[i].turn);
            put_json(stdout, out + segs[i].off, segs[i].len);
            putchar('\n');
        }
    else
        fwrite(out, 1, out_len, stdout);
    rc = 0;
out:
    model_chat_template_free(t);
    free(out);
    free(segs);
    free(msgs);
    free(vars);
    model_tokenizer_free(tok);
    return rc;
}
