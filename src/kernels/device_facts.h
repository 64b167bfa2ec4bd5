// What the kernels need to know about the current CUDA device, read once per device.
#pragma once

#include "flashmla/flashmla.h"

namespace flashmla::detail {

struct DeviceFacts {
  int index = 0;
  int major = 0, minor = 0;  // compute capability: sm_90a code runs on 9.0 only
  int num_sms = 0;
  int smem_optin = 0;        // opt-in shared memory per block, bytes
  // The combine may be a programmatic dependent launch (common/pdl.cuh): its code for this
  // device was compiled for sm_90 or newer, so it waits for the split-KV kernel (and the device
  // has compute capability 9.0 or newer).
  bool pdl = false;
};

// Facts of the current device (cached: a decode call must not pay for attribute queries).
Status current_device_facts(DeviceFacts& facts);

}  // namespace flashmla::detail
