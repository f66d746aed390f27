prefixd_test(NAME test_template SOURCES unit/test_template.c LIBS model PkgConfig::CJSON
  LABELS unit TIMEOUT 60)
