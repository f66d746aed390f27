prefixd_test(NAME test_vocab SOURCES unit/test_vocab.c LIBS model LABELS unit TIMEOUT 120)
