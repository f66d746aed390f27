# `prefixctl bench --http` against a real daemon's HTTP API (stories260K) and a fake
# llama-server: outputs, cached turns, the same prompts as the socket, keys, bad parameters, the
# HTTP reader on one-byte chunks and a closed keep-alive connection. One test per case_* function
# of test_bench_http.py (its --list).
find_program(PYTHON3 python3 REQUIRED)
prefixd_test_cases(PREFIX bench_http LABELS integration TIMEOUT 60
  COMMAND ${PYTHON3} ${CMAKE_CURRENT_SOURCE_DIR}/integration/test_bench_http.py
          $<TARGET_FILE:prefixd> $<TARGET_FILE:prefixctl> ${PREFIXD_MODELS_DIR})
