prefixd_test(NAME test_engine SOURCES unit/test_engine.c LIBS engine LABELS unit TIMEOUT 180
  CASES cached_equals_uncached chat_history_cached batch_independent collisions
        eviction_pressure bad_input huge_max_new new_errors warm_and_pin disk_restart disk_pressure disk_model_isolation
        disk_cancel_loading disk_working_set disk_errors)
