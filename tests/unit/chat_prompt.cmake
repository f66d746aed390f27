prefixd_test(NAME test_chat_prompt SOURCES unit/test_chat_prompt.c LIBS model
  LABELS unit TIMEOUT 120)
