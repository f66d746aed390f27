prefixd_test(NAME test_remote SOURCES unit/test_remote.c LIBS cache LABELS unit TIMEOUT 120)
