// CUDA backend of mla_decode: fills DecodeParams once, picks the split-KV kernel family for the
// device and the arguments, launches it and then the combine on the caller's stream.
// No allocation, no synchronization.
//
// Kernel families, best first. Each says whether it can run the (validated) arguments on the
// device; the first that can runs. FLASHMLA_KERNEL=portable forces the portable kernel (the
// fallback of every non-Hopper GPU, kept tested on Hopper this way); FLASHMLA_KERNEL=sm90 makes
// any reason the Hopper kernel cannot run an error instead of a silent fallback.
//
// On compute capability 9.0 and newer the combine is a programmatic dependent launch
// (common/pdl.cuh): its launch overlaps the split-KV kernel's tail. FLASHMLA_PDL=0 turns that off.
#include <array>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>

#include "api/backends.h"
#include "combine/combine.h"
#include "common/cuda_check.h"
#include "common/params.h"
#include "kernels/decode_params.h"
#include "kernels/device_facts.h"
#include "kernels/sm80/decode_portable.h"
#if FLASHMLA_HAS_SM90
#include "kernels/sm90/decode_sm90.h"
#endif

namespace flashmla {
namespace detail {

Status current_device_facts(DeviceFacts& facts) {
  static std::array<DeviceFacts, kMaxCudaDevices> cache;
  static std::array<std::once_flag, kMaxCudaDevices> once;
  int device = 0;
  FLASHMLA_RETURN_IF_CUDA_ERROR(cudaGetDevice(&device));
  if (device < 0 || device >= kMaxCudaDevices)
    return Status::Error("device: expected a CUDA device index below " + std::to_string(kMaxCudaDevices) + ", got " +
                         std::to_string(device));
  cudaError_t err = cudaSuccess;
  std::call_once(once[device], [&] {
    DeviceFacts d;
    d.index = device;
    const std::pair<int*, cudaDeviceAttr> queries[] = {
        {&d.major, cudaDevAttrComputeCapabilityMajor},
        {&d.minor, cudaDevAttrComputeCapabilityMinor},
        {&d.num_sms, cudaDevAttrMultiProcessorCount},
        {&d.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin}};
    for (const auto& [out, attr] : queries)
      if (err == cudaSuccess) err = cudaDeviceGetAttribute(out, attr, device);
    d.pdl = err == cudaSuccess && combine_waits_for_prerequisite();
    if (err == cudaSuccess) cache[device] = d;
  });
  FLASHMLA_RETURN_IF_CUDA_ERROR(err);
  facts = cache[device];
  return Status::Ok();
}

}  // namespace detail

namespace {

// One launcher signature and one "can it run these arguments" check per kernel family.
struct DecodeKernelFamily {
  const char* name;
  std::string (*cannot_run)(const detail::DeviceFacts&, const DecodeArgs&);
  Status (*launch)(const DecodeArgs&, const DecodeParams&, const detail::DeviceFacts&, cudaStream_t);
};

constexpr DecodeKernelFamily kFamilies[] = {
#if FLASHMLA_HAS_SM90
    {"sm90", sm90::cannot_run, sm90::launch_decode},
#endif
    {"portable", sm80::cannot_run, sm80::launch_decode},
};

std::string unavailable_sm90_reason() {
  return FLASHMLA_HAS_SM90 ? std::string() : "the library was built without sm_90a code (CMAKE_CUDA_ARCHITECTURES)";
}

// Picks the family; `chosen` stays null and the Status says why when none can run.
Status choose_family(const detail::DeviceFacts& device, const DecodeArgs& args, const DecodeKernelFamily*& chosen) {
  chosen = nullptr;
  const char* env = std::getenv(kKernelEnvVar);
  const std::string want = env == nullptr ? "auto" : env;
  if (want != "auto" && want != "sm90" && want != "portable" && !want.empty())
    return Status::Error(std::string(kKernelEnvVar) + ": expected auto, sm90 or portable, got \"" + want + "\"");
  std::string reasons;
  for (const DecodeKernelFamily& f : kFamilies) {
    if (want == "portable" && std::strcmp(f.name, "portable") != 0) continue;
    const std::string why = f.cannot_run(device, args);
    if (why.empty()) {
      if (want == "sm90" && std::strcmp(f.name, "sm90") != 0) break;
      chosen = &f;
      return Status::Ok();
    }
    reasons += std::string(reasons.empty() ? "" : "; ") + f.name + ": " + why;
  }
  if (want == "sm90" && !FLASHMLA_HAS_SM90) reasons = unavailable_sm90_reason();
  return Status::Error("device: no decode kernel can run these arguments (" + std::string(kKernelEnvVar) + "=" + want +
                       "): " + reasons);
}

// Whether FLASHMLA_PDL allows a programmatic dependent launch of the combine (read per call).
Status pdl_allowed(bool& allowed) {
  const char* env = std::getenv(kPdlEnvVar);
  const std::string want = env == nullptr ? "1" : env;
  if (want != "0" && want != "1" && !want.empty())
    return Status::Error(std::string(kPdlEnvVar) + ": expected 0 or 1, got \"" + want + "\"");
  allowed = want != "0";
  return Status::Ok();
}

DecodeParams make_params(const DecodeArgs& a, void* workspace) {
  const WorkspaceLayout ws(a.batch, a.s_q, a.h_q, a.h_kv, a.num_sm_parts);
  const float scale = float(resolve_softmax_scale(a.softmax_scale));
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
  p.attn_sink = a.attn_sink;
  p.max_splits = ws.max_splits;
  return p;
}

}  // namespace

namespace detail {

Status decode_cuda(const DecodeArgs& args, void* workspace, cudaStream_t stream) {
  DeviceFacts device;
  if (Status s = current_device_facts(device); !s.ok()) return s;
  const DecodeKernelFamily* family = nullptr;
  if (Status s = choose_family(device, args, family); !s.ok()) return s;
  bool pdl = false;
  if (Status s = pdl_allowed(pdl); !s.ok()) return s;
  const DecodeParams params = make_params(args, workspace);
  if (Status s = family->launch(args, params, device, stream); !s.ok()) return s;
  FLASHMLA_RETURN_IF_CUDA_ERROR(launch_combine(args.dtype, params, pdl && device.pdl, stream));
  return Status::Ok();
}

}  // namespace detail

const char* decode_kernel_name(const DecodeArgs& args) {
  if (args.backend == Backend::kHost) return "host";
  detail::DeviceFacts device;
  const DecodeKernelFamily* family = nullptr;
  if (!detail::current_device_facts(device).ok() || !choose_family(device, args, family).ok()) return nullptr;
  return family->name;
}

}  // namespace flashmla
