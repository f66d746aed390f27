# `prefixd run` and `synth` end to end. One test per case of test_run.sh (its --list).
prefixd_test_cases(PREFIX run LABELS integration TIMEOUT 120
  COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/integration/test_run.sh
          $<TARGET_FILE:prefixd> ${PREFIXD_MODELS_DIR})
