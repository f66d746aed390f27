# The clients as a user meets them (test_prefixctl.py): one test per case_* function.
find_program(PYTHON3 python3 REQUIRED)
prefixd_test_cases(PREFIX prefixctl LABELS integration TIMEOUT 240
  COMMAND ${PYTHON3} ${CMAKE_CURRENT_SOURCE_DIR}/integration/test_prefixctl.py
          $<TARGET_FILE:prefixd> $<TARGET_FILE:prefixctl> ${PREFIXD_MODELS_DIR}
          ${CMAKE_SOURCE_DIR}/clients/python)
