# cases.cmake — run by ctest at test time (TEST_INCLUDE_FILES, written by prefixd_test_cases in
# tests/CMakeLists.txt): asks a test program for its cases (`COMMAND --list`: one a line, the name
# then any extra labels) and registers one test per case. Set before it is included:
# PREFIXD_CASES_PREFIX, _COMMAND (a list: the program and its leading arguments), _LABELS,
# _TIMEOUT, _ENVIRONMENT (a list of VAR=value, may be empty) and _WORKDIR.
execute_process(COMMAND ${PREFIXD_CASES_COMMAND} --list
                OUTPUT_VARIABLE prefixd_out ERROR_VARIABLE prefixd_err
                RESULT_VARIABLE prefixd_rc TIMEOUT 60)
set(prefixd_props TIMEOUT "${PREFIXD_CASES_TIMEOUT}" WORKING_DIRECTORY "${PREFIXD_CASES_WORKDIR}")
if(NOT "${PREFIXD_CASES_ENVIRONMENT}" STREQUAL "")
  list(APPEND prefixd_props ENVIRONMENT "${PREFIXD_CASES_ENVIRONMENT}")
endif()
if(NOT "${prefixd_rc}" STREQUAL "0" OR "${prefixd_out}" STREQUAL "")
  # Not built, or it cannot list its cases: one test that fails the same way, so a run shows it.
  add_test(${PREFIXD_CASES_PREFIX}.list ${PREFIXD_CASES_COMMAND} --list)
  set_tests_properties(${PREFIXD_CASES_PREFIX}.list PROPERTIES ${prefixd_props}
                       LABELS "${PREFIXD_CASES_LABELS}")
  if("${prefixd_rc}" STREQUAL "0")
    set_tests_properties(${PREFIXD_CASES_PREFIX}.list PROPERTIES WILL_FAIL TRUE)
  endif()
  return()
endif()
string(REPLACE "\n" ";" prefixd_lines "${prefixd_out}")
foreach(prefixd_line IN LISTS prefixd_lines)
  string(STRIP "${prefixd_line}" prefixd_line)
  if(prefixd_line STREQUAL "")
    continue()
  endif()
  string(REPLACE " " ";" prefixd_words "${prefixd_line}")
  list(POP_FRONT prefixd_words prefixd_case)
  set(prefixd_test "${PREFIXD_CASES_PREFIX}.${prefixd_case}")
  add_test(${prefixd_test} ${PREFIXD_CASES_COMMAND} ${prefixd_case})
  # The program's labels, then the case's own (ctest's script mode has no set_property(TEST)).
  set(prefixd_labels ${PREFIXD_CASES_LABELS} ${prefixd_words})
  set_tests_properties(${prefixd_test} PROPERTIES ${prefixd_props} LABELS "${prefixd_labels}")
endforeach()
