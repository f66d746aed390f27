# `cmake --install` into a temporary prefix and use of everything from there (see
# test_install.sh). A sanitized build's libprefixd needs the sanitizer runtime first in the
# program that links it, so the test program is compiled with the same flags.
set(install_test_cflags "")
if(PREFIXD_SANITIZE)
  set(install_test_cflags "-fsanitize=address,undefined")
endif()
add_test(NAME install COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/integration/test_install.sh
         ${CMAKE_COMMAND} ${CMAKE_BINARY_DIR} ${PREFIXD_MODELS_DIR} ${CMAKE_C_COMPILER}
         "${install_test_cflags}")
set_tests_properties(install PROPERTIES LABELS integration TIMEOUT 120)
