// Host time of one C++ API call on the GPU, without Python or torch: how much of the eager
// call's cost is the library itself (argument checks, tensor-map encoding, kernel launches).
//
// Times back-to-back calls on a tiny problem (b = 1, s_q = 1, h_q = 16, one 64-token page), two
// ways: "host" is the time to enqueue a window of calls short enough that the launch queue never
// fills (the host's own cost per call); "with GPU" includes the synchronize that closes the
// window, so it is the larger of host and GPU time per call (a decode is two kernels of a few
// microseconds each: long windows measured the GPU, not the host). Baselines: an empty kernel
// launched with <<<>>> and with cudaLaunchKernelEx + the PDL attribute (the two launch styles a
// decode call uses).
//
//     build/release/bench_host_overhead [calls per window, default 100]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "flashmla/flashmla.h"

namespace {

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(err));
    std::exit(1);
  }
}
void check(const flashmla::Status& s, const char* what) {
  if (!s.ok()) {
    std::fprintf(stderr, "%s: %s\n", what, s.message().c_str());
    std::exit(1);
  }
}

__global__ void empty_kernel() {}

struct PerCall {
  double host, with_gpu;  // microseconds per call, medians over the windows
};

// Windows of `calls` calls, each starting on an idle GPU.
PerCall time_calls(const std::function<void()>& call, int calls, int windows = 21) {
  for (int i = 0; i < 50; ++i) call();  // warm-up: lazy init, caches
  check(cudaDeviceSynchronize(), "warm-up");
  std::vector<double> host, with_gpu;
  for (int w = 0; w < windows; ++w) {
    using us = std::chrono::duration<double, std::micro>;
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < calls; ++i) call();
    const auto t1 = std::chrono::steady_clock::now();
    check(cudaDeviceSynchronize(), "window");
    const auto t2 = std::chrono::steady_clock::now();
    host.push_back(us(t1 - t0).count() / calls);
    with_gpu.push_back(us(t2 - t0).count() / calls);
  }
  auto median = [](std::vector<double>& v) {
    std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
    return v[v.size() / 2];
  };
  return {median(host), median(with_gpu)};
}

void report(const char* what, const PerCall& t) { std::printf("  %-40s %8.2f %10.2f\n", what, t.host, t.with_gpu); }

template <typename T>
T* device_copy(const std::vector<T>& host) {
  T* p = nullptr;
  check(cudaMalloc(&p, host.size() * sizeof(T)), "cudaMalloc");
  check(cudaMemcpy(p, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice), "cudaMemcpy");
  return p;
}

}  // namespace

int main(int argc, char** argv) {
  const int calls = argc > 1 ? std::atoi(argv[1]) : 100;
  int gpus = 0;
  if (cudaGetDeviceCount(&gpus) != cudaSuccess || gpus == 0) {
    std::printf("bench_host_overhead: no CUDA device; nothing to measure\n");
    return 0;
  }
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");

  const int batch = 1, s_q = 1, h_q = 16, h_kv = 1, page = 64, seqlen = 64;
  std::vector<__nv_bfloat16> q(size_t(batch) * s_q * h_q * flashmla::kHeadDimQK), k(size_t(page) * flashmla::kHeadDimQK);
  for (size_t i = 0; i < q.size(); ++i) q[i] = __float2bfloat16(0.01f * float(i % 97) - 0.4f);
  for (size_t i = 0; i < k.size(); ++i) k[i] = __float2bfloat16(0.01f * float(i % 89) - 0.4f);

  const int parts = flashmla::num_sm_parts(prop.multiProcessorCount, s_q * h_q / h_kv, h_kv);
  flashmla::MetadataArgs plan;
  plan.cache_seqlens = device_copy(std::vector<int32_t>{seqlen});
  plan.batch = batch;
  plan.num_sm_parts = parts;
  plan.tile_scheduler_metadata = device_copy(std::vector<int32_t>(size_t(parts) * flashmla::kMetadataInts));
  plan.num_splits = device_copy(std::vector<int32_t>(batch + 1));
  check(flashmla::get_mla_metadata(plan, nullptr), "get_mla_metadata");

  flashmla::DecodeArgs a;
  a.batch = batch, a.s_q = s_q, a.h_q = h_q, a.h_kv = h_kv;
  a.q = device_copy(q);
  a.q_head_stride = flashmla::kHeadDimQK, a.q_token_stride = h_q * a.q_head_stride, a.q_batch_stride = s_q * a.q_token_stride;
  a.k_cache = device_copy(k);
  a.num_blocks = 1, a.page_size = page;
  a.k_head_stride = flashmla::kHeadDimQK, a.k_token_stride = h_kv * a.k_head_stride, a.k_block_stride = page * a.k_token_stride;
  a.block_table = device_copy(std::vector<int32_t>{0});
  a.max_blocks_per_seq = 1, a.block_table_batch_stride = 1;
  a.cache_seqlens = plan.cache_seqlens;
  a.tile_scheduler_metadata = plan.tile_scheduler_metadata, a.num_splits = plan.num_splits, a.num_sm_parts = parts;
  a.out = device_copy(std::vector<__nv_bfloat16>(size_t(batch) * s_q * h_q * flashmla::kHeadDimV));
  a.out_head_stride = flashmla::kHeadDimV, a.out_token_stride = h_q * a.out_head_stride, a.out_batch_stride = s_q * a.out_token_stride;
  a.softmax_lse = device_copy(std::vector<float>(size_t(batch) * h_q * s_q));
  a.causal = true;
  const size_t ws_bytes = flashmla::decode_workspace_size(batch, s_q, h_q, h_kv, parts);
  void* ws = device_copy(std::vector<char>(ws_bytes));

  auto decode = [&] { check(flashmla::mla_decode(a, ws, ws_bytes, nullptr), "mla_decode"); };
  auto metadata = [&] { check(flashmla::get_mla_metadata(plan, nullptr), "get_mla_metadata"); };
  auto launch = [] { empty_kernel<<<1, 32>>>(); };
  auto launch_ex = [] {
    cudaLaunchAttribute pdl = {};
    pdl.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    pdl.val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t config = {};
    config.gridDim = dim3(1), config.blockDim = dim3(32), config.attrs = &pdl, config.numAttrs = 1;
    check(cudaLaunchKernelEx(&config, empty_kernel), "cudaLaunchKernelEx");
  };

  std::printf("bench_host_overhead: %s, windows of %d calls, median of 21, us per call\n", prop.name, calls);
  std::printf("  %-40s %8s %10s\n", "", "host", "with GPU");
  report("empty kernel <<<>>>", time_calls(launch, calls));
  report("empty kernel cudaLaunchKernelEx + PDL", time_calls(launch_ex, calls));
  report("get_mla_metadata", time_calls(metadata, calls));
  const std::string decode_name = std::string("mla_decode (") + flashmla::decode_kernel_name(a) + " kernel)";
  report(decode_name.c_str(), time_calls(decode, calls));
  setenv(flashmla::kPdlEnvVar, "0", 1);
  report("mla_decode, FLASHMLA_PDL=0", time_calls(decode, calls));
  unsetenv(flashmla::kPdlEnvVar);
  setenv(flashmla::kKernelEnvVar, "portable", 1);
  report("mla_decode, FLASHMLA_KERNEL=portable", time_calls(decode, calls));
  unsetenv(flashmla::kKernelEnvVar);
  return 0;
}
