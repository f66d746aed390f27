prefixd_test(NAME test_cache SOURCES unit/test_cache.c LIBS cache LABELS unit TIMEOUT 60)
