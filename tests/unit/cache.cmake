prefixd_test(NAME test_cache SOURCES unit/test_cache.c LIBS cache LABELS unit TIMEOUT 60
  CASES keys lookup_publish_refs eviction_order pins randomized randomized_collisions)
