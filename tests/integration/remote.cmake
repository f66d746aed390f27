# The remote tier with the real thing: `prefixd serve` daemons sharing a real `redis-server` on a
# Unix socket in a temporary folder. One test per case_* function of test_remote.py (its --list);
# each case prints "skipped" and passes when redis-server is not installed (scripts/deps --test).
find_program(PYTHON3 python3 REQUIRED)
prefixd_test_cases(PREFIX remote LABELS integration TIMEOUT 240
  COMMAND ${PYTHON3} ${CMAKE_CURRENT_SOURCE_DIR}/integration/test_remote.py
          $<TARGET_FILE:prefixd> ${PREFIXD_MODELS_DIR} ${CMAKE_SOURCE_DIR}/clients/python)
