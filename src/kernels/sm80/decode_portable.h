// Host interface of the portable (sm_80+) split-KV decode kernel.
#pragma once

#include <cuda_runtime_api.h>

#include "flashmla/flashmla.h"
#include "kernels/decode_params.h"

namespace flashmla::sm80 {

// Shared memory the kernel needs with `stages` key stages, and the most stages a device with
// `smem_optin_bytes` of opt-in shared memory per block can hold (< 1: the kernel cannot run).
int portable_smem_bytes(int stages);
int portable_max_stages(int smem_optin_bytes);

cudaError_t launch_portable_decode(DataType dtype, const DecodeParams& params, int num_sm_parts, int stages,
                                   cudaStream_t stream);

}  // namespace flashmla::sm80
