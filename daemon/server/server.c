/* server.c — the daemon's start and end: bind the socket, start the engine thread, serve until
 * a signal, drain, and write what is only in RAM to the disk tier before exiting.
 *
 * SIGINT, SIGTERM and SIGHUP all mean "stop": no new connections, running requests finish (up
 * to --grace), the socket file is removed. A second signal cancels what is left at once.
 * SIGHUP is not a reload (there is no configuration file to reread and the log is stderr);
 * treating it as a stop means a closed terminal ends the daemon cleanly, never abruptly.
 */
#include "server_int.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "cache_remote.h"
#include "disk_thread.h"

static void close_walk_cb(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (uv_is_closing(h))
        return;
    if (srv__http_walk_close(h))
        return;
    if (h->type == UV_NAMED_PIPE && h->data == NULL) {
        conn *c = container_of((uv_pipe_t *)h, conn, pipe);
        if (c->srv)
            srv__conn_close(c);
        else
            uv_close(h, NULL);
        return;
    }
    uv_close(h, NULL);
}

static void stop_listening(server *s)
{
    if (s->listener_open) {
        uv_close((uv_handle_t *)&s->listener, NULL);
        s->listener_open = 0;
        if (s->o.listen_fd <= 0) /* an activated socket's file belongs to its unit */
            unlink(s->o.socket_path);
    }
    srv__http_stop_listening(s);
}

static void finish_shutdown(server *s)
{
    if (s->engine_stopped)
        return;
    uv_timer_stop(&s->drain_timer);
    srv__engine_thread_stop(s);
    s->engine_stopped = 1;
    srv__deliver_cb(&s->wake); /* deliver the last frames */
    srv__tokenize_end_all(s);
    uv_walk(s->loop, close_walk_cb, NULL);
}

static void drain_timer_cb(uv_timer_t *t)
{
    server *s = container_of(t, server, drain_timer);
    pthread_mutex_lock(&s->mu);
    int live = s->live || !base_queue_empty(&s->tasks);
    pthread_mutex_unlock(&s->mu);
    /* A prompt still being tokenized on a worker is a running request too (it reaches the
     * engine when its worker is done), and a TOKENIZE or DETOKENIZE is owed its reply. */
    live |= s->tok_jobs != NULL;
    if (!live) {
        base_log(BASE_LOG_INFO, "no request left running: exiting");
        finish_shutdown(s);
    } else if (base_now_ms() - s->drain_start > s->o.grace_ms) {
        base_log(BASE_LOG_WARN, "grace period over: cancelling the requests still running");
        finish_shutdown(s);
    }
}

static const char *signal_name(int signum)
{
    return signum == SIGINT ? "SIGINT" : signum == SIGHUP ? "SIGHUP" : "SIGTERM";
}

static void signal_cb(uv_signal_t *h, int signum)
{
    server *s = h->data;
    if (s->draining) {
        base_log(BASE_LOG_WARN, "second signal (%s): cancelling everything now",
                 signal_name(signum));
        finish_shutdown(s);
        return;
    }
    base_log(BASE_LOG_INFO, "%s: no new connections; finishing running requests (up to %.0f s)",
             signal_name(signum), s->o.grace_ms / 1e3);
    s->draining = 1;
    s->drain_start = base_now_ms();
    stop_listening(s);
    uv_timer_start(&s->drain_timer, drain_timer_cb, 0, 50);
}

/* Why binding path failed (rc from libuv), in buf (PATH_MAX + 64 bytes). libuv reports a
 * bind() that failed with ENOENT as UV_EACCES ("permission denied"), which sends the user looking
 * at permissions when the directory is missing: so the directory is looked at first. */
static const char *bind_error(const char *path, int rc, char *buf)
{
    size_t n = strlen(path);
    while (n > 0 && path[n - 1] != '/')
        n--;
    while (n > 1 && path[n - 1] == '/')
        n--;
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%.*s", n ? (int)n : 1, n ? path : ".");
    struct stat st;
    if (stat(dir, &st) != 0 && (errno == ENOENT || errno == ENOTDIR))
        snprintf(buf, PATH_MAX + 64, "the directory '%s' does not exist", dir);
    else if (stat(dir, &st) == 0 && !S_ISDIR(st.st_mode))
        snprintf(buf, PATH_MAX + 64, "'%s' is not a directory", dir);
    else if (rc == UV_EACCES)
        snprintf(buf, PATH_MAX + 64, "permission denied (in the directory '%s')", dir);
    else
        snprintf(buf, PATH_MAX + 64, "%s", uv_strerror(rc));
    return buf;
}

/* Binds the socket: a live daemon on the path is an error, a stale file is replaced. */
static int bind_socket(server *s)
{
    const char *path = s->o.socket_path;
    struct sockaddr_un sa;
    if (s->o.listen_fd > 0) {
        int rc = uv_pipe_init(s->loop, &s->listener, 0);
        if (rc != 0) {
            base_log(BASE_LOG_ERROR, "cannot listen: uv_pipe_init: %s", uv_strerror(rc));
            return 1;
        }
        s->listener.data = s;
        rc = uv_pipe_open(&s->listener, s->o.listen_fd);
        if (rc == 0)
            rc = uv_listen((uv_stream_t *)&s->listener, 128, srv__accept_cb);
        if (rc != 0) {
            base_log(BASE_LOG_ERROR, "cannot serve the socket passed by socket activation: %s",
                     uv_strerror(rc));
            uv_close((uv_handle_t *)&s->listener, NULL);
            return 2;
        }
        s->listener.data = s;
        s->listener_open = 1;
        return 0;
    }
    if (strlen(path) >= sizeof sa.sun_path) {
        base_log(BASE_LOG_ERROR, "socket path '%s' is too long (%zu bytes, at most %zu)", path,
                 strlen(path), sizeof sa.sun_path - 1);
        return 2;
    }
    struct stat st;
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            base_log(BASE_LOG_ERROR, "'%s' exists and is not a socket: not replacing it", path);
            return 2;
        }
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        memset(&sa, 0, sizeof sa);
        sa.sun_family = AF_UNIX;
        memcpy(sa.sun_path, path, strlen(path) + 1);
        int live = fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
        if (fd >= 0)
            close(fd);
        if (live) {
            base_log(BASE_LOG_ERROR, "another daemon is serving on '%s'", path);
            return 2;
        }
        base_log(BASE_LOG_INFO, "replacing stale socket file '%s'", path);
        unlink(path);
    }
    int rc = uv_pipe_init(s->loop, &s->listener, 0);
    if (rc != 0) {
        base_log(BASE_LOG_ERROR, "cannot listen on '%s': %s", path, uv_strerror(rc));
        return 1;
    }
    s->listener.data = s;
    mode_t old = umask(0177); /* created owner-only, opened up below if asked */
    rc = uv_pipe_bind(&s->listener, path);
    umask(old);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&s->listener, 128, srv__accept_cb);
    if (rc != 0) {
        char why[PATH_MAX + 64];
        base_log(BASE_LOG_ERROR, "cannot listen on '%s': %s", path, bind_error(path, rc, why));
        uv_close((uv_handle_t *)&s->listener, NULL);
        return 2;
    }
    s->listener_open = 1;
    if (chmod(path, s->o.socket_mode) != 0) {
        base_log(BASE_LOG_ERROR, "chmod '%s' %o: %s", path, s->o.socket_mode, strerror(errno));
        return 1;
    }
    return 0;
}

/* The exit code for an engine that could not start: a configuration that cannot be used
 * (a disk dir, an impossible option) is bad input, like a bad model (2). */
static int engine_exit_code(int rc)
{
    return rc == ENGINE_EDISK || rc == ENGINE_EDISKBUSY || rc == ENGINE_ECONFIG ||
                   rc == ENGINE_EREMOTE || rc == ENGINE_EINVAL
               ? 2
               : 1;
}

/* Makes the engine; a default disk dir held by another daemon means: serve without one. */
static int start_engine(server *s)
{
    char msg[512];
    engine_opts *eo = &s->o.engine;
    eo->emit = srv__engine_emit_cb;
    eo->emit_arg = s;
    eo->wake = srv__engine_wake_cb;
    eo->wake_arg = s;
    int rc = engine_new(s->m, s->tok, eo, &s->engine, msg, sizeof msg);
    if (rc == ENGINE_EDISKBUSY && s->o.disk_is_default) {
        base_log(BASE_LOG_WARN, "%s: disk tier off (give this daemon its own --disk-dir)", msg);
        eo->disk_dir = NULL;
        rc = engine_new(s->m, s->tok, eo, &s->engine, msg, sizeof msg);
    }
    if (rc != 0) {
        base_log(BASE_LOG_ERROR, "%s", msg);
        return rc;
    }
    /* What is in force from now on (HELLO_OK's capabilities and block size). */
    *eo = *engine_get_opts(s->engine);
    return 0;
}

/* The loop's handles besides the listener. Returns 0 or a libuv code. */
static int init_handles(server *s)
{
    int rc;
    if ((rc = uv_async_init(s->loop, &s->wake, srv__deliver_cb)) != 0)
        return rc;
    /* Handles that are not connections are marked by a non-NULL data pointer. */
    s->wake.data = s;
    uv_signal_t *sigs[] = {&s->sigint, &s->sigterm, &s->sighup};
    int nums[] = {SIGINT, SIGTERM, SIGHUP};
    for (int i = 0; i < 3; i++) {
        if ((rc = uv_signal_init(s->loop, sigs[i])) != 0)
            return rc;
        sigs[i]->data = s;
        if ((rc = uv_signal_start(sigs[i], signal_cb, nums[i])) != 0)
            return rc;
    }
    if ((rc = uv_timer_init(s->loop, &s->drain_timer)) != 0)
        return rc;
    s->drain_timer.data = s;
    if ((rc = uv_idle_init(s->loop, &s->resume_idle)) != 0)
        return rc;
    s->resume_idle.data = s;
    if ((rc = uv_timer_init(s->loop, &s->sweep_timer)) != 0)
        return rc;
    s->sweep_timer.data = s;
    return uv_timer_start(&s->sweep_timer, srv__sweep_cb, 1000, 1000);
}

static void log_start(server *s)
{
    const srv_opts *o = &s->o;
    const engine_opts *eff = &o->engine;
    cache_stats cs = {0};
    if (engine_cache(s->engine))
        cache_get_stats(engine_cache(s->engine), &cs);
    if (o->listen_fd > 0)
        base_log(BASE_LOG_INFO, "serving on the socket passed by socket activation (fd %d)",
                 o->listen_fd);
    base_log(BASE_LOG_INFO,
             "serving on %s (mode %04o): blocks of %d tokens, cache %llu blocks (%.0f MB)%s, "
             "max batch %d, queue %d",
             o->socket_path, o->socket_mode, eff->block_tokens, (unsigned long long)cs.slots_total,
             cs.bytes_total / 1e6, eff->no_cache ? " [sharing off: --no-cache]" : "",
             eff->max_batch, eff->max_queue);
    disk_thread_stats ds;
    if (engine_disk_stats(s->engine, &ds) == 0)
        base_log(BASE_LOG_INFO, "disk tier %s: %llu blocks (%.0f MB) of %.0f MB", eff->disk_dir,
                 (unsigned long long)ds.disk.entries, ds.disk.bytes_on_disk / 1e6,
                 ds.disk.max_bytes / 1e6);
    else if (!eff->no_cache)
        base_log(BASE_LOG_INFO, "disk tier off: blocks leaving RAM are dropped");
    if (eff->remote_url && !eff->no_cache)
        base_log(
            BASE_LOG_INFO,
            "remote tier %s%s: blocks written behind with a TTL of %u s, server silence deadline "
            "%.0f ms",
            eff->remote_cluster ? "cluster " : "", eff->remote_url,
            eff->remote_ttl_s ? eff->remote_ttl_s : CACHE_REMOTE_DEFAULT_TTL,
            eff->remote_timeout_ms > 0 ? eff->remote_timeout_ms : CACHE_REMOTE_DEFAULT_TIMEOUT);
}

/* What is only in RAM goes to disk, so a restart finds it. The loop is closed, so a further
 * signal ends the process at once: the store stays consistent (what a kill -9 leaves), only the
 * blocks not written yet are lost. */
static void flush_to_disk(server *s)
{
    disk_thread_stats ds;
    if (engine_disk_stats(s->engine, &ds) != 0)
        return;
    base_log(BASE_LOG_INFO, "disk tier: writing the blocks only in RAM (signal again to skip)");
    double t0 = base_now_ms();
    size_t n = engine_flush_disk(s->engine);
    engine_disk_stats(s->engine, &ds);
    base_log(BASE_LOG_INFO,
             "disk tier: wrote %zu blocks from RAM in %.0f ms; %llu blocks (%.0f MB) on disk", n,
             base_now_ms() - t0, (unsigned long long)ds.disk.entries, ds.disk.bytes_on_disk / 1e6);
}

/* The chat template CHAT and the HTTP chat render with, parsed once (rendering reads it from
 * the workers): --chat-template's (a family's built-in template or a file) when given, else the
 * model's own. A model without one, or with one the interpreter refuses, serves everything
 * else; CHAT then gets NO_TEMPLATE with the reason, which names --chat-template. Returns 0, or
 * 2 (the exit code) when --chat-template names no family and no readable, parsable file. */
static int load_chat_template(server *s)
{
    const char *src = s->tok ? model_tokenizer_chat_template(s->tok) : NULL;
    const char *base = strrchr(s->o.model_path, '/');
    base = base ? base + 1 : s->o.model_path;
    char msg[1024], note[1024];
    int family = MODEL_CHAT_UNKNOWN;
    if (s->o.chat_template) {
        if (model_chat_template_choose(s->o.chat_template, NULL, &s->chat, &family, note,
                                       sizeof note, msg, sizeof msg) != 0) {
            base_log(BASE_LOG_ERROR, "%s", msg);
            return 2;
        }
        if (family == MODEL_CHAT_UNKNOWN)
            base_log(BASE_LOG_WARN, "chat template: %s", note);
        base_log(BASE_LOG_INFO, "chat template: --chat-template %s (family %s)%s",
                 s->o.chat_template, model_chat_family_name(family),
                 src ? ", in place of the model's" : "");
        return 0;
    }
    if (!src) {
        snprintf(s->chat_why, sizeof s->chat_why,
                 "the model '%s' has no chat template (tokenizer.chat_template): the daemon "
                 "renders chats only with one; start it with --chat-template NAME (%s) or "
                 "--chat-template FILE.jinja, or send the prompt as text with GENERATE",
                 base, model_chat_family_names());
        base_log(BASE_LOG_INFO, "chat template: none (CHAT answers NO_TEMPLATE)");
        return 0;
    }
    if (model_chat_template_choose(NULL, src, &s->chat, &family, note, sizeof note, msg,
                                   sizeof msg) != 0) {
        s->chat = NULL;
        snprintf(s->chat_why, sizeof s->chat_why,
                 "the chat template of model '%s' cannot be used (%s)", base, msg);
        base_log(BASE_LOG_WARN, "%s", s->chat_why);
        return 0;
    }
    if (family == MODEL_CHAT_UNKNOWN)
        base_log(BASE_LOG_WARN, "chat template: %s", note);
    base_log(BASE_LOG_INFO,
             "chat template: the model's (%zu bytes, family %s); CHAT renders with it", strlen(src),
             model_chat_family_name(family));
    return 0;
}

int srv_run(const srv_opts *o, const model *m, const model_tokenizer *tok)
{
    base_log_set_level(o->log_level);
    server *s = calloc(1, sizeof *s);
    if (!s) {
        base_log(BASE_LOG_ERROR, "out of memory");
        return 1;
    }
    s->o = *o;
    s->m = m;
    s->tok = tok;
    if (load_chat_template(s) != 0) {
        free(s);
        return 2;
    }
    s->loop = uv_default_loop();
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    int rc = start_engine(s), exit_code = 0;
    if (rc != 0) {
        exit_code = engine_exit_code(rc);
        goto out;
    }
    if ((exit_code = bind_socket(s)) != 0)
        goto out;
    if ((exit_code = srv__http_start(s)) != 0)
        goto out;
    /* A write to a client that has gone must fail with EPIPE on that connection, not kill the
     * daemon: the peer's close is seen as a read error or EOF and the connection is closed. */
    signal(SIGPIPE, SIG_IGN);
    if ((rc = init_handles(s)) != 0) {
        base_log(BASE_LOG_ERROR, "cannot set up the event loop: %s", uv_strerror(rc));
        exit_code = 1;
        goto out;
    }
    if (srv__engine_thread_start(s) != 0) {
        base_log(BASE_LOG_ERROR, "cannot start the engine thread: %s", strerror(errno));
        exit_code = 1;
        goto out;
    }
    log_start(s);
    uv_run(s->loop, UV_RUN_DEFAULT);
out:
    srv__engine_thread_stop(s);
    stop_listening(s);
    uv_walk(s->loop, close_walk_cb, NULL);
    uv_run(s->loop, UV_RUN_DEFAULT);
    uv_loop_close(s->loop);
    srv__queues_free(s);
    srv__http_free(s);
    if (s->engine && exit_code == 0)
        flush_to_disk(s);
    engine_free(s->engine);
    model_chat_template_free(s->chat);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
    if (exit_code == 0)
        base_log(BASE_LOG_INFO, "stopped");
    return exit_code;
}
