// Minimal use of the C++ API: one MLA decode step (b = 2, h_q = 16, s_q = 1, MLA h_kv = 1).
// Runs on the GPU when one is present, else on the host reference backend; both paths use
// the same three calls. README.md quotes this file; ctest runs it.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "flashmla/flashmla.h"

namespace {

void check(cudaError_t err) {
  if (err != cudaSuccess) {
    std::fprintf(stderr, "CUDA error: %s\n", cudaGetErrorString(err));
    std::exit(1);
  }
}

struct Buffers {  // host or device memory, depending on the backend
  flashmla::Backend backend;
  std::vector<void*> owned;
  template <typename T>
  T* upload(const std::vector<T>& host) {
    if (backend == flashmla::Backend::kHost) {
      owned.push_back(new char[host.size() * sizeof(T) + 256]);
      T* p = static_cast<T*>(align(owned.back()));
      std::copy(host.begin(), host.end(), p);
      return p;
    }
    void* p = nullptr;
    check(cudaMalloc(&p, host.size() * sizeof(T) + 1));
    check(cudaMemcpy(p, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
    owned.push_back(p);
    return static_cast<T*>(p);
  }
  ~Buffers() {
    for (void* p : owned) backend == flashmla::Backend::kHost ? delete[] static_cast<char*>(p) : void(cudaFree(p));
  }
  static void* align(void* p) { return reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(p) + 255) / 256 * 256); }
};

}  // namespace

int main() {
  int gpus = 0;
  const bool on_gpu = cudaGetDeviceCount(&gpus) == cudaSuccess && gpus > 0;
  const flashmla::Backend backend = on_gpu ? flashmla::Backend::kCuda : flashmla::Backend::kHost;
  Buffers mem{backend, {}};

  const int batch = 2, s_q = 1, h_q = 16, h_kv = 1, page_size = 64, pages_per_seq = 4;
  const std::vector<int32_t> seqlens = {200, 37};
  std::vector<__nv_bfloat16> q(batch * s_q * h_q * flashmla::kHeadDimQK), cache(batch * pages_per_seq * page_size * flashmla::kHeadDimQK);
  for (size_t i = 0; i < q.size(); ++i) q[i] = __float2bfloat16(0.01f * float(i % 97) - 0.4f);
  for (size_t i = 0; i < cache.size(); ++i) cache[i] = __float2bfloat16(0.01f * float(i % 89) - 0.4f);
  std::vector<int32_t> block_table(batch * pages_per_seq);
  for (int i = 0; i < batch * pages_per_seq; ++i) block_table[i] = i;

  // 1. Plan (once per decode step, shared by all layers).
  int num_sms = 132;
  if (on_gpu) check(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, 0));
  const int parts = flashmla::num_sm_parts(num_sms, s_q * h_q / h_kv, h_kv);
  flashmla::MetadataArgs plan;
  plan.backend = backend;
  plan.cache_seqlens = mem.upload(seqlens);
  plan.batch = batch;
  plan.num_sm_parts = parts;
  plan.tile_scheduler_metadata = mem.upload(std::vector<int32_t>(parts * flashmla::kMetadataInts));
  plan.num_splits = mem.upload(std::vector<int32_t>(batch + 1));
  if (auto s = flashmla::get_mla_metadata(plan, /*stream=*/nullptr); !s.ok()) return std::printf("%s\n", s.message().c_str()), 1;

  // 2. Decode (once per layer).
  flashmla::DecodeArgs args;
  args.backend = backend;
  args.dtype = flashmla::DataType::kBFloat16;
  args.batch = batch, args.s_q = s_q, args.h_q = h_q, args.h_kv = h_kv;
  args.q = mem.upload(q);
  args.q_head_stride = flashmla::kHeadDimQK, args.q_token_stride = h_q * flashmla::kHeadDimQK;
  args.q_batch_stride = s_q * args.q_token_stride;
  args.k_cache = mem.upload(cache);
  args.num_blocks = batch * pages_per_seq, args.page_size = page_size;
  args.k_head_stride = flashmla::kHeadDimQK, args.k_token_stride = h_kv * flashmla::kHeadDimQK;
  args.k_block_stride = page_size * args.k_token_stride;
  args.block_table = mem.upload(block_table);
  args.max_blocks_per_seq = pages_per_seq, args.block_table_batch_stride = pages_per_seq;
  args.cache_seqlens = plan.cache_seqlens;
  args.tile_scheduler_metadata = plan.tile_scheduler_metadata, args.num_splits = plan.num_splits;
  args.num_sm_parts = parts;
  std::vector<__nv_bfloat16> out(batch * s_q * h_q * flashmla::kHeadDimV);
  std::vector<float> lse(batch * h_q * s_q);
  args.out = mem.upload(out);
  args.out_head_stride = flashmla::kHeadDimV, args.out_token_stride = h_q * flashmla::kHeadDimV;
  args.out_batch_stride = s_q * args.out_token_stride;
  args.softmax_lse = mem.upload(lse);
  const size_t workspace_bytes = flashmla::decode_workspace_size(batch, s_q, h_q, h_kv, parts);
  void* workspace = mem.upload(std::vector<char>(workspace_bytes));
  if (auto s = flashmla::mla_decode(args, workspace, workspace_bytes, nullptr); !s.ok())
    return std::printf("%s\n", s.message().c_str()), 1;

  if (on_gpu) check(cudaMemcpy(lse.data(), args.softmax_lse, lse.size() * sizeof(float), cudaMemcpyDeviceToHost));
  else lse.assign(args.softmax_lse, args.softmax_lse + lse.size());
  std::printf("%s: lse[0] = %.4f, lse[last] = %.4f\n", on_gpu ? "GPU" : "host", lse.front(), lse.back());
  return 0;
}
