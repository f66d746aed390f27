# The socket-activation helper is compiled in directly (one self-contained file), so this test
# does not depend on how daemon/ is cut into libraries.
prefixd_test(NAME test_activation
  SOURCES unit/test_activation.c ${CMAKE_SOURCE_DIR}/daemon/activation.c
  LABELS unit TIMEOUT 30
  CASES nothing_passed listening_unix_socket abstract_socket other_pid malformed two_fds
        closed_fd not_a_socket not_listening datagram tcp null_msg strerror)
target_include_directories(test_activation PRIVATE ${CMAKE_SOURCE_DIR}/daemon)
