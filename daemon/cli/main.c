/* main.c — the prefixd command: dispatches to a subcommand (serve, run, synth, tokenize,
 * chat-template). */
#include "cmd.h"
#include "prefixd_version.h"

#include <stdio.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f, "usage: prefixd <command> [options]\n"
               "\n"
               "commands:\n"
               "  serve   the daemon: serve generation on a Unix socket with a prefix cache\n"
               "  run     one generation in-process: prints the prompt and its continuation\n"
               "  synth   write a model with random weights of a given shape\n"
               "  tokenize       print the ids (or pieces) of a text under a model's tokenizer\n"
               "  chat-template  render a chat template for a JSON list of messages\n"
               "\n"
               "'prefixd <command> --help' lists a command's options; 'prefixd --version' prints\n"
               "the version.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "serve") == 0)
        return srv_cmd_serve(argc - 1, argv + 1);
    if (strcmp(cmd, "run") == 0)
        return srv_cmd_run(argc - 1, argv + 1);
    if (strcmp(cmd, "synth") == 0)
        return srv_cmd_synth(argc - 1, argv + 1);
    if (strcmp(cmd, "tokenize") == 0)
        return srv_cmd_tokenize(argc - 1, argv + 1);
    if (strcmp(cmd, "chat-template") == 0)
        return srv_cmd_chat_template(argc - 1, argv + 1);
    if (strcmp(cmd, "--version") == 0) {
        printf("prefixd %s (git %s)\n", PREFIXD_VERSION, PREFIXD_GIT);
        return 0;
    }
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "prefixd: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
