/* test_client.c — libprefixd against a fake daemon on a thread: sizes that do not fit the wire's
 * u32 counts are refused before anything is sent (never wrapped), and the connection stays
 * usable after such a refusal. */
#include "harness.h"
#include "prefixd_client.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

typedef struct fake {
    int lfd;
    size_t received; /* bytes after the HELLO */
} fake;

/* Accepts one client, answers its HELLO, then counts what else it sends until it closes. */
static void *fake_main(void *arg)
{
    fake *f = arg;
    int fd = accept(f->lfd, NULL, NULL);
    if (fd < 0)
        return NULL;
    uint8_t buf[4096];
    ssize_t n = recv(fd, buf, 24, MSG_WAITALL);
    if (n == 24) {
        proto_msg m = {0};
        m.type = PROTO_HELLO_OK;
        m.u.hello_ok = (proto_hello_ok){.version = PROTO_VERSION,
                                        .vocab_size = 512,
                                        .seq_len = 512,
                                        .block_tokens = 16,
                                        .max_frame = 1 << 24,
                                        .model = {"fake", 4}};
        size_t len = proto_encode(&m, buf, sizeof buf);
        if (send(fd, buf, len, MSG_NOSIGNAL) != (ssize_t)len)
            n = 0;
    }
    while (n > 0 && (n = recv(fd, buf, sizeof buf, 0)) > 0)
        f->received += (size_t)n;
    close(fd);
    return NULL;
}

static void test_counts_too_large(void)
{
    char path[108], err[512];
    const char *dir = harness_tmpdir();
    CHECK((size_t)snprintf(path, sizeof path, "%s/s.sock", dir) < sizeof path);
    fake f = {.lfd = socket(AF_UNIX, SOCK_STREAM, 0)};
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    memcpy(sa.sun_path, path, strlen(path) + 1);
    CHECK_EQ_INT(bind(f.lfd, (struct sockaddr *)&sa, sizeof sa), 0);
    CHECK_EQ_INT(listen(f.lfd, 1), 0);
    pthread_t th;
    CHECK_EQ_INT(pthread_create(&th, NULL, fake_main, &f), 0);
    pfx_conn *c;
    int rc = pfx_connect(path, &c, err, sizeof err);
    CHECK_MSG(rc == 0, "connect: %s", err);
    /* The lengths are checked before the buffers are read, so a one-byte buffer will do. */
    int32_t one = 1;
    uint32_t id;
    pfx_gen g = {.text = "x", .text_len = (size_t)1 << 32, .max_new = UINT32_MAX};
    CHECK_EQ_INT(pfx_send(c, &g, &id), PFX_EPROTO);
    CHECK_STR_CONTAINS(pfx_errmsg(c), "too large");
    g = (pfx_gen){.ids = &one, .n_ids = (size_t)1 << 30};
    CHECK_EQ_INT(pfx_send(c, &g, &id), PFX_EPROTO);
    CHECK_STR_CONTAINS(pfx_errmsg(c), "count");
    int32_t *ids;
    size_t n;
    CHECK_EQ_INT(pfx_tokenize(c, "x", (size_t)1 << 32, &ids, &n), PFX_EPROTO);
    char *text;
    CHECK_EQ_INT(pfx_detokenize(c, &one, (size_t)1 << 31, &text, &n), PFX_EPROTO);
    /* Nothing went out; a request that fits still does (max_new 2^32-1 is a valid u32). */
    g = (pfx_gen){.text = "hi", .text_len = 2, .max_new = UINT32_MAX};
    CHECK_EQ_INT(pfx_send(c, &g, &id), 0);
    pfx_close(c);
    pthread_join(th, NULL);
    close(f.lfd);
    unlink(path);
    rmdir(dir);
    CHECK_EQ_INT(f.received, 12 + 4 + 4 + 4 + 8 + 4 + 4 + 2);
}

static const harness_case cases[] = {
    {"counts_too_large", test_counts_too_large},
};

HARNESS_MAIN(cases)
