prefixd_test(NAME test_disk SOURCES unit/test_disk.c LIBS cache LABELS unit TIMEOUT 120)
