# The HTTP API (test_http.py): a real `prefixd serve --http` driven by curl, raw sockets and the
# official `openai` Node.js package, which the test installs once into build/npm from the npm
# registry (it fails, never skips, when npm cannot reach it). One test per case_* function.
find_program(PYTHON3 python3 REQUIRED)
prefixd_test_cases(PREFIX http LABELS integration TIMEOUT 300
  COMMAND ${PYTHON3} ${CMAKE_CURRENT_SOURCE_DIR}/integration/test_http.py
          $<TARGET_FILE:prefixd> ${PREFIXD_MODELS_DIR} ${CMAKE_SOURCE_DIR}/clients/python
          ${CMAKE_BINARY_DIR}/npm)
