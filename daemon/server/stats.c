/* stats.c — the STATS reply: counters as one JSON object (cJSON). Runs on the engine thread,
 * which owns the engine and the per-user counters.
 *
 * Who sees what: the daemon's owner (its uid, or root) sees every counter, daemon-wide, with
 * "scope": "daemon" (so does everyone with --stats-all-users). Any other user sees their own
 * request and token counters in the same fields, with "scope": "user", and of the daemon only
 * what tells nothing of other users' prompts: the sizes of the cache and the disk tier and the
 * memory they use. Hit, lookup, request and connection counters are daemon-wide only: that
 * another user's request hit the cache is exactly what must not leak. In both scopes "user"
 * holds the caller's own counters.
 */
#include "server_int.h"

#include <cJSON.h>
#include <unistd.h>

#include "disk_thread.h"
#include "remote_thread.h"

static void add(cJSON *j, const char *name, double v)
{
    cJSON_AddNumberToObject(j, name, v);
}

static void add_user(cJSON *j, const srv_user_stats *u)
{
    add(j, "requests", (double)u->requests);
    add(j, "requests_done", (double)u->requests_done);
    add(j, "requests_cancelled", (double)u->requests_cancelled);
    add(j, "requests_failed", (double)u->requests_failed);
    add(j, "prompt_tokens", (double)u->prompt_tokens);
    add(j, "cached_tokens", (double)u->cached_tokens);
    add(j, "cached_tokens_disk", (double)u->cached_tokens_disk);
    add(j, "cached_tokens_remote", (double)u->cached_tokens_remote);
    add(j, "generated_tokens", (double)u->generated_tokens);
}

/* The remote tier's counters (daemon scope only: hits tell who repeated a prompt). */
static void add_remote(server *s, cJSON *j)
{
    remote_thread_stats rs;
    if (engine_remote_stats(s->engine, &rs) != 0)
        return;
    const cache_remote_stats *c = &rs.remote;
    add(j, "remote_connected", rs.connected);
    add(j, "remote_connects", (double)c->connects);
    add(j, "remote_connect_fails", (double)c->connect_fails);
    add(j, "remote_loads", (double)rs.loads);
    add(j, "remote_loads_unavailable", (double)rs.loads_unavailable);
    add(j, "remote_load_ms", rs.load_ms);
    add(j, "remote_gets", (double)c->gets);
    add(j, "remote_hit_blocks", (double)c->hits);
    add(j, "remote_hit_tokens",
        (double)c->hits * s->o.engine.block_tokens + (double)c->partial_tokens);
    add(j, "remote_partial_hits", (double)c->partial_hits);
    add(j, "remote_misses", (double)c->misses);
    add(j, "remote_corrupt_deleted", (double)c->corrupt_deleted);
    add(j, "remote_foreign", (double)c->foreign);
    add(j, "remote_bytes_in", (double)c->bytes_in);
    add(j, "remote_bytes_out", (double)c->bytes_out);
    add(j, "remote_writes", (double)c->puts);
    add(j, "remote_writes_queued", (double)rs.writes_queued);
    add(j, "remote_writes_dropped", (double)rs.writes_dropped);
    add(j, "remote_writes_failed", (double)rs.writes_failed);
    add(j, "remote_writes_refused", (double)c->put_refused);
    add(j, "remote_write_pending", (double)rs.write_pending);
    add(j, "remote_errors", (double)c->errors);
    add(j, "remote_timeouts", (double)c->timeouts);
    add(j, "remote_round_trips", (double)c->round_trips);
    add(j, "remote_get_ms", c->get_ms);
    add(j, "remote_put_ms", c->put_ms);
    if (s->o.engine.remote_cluster) { /* a Redis Cluster (--remote-cluster) */
        add(j, "remote_cluster_nodes", c->nodes);
        add(j, "remote_cluster_nodes_up", c->nodes_up);
        add(j, "remote_cluster_moved", (double)c->moved);
        add(j, "remote_cluster_asked", (double)c->asked);
        add(j, "remote_cluster_map_refreshes", (double)c->map_refreshes);
    }
    /* The latency histogram: counts of round trips under each bound (ms; the last is +inf). */
    cJSON *h = cJSON_AddObjectToObject(j, "remote_latency_ms");
    for (int i = 0; h && i < CACHE_REMOTE_HIST; i++) {
        char name[16];
        if (i == CACHE_REMOTE_HIST - 1)
            snprintf(name, sizeof name, "inf");
        else
            snprintf(name, sizeof name, "%g", cache_remote_hist_ms[i]);
        add(h, name, (double)c->latency_hist[i]);
    }
}

/* Everything, daemon-wide. */
static void add_daemon(server *s, cJSON *j)
{
    engine_stats es;
    engine_get_stats(s->engine, &es);
    add(j, "requests", (double)es.requests);
    add(j, "requests_done", (double)es.requests_done);
    add(j, "requests_cancelled", (double)es.requests_cancelled);
    add(j, "requests_failed", (double)es.requests_failed);
    add(j, "requests_running", es.running);
    add(j, "requests_waiting", es.waiting);
    add(j, "prompt_tokens", (double)es.prompt_tokens);
    add(j, "cached_tokens", (double)es.cached_tokens);
    add(j, "cached_tokens_disk", (double)es.cached_tokens_disk);
    add(j, "cached_tokens_remote", (double)es.cached_tokens_remote);
    add(j, "prefill_tokens", (double)es.prefill_tokens);
    add(j, "generated_tokens", (double)es.generated_tokens);
    add(j, "prefill_ms", es.prefill_ms);
    add(j, "decode_ms", es.decode_ms);
    add(j, "history_tokens", (double)es.history_tokens);
    add(j, "history_ms", es.history_ms);
    add(j, "history_dropped", (double)es.history_dropped);
    add(j, "history_superseded", (double)es.history_superseded);
    add(j, "history_pending", es.background);
    cache *c = engine_cache(s->engine);
    if (c) {
        cache_stats cs;
        cache_get_stats(c, &cs);
        add(j, "cache_lookups", (double)cs.lookups);
        add(j, "cache_hit_blocks", (double)cs.hit_blocks);
        add(j, "cache_hit_tokens", (double)cs.hit_tokens);
        add(j, "cache_miss_blocks", (double)cs.miss_blocks);
        add(j, "cache_inserts", (double)cs.inserts);
        add(j, "cache_dedups", (double)cs.dedups);
        add(j, "cache_collisions", (double)cs.collisions);
        add(j, "cache_evictions", (double)cs.evictions);
        add(j, "cache_blocks_cached", (double)cs.slots_cached);
        add(j, "cache_blocks_pinned", (double)cs.slots_pinned);
    }
    disk_thread_stats ds;
    if (engine_disk_stats(s->engine, &ds) == 0) {
        add(j, "disk_hit_blocks", (double)ds.load_blocks);
        add(j, "disk_hit_tokens", (double)ds.load_blocks * s->o.engine.block_tokens);
        add(j, "disk_loads", (double)ds.loads);
        add(j, "disk_load_ms", ds.load_ms);
        add(j, "disk_load_pending_hits", (double)ds.load_pending_hits);
        add(j, "disk_spills", (double)ds.disk.puts);
        add(j, "disk_spills_queued", (double)ds.spills_queued);
        add(j, "disk_spills_dropped", (double)ds.spills_dropped);
        add(j, "disk_spills_failed", (double)ds.spills_failed);
        add(j, "disk_spill_bytes", (double)ds.spill_bytes_written);
        add(j, "disk_spill_ms", ds.spill_ms);
        add(j, "disk_spill_copy_ms", ds.spill_copy_ms);
        add(j, "disk_evictions", (double)ds.disk.evictions);
        add(j, "disk_corrupt_deleted", (double)ds.disk.corrupt_deleted);
    }
    add_remote(s, j);
    add(j, "connections", (double)s->connections);
    add(j, "frames_in", (double)s->frames_in);
    add(j, "frames_out", (double)s->frames_out);
    add(j, "bad_frames", (double)s->bad_frames);
}

/* Sizes that say nothing about what anybody asked. */
static void add_sizes(server *s, cJSON *j)
{
    add(j, "block_tokens", s->o.engine.block_tokens);
    cJSON_AddStringToObject(j, "kv_type", model_type_name(s->o.engine.kv_type));
    cache *c = engine_cache(s->engine);
    if (c) {
        cache_stats cs;
        cache_get_stats(c, &cs);
        add(j, "cache_blocks_total", (double)cs.slots_total);
        add(j, "cache_blocks_used", (double)cs.slots_used);
        add(j, "cache_bytes_total", (double)cs.bytes_total);
        add(j, "cache_bytes_in_use", (double)cs.bytes_in_use);
    }
    disk_thread_stats ds;
    if (engine_disk_stats(s->engine, &ds) == 0) {
        add(j, "disk_blocks", (double)ds.disk.entries);
        add(j, "disk_bytes", (double)ds.disk.bytes_on_disk);
        add(j, "disk_bytes_max", (double)ds.disk.max_bytes);
    }
}

char *srv__stats_json(server *s, uint32_t uid)
{
    int all = s->o.stats_all_users || uid == 0 || uid == (uint32_t)geteuid();
    cJSON *j = cJSON_CreateObject(), *me = cJSON_CreateObject();
    if (!j || !me) {
        cJSON_Delete(j);
        cJSON_Delete(me);
        return NULL;
    }
    cJSON_AddStringToObject(j, "scope", all ? "daemon" : "user");
    add(j, "uid", uid);
    const srv_user_stats *u = srv__user_stats(s, uid);
    if (all)
        add_daemon(s, j);
    else
        add_user(j, u);
    add_sizes(s, j);
    add_user(me, u);
    cJSON_AddItemToObject(j, "user", me);
    char *text = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    return text;
}
