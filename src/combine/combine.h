// Host interface of the split-KV combine kernel.
#pragma once

#include <cuda_runtime_api.h>

#include "flashmla/flashmla.h"
#include "kernels/decode_params.h"

namespace flashmla {

// Merges the partial results of every request the plan split into out / softmax_lse.
// programmatic: launch it as a programmatic dependent of the split-KV kernel just launched on
// `stream` (compute capability 9.0 and newer only), so that its launch overlaps that kernel's tail.
cudaError_t launch_combine(DataType dtype, const DecodeParams& params, bool programmatic, cudaStream_t stream);

// Whether the combine code the current device runs waits for its prerequisite grid, i.e. was
// compiled for sm_90 or newer: only then may launch_combine be programmatic. A build for sm_80
// only, or its compute_80 PTX JIT-compiled on a newer GPU, has no wait. False on any error (the
// launch then reports it).
bool combine_waits_for_prerequisite();

}  // namespace flashmla
