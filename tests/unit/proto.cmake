prefixd_test(NAME test_proto SOURCES unit/test_proto.c LIBS proto LABELS unit TIMEOUT 30)
find_program(PYTHON3 python3 REQUIRED)
add_test(NAME python_client COMMAND ${PYTHON3} ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_python_client.py
         ${CMAKE_SOURCE_DIR}/clients/python)
set_tests_properties(python_client PROPERTIES LABELS unit TIMEOUT 30)
