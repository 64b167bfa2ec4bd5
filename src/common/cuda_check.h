// CUDA error handling for the library: errors become a Status, never exit() or abort().
#pragma once

#include <string>

#include <cuda_runtime_api.h>

#include "flashmla/flashmla.h"

namespace flashmla::detail {

inline Status cuda_status(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return Status::Ok();
  return Status::Error(std::string(what) + ": CUDA error " + cudaGetErrorName(err) + " (" +
                       cudaGetErrorString(err) + ")");
}

// After a kernel launch: configuration errors show up here (execution errors surface later,
// at the caller's next synchronization).
inline Status check_launch(const char* kernel) { return cuda_status(cudaGetLastError(), kernel); }

}  // namespace flashmla::detail

#define FLASHMLA_RETURN_IF_CUDA_ERROR(expr)                                          \
  do {                                                                               \
    if (::flashmla::Status s_ = ::flashmla::detail::cuda_status((expr), #expr); !s_.ok()) \
      return s_;                                                                     \
  } while (0)
