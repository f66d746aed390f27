prefixd_test(NAME test_sockdir SOURCES unit/test_sockdir.c LIBS proto LABELS unit TIMEOUT 30
  CASES default_path creates refuses_mode refuses_owner refuses_non_dir)
