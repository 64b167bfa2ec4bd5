# Runs one compute-sanitizer tool over a gtest filter of the GPU test binary.
#   cmake -DTEST_BIN=<flashmla_gpu_tests> -DSANITIZER=<compute-sanitizer> -DTOOL=memcheck
#         -DFILTER=GpuQuick.* -P run_sanitizer.cmake
# Prints "[  SKIPPED ] no CUDA device" (ctest reports the test as skipped) without a GPU.
execute_process(COMMAND ${TEST_BIN} --probe-device RESULT_VARIABLE probe)
if(NOT probe EQUAL 0)
  message("[  SKIPPED ] no CUDA device: compute-sanitizer ${TOOL} not run")
  return()
endif()
set(extra)
if(TOOL STREQUAL "memcheck")
  set(extra --leak-check full)
endif()
execute_process(
  COMMAND ${SANITIZER} --tool ${TOOL} ${extra} --error-exitcode 86 ${TEST_BIN} --gtest_filter=${FILTER}
  RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "compute-sanitizer --tool ${TOOL} failed (exit ${rc})")
endif()
