prefixd_test(NAME test_disk SOURCES unit/test_disk.c LIBS cache LABELS unit TIMEOUT 120
  CASES roundtrip persistence model_isolation geometry garbage_files budget_lru map_full
        corruption file_limit bad_dir faults faults_map_full kill9 randomized
        private_files damaged_pages truncated)
