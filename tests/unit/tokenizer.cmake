prefixd_test(NAME test_tokenizer SOURCES unit/test_tokenizer.c LIBS model PkgConfig::CJSON
  LABELS unit TIMEOUT 60)
