/* serve.c — `prefixd serve` (being written). */
#include "cmd.h"

#include <stdio.h>

int srv_cmd_serve(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "prefixd serve: not available in this build yet\n");
    return 2;
}
