prefixd_test(NAME test_engine SOURCES unit/test_engine.c LIBS engine LABELS unit TIMEOUT 180)
