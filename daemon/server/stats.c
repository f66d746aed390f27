/* stats.c — the STATS reply: the engine's, the cache's, the disk tier's and the connections'
 * counters as one JSON object (cJSON). Runs on the engine thread, which owns the engine. */
#include "server_int.h"

#include <cJSON.h>

#include "disk_thread.h"

/* The counters as one JSON object (cJSON), for STATS. */
char *srv__stats_json(server *s)
{
    engine_stats es;
    engine_get_stats(s->engine, &es);
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "requests", (double)es.requests);
    cJSON_AddNumberToObject(j, "requests_done", (double)es.requests_done);
    cJSON_AddNumberToObject(j, "requests_cancelled", (double)es.requests_cancelled);
    cJSON_AddNumberToObject(j, "requests_failed", (double)es.requests_failed);
    cJSON_AddNumberToObject(j, "requests_running", es.running);
    cJSON_AddNumberToObject(j, "requests_waiting", es.waiting);
    cJSON_AddNumberToObject(j, "prompt_tokens", (double)es.prompt_tokens);
    cJSON_AddNumberToObject(j, "cached_tokens", (double)es.cached_tokens);
    cJSON_AddNumberToObject(j, "cached_tokens_disk", (double)es.cached_tokens_disk);
    cJSON_AddNumberToObject(j, "prefill_tokens", (double)es.prefill_tokens);
    cJSON_AddNumberToObject(j, "generated_tokens", (double)es.generated_tokens);
    cJSON_AddNumberToObject(j, "prefill_ms", es.prefill_ms);
    cJSON_AddNumberToObject(j, "decode_ms", es.decode_ms);
    cache *c = engine_cache(s->engine);
    if (c) {
        cache_stats cs;
        cache_get_stats(c, &cs);
        cJSON_AddNumberToObject(j, "cache_lookups", (double)cs.lookups);
        cJSON_AddNumberToObject(j, "cache_hit_blocks", (double)cs.hit_blocks);
        cJSON_AddNumberToObject(j, "cache_hit_tokens", (double)cs.hit_tokens);
        cJSON_AddNumberToObject(j, "cache_miss_blocks", (double)cs.miss_blocks);
        cJSON_AddNumberToObject(j, "cache_inserts", (double)cs.inserts);
        cJSON_AddNumberToObject(j, "cache_dedups", (double)cs.dedups);
        cJSON_AddNumberToObject(j, "cache_collisions", (double)cs.collisions);
        cJSON_AddNumberToObject(j, "cache_evictions", (double)cs.evictions);
        cJSON_AddNumberToObject(j, "cache_blocks_total", (double)cs.slots_total);
        cJSON_AddNumberToObject(j, "cache_blocks_used", (double)cs.slots_used);
        cJSON_AddNumberToObject(j, "cache_blocks_cached", (double)cs.slots_cached);
        cJSON_AddNumberToObject(j, "cache_blocks_pinned", (double)cs.slots_pinned);
        cJSON_AddNumberToObject(j, "cache_bytes_total", (double)cs.bytes_total);
        cJSON_AddNumberToObject(j, "cache_bytes_in_use", (double)cs.bytes_in_use);
    }
    disk_thread_stats ds;
    if (engine_disk_stats(s->engine, &ds) == 0) {
        cJSON_AddNumberToObject(j, "disk_hit_blocks", (double)ds.load_blocks);
        cJSON_AddNumberToObject(j, "disk_hit_tokens",
                                (double)ds.load_blocks * s->o.engine.block_tokens);
        cJSON_AddNumberToObject(j, "disk_loads", (double)ds.loads);
        cJSON_AddNumberToObject(j, "disk_load_ms", ds.load_ms);
        cJSON_AddNumberToObject(j, "disk_load_pending_hits", (double)ds.load_pending_hits);
        cJSON_AddNumberToObject(j, "disk_spills", (double)ds.disk.puts);
        cJSON_AddNumberToObject(j, "disk_spills_queued", (double)ds.spills_queued);
        cJSON_AddNumberToObject(j, "disk_spills_dropped", (double)ds.spills_dropped);
        cJSON_AddNumberToObject(j, "disk_spills_failed", (double)ds.spills_failed);
        cJSON_AddNumberToObject(j, "disk_spill_bytes", (double)ds.spill_bytes_written);
        cJSON_AddNumberToObject(j, "disk_spill_ms", ds.spill_ms);
        cJSON_AddNumberToObject(j, "disk_spill_copy_ms", ds.spill_copy_ms);
        cJSON_AddNumberToObject(j, "disk_evictions", (double)ds.disk.evictions);
        cJSON_AddNumberToObject(j, "disk_corrupt_deleted", (double)ds.disk.corrupt_deleted);
        cJSON_AddNumberToObject(j, "disk_blocks", (double)ds.disk.entries);
        cJSON_AddNumberToObject(j, "disk_bytes", (double)ds.disk.bytes_on_disk);
        cJSON_AddNumberToObject(j, "disk_bytes_max", (double)ds.disk.max_bytes);
    }
    cJSON_AddNumberToObject(j, "connections", (double)s->connections);
    cJSON_AddNumberToObject(j, "frames_in", (double)s->frames_in);
    cJSON_AddNumberToObject(j, "frames_out", (double)s->frames_out);
    cJSON_AddNumberToObject(j, "bad_frames", (double)s->bad_frames);
    cJSON_AddNumberToObject(j, "block_tokens", s->o.engine.block_tokens);
    char *text = j ? cJSON_PrintUnformatted(j) : NULL;
    cJSON_Delete(j);
    return text;
}
