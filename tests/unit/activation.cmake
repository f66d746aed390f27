prefixd_test(NAME test_activation SOURCES unit/test_activation.c LIBS server LABELS unit TIMEOUT 30)
