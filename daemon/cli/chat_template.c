/* chat_template.c — `prefixd chat-template`: renders a chat template for a list of messages.
 *
 *   prefixd chat-template (--model FILE | --template FILE.jinja) --messages FILE.json
 *                         [--add-generation-prompt] [--bos TEXT] [--eos TEXT] [--vars FILE.json]
 *
 * --model takes the template from a GGUF file's tokenizer.chat_template and BOS/EOS texts from
 * its vocabulary; --template reads a Jinja file (BOS/EOS from --bos/--eos, empty otherwise).
 * The messages file is a JSON array of {"role", "content"} objects; --vars a JSON object of
 * further variables (tools, documents). Prints the rendered prompt as it is, with no newline
 * added. */
#include "chat_template.h"
#include "cmd.h"
#include "model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f, "usage: prefixd chat-template (--model FILE | --template FILE.jinja) --messages "
               "FILE.json\n"
               "                             [--add-generation-prompt] [--bos TEXT] [--eos TEXT] "
               "[--vars FILE.json]\n");
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
    const char *model_path = NULL, *tpl_path = NULL, *msgs_path = NULL, *vars_path = NULL;
    model_chat_opts o = {0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has = i + 1 < argc;
        if (!strcmp(a, "--model") && has)
            model_path = argv[++i];
        else if (!strcmp(a, "--template") && has)
            tpl_path = argv[++i];
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
        else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "prefixd chat-template: unknown or incomplete option '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!!model_path == !!tpl_path || !msgs_path) {
        fprintf(stderr, "prefixd chat-template: give --messages and one of --model, --template\n");
        usage(stderr);
        return 2;
    }
    char msg[1024];
    model_tokenizer *tok = NULL;
    char *src = NULL, *msgs = NULL, *vars = NULL, *out = NULL;
    char bos[256] = "", eos[256] = "";
    size_t src_len = 0, msgs_len, vars_len, out_len;
    int rc = 2;
    if (model_path) {
        if (model_tokenizer_open(model_path, &tok, msg, sizeof msg) != 0) {
            fprintf(stderr, "prefixd: %s\n", msg);
            goto out;
        }
        const char *t = model_tokenizer_chat_template(tok);
        if (!t) {
            fprintf(stderr,
                    "prefixd: '%s' carries no chat template (tokenizer.chat_template); "
                    "give --template\n",
                    model_path);
            goto out;
        }
        src = strdup(t);
        src_len = strlen(t);
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
    } else if (!(src = slurp(tpl_path, &src_len))) {
        fprintf(stderr, "prefixd: cannot read template '%s'\n", tpl_path);
        goto out;
    }
    if (!(msgs = slurp(msgs_path, &msgs_len))) {
        fprintf(stderr, "prefixd: cannot read messages '%s'\n", msgs_path);
        goto out;
    }
    if (vars_path && !(vars = slurp(vars_path, &vars_len))) {
        fprintf(stderr, "prefixd: cannot read variables '%s'\n", vars_path);
        goto out;
    }
    o.vars_json = vars;
    model_chat_template *t = NULL;
    if (model_chat_template_parse(src, src_len, &t, msg, sizeof msg) != 0) {
        fprintf(stderr, "prefixd: %s\n", msg);
        goto out;
    }
    int r = model_chat_template_render(t, msgs, msgs_len, &o, &out, &out_len, msg, sizeof msg);
    model_chat_template_free(t);
    if (r != 0) {
        fprintf(stderr, "prefixd: %s\n", msg);
        rc = r == MODEL_EINVAL ? 2 : 1;
        goto out;
    }
    fwrite(out, 1, out_len, stdout);
    rc = 0;
out:
    free(out);
    free(src);
    free(msgs);
    free(vars);
    model_tokenizer_free(tok);
    return rc;
}
