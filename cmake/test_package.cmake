# ctest: install the library into a scratch prefix, build examples/cpp against it with
# find_package(flashmla), and run the example. Proves the CMake package and the README snippet.
# Inputs: BUILD_DIR (this build tree), SOURCE_DIR (repo root), WORK_DIR (scratch).
file(REMOVE_RECURSE "${WORK_DIR}")
foreach(step
    "install|${CMAKE_COMMAND};--install;${BUILD_DIR};--prefix;${WORK_DIR}/prefix"
    "configure|${CMAKE_COMMAND};-S;${SOURCE_DIR}/examples/cpp;-B;${WORK_DIR}/build;-DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix;-DCMAKE_BUILD_TYPE=Release"
    "build|${CMAKE_COMMAND};--build;${WORK_DIR}/build"
    "run|${WORK_DIR}/build/decode_example")
  string(REPLACE "|" ";" step "${step}")
  list(POP_FRONT step name)
  execute_process(COMMAND ${step} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  message("${out}")
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${name} failed (${rc}):\n${err}")
  endif()
endforeach()
