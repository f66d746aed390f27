# CHAT (the daemon renders chat messages with the model's template) through a real `prefixd
# serve`, the Python client and prefixctl. One test per case_* function of test_chatproto.py.
find_program(PYTHON3 python3 REQUIRED)
prefixd_test_cases(PREFIX chatproto LABELS integration TIMEOUT 240
  COMMAND ${PYTHON3} ${CMAKE_CURRENT_SOURCE_DIR}/integration/test_chatproto.py
          $<TARGET_FILE:prefixd> ${PREFIXD_MODELS_DIR} ${CMAKE_SOURCE_DIR}/clients/python
  ENVIRONMENT PREFIXCTL=$<TARGET_FILE:prefixctl>)
