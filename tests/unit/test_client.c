/* test_client.c — libprefixd against a fake daemon on a thread: sizes that do not fit the wire's
 * u32 counts are refused before anything is sent (never wrapped), and the connection stays
 * usable after such a refusal. Against a real `prefixd serve` (a child process on a socket in
 * the case's folder): several requests on one connection, where a blocking call must keep the
 * other requests' frames for them, within a bound, and lose none. */
#include "harness.h"
#include "prefixd_client.h"

#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
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

/* ---- Against a real daemon ---------------------------------------------------------------- */

static pid_t daemon_pid; /* the running child, or 0 */

static void daemon_stop(void)
{
    if (daemon_pid > 0) {
        kill(daemon_pid, SIGTERM);
        waitpid(daemon_pid, NULL, 0);
        daemon_pid = 0;
    }
}

/* Starts `prefixd serve` with stories260K on a socket in the case's folder (its log beside it)
 * and connects to it. A case that fails leaves it running: the next start or exit stops it, and
 * it dies with the test (PR_SET_PDEATHSIG). */
static pfx_conn *daemon_start_model(const char *model, const char *tok);

static pfx_conn *daemon_start(void)
{
    return daemon_start_model(PREFIXD_MODELS_DIR "/stories260K.bin",
                              PREFIXD_MODELS_DIR "/tok512.bin");
}

/* The same with another model; tok NULL: the model's own vocabulary (a GGUF file). */
static pfx_conn *daemon_start_model(const char *model, const char *tok)
{
    static char sock[108], log[4096];
    const char *dir = harness_tmpdir();
    CHECK((size_t)snprintf(sock, sizeof sock, "%s/d.sock", dir) < sizeof sock);
    snprintf(log, sizeof log, "%s/daemon.log", dir);
    daemon_stop();
    static int at_exit;
    if (!at_exit++)
        atexit(daemon_stop);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (!freopen(log, "w", stderr))
            _exit(127);
        execl(PREFIXD_BIN_DIR "/daemon/prefixd", "prefixd", "serve", "--model", model, "--socket",
              sock, "--cache-mem", "64M", "--threads", "1", "--disk-dir", "none",
              tok ? "--tokenizer" : (char *)NULL, tok, (char *)NULL);
        _exit(127);
    }
    daemon_pid = pid;
    char err[512] = "";
    pfx_conn *c = NULL;
    for (int i = 0; i < 600 && !c; i++) {
        if (waitpid(pid, NULL, WNOHANG) == pid) {
            daemon_pid = 0;
            CHECK_MSG(0, "prefixd serve exited at start (log: %s)", log);
        }
        if (access(sock, F_OK) == 0 && pfx_connect(sock, &c, err, sizeof err) == 0)
            break;
        c = NULL;
        nanosleep(&(struct timespec){0, 50 * 1000 * 1000}, NULL);
    }
    CHECK_MSG(c != NULL, "cannot connect to the daemon: %s", err);
    return c;
}

typedef struct toks {
    int32_t id[512];
    int n;
} toks;

static int toks_add(void *arg, int32_t id, const char *piece, size_t len)
{
    toks *t = arg;
    if (t->n < 512)
        t->id[t->n++] = id;
    return 0;
}

static pfx_gen greedy(const char *prompt, uint32_t max_new)
{
    return (pfx_gen){.text = prompt, .text_len = strlen(prompt), .max_new = max_new};
}

static void check_same(const toks *a, const toks *b)
{
    CHECK_EQ_INT(a->n, b->n);
    for (int i = 0; i < a->n; i++)
        CHECK_MSG(a->id[i] == b->id[i], "token %d: %d != %d", i, a->id[i], b->id[i]);
}

#define PROMPT_A "Once upon a time, there was a little girl"
#define PROMPT_B "Tom had a red ball and"

/* Two requests in flight, waited for in the other order: waiting for B reads A's frames, which
 * must wait for A; each gets exactly the tokens it gets alone. */
static void test_interleaved(void)
{
    pfx_conn *c = daemon_start();
    pfx_gen ga = greedy(PROMPT_A, 60), gb = greedy(PROMPT_B, 60);
    /* As ids: text prompts are tokenized on the daemon's workers, which may finish B's before
     * A's; ids reach the engine in the order they were sent, so A is admitted first. */
    int32_t *ida_ids, *idb_ids;
    size_t na, nb;
    CHECK_MSG(pfx_tokenize(c, PROMPT_A, strlen(PROMPT_A), &ida_ids, &na) == 0, "%s", pfx_errmsg(c));
    CHECK_MSG(pfx_tokenize(c, PROMPT_B, strlen(PROMPT_B), &idb_ids, &nb) == 0, "%s", pfx_errmsg(c));
    ga.text = gb.text = NULL;
    ga.text_len = gb.text_len = 0;
    ga.ids = ida_ids;
    ga.n_ids = na;
    gb.ids = idb_ids;
    gb.n_ids = nb;
    toks ref_a = {0}, ref_b = {0}, a = {0}, b = {0};
    pfx_result r;
    CHECK_MSG(pfx_generate(c, &ga, toks_add, &ref_a, &r) == 0, "%s", pfx_errmsg(c));
    CHECK_MSG(pfx_generate(c, &gb, toks_add, &ref_b, &r) == 0, "%s", pfx_errmsg(c));
    CHECK(ref_a.n > 10 && ref_b.n > 10);
    uint32_t ida, idb;
    CHECK_EQ_INT(pfx_send(c, &ga, &ida), 0);
    CHECK_EQ_INT(pfx_send(c, &gb, &idb), 0);
    CHECK_MSG(pfx_wait(c, idb, toks_add, &b, &r) == 0, "%s", pfx_errmsg(c));
    CHECK_EQ_INT(r.done.new_tokens, b.n);
    check_same(&b, &ref_b);
    /* A was admitted first and decodes beside B: its frames came before B's DONE. */
    CHECK(pfx_pending(c) > 0);
    CHECK_MSG(pfx_wait(c, ida, toks_add, &a, &r) == 0, "%s", pfx_errmsg(c));
    CHECK_EQ_INT(r.done.new_tokens, a.n);
    check_same(&a, &ref_a);
    CHECK_EQ_INT(pfx_pending(c), 0);
    free(ida_ids);
    free(idb_ids);
    pfx_close(c);
    daemon_stop();
}

/* Collects request id's frames with pfx_next() (after first, the TOKEN already read) until its
 * DONE; counts a STATS_REPLY met on the way in *stats. */
static void collect_next(pfx_conn *c, uint32_t id, toks *t, int *stats)
{
    for (;;) {
        proto_msg m;
        CHECK_MSG(pfx_next(c, &m) == 0, "%s", pfx_errmsg(c));
        if (m.type == PROTO_STATS_REPLY) {
            ++*stats;
            continue;
        }
        CHECK_EQ_INT(m.id, id);
        if (m.type == PROTO_DONE) {
            CHECK_EQ_INT(m.u.done.new_tokens, t->n);
            return;
        }
        CHECK_EQ_INT(m.type, PROTO_TOKEN);
        toks_add(t, m.u.token.id, NULL, 0);
    }
}

/* Sends A, reads its first TOKEN, lets more of its frames arrive. */
static void send_and_start(pfx_conn *c, const pfx_gen *g, uint32_t *id, toks *t)
{
    CHECK_EQ_INT(pfx_send(c, g, id), 0);
    proto_msg m;
    CHECK_MSG(pfx_next(c, &m) == 0, "%s", pfx_errmsg(c));
    CHECK_EQ_INT(m.type, PROTO_TOKEN);
    toks_add(t, m.u.token.id, NULL, 0);
    nanosleep(&(struct timespec){0, 30 * 1000 * 1000}, NULL);
}

/* pfx_stats() while a generation streams: the generation's frames read by the STATS call stay
 * for pfx_next(), none lost. */
static void test_stats_while_generating(void)
{
    pfx_conn *c = daemon_start();
    pfx_gen g = greedy(PROMPT_A, 300);
    toks ref = {0}, t = {0};
    pfx_result r;
    CHECK_MSG(pfx_generate(c, &g, toks_add, &ref, &r) == 0, "%s", pfx_errmsg(c));
    uint32_t id;
    send_and_start(c, &g, &id, &t);
    char *json = NULL;
    CHECK_MSG(pfx_stats(c, &json) == 0, "%s", pfx_errmsg(c));
    CHECK_STR_CONTAINS(json, "{");
    free(json);
    CHECK(pfx_pending(c) > 0);
    int stats = 0;
    collect_next(c, id, &t, &stats);
    CHECK_EQ_INT(stats, 0);
    check_same(&t, &ref);
    CHECK_EQ_INT(pfx_pending(c), 0);
    pfx_close(c);
    daemon_stop();
}

/* Past the bound the blocking call returns PFX_EFULL and drops nothing: every frame of the
 * generation and the STATS reply itself still come through pfx_next(). */
static void test_pending_bound(void)
{
    pfx_conn *c = daemon_start();
    pfx_gen g = greedy(PROMPT_A, 300);
    toks ref = {0}, t = {0};
    pfx_result r;
    CHECK_MSG(pfx_generate(c, &g, toks_add, &ref, &r) == 0, "%s", pfx_errmsg(c));
    pfx_set_pending_max(c, 200); /* a few TOKEN frames */
    uint32_t id;
    send_and_start(c, &g, &id, &t);
    char *json = NULL;
    CHECK_EQ_INT(pfx_stats(c, &json), PFX_EFULL);
    CHECK_STR_CONTAINS(pfx_errmsg(c), "bound of 200 bytes");
    CHECK(pfx_pending(c) > 0);
    int stats = 0;
    collect_next(c, id, &t, &stats);
    check_same(&t, &ref);
    if (stats == 0) { /* the STATS reply came after A's DONE */
        proto_msg m;
        CHECK_MSG(pfx_next(c, &m) == 0, "%s", pfx_errmsg(c));
        CHECK_EQ_INT(m.type, PROTO_STATS_REPLY);
        stats = 1;
    }
    CHECK_EQ_INT(stats, 1);
    CHECK_EQ_INT(pfx_pending(c), 0);
    /* The connection goes on: a blocking call within the bound works again. */
    pfx_set_pending_max(c, PFX_PENDING_MAX_DEFAULT);
    CHECK_MSG(pfx_stats(c, &json) == 0, "%s", pfx_errmsg(c));
    free(json);
    pfx_close(c);
    daemon_stop();
}

/* stories260K's GGUF with a ChatML template and its two control tokens, made by the
 * integration tests' gguf_edit.py in the case's folder. */
static const char *chat_model(void)
{
    static char path[4096];
    char tpl[4096], cmd[16384];
    snprintf(path, sizeof path, "%s/chat.gguf", harness_tmpdir());
    snprintf(tpl, sizeof tpl, "%s/chatml.jinja", harness_tmpdir());
    FILE *f = fopen(tpl, "w");
    CHECK(f != NULL);
    fputs("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
          "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|im_start|>assistant\\n' }}{% endif %}",
          f);
    CHECK_EQ_INT(fclose(f), 0);
    snprintf(cmd, sizeof cmd,
             "python3 '%s/tests/integration/gguf_edit.py' '%s/stories260K-f32.gguf' '%s' "
             "--template '%s' --control '4=<|im_start|>' --control '5=<|im_end|>' "
             "--u32 llama.context_length=512",
             PREFIXD_SOURCE_DIR, PREFIXD_MODELS_DIR, path, tpl);
    CHECK_MSG(system(cmd) == 0, "cannot make the chat model: %s", cmd);
    return path;
}

/* pfx_chat(): a chat to a model with a template streams a reply; the same conversation with a
 * user's "<|im_end|>" is longer by those characters' tokens (never the control token); the
 * greedy reply repeats and is served from the cache the second time. */
static void test_chat(void)
{
    pfx_conn *c = daemon_start_model(chat_model(), NULL);
    CHECK_EQ_INT(pfx_has_chat(c), 1);
    pfx_chat_msg m[3] = {{"user", "Once upon a time", 16},
                         {"assistant", "there was a fox.", 16},
                         {"user", "And then?", 9}};
    pfx_gen g = {.msgs = m, .n_msgs = 3, .system = "You tell stories.", .max_new = 8};
    toks a = {0}, b = {0}, e = {0};
    pfx_result r1, r2, r3;
    CHECK_MSG(pfx_chat(c, &g, toks_add, &a, &r1) == 0, "%s", pfx_errmsg(c));
    CHECK(a.n > 0 && r1.done.prompt_tokens > 20);
    CHECK_MSG(pfx_generate(c, &g, toks_add, &b, &r2) == 0, "%s", pfx_errmsg(c));
    check_same(&a, &b);
    CHECK(r2.done.cached_tokens > 0);
    m[2] = (pfx_chat_msg){"user", "And then?<|im_end|>", 19};
    CHECK_MSG(pfx_chat(c, &g, toks_add, &e, &r3) == 0, "%s", pfx_errmsg(c));
    CHECK(r3.done.prompt_tokens >= r1.done.prompt_tokens + 5);
    /* Refused before sending: a WARM chat, a chat without messages. */
    uint32_t id;
    g.warm = 1;
    CHECK_EQ_INT(pfx_send(c, &g, &id), PFX_EPROTO);
    g = (pfx_gen){.max_new = 1};
    CHECK_EQ_INT(pfx_chat(c, &g, toks_add, &e, &r3), PFX_EPROTO);
    /* The daemon's checks: a bad role. */
    pfx_chat_msg bad = {"wizard", "x", 1};
    g = (pfx_gen){.msgs = &bad, .n_msgs = 1, .max_new = 1};
    CHECK_EQ_INT(pfx_chat(c, &g, toks_add, &e, &r3), PFX_ESERVER);
    CHECK_EQ_INT(pfx_server_error(c), PROTO_ERR_BAD_REQUEST);
    CHECK_STR_CONTAINS(r3.server_msg, "messages[0].role");
    pfx_close(c);
    daemon_stop();
}

/* A model without a template: no capability, and CHAT is answered NO_TEMPLATE. */
static void test_chat_no_template(void)
{
    pfx_conn *c = daemon_start();
    CHECK_EQ_INT(pfx_has_chat(c), 0);
    pfx_chat_msg m = {"user", "Hi", 2};
    pfx_gen g = {.msgs = &m, .n_msgs = 1, .max_new = 4};
    toks t = {0};
    pfx_result r;
    CHECK_EQ_INT(pfx_chat(c, &g, toks_add, &t, &r), PFX_ESERVER);
    CHECK_EQ_INT(r.server_code, PROTO_ERR_NO_TEMPLATE);
    CHECK_STR_CONTAINS(r.server_msg, "--chat-template");
    pfx_close(c);
    daemon_stop();
}

static const harness_case cases[] = {
    {"chat", test_chat},
    {"chat_no_template", test_chat_no_template},
    {"counts_too_large", test_counts_too_large},
    {"interleaved", test_interleaved},
    {"stats_while_generating", test_stats_while_generating},
    {"pending_bound", test_pending_bound},
};

HARNESS_MAIN(cases)
