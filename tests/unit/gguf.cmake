prefixd_test(NAME test_gguf SOURCES unit/test_gguf.c LIBS model LABELS unit TIMEOUT 120
  CASES parse_valid truncated_everywhere malformed_headers malformed_tensors llama_refusals
        real_vocab_files small_vocab_encode golden_260k same_as_bin)
