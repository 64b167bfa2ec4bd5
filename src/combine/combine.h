// Host interface of the split-KV combine kernel.
#pragma once

#include <cuda_runtime_api.h>

#include "flashmla/flashmla.h"
#include "kernels/decode_params.h"

namespace flashmla {

// Merges the partial results of every request the plan split into out / softmax_lse.
cudaError_t launch_combine(DataType dtype, const DecodeParams& params, cudaStream_t stream);

}  // namespace flashmla
