prefixd_test(NAME test_engine_remote SOURCES unit/test_engine_remote.c LIBS engine LABELS unit TIMEOUT 180)
