# The daemon's hardening (issue 10): a real `prefixd serve` attacked case by case, one test per
# case_* function of test_hardening.py (its --list), and the soak (well-behaved and abusive
# clients at once for ~60 s) registered apart
# (hardening_soak.soak) for its own timeout.
find_program(PYTHON3 python3 REQUIRED)
prefixd_test_cases(PREFIX hardening LABELS integration TIMEOUT 240
  COMMAND ${PYTHON3} ${CMAKE_CURRENT_SOURCE_DIR}/integration/test_hardening.py
          $<TARGET_FILE:prefixd> ${PREFIXD_MODELS_DIR} ${CMAKE_SOURCE_DIR}/clients/python cases)
prefixd_test_cases(PREFIX hardening_soak LABELS integration TIMEOUT 180
  COMMAND ${PYTHON3} ${CMAKE_CURRENT_SOURCE_DIR}/integration/test_hardening.py
          $<TARGET_FILE:prefixd> ${PREFIXD_MODELS_DIR} ${CMAKE_SOURCE_DIR}/clients/python soak)
