// Host interface of the portable (sm_80+) split-KV decode kernel.
#pragma once

#include <string>

#include <cuda_runtime_api.h>

#include "flashmla/flashmla.h"
#include "kernels/decode_params.h"
#include "kernels/device_facts.h"

namespace flashmla::sm80 {

// Empty if the kernel can run on this device, else why not.
std::string cannot_run(const detail::DeviceFacts& device, const DecodeArgs& args);

Status launch_decode(const DecodeArgs& args, const DecodeParams& params, const detail::DeviceFacts& device,
                     cudaStream_t stream);

}  // namespace flashmla::sm80
