# A real `prefixd serve` on a temporary socket. One test per case_* function of test_serve.py
# (its --list).
find_program(PYTHON3 python3 REQUIRED)
prefixd_test_cases(PREFIX serve LABELS integration TIMEOUT 240
  COMMAND ${PYTHON3} ${CMAKE_CURRENT_SOURCE_DIR}/integration/test_serve.py
          $<TARGET_FILE:prefixd> ${PREFIXD_MODELS_DIR} ${CMAKE_SOURCE_DIR}/clients/python
  ENVIRONMENT PREFIXCTL=$<TARGET_FILE:prefixctl>)
