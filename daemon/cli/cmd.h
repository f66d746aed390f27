/* cmd.h — the prefixd subcommands and the option helpers they share.
 * Each srv_cmd_* takes the arguments after its name (argv[0] is the subcommand) and returns the
 * process exit code: 0 success, 1 a runtime failure, 2 bad usage or bad input (a clear message
 * on stderr first). */
#ifndef PREFIXD_CMD_H
#define PREFIXD_CMD_H

#include <stddef.h>
#include <stdint.h>

int srv_cmd_run(int argc, char **argv);           /* run.c */
int srv_cmd_synth(int argc, char **argv);         /* synth.c */
int srv_cmd_serve(int argc, char **argv);         /* serve.c */
int srv_cmd_tokenize(int argc, char **argv);      /* tokenize.c */
int srv_cmd_chat_template(int argc, char **argv); /* chat_template.c */

/* Parses a byte size: a number with an optional K, M, G or T suffix (powers of 1024, "B" and
 * "iB" accepted: 512M, 1G, 1GiB, 4096). Returns 0 or -1 (malformed, overflow). */
int srv_parse_size(const char *s, uint64_t *out);

/* Parses a whole number in [lo, hi]. Returns 0 or -1. */
int srv_parse_int(const char *s, long lo, long hi, long *out);

/* The tokenizer path to use for a model when none is given: "<model>.tok" if that file exists
 * (what `prefixd synth` writes), else "tokenizer.bin" beside the model (llama2.c's layout).
 * Writes into buf (cap bytes). Returns 0, or -1 with buf naming both paths tried. */
int srv_default_tokenizer(const char *model_path, char *buf, size_t cap);

typedef struct model model;
typedef struct model_tokenizer model_tokenizer;

/* Loads the model and its tokenizer (tok_path NULL: the model file's own vocabulary if it has
 * one, a GGUF's, else srv_default_tokenizer()), printing the
 * loader's message to stderr on failure. Returns 0, or 2 (the exit code for bad input) with
 * nothing loaded. Free with model_tokenizer_free() and model_free(). */
int srv_load(const char *model_path, const char *tok_path, model **m, model_tokenizer **tok);

#endif
