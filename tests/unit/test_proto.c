/* test_proto.c — the wire format: round trips, partial frames, framing errors, bad bodies,
 * UTF-8 and namespace checks, and fixed byte vectors (the same hex as the Python client's test). */
#include "harness.h"
#include "proto.h"

#include <stdlib.h>
#include <string.h>

static size_t enc(const proto_msg *m, uint8_t *buf, size_t cap)
{
    size_t n = proto_encode(m, buf, cap);
    CHECK(n <= cap);
    return n;
}

static void test_roundtrip(void)
{
    uint8_t buf[512];
    proto_msg m = {0}, d;
    m.type = PROTO_GENERATE;
    m.flags = PROTO_GEN_TOKENS;
    m.id = 77;
    m.u.gen.max_new = 9;
    m.u.gen.temp = 0.5f;
    m.u.gen.top_p = 0.9f;
    m.u.gen.seed = 0x1122334455667788ull;
    m.u.gen.ns = (proto_str){"team-a", 6};
    uint8_t ids[12] = {1, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f, 3, 1, 0, 0};
    m.u.gen.ids = (proto_ids){ids, 3};
    size_t n = enc(&m, buf, sizeof buf);
    CHECK_EQ_INT(proto_decode(buf, n, 4096, &d), n);
    CHECK_EQ_INT(d.type, PROTO_GENERATE);
    CHECK_EQ_INT(d.id, 77);
    CHECK_EQ_INT(d.u.gen.max_new, 9);
    CHECK(d.u.gen.temp == 0.5f && d.u.gen.top_p == 0.9f);
    CHECK_EQ_U64(d.u.gen.seed, 0x1122334455667788ull);
    CHECK(d.u.gen.ns.len == 6 && memcmp(d.u.gen.ns.p, "team-a", 6) == 0);
    CHECK_EQ_INT(d.u.gen.ids.n, 3);
    CHECK_EQ_INT(proto_ids_get(d.u.gen.ids, 1), 0x7fffffff);
    CHECK_EQ_INT(proto_ids_get(d.u.gen.ids, 2), 259);

    proto_msg t = {0};
    t.type = PROTO_DONE;
    t.id = 5;
    t.u.done.finish = PROTO_FINISH_LENGTH;
    t.u.done.prompt_tokens = 1540;
    t.u.done.cached_tokens = 1536;
    t.u.done.cached_tokens_disk = 16;
    t.u.done.new_tokens = 3;
    t.u.done.ttft_ms = 12.5;
    t.u.done.total_ms = 99.25;
    n = enc(&t, buf, sizeof buf);
    CHECK_EQ_INT(proto_decode(buf, n, 4096, &d), n);
    CHECK(d.u.done.finish == PROTO_FINISH_LENGTH && d.u.done.cached_tokens == 1536 &&
          d.u.done.cached_tokens_disk == 16 && d.u.done.ttft_ms == 12.5 &&
          d.u.done.total_ms == 99.25);
    CHECK_EQ_INT(n, 4 + 8 + 52);
    CHECK_EQ_INT(d.u.done.cached_tokens_remote, 0);
    /* With flag REMOTE (asked for by capability 32): 4 more bytes, cached_tokens_remote. */
    t.flags = PROTO_DONE_REMOTE;
    t.u.done.cached_tokens_remote = 1520;
    n = enc(&t, buf, sizeof buf);
    CHECK_EQ_INT(n, 4 + 8 + 56);
    CHECK_EQ_INT(proto_decode(buf, n, 4096, &d), n);
    CHECK(d.flags == PROTO_DONE_REMOTE && d.u.done.cached_tokens_remote == 1520 &&
          d.u.done.total_ms == 99.25);
    /* The flag without the field, the field without the flag, or another flag: refused. */
    buf[0] = (uint8_t)(buf[0] - 4);
    CHECK_EQ_INT(proto_decode(buf, n - 4, 4096, &d), n - 4);
    CHECK_EQ_INT(d.type, PROTO_TYPE_INVALID);
    buf[0] = (uint8_t)(buf[0] + 4);
    buf[6] = 0;
    CHECK_EQ_INT(proto_decode(buf, n, 4096, &d), n);
    CHECK_EQ_INT(d.type, PROTO_TYPE_INVALID);
    buf[6] = 2;
    CHECK_EQ_INT(proto_decode(buf, n, 4096, &d), n);
    CHECK_EQ_INT(d.type, PROTO_TYPE_INVALID);
    t.flags = 0;
    /* Every type survives a round trip. */
    for (int type = PROTO_HELLO; type <= PROTO_TEXT; type++) {
        proto_msg x = {0};
        x.type = (uint16_t)type;
        x.id = (uint32_t)type;
        if (type == PROTO_HELLO)
            x.u.hello.magic = PROTO_MAGIC;
        if (type == PROTO_TOKEN)
            x.u.token.piece = (proto_str){"ab", 2};
        n = enc(&x, buf, sizeof buf);
        CHECK_EQ_INT(proto_decode(buf, n, 4096, &d), n);
        CHECK_EQ_INT(d.type, type);
        CHECK_EQ_INT(d.id, type);
    }
    /* Too small a buffer: the size needed, nothing promised written. */
    CHECK(proto_encode(&m, buf, 3) == n + 0 * 0 || proto_encode(&m, buf, 3) > 3);
}

/* The bytes PROTOCOL.md shows and clients/python's test also checks. */
static void test_vectors(void)
{
    uint8_t buf[128];
    proto_msg h = {0};
    h.type = PROTO_HELLO;
    h.u.hello.magic = PROTO_MAGIC;
    h.u.hello.version = PROTO_VERSION;
    size_t n = enc(&h, buf, sizeof buf);
    const uint8_t hello[] = {0x14, 0,   0,   0,   1, 0, 0, 0, 0, 0, 0, 0,
                             'P',  'F', 'X', 'D', 1, 0, 0, 0, 0, 0, 0, 0};
    CHECK_EQ_INT(n, sizeof hello);
    CHECK(memcmp(buf, hello, n) == 0);
    proto_msg g = {0};
    g.type = PROTO_GENERATE;
    g.id = 1;
    g.u.gen.max_new = 8;
    g.u.gen.ns = (proto_str){"", 0};
    g.u.gen.text = (proto_str){"Hi", 2};
    n = enc(&g, buf, sizeof buf);
    const uint8_t gen[] = {0x26, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0,   0,
                           0,    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 'H', 'i'};
    CHECK_EQ_INT(n, sizeof gen);
    CHECK(memcmp(buf, gen, n) == 0);
}

static void test_partial_and_errors(void)
{
    uint8_t buf[256];
    proto_msg m = {0}, d;
    m.type = PROTO_TOKENIZE;
    m.id = 3;
    m.u.text = (proto_str){"hello world", 11};
    size_t n = enc(&m, buf, sizeof buf);
    for (size_t k = 0; k < n; k++)
        CHECK_EQ_INT(proto_decode(buf, k, 4096, &d), PROTO_NEED_MORE);
    /* Framing errors. */
    uint8_t big[12] = {0xff, 0xff, 0xff, 0x7f, 3, 0, 0, 0, 1, 0, 0, 0};
    CHECK_EQ_INT(proto_decode(big, sizeof big, 4096, &d), -PROTO_ERR_TOO_BIG);
    uint8_t small[12] = {4, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0};
    CHECK_EQ_INT(proto_decode(small, sizeof small, 4096, &d), -PROTO_ERR_BAD_FRAME);
    /* The max-frame boundary: exactly max is accepted, one more refused. */
    CHECK_EQ_INT(proto_decode(buf, n, n, &d), n);
    CHECK_EQ_INT(proto_decode(buf, n, n - 1, &d), -PROTO_ERR_TOO_BIG);
    /* A string length past the body: a bad body, the frame is skipped whole. */
    buf[12] = 0xff;
    CHECK_EQ_INT(proto_decode(buf, n, 4096, &d), n);
    CHECK_EQ_INT(d.type, PROTO_TYPE_INVALID);
    CHECK_EQ_INT(d.u.error.code, PROTO_ERR_BAD_FRAME);
    /* Unknown type. */
    uint8_t unk[12] = {8, 0, 0, 0, 99, 0, 0, 0, 4, 0, 0, 0};
    CHECK_EQ_INT(proto_decode(unk, sizeof unk, 4096, &d), 12);
    CHECK_EQ_INT(d.type, PROTO_TYPE_INVALID);
    CHECK_EQ_INT(d.u.error.code, PROTO_ERR_UNKNOWN_TYPE);
    CHECK_EQ_INT(d.id, 4);
    /* Trailing bytes. */
    uint8_t trail[13] = {9, 0, 0, 0, 9, 0, 0, 0, 4, 0, 0, 0, 0};
    CHECK_EQ_INT(proto_decode(trail, sizeof trail, 4096, &d), 13);
    CHECK_EQ_INT(d.type, PROTO_TYPE_INVALID);
    /* HELLO with a bad magic. */
    uint8_t bad_hello[24] = {0x14, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 'X', 'X', 'X', 'X', 1};
    CHECK_EQ_INT(proto_decode(bad_hello, sizeof bad_hello, 4096, &d), 24);
    CHECK_EQ_INT(d.type, PROTO_TYPE_INVALID);
    /* An id count whose bytes would overflow. */
    proto_msg x = {0};
    x.type = PROTO_DETOKENIZE;
    n = enc(&x, buf, sizeof buf);
    buf[12] = 0xff, buf[13] = 0xff, buf[14] = 0xff, buf[15] = 0xff;
    CHECK_EQ_INT(proto_decode(buf, n, 4096, &d), n);
    CHECK_EQ_INT(d.type, PROTO_TYPE_INVALID);
}

static void test_utf8_and_ns(void)
{
    const char ok[] = "héllo ☃ 😀";
    CHECK_EQ_INT(proto_utf8_check(ok, sizeof ok - 1), sizeof ok - 1);
    CHECK_EQ_INT(proto_utf8_check("a\xc0\xafz", 4), 1);       /* overlong */
    CHECK_EQ_INT(proto_utf8_check("ab\xed\xa0\x80", 5), 2);   /* surrogate */
    CHECK_EQ_INT(proto_utf8_check("\xf4\x90\x80\x80", 4), 0); /* > U+10FFFF */
    CHECK_EQ_INT(proto_utf8_check("xyz\xe2\x82", 5), 3);      /* truncated */
    CHECK_EQ_INT(proto_utf8_check("\x80", 1), 0);             /* stray continuation */
    CHECK(proto_namespace_valid((proto_str){"team-a.b_c", 10}));
    CHECK(proto_namespace_valid((proto_str){"", 0}));
    CHECK(!proto_namespace_valid((proto_str){"a/b", 3}));
    CHECK(!proto_namespace_valid((proto_str){"sp ace", 6}));
    char longns[70];
    memset(longns, 'a', sizeof longns);
    CHECK(!proto_namespace_valid((proto_str){longns, 65}));
    CHECK(proto_namespace_valid((proto_str){longns, 64}));
    CHECK_STR_EQ(proto_strerror(PROTO_ERR_BUSY), "too many requests");
}

/* CHAT: the PROTOCOL.md example byte for byte, a round trip of its message list, and bodies
 * that are refused (a list shorter than its count, unknown flags). */
static void test_chat(void)
{
    uint8_t buf[256];
    proto_msg m = {0}, d;
    proto_chat_msg one = {{"user", 4}, {"Hi", 2}};
    m.type = PROTO_CHAT;
    m.id = 2;
    m.u.chat.max_new = 8;
    m.u.chat.ns = (proto_str){"", 0};
    m.u.chat.system = (proto_str){"", 0};
    m.u.chat.n_msgs = 1;
    m.u.chat.msgs = &one;
    size_t n = enc(&m, buf, sizeof buf);
    const uint8_t want[] = {0x36, 0, 0, 0, 15,  0,   0,   0,   2, 0, 0, 0, /* header */
                            8,    0, 0, 0,                                 /* max_new */
                            0,    0, 0, 0, 0,   0,   0,   0,               /* temp, top_p */
                            0,    0, 0, 0, 0,   0,   0,   0,               /* seed */
                            0,    0, 0, 0,                                 /* namespace */
                            0,    0, 0, 0,                                 /* system */
                            1,    0, 0, 0,                                 /* one message */
                            4,    0, 0, 0, 'u', 's', 'e', 'r', 2, 0, 0, 0, 'H', 'i'};
    CHECK_EQ_INT(n, sizeof want);
    CHECK(memcmp(buf, want, n) == 0);

    proto_chat_msg two[2] = {{{"user", 4}, {"<|eot_id|>", 10}}, {{"assistant", 9}, {"", 0}}};
    m.u.chat.system = (proto_str){"Be brief.", 9};
    m.u.chat.ns = (proto_str){"t1", 2};
    m.u.chat.temp = 0.5f;
    m.u.chat.n_msgs = 2;
    m.u.chat.msgs = two;
    n = enc(&m, buf, sizeof buf);
    CHECK_EQ_INT(proto_decode(buf, n, 4096, &d), n);
    CHECK_EQ_INT(d.type, PROTO_CHAT);
    CHECK(d.u.chat.temp == 0.5f && d.u.chat.n_msgs == 2 && d.u.chat.msgs == NULL);
    CHECK(d.u.chat.system.len == 9 && memcmp(d.u.chat.system.p, "Be brief.", 9) == 0);
    size_t off = 0;
    proto_chat_msg r;
    for (int i = 0; i < 2; i++) {
        CHECK(proto_chat_next(&d.u.chat, &off, &r) == 1);
        CHECK(r.role.len == two[i].role.len && !memcmp(r.role.p, two[i].role.p, r.role.len));
        CHECK(r.content.len == two[i].content.len &&
              !memcmp(r.content.p, two[i].content.p, r.content.len));
    }
    CHECK(proto_chat_next(&d.u.chat, &off, &r) == 0);
    /* Re-encoding the decoded list gives the same bytes. */
    uint8_t again[256];
    CHECK_EQ_INT(proto_encode(&d, again, sizeof again), n);
    CHECK(memcmp(again, buf, n) == 0);
    /* A count larger than the list. */
    buf[12 + 20 + 6 + 13] = 3; /* the count, after max_new..seed, "t1", "Be brief." */
    CHECK_EQ_INT(proto_decode(buf, n, 4096, &d), n);
    CHECK_EQ_INT(d.type, PROTO_TYPE_INVALID);
    CHECK_EQ_INT(d.u.error.code, PROTO_ERR_BAD_FRAME);
    /* Unknown flags. */
    m.flags = 1;
    n = enc(&m, buf, sizeof buf);
    CHECK_EQ_INT(proto_decode(buf, n, 4096, &d), n);
    CHECK_EQ_INT(d.type, PROTO_TYPE_INVALID);
    CHECK_EQ_INT(d.u.error.code, PROTO_ERR_BAD_REQUEST);
    CHECK_STR_EQ(proto_strerror(PROTO_ERR_NO_TEMPLATE), "the model has no chat template");
}

static const harness_case cases[] = {
    {"chat", test_chat},
    {"roundtrip", test_roundtrip},
    {"vectors", test_vectors},
    {"partial_and_errors", test_partial_and_errors},
    {"utf8_and_ns", test_utf8_and_ns},
};

HARNESS_MAIN(cases)
