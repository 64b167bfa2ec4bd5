// CUDA backend of mla_decode: fills DecodeParams once, picks the kernel for the device,
// launches split-KV decode then combine on the caller's stream. No allocation, no sync.
#include <array>
#include <cmath>
#include <mutex>
#include <string>

#include "api/backends.h"
#include "combine/combine.h"
#include "common/cuda_check.h"
#include "common/params.h"
#include "kernels/decode_params.h"
#include "kernels/sm80/decode_portable.h"

namespace flashmla::detail {
namespace {

struct DeviceInfo {
  int major = 0;
  int smem_optin = 0;
};

// Device attributes are read once per device: they cost microseconds, a decode call must not.
Status device_info(DeviceInfo& info) {
  static std::array<DeviceInfo, kMaxCudaDevices> cache;
  static std::array<std::once_flag, kMaxCudaDevices> once;
  int device = 0;
  FLASHMLA_RETURN_IF_CUDA_ERROR(cudaGetDevice(&device));
  if (device < 0 || device >= kMaxCudaDevices) return Status::Error("device index out of range");
  cudaError_t err = cudaSuccess;
  std::call_once(once[device], [&] {
    DeviceInfo d;
    err = cudaDeviceGetAttribute(&d.major, cudaDevAttrComputeCapabilityMajor, device);
    if (err == cudaSuccess)
      err = cudaDeviceGetAttribute(&d.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
    if (err == cudaSuccess) cache[device] = d;
  });
  FLASHMLA_RETURN_IF_CUDA_ERROR(err);
  info = cache[device];
  return Status::Ok();
}

DecodeParams make_params(const DecodeArgs& a, void* workspace) {
  const WorkspaceLayout ws(a.batch, a.s_q, a.h_q, a.h_kv, a.num_sm_parts);
  const float scale = a.softmax_scale > 0.f ? a.softmax_scale : 1.f / std::sqrt(float(kHeadDimQK));
  DecodeParams p{};
  p.q = a.q;
  p.q_batch_stride = a.q_batch_stride;
  p.q_token_stride = a.q_token_stride;
  p.q_head_stride = a.q_head_stride;
  p.k_cache = a.k_cache;
  p.k_block_stride = a.k_block_stride;
  p.k_token_stride = a.k_token_stride;
  p.k_head_stride = a.k_head_stride;
  p.num_blocks = a.num_blocks;
  p.page_size = a.page_size;
  p.block_table = a.block_table;
  p.block_table_batch_stride = a.block_table_batch_stride;
  p.max_blocks_per_seq = a.max_blocks_per_seq;
  p.cache_seqlens = a.cache_seqlens;
  p.tile_scheduler_metadata = a.tile_scheduler_metadata;
  p.num_splits = a.num_splits;
  p.out = a.out;
  p.out_batch_stride = a.out_batch_stride;
  p.out_token_stride = a.out_token_stride;
  p.out_head_stride = a.out_head_stride;
  p.softmax_lse = a.softmax_lse;
  p.partial_out = reinterpret_cast<float*>(static_cast<char*>(workspace) + ws.out_offset);
  p.partial_lse = reinterpret_cast<float*>(static_cast<char*>(workspace) + ws.lse_offset);
  p.batch = a.batch;
  p.s_q = a.s_q;
  p.h_q = a.h_q;
  p.h_kv = a.h_kv;
  p.q_heads_per_kv = a.h_q / a.h_kv;
  p.rows_per_kv_head = int(ws.rows_per_kv_head);
  p.scale_log2 = scale * 1.4426950408889634f;
  p.causal = a.causal;
  return p;
}

}  // namespace

Status decode_cuda(const DecodeArgs& args, void* workspace, cudaStream_t stream) {
  DeviceInfo dev;
  if (Status s = device_info(dev); !s.ok()) return s;
  if (dev.major < 8)
    return Status::Error("device: expected compute capability 8.0 or newer (tensor-core mma.sync), got " +
                         std::to_string(dev.major) + ".x");
  const int stages = sm80::portable_max_stages(dev.smem_optin);
  if (stages < 1)
    return Status::Error("device: the portable MLA kernel needs " + std::to_string(sm80::portable_smem_bytes(1)) +
                         " bytes of shared memory per block, the device allows " + std::to_string(dev.smem_optin));

  const DecodeParams params = make_params(args, workspace);
  FLASHMLA_RETURN_IF_CUDA_ERROR(sm80::launch_portable_decode(args.dtype, params, args.num_sm_parts, stages, stream));
  FLASHMLA_RETURN_IF_CUDA_ERROR(launch_combine(args.dtype, params, stream));
  return Status::Ok();
}

}  // namespace flashmla::detail
