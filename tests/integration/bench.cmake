# `prefixctl bench` against a real daemon (stories260K): outputs, cached turns, the control
# workload, bad parameters.
find_program(PYTHON3 python3 REQUIRED)
foreach(c outputs chat_cached chat_nocache unique disk_restart bad_params)
  add_test(NAME bench.${c} COMMAND ${PYTHON3} ${CMAKE_CURRENT_SOURCE_DIR}/integration/test_bench.py
           $<TARGET_FILE:prefixd> $<TARGET_FILE:prefixctl> ${PREFIXD_MODELS_DIR} ${c})
  set_tests_properties(bench.${c} PROPERTIES LABELS integration TIMEOUT 60)
endforeach()
