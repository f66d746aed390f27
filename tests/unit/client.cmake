prefixd_test(NAME test_client SOURCES unit/test_client.c LIBS prefixd_client Threads::Threads
  LABELS unit TIMEOUT 30)
add_dependencies(test_client prefixd) # the cases against a real daemon run build/daemon/prefixd
