find_program(PYTHON3 python3 REQUIRED)
foreach(c golden gguf concurrent multiplex cancel bad_input busy slow_reader users socket sigterm
          prefixctl disk_restart disk_kill9 disk_faults)
  add_test(NAME serve.${c} COMMAND ${PYTHON3} ${CMAKE_CURRENT_SOURCE_DIR}/integration/test_serve.py
           $<TARGET_FILE:prefixd> ${PREFIXD_MODELS_DIR} ${CMAKE_SOURCE_DIR}/clients/python ${c})
  set_tests_properties(serve.${c} PROPERTIES LABELS integration TIMEOUT 240
                       ENVIRONMENT "PREFIXCTL=$<TARGET_FILE:prefixctl>")
endforeach()
