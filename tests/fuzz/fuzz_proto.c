/* fuzz_proto.c — feeds arbitrary bytes to the frame decoder as a connection would: decode frame
 * after frame until NEED_MORE or a framing error; every message that decodes re-encodes to a
 * frame that decodes to the same message. Built as a libFuzzer target with PREFIXD_FUZZ, and
 * always as fuzz_proto_corpus, which runs the seed corpus (tests/fuzz/corpus/proto) as a test. */
#include "proto.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_roundtrip(const proto_msg *m)
{
    size_t n = proto_encode(m, NULL, 0);
    uint8_t *buf = malloc(n);
    if (!buf)
        abort();
    if (proto_encode(m, buf, n) != n)
        abort();
    proto_msg back;
    long r = proto_decode(buf, n, n + 16, &back);
    if (r != (long)n || back.type != m->type || back.id != m->id || back.flags != m->flags)
        abort();
    /* Re-encoding the decoded copy gives the same bytes. */
    uint8_t *again = malloc(n);
    if (!again || proto_encode(&back, again, n) != n || memcmp(buf, again, n) != 0)
        abort();
    free(again);
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t off = 0;
    for (int frames = 0; frames < 1000; frames++) {
        proto_msg m;
        long r = proto_decode(data + off, size - off, 4096, &m);
        if (r == PROTO_NEED_MORE || r < 0)
            break;
        if ((size_t)r > size - off)
            abort(); /* consumed more than it was given */
        if (m.type != PROTO_TYPE_INVALID) {
            check_roundtrip(&m);
            if (m.type == PROTO_TOKENIZE)
                (void)proto_utf8_check(m.u.text.p, m.u.text.len);
            if (m.type == PROTO_GENERATE)
                (void)proto_namespace_valid(m.u.gen.ns);
        }
        off += (size_t)r;
    }
    return 0;
}
