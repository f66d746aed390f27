# `prefixd serve`'s start-up errors and defaults. One test per case_* function of test_misc.py
# (its --list).
find_program(PYTHON3 python3 REQUIRED)
prefixd_test_cases(PREFIX misc LABELS integration TIMEOUT 120
  COMMAND ${PYTHON3} ${CMAKE_CURRENT_SOURCE_DIR}/integration/test_misc.py
          $<TARGET_FILE:prefixd> ${PREFIXD_MODELS_DIR})
