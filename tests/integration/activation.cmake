# prefixd serve on a socket passed by socket activation (LISTEN_FDS/LISTEN_PID, fd 3), as
# systemd's prefixd.socket passes it; see test_activation.py.
find_program(PYTHON3 python3 REQUIRED)
prefixd_test_cases(PREFIX activation LABELS integration TIMEOUT 180
  COMMAND ${PYTHON3} ${CMAKE_CURRENT_SOURCE_DIR}/integration/test_activation.py
          $<TARGET_FILE:prefixd> ${PREFIXD_MODELS_DIR} ${CMAKE_SOURCE_DIR}/clients/python)
