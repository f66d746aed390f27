/* fuzz_template.c — feeds arbitrary bytes to the chat template parser and, when they parse,
 * renders them for a small conversation: any input must end in a template or a message, never
 * a crash, a hang or a leak (the arena and the output caps bound a hostile template). What
 * renders is also cut into segments, which must cover the same output in order, none empty,
 * and the family detection runs on it. Built as
 * a libFuzzer target with PREFIXD_FUZZ, and always as fuzz_template_corpus, which runs the seed
 * corpus (tests/fuzz/corpus/template: the real templates and small pieces of the language). */
#include "chat_template.h"
#include "model.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char msgs[] =
        "[{\"role\":\"system\",\"content\":\"S\"},{\"role\":\"user\",\"content\":\"U \\u00e9\"},"
        "{\"role\":\"assistant\",\"content\":\"A\",\"tool_calls\":[{\"function\":{\"name\":\"f\","
        "\"arguments\":{\"x\":1}},\"id\":\"abcdefghi\"}]},{\"role\":\"user\",\"content\":\"V\"}]";
    char msg[256];
    model_chat_template *t = NULL;
    if (model_chat_template_parse((const char *)data, size, &t, msg, sizeof msg) != 0)
        return 0;
    model_chat_opts o = {1, "<s>", "</s>", "{\"tools\":[{\"function\":{\"name\":\"f\"}}]}"};
    char *out = NULL;
    size_t len;
    (void)model_chat_family_detect((const char *)data, size);
    if (model_chat_template_render(t, msgs, sizeof msgs - 1, &o, &out, &len, msg, sizeof msg) ==
        0) {
        char *sout = NULL;
        size_t slen, ns;
        model_chat_segment *segs = NULL;
        if (model_chat_template_render_segments(t, msgs, sizeof msgs - 1, &o, &sout, &slen, &segs,
                                                &ns, msg, sizeof msg) == 0) {
            size_t at = 0;
            for (size_t i = 0; i < ns; i++) {
                if (segs[i].off != at || segs[i].len == 0)
                    abort();
                at += segs[i].len;
            }
            /* The same output, unless the template reads the clock. */
            if (at != slen || (!memmem(data, size, "strftime", 8) &&
                               (slen != len || memcmp(sout, out, len) != 0)))
                abort();
            free(sout);
            free(segs);
        }
        free(out);
    }
    model_chat_template_free(t);
    return 0;
}
