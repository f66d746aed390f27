# The seed corpora always run as unit tests; the libFuzzer targets need clang:
#   CC=clang cmake -S . -B build-fuzz -DPREFIXD_FUZZ=ON && cmake --build build-fuzz --target fuzz_proto
#   build-fuzz/tests/fuzz_proto -max_total_time=60 NEW_DIR tests/fuzz/corpus/proto
# (and the same with fuzz_gguf, fuzz_http and fuzz_template, each with tests/fuzz/corpus/NAME).
add_executable(fuzz_proto_corpus fuzz/fuzz_proto.c fuzz/corpus_main.c)
target_link_libraries(fuzz_proto_corpus PRIVATE proto prefixd_warnings)
add_test(NAME fuzz_proto_corpus COMMAND fuzz_proto_corpus
         ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/corpus/proto)
set_tests_properties(fuzz_proto_corpus PROPERTIES LABELS unit TIMEOUT 120)
add_executable(fuzz_gguf_corpus fuzz/fuzz_gguf.c fuzz/corpus_main.c)
target_link_libraries(fuzz_gguf_corpus PRIVATE model prefixd_warnings)
add_test(NAME fuzz_gguf_corpus COMMAND fuzz_gguf_corpus
         ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/corpus/gguf)
set_tests_properties(fuzz_gguf_corpus PROPERTIES LABELS unit TIMEOUT 120)
# The HTTP API's request reading and JSON mapping (fuzz_http.c), the same way.
add_executable(fuzz_http_corpus fuzz/fuzz_http.c fuzz/corpus_main.c)
target_link_libraries(fuzz_http_corpus PRIVATE httpapi proto prefixd_warnings)
add_test(NAME fuzz_http_corpus COMMAND fuzz_http_corpus ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/corpus/http)
set_tests_properties(fuzz_http_corpus PROPERTIES LABELS unit TIMEOUT 120)
add_executable(fuzz_template_corpus fuzz/fuzz_template.c fuzz/corpus_main.c)
target_link_libraries(fuzz_template_corpus PRIVATE model prefixd_warnings)
add_test(NAME fuzz_template_corpus COMMAND fuzz_template_corpus
         ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/corpus/template)
set_tests_properties(fuzz_template_corpus PROPERTIES LABELS unit TIMEOUT 120)
if(PREFIXD_FUZZ)
  if(NOT CMAKE_C_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "PREFIXD_FUZZ needs clang: CC=clang cmake -DPREFIXD_FUZZ=ON ...")
  endif()
  add_executable(fuzz_proto fuzz/fuzz_proto.c)
  target_compile_options(fuzz_proto PRIVATE -fsanitize=fuzzer,address,undefined)
  target_link_options(fuzz_proto PRIVATE -fsanitize=fuzzer,address,undefined)
  target_link_libraries(fuzz_proto PRIVATE proto)
  target_compile_options(proto PRIVATE -fsanitize=fuzzer-no-link,address,undefined)
  add_executable(fuzz_gguf fuzz/fuzz_gguf.c)
  target_compile_options(fuzz_gguf PRIVATE -fsanitize=fuzzer,address,undefined)
  target_link_options(fuzz_gguf PRIVATE -fsanitize=fuzzer,address,undefined)
  target_link_libraries(fuzz_gguf PRIVATE model)
  add_executable(fuzz_template fuzz/fuzz_template.c)
  target_compile_options(fuzz_template PRIVATE -fsanitize=fuzzer,address,undefined)
  target_link_options(fuzz_template PRIVATE -fsanitize=fuzzer,address,undefined)
  target_link_libraries(fuzz_template PRIVATE model)
  target_compile_options(model PRIVATE -fsanitize=fuzzer-no-link,address,undefined)
  add_executable(fuzz_http fuzz/fuzz_http.c)
  target_compile_options(fuzz_http PRIVATE -fsanitize=fuzzer,address,undefined)
  target_link_options(fuzz_http PRIVATE -fsanitize=fuzzer,address,undefined)
  target_link_libraries(fuzz_http PRIVATE httpapi proto)
  target_compile_options(httpapi PRIVATE -fsanitize=fuzzer-no-link,address,undefined)
  # The libraries' own definitions (memmem and friends: _GNU_SOURCE), as the _corpus builds get
  # them from prefixd_warnings: without, memmem is implicitly declared and its pointer cut to int.
  foreach(t fuzz_proto fuzz_gguf fuzz_template fuzz_http)
    target_compile_definitions(${t} PRIVATE _GNU_SOURCE)
  endforeach()
endif()
