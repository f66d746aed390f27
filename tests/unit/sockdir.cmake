prefixd_test(NAME test_sockdir SOURCES unit/test_sockdir.c LIBS proto LABELS unit TIMEOUT 30)
