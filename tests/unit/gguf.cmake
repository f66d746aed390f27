prefixd_test(NAME test_gguf SOURCES unit/test_gguf.c LIBS model LABELS unit TIMEOUT 120)
