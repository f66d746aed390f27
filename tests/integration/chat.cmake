# `prefixctl chat` in a real terminal (a tmux pane) against a real `prefixd serve`. One test per
# case_* function of test_chat.py (its --list).
find_program(PYTHON3 python3 REQUIRED)
prefixd_test_cases(PREFIX chat LABELS integration TIMEOUT 240
  COMMAND ${PYTHON3} ${CMAKE_CURRENT_SOURCE_DIR}/integration/test_chat.py
          $<TARGET_FILE:prefixd> ${PREFIXD_MODELS_DIR}
  ENVIRONMENT PREFIXCTL=$<TARGET_FILE:prefixctl>)
