# `prefixd chat-template`: families, --chat-template NAME|FILE, the family line, --segments and
# its errors. One test per case_* function of test_chat_template.py (its --list).
find_program(PYTHON3 python3 REQUIRED)
prefixd_test_cases(PREFIX chat_template LABELS integration TIMEOUT 60
  COMMAND ${PYTHON3} ${CMAKE_CURRENT_SOURCE_DIR}/integration/test_chat_template.py
          $<TARGET_FILE:prefixd> ${PREFIXD_MODELS_DIR} ${CMAKE_SOURCE_DIR}/tests/data/templates)
