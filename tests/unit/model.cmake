prefixd_test(NAME test_model SOURCES unit/test_model.c LIBS model LABELS unit TIMEOUT 300)
