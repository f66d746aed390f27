prefixd_test(NAME test_proto SOURCES unit/test_proto.c LIBS proto LABELS unit TIMEOUT 30
  CASES roundtrip vectors partial_and_errors utf8_and_ns)
