prefixd_test(NAME test_tokenizer SOURCES unit/test_tokenizer.c LIBS model PkgConfig::CJSON
  LABELS unit TIMEOUT 60
  CASES golden_tok512 golden_tok32k roundtrip long_prompt bad_files sampler)
