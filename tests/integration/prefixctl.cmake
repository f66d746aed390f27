find_program(PYTHON3 python3 REQUIRED)
foreach(c help global_after detokenize_bos exit_codes version sampling python_interleave
          max_new_range impostor)
  add_test(NAME prefixctl.${c}
           COMMAND ${PYTHON3} ${CMAKE_CURRENT_SOURCE_DIR}/integration/test_prefixctl.py
           $<TARGET_FILE:prefixd> $<TARGET_FILE:prefixctl> ${PREFIXD_MODELS_DIR}
           ${CMAKE_SOURCE_DIR}/clients/python ${c})
  set_tests_properties(prefixctl.${c} PROPERTIES LABELS integration TIMEOUT 240)
endforeach()
