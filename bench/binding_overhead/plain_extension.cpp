// The same decode op as bindings/torch/flash_mla_ops.cpp, written as a plain (libtorch C++ ABI)
// pybind11 torch extension: the like-for-like baseline for the binding-overhead comparison in
// compare.py. Same checks, same allocations, same library call; not part of the package.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include "flashmla/flashmla.h"

namespace {

void check_4d(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 4 && t.size(3) == flashmla::kHeadDimQK, name, " must be [..., 576]");
  TORCH_CHECK(t.stride(3) == 1, name, " must be contiguous in its last dim");
}

std::vector<at::Tensor> fwd_kvcache(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& block_table,
                                    const at::Tensor& cache_seqlens, int64_t head_dim_v,
                                    const at::Tensor& metadata, const at::Tensor& num_splits, double softmax_scale,
                                    bool causal) {
  check_4d(q, "q");
  check_4d(k_cache, "k_cache");
  const int64_t batch = q.size(0), s_q = q.size(1), h_q = q.size(2);
  TORCH_CHECK(block_table.dim() == 2 && block_table.size(0) == batch, "block_table must be [batch, max_blocks]");
  TORCH_CHECK(cache_seqlens.dim() == 1 && cache_seqlens.size(0) == batch, "cache_seqlens must be [batch]");
  TORCH_CHECK(metadata.dim() == 2 && metadata.size(1) == flashmla::kMetadataInts, "bad tile_scheduler_metadata");
  TORCH_CHECK(num_splits.dim() == 1 && num_splits.size(0) == batch + 1, "bad num_splits");
  TORCH_CHECK(head_dim_v == flashmla::kHeadDimV, "head_dim_v must be 512");
  const auto dtype = q.scalar_type();
  TORCH_CHECK(dtype == at::kBFloat16 || dtype == at::kHalf, "q must be bf16 or fp16");
  TORCH_CHECK(k_cache.scalar_type() == dtype, "k_cache dtype");
  for (const at::Tensor* t : {&block_table, &cache_seqlens, &metadata, &num_splits})
    TORCH_CHECK(t->scalar_type() == at::kInt, "int32 expected");
  for (const at::Tensor* t : {&k_cache, &block_table, &cache_seqlens, &metadata, &num_splits})
    TORCH_CHECK(t->device() == q.device(), "same device expected");

  at::Tensor out = at::empty({batch, s_q, h_q, flashmla::kHeadDimV}, q.options());
  at::Tensor lse = at::empty({batch, h_q, s_q}, q.options().dtype(at::kFloat));

  flashmla::DecodeArgs a;
  const bool cuda = q.is_cuda();
  a.backend = cuda ? flashmla::Backend::kCuda : flashmla::Backend::kHost;
  a.dtype = dtype == at::kBFloat16 ? flashmla::DataType::kBFloat16 : flashmla::DataType::kFloat16;
  a.batch = int(batch), a.s_q = int(s_q), a.h_q = int(h_q), a.h_kv = int(k_cache.size(2));
  a.head_dim_v = int(head_dim_v);
  a.q = q.data_ptr();
  a.q_batch_stride = q.stride(0), a.q_token_stride = q.stride(1), a.q_head_stride = q.stride(2);
  a.k_cache = k_cache.data_ptr();
  a.num_blocks = int(k_cache.size(0)), a.page_size = int(k_cache.size(1));
  a.k_block_stride = k_cache.stride(0), a.k_token_stride = k_cache.stride(1), a.k_head_stride = k_cache.stride(2);
  a.block_table = block_table.data_ptr<int32_t>();
  a.max_blocks_per_seq = int(block_table.size(1));
  a.block_table_batch_stride = block_table.stride(0);
  a.cache_seqlens = cache_seqlens.data_ptr<int32_t>();
  a.tile_scheduler_metadata = metadata.data_ptr<int32_t>();
  a.num_splits = num_splits.data_ptr<int32_t>();
  a.num_sm_parts = int(metadata.size(0));
  a.out = out.data_ptr();
  a.out_batch_stride = out.stride(0), a.out_token_stride = out.stride(1), a.out_head_stride = out.stride(2);
  a.softmax_lse = lse.data_ptr<float>();
  a.softmax_scale = float(softmax_scale);
  a.causal = causal;
  const size_t bytes = flashmla::decode_workspace_size(a.batch, a.s_q, a.h_q, a.h_kv, a.num_sm_parts);
  constexpr size_t kAlign = flashmla::kWorkspaceAlign;
  at::Tensor ws = at::empty({int64_t(bytes + kAlign)}, q.options().dtype(at::kByte));
  void* aligned = reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(ws.data_ptr()) + kAlign - 1) / kAlign * kAlign);
  flashmla::Status s;
  if (cuda) {
    const c10::cuda::CUDAGuard guard(q.device());
    s = flashmla::mla_decode(a, aligned, bytes, at::cuda::getCurrentCUDAStream());
  } else {
    s = flashmla::mla_decode(a, aligned, bytes, nullptr);
  }
  TORCH_CHECK(s.ok(), "flash_mla: ", s.message());
  return {out, lse};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("fwd_kvcache", &fwd_kvcache); }
