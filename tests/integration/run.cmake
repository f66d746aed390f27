foreach(c golden gguf prompt context bad_input synth)
  add_test(NAME run.${c} COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/integration/test_run.sh
           $<TARGET_FILE:prefixd> ${PREFIXD_MODELS_DIR} ${c})
  set_tests_properties(run.${c} PROPERTIES LABELS integration TIMEOUT 120)
endforeach()
