// main() of the GPU test binary. `flashmla_gpu_tests --probe-device` exits 0 when a CUDA
// device is usable and 77 otherwise (used by run_sanitizer.cmake to skip without a GPU);
// anything else runs GoogleTest as usual.
#include <cstring>

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (std::strcmp(argv[i], "--probe-device") == 0) {
      int n = 0;
      return cudaGetDeviceCount(&n) == cudaSuccess && n > 0 ? 0 : 77;
    }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
