/* metrics.c — GET /metrics: the daemon's counters in the Prometheus text format (version
 * 0.0.4), with # HELP and # TYPE lines, counters ending in _total, and histograms of the time to
 * first token and of prefill time per request. Runs on the engine thread, which owns the engine,
 * its counters and the histograms; the bytes go back to the HTTP connection like any answer.
 *
 * These are daemon-wide figures (that some request hit the cache is one of them), so http.c
 * serves them only to those who may see daemon-wide STATS (see README, HTTP API).
 */
#include "server_int.h"

#include "disk_thread.h"
#include "http_api.h"
#include "remote_thread.h"

/* Bucket bounds in seconds; the last is +Inf. */
static const double bounds[SRV_HIST_BUCKETS] = {0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25,
                                                0.5,   0.75, 1,     2.5,  5,     10,  0};

static void observe(srv_hist *h, double seconds)
{
    int i = 0;
    while (i < SRV_HIST_BUCKETS - 1 && seconds > bounds[i])
        i++;
    h->le[i]++;
    h->count++;
    h->sum += seconds;
}

void srv__metrics_observe(server *s, const engine_event *ev)
{
    if (ev->type != ENGINE_EV_DONE || ev->done.ttft_ms <= 0)
        return; /* cancelled before its first token: no TTFT to tell */
    observe(&s->ttft_hist, ev->done.ttft_ms / 1e3);
    observe(&s->prefill_hist, ev->done.prefill_ms / 1e3);
}

static void metric(hbuf *b, const char *name, const char *type, const char *help, double v)
{
    hbuf_printf(b, "# HELP %s %s\n# TYPE %s %s\n%s %.17g\n", name, help, name, type, name, v);
}

static void histogram(hbuf *b, const char *name, const char *help, const srv_hist *h)
{
    hbuf_printf(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    uint64_t cum = 0;
    for (int i = 0; i < SRV_HIST_BUCKETS; i++) {
        cum += h->le[i];
        if (i < SRV_HIST_BUCKETS - 1)
            hbuf_printf(b, "%s_bucket{le=\"%g\"} %llu\n", name, bounds[i], (unsigned long long)cum);
        else
            hbuf_printf(b, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)cum);
    }
    hbuf_printf(b, "%s_sum %.17g\n%s_count %llu\n", name, h->sum, name,
                (unsigned long long)h->count);
}

/* A counter with one label whose values are given in pairs (label value, count). */
static void labelled(hbuf *b, const char *name, const char *help, const char *label, int n,
                     const char *const *values, const double *counts)
{
    hbuf_printf(b, "# HELP %s %s\n# TYPE %s counter\n", name, help, name);
    for (int i = 0; i < n; i++)
        hbuf_printf(b, "%s{%s=\"%s\"} %.17g\n", name, label, values[i], counts[i]);
}

/* The remote tier (--remote, --remote-cluster): its counters, and its round trips' latency as a
 * histogram (the store's buckets, in seconds). */
static void render_remote(server *s, hbuf *b)
{
    remote_thread_stats rs;
    if (engine_remote_stats(s->engine, &rs) != 0)
        return;
    const cache_remote_stats *c = &rs.remote;
    engine_stats es;
    engine_get_stats(s->engine, &es);
    metric(b, "prefixd_cached_tokens_remote_total", "counter",
           "Prompt tokens loaded from the remote tier.", (double)es.cached_tokens_remote);
    metric(b, "prefixd_remote_up", "gauge", "1 while the remote tier is connected.", rs.connected);
    metric(b, "prefixd_remote_hit_blocks_total", "counter",
           "Blocks loaded from the remote tier and verified.", (double)c->hits);
    metric(b, "prefixd_remote_miss_blocks_total", "counter",
           "Blocks asked of the remote tier that it did not have.", (double)c->misses);
    metric(b, "prefixd_remote_loads_total", "counter", "Lookups that went on to the remote tier.",
           (double)rs.loads);
    const char *dir[] = {"in", "out"};
    double bytes[] = {(double)c->bytes_in, (double)c->bytes_out};
    labelled(b, "prefixd_remote_bytes_total",
             "Value bytes loaded from (in) and stored to (out) the remote tier.", "direction", 2,
             dir, bytes);
    const char *kinds[] = {"io", "timeout", "corrupt"};
    double errs[] = {(double)c->errors, (double)c->timeouts, (double)c->corrupt_deleted};
    labelled(b, "prefixd_remote_errors_total",
             "Remote tier failures: failed exchanges (io), exchanges past the deadline "
             "(timeout), values that failed verification and were deleted (corrupt).",
             "kind", 3, kinds, errs);
    const char *outcomes[] = {"stored", "dropped", "failed"};
    double writes[] = {(double)c->puts, (double)rs.writes_dropped, (double)rs.writes_failed};
    labelled(b, "prefixd_remote_writes_total",
             "Blocks written behind to the remote tier: stored, dropped (the queue was full), "
             "failed (not connected, an error, or refused by the server).",
             "outcome", 3, outcomes, writes);
    metric(b, "prefixd_remote_write_pending_blocks", "gauge",
           "Blocks queued for the remote tier now.", (double)rs.write_pending);
    const char *name = "prefixd_remote_round_trip_seconds";
    hbuf_printf(b,
                "# HELP %s Pipelined round trips to the remote tier (a batch of loads or "
                "writes).\n# TYPE %s histogram\n",
                name, name);
    uint64_t cum = 0;
    for (int i = 0; i < CACHE_REMOTE_HIST; i++) {
        cum += c->latency_hist[i];
        if (i < CACHE_REMOTE_HIST - 1)
            hbuf_printf(b, "%s_bucket{le=\"%g\"} %llu\n", name, cache_remote_hist_ms[i] / 1e3,
                        (unsigned long long)cum);
        else
            hbuf_printf(b, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)cum);
    }
    hbuf_printf(b, "%s_sum %.17g\n%s_count %llu\n", name, (c->get_ms + c->put_ms) / 1e3, name,
                (unsigned long long)c->round_trips);
    if (!s->o.engine.remote_cluster)
        return;
    metric(b, "prefixd_remote_cluster_nodes", "gauge", "Primaries in the cluster's slot map.",
           c->nodes);
    metric(b, "prefixd_remote_cluster_nodes_up", "gauge", "Of those, connected now.", c->nodes_up);
    const char *rk[] = {"moved", "ask"};
    double rv[] = {(double)c->moved, (double)c->asked};
    labelled(b, "prefixd_remote_cluster_redirects_total",
             "Redirections followed: MOVED (a slot moved; the map read again) and ASK (a slot "
             "being migrated).",
             "kind", 2, rk, rv);
}

static void render(server *s, hbuf *b)
{
    engine_stats es;
    engine_get_stats(s->engine, &es);
    metric(b, "prefixd_requests_total", "counter", "Requests accepted by the engine.",
           (double)es.requests);
    hbuf_str(b, "# HELP prefixd_requests_finished_total Requests ended, by outcome.\n"
                "# TYPE prefixd_requests_finished_total counter\n");
    hbuf_printf(b, "prefixd_requests_finished_total{outcome=\"done\"} %llu\n",
                (unsigned long long)es.requests_done);
    hbuf_printf(b, "prefixd_requests_finished_total{outcome=\"cancelled\"} %llu\n",
                (unsigned long long)es.requests_cancelled);
    hbuf_printf(b, "prefixd_requests_finished_total{outcome=\"failed\"} %llu\n",
                (unsigned long long)es.requests_failed);
    metric(b, "prefixd_requests_running", "gauge", "Requests prefilling or decoding now.",
           es.running);
    metric(b, "prefixd_requests_waiting", "gauge", "Requests queued.", es.waiting);
    metric(b, "prefixd_prompt_tokens_total", "counter", "Prompt tokens of all requests.",
           (double)es.prompt_tokens);
    metric(b, "prefixd_cached_tokens_total", "counter",
           "Prompt tokens taken from the cache (RAM, disk and remote tiers).",
           (double)es.cached_tokens);
    metric(b, "prefixd_cached_tokens_disk_total", "counter",
           "Prompt tokens loaded from the disk tier.", (double)es.cached_tokens_disk);
    metric(b, "prefixd_prefill_tokens_total", "counter", "Prompt tokens computed.",
           (double)es.prefill_tokens);
    metric(b, "prefixd_generated_tokens_total", "counter", "Tokens generated.",
           (double)es.generated_tokens);
    metric(b, "prefixd_prefill_seconds_total", "counter", "Engine time spent prefilling.",
           es.prefill_ms / 1e3);
    metric(b, "prefixd_decode_seconds_total", "counter", "Engine time spent decoding.",
           es.decode_ms / 1e3);
    cache *c = engine_cache(s->engine);
    if (c) {
        cache_stats cs;
        cache_get_stats(c, &cs);
        metric(b, "prefixd_cache_hit_blocks_total", "counter", "Blocks found by lookups.",
               (double)cs.hit_blocks);
        metric(b, "prefixd_cache_miss_blocks_total", "counter",
               "Lookups that stopped at a full block not cached.", (double)cs.miss_blocks);
        metric(b, "prefixd_cache_evictions_total", "counter", "Blocks evicted from RAM.",
               (double)cs.evictions);
        metric(b, "prefixd_cache_capacity_blocks", "gauge", "K/V blocks the RAM pool holds.",
               (double)cs.slots_total);
        metric(b, "prefixd_cache_used_blocks", "gauge", "K/V blocks in use in RAM.",
               (double)cs.slots_used);
        metric(b, "prefixd_cache_cached_blocks", "gauge", "Published blocks in RAM.",
               (double)cs.slots_cached);
        metric(b, "prefixd_cache_capacity_bytes", "gauge", "Bytes of K/V the RAM pool holds.",
               (double)cs.bytes_total);
    }
    /* What a block holds, as labels of a constant (the Prometheus way to tell a setting). */
    hbuf_printf(b,
                "# HELP prefixd_kv_info The K/V blocks' element type and tokens per block (the "
                "value is always 1).\n# TYPE prefixd_kv_info gauge\n"
                "prefixd_kv_info{kv_type=\"%s\",block_tokens=\"%d\"} 1\n",
                model_type_name(s->o.engine.kv_type), s->o.engine.block_tokens);
    disk_thread_stats ds;
    if (engine_disk_stats(s->engine, &ds) == 0) {
        metric(b, "prefixd_disk_hit_blocks_total", "counter", "Blocks loaded from disk.",
               (double)ds.load_blocks);
        metric(b, "prefixd_disk_blocks", "gauge", "Blocks in the disk tier.",
               (double)ds.disk.entries);
        metric(b, "prefixd_disk_bytes", "gauge", "Bytes of the disk tier.",
               (double)ds.disk.bytes_on_disk);
    }
    render_remote(s, b);
    metric(b, "prefixd_connections_total", "counter", "Native socket connections accepted.",
           (double)s->connections);
    histogram(b, "prefixd_time_to_first_token_seconds",
              "Time from a request's arrival to its first token.", &s->ttft_hist);
    histogram(b, "prefixd_request_prefill_seconds", "Engine time spent prefilling one request.",
              &s->prefill_hist);
}

void srv__metrics_reply(server *s, const srv_task *t)
{
    int keep_alive = t->len > 0 && t->data[0];
    hbuf body = {0}, wire = {0};
    render(s, &body);
    if (!body.oom)
        oai_http_head(&wire, 200, "text/plain; version=0.0.4; charset=utf-8", (long)body.len,
                      keep_alive, 0);
    hbuf_add(&wire, body.p, body.len);
    if (wire.oom || body.oom) {
        hbuf_free(&wire);
        oai_error e;
        oai_fail(&e, 500, NULL, NULL, "out of memory rendering the metrics");
        oai_http_error(&wire, &e, 0, 0);
    }
    srv__push_bytes(s, t->conn, t->req, 1, wire.p ? wire.p : "", wire.len);
    hbuf_free(&body);
    hbuf_free(&wire);
}
