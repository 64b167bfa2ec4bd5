// Host interface of the Hopper (sm_90a) split-KV decode kernel: wgmma, TMA, warp specialization.
#pragma once

#include <string>

#include <cuda_runtime_api.h>

#include "flashmla/flashmla.h"
#include "kernels/decode_params.h"
#include "kernels/device_facts.h"

namespace flashmla::sm90 {

// Empty if the kernel can run these (already validated) arguments on this device, else why not.
std::string cannot_run(const detail::DeviceFacts& device, const DecodeArgs& args);

Status launch_decode(const DecodeArgs& args, const DecodeParams& params, const detail::DeviceFacts& device,
                     cudaStream_t stream);

}  // namespace flashmla::sm90
