/* chat.h — `prefixctl chat`, the interactive conversation (chat.c). */
#ifndef PREFIXCTL_CHAT_H
#define PREFIXCTL_CHAT_H

#include <stdint.h>

typedef struct chat_opts {
    const char *socket; /* NULL: the default socket */
    const char *ns;     /* namespace or NULL */
    const char *system; /* text that opens the conversation, or NULL */
    uint32_t max_new;   /* -n: new tokens per reply at most */
    float temp, top_p;
    uint64_t seed;    /* turn t samples with seed + t */
    int context_stop; /* --context-policy stop: never drop turns, end when the context is full */
} chat_opts;

/* Runs the chat on stdin (line editing when it is a terminal) and returns prefixctl's exit code:
 * 0, 1 (daemon or connection error), 2 (input the daemon refuses). */
int chat_main(const chat_opts *o);

#endif
