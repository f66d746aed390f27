prefixd_test(NAME test_model SOURCES unit/test_model.c LIBS model LABELS unit TIMEOUT 120
  CASES reference_260k reference_synth_gqa reference_synth_mha reference_synth_hs64
        split_prefill decode_batch_invariant range_errors bad_files shapes_and_sizes kernel_gemm
        kernel_attend kernel_attend1_blocks kernel_elementwise)
