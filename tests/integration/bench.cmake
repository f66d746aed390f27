# `prefixctl bench` against a real daemon (stories260K): outputs, cached turns, the control
# workload, bad parameters; and bench_engine's --hog option. One test per case_* function of
# test_bench.py (its --list).
find_program(PYTHON3 python3 REQUIRED)
prefixd_test_cases(PREFIX bench LABELS integration TIMEOUT 60
  COMMAND ${PYTHON3} ${CMAKE_CURRENT_SOURCE_DIR}/integration/test_bench.py
          $<TARGET_FILE:prefixd> $<TARGET_FILE:prefixctl> ${PREFIXD_MODELS_DIR}
  ENVIRONMENT BENCH_ENGINE=$<TARGET_FILE:bench_engine>)
