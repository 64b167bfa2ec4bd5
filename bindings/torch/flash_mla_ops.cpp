// torch ops flash_mla::get_mla_metadata, flash_mla::fwd_kvcache and flash_mla::fwd_kvcache_planned
// (plan + decode in one call) over the FlashMLA-cpp API,
// written against torch's stable ABI (torch/csrc/stable + the AOTI C shim), built with
// TORCH_TARGET_VERSION = 2.10, so one binary loads in torch 2.10 and later. CUDA tensors run Backend::kCuda on torch's current stream; CPU tensors
// run Backend::kHost (the C++ reference implementation), which is what the CPU test suite uses.
//
// Every output and the decode workspace come from torch's allocator (caching allocator on CUDA),
// so the ops are CUDA-graph capturable.

#include <dlfcn.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstdint>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>

#include <cuda_runtime_api.h>

#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/tensor.h>

#include "flashmla/flashmla.h"

namespace {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

// Raises a std::runtime_error (a RuntimeError in Python) whose text is the message alone:
// torch's STD_TORCH_CHECK would prefix it with this file's name and line, which tells a user
// nothing. Every message names the argument, what was expected and what was given. The parts
// are evaluated only on failure (the checks run on every call).
template <typename... Parts>
[[noreturn]] void fail(const Parts&... parts) {
  std::ostringstream message;
  (message << ... << parts);
  throw std::runtime_error(message.str());
}
#define FLASHMLA_CHECK(ok, ...)     \
  do {                              \
    if (!(ok)) fail(__VA_ARGS__);   \
  } while (0)

// FlashMLA-cpp's host backend has no SM count; CPU tensors plan as if on an H200 (132 SMs), so
// CPU metadata mirrors what the GPU computes there.
constexpr int kCpuNumSms = 132;

// ---------------------------------------------------------------------------------------------
// Device facts
// ---------------------------------------------------------------------------------------------

int device_num_sms(bool is_cuda, int device_index) {
  if (!is_cuda) return kCpuNumSms;
  static std::array<std::atomic<int>, 256> cache{};  // 0 = not queried yet
  FLASHMLA_CHECK(device_index >= 0 && device_index < int(cache.size()),
                 "flash_mla: unsupported CUDA device index ", device_index);
  int n = cache[device_index].load(std::memory_order_relaxed);
  if (n == 0) {
    const cudaError_t err = cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device_index);
    FLASHMLA_CHECK(err == cudaSuccess, "flash_mla: cudaDeviceGetAttribute(multiProcessorCount) failed: ",
                   cudaGetErrorString(err));
    cache[device_index].store(n, std::memory_order_relaxed);
  }
  return n;
}

// torch's current CUDA stream. The stable headers only expose an opaque stream id; the AOTI C
// shim function aoti_torch_get_current_cuda_stream (a stable C symbol, what AOTInductor-compiled
// models call) returns the cudaStream_t. It lives in libtorch_cuda.so, which we do not link so
// that the library still loads with a CPU-only torch: it is looked up once in the copy torch
// has already loaded.
cudaStream_t current_cuda_stream(int device_index) {
  using GetStreamFn = decltype(&aoti_torch_get_current_cuda_stream);
  static const GetStreamFn get_stream = []() -> GetStreamFn {
    void* lib = dlopen("libtorch_cuda.so", RTLD_NOW | RTLD_NOLOAD);
    void* sym = lib ? dlsym(lib, "aoti_torch_get_current_cuda_stream") : nullptr;
    return reinterpret_cast<GetStreamFn>(sym);
  }();
  FLASHMLA_CHECK(get_stream != nullptr,
                 "flash_mla: CUDA tensors need a CUDA build of torch (libtorch_cuda.so is not loaded)");
  void* stream = nullptr;
  TORCH_ERROR_CODE_CHECK(get_stream(device_index, &stream));
  return static_cast<cudaStream_t>(stream);
}

// ---------------------------------------------------------------------------------------------
// Argument checks
// ---------------------------------------------------------------------------------------------

// Spelled as in Python ("torch.int32"), for the few types the messages name.
std::string dtype_name(ScalarType t) {
  switch (t) {
    case ScalarType::BFloat16: return "torch.bfloat16";
    case ScalarType::Half: return "torch.float16";
    case ScalarType::Float: return "torch.float32";
    case ScalarType::Double: return "torch.float64";
    case ScalarType::Int: return "torch.int32";
    case ScalarType::Long: return "torch.int64";
    default: return torch::headeronly::toString(t);
  }
}

std::string shape_of(const Tensor& t) {
  std::ostringstream s;
  s << t.dim() << "-D tensor [";
  for (int64_t i = 0; i < t.dim(); ++i) s << (i ? ", " : "") << t.size(i);
  s << "] of " << dtype_name(t.scalar_type());
  return s.str();
}

// Checks rank, the sizes that are fixed (-1 = any), that every size fits an int, and that the
// last dim is contiguous. `layout` is how the message spells the expected shape; the sizes it
// implies follow in numbers ("[batch + 1] = [3]").
std::string sizes_text(std::initializer_list<int64_t> sizes) {
  std::string text = "[";
  for (int64_t want : sizes)
    text += (text.size() > 1 ? ", " : "") + (want < 0 ? std::string("*") : std::to_string(want));
  return text + "]";
}

void check_tensor(const Tensor& t, const char* name, const char* layout,
                  std::initializer_list<int64_t> sizes) {
  FLASHMLA_CHECK(t.dim() == int64_t(sizes.size()), name, " must be a ", sizes.size(),
                 "-D tensor ", layout, " = ", sizes_text(sizes), ", got a ", shape_of(t));
  int64_t i = 0;
  for (int64_t want : sizes) {
    FLASHMLA_CHECK(want < 0 || t.size(i) == want, name, " must be a ", sizes.size(), "-D tensor ",
                   layout, " = ", sizes_text(sizes), ", got a ", shape_of(t));
    FLASHMLA_CHECK(t.size(i) <= INT_MAX, name, " is too large: dim ", i, " has size ", t.size(i));
    ++i;
  }
  FLASHMLA_CHECK(t.numel() == 0 || t.size(-1) == 1 || t.stride(-1) == 1, name,
                 " must be contiguous in its last dim, got stride ", t.stride(-1));
}

void check_dtype(const Tensor& t, const char* name, ScalarType want) {
  FLASHMLA_CHECK(t.scalar_type() == want, name, " must be ", dtype_name(want), ", got ",
                 dtype_name(t.scalar_type()));
}

std::string device_of(const Tensor& t) {
  if (t.is_cpu()) return "cpu";
  if (t.is_cuda()) return "cuda:" + std::to_string(t.get_device_index());
  return "a device other than cpu or cuda";
}

// How many entries of each block-table row may be read: the row pitch (stride(0)) when it is
// wider than the view, as FlashMLA reads it (SGLang captures a narrow view of a wider table in
// CUDA graphs), bounded by the storage behind the last row so no read leaves the buffer, and by
// what an int32 length can need.
int64_t readable_block_table_cols(const Tensor& block_table, int64_t page_size) {
  const int64_t batch = block_table.size(0), width = block_table.size(1), pitch = block_table.stride(0);
  if (batch == 0 || width == 0 || pitch <= width) return width;  // an empty view has no data pointer
  int64_t storage_bytes = 0;
  TORCH_ERROR_CODE_CHECK(aoti_torch_get_storage_size(block_table.get(), &storage_bytes));
  const int64_t last_row_avail =
      storage_bytes / int64_t(sizeof(int32_t)) - block_table.storage_offset() - (batch - 1) * pitch;
  const int64_t int32_need = page_size > 0 ? INT_MAX / page_size : width;
  return std::max(width, std::min({pitch, last_row_avail, int32_need}));
}

void check_same_device(const Tensor& t, const char* name, const Tensor& ref, const char* ref_name) {
  FLASHMLA_CHECK(t.device() == ref.device(), name, " must be on the same device as ", ref_name, " (",
                 device_of(ref), "), got ", device_of(t));
}

// FlashMLA-cpp's messages already name the argument ("h_q: expected a multiple of h_kv, got 3").
void check_status(const flashmla::Status& s) {
  if (!s.ok()) throw std::runtime_error("flash_mla: " + s.message());
}

// A new contiguous tensor on `like`'s device, from torch's allocator (the caching allocator on
// CUDA). aoti_torch_empty_strided calls at::empty_strided directly; torch::stable::new_empty
// would go through a by-name boxed dispatcher call, several microseconds slower.
Tensor new_tensor(const Tensor& like, std::initializer_list<int64_t> sizes, ScalarType dtype) {
  std::array<int64_t, 4> size{}, stride{};
  const int64_t n = int64_t(sizes.size());
  std::copy(sizes.begin(), sizes.end(), size.begin());
  stride[n - 1] = 1;
  for (int64_t i = n - 2; i >= 0; --i) stride[i] = stride[i + 1] * std::max<int64_t>(size[i + 1], 1);
  int32_t device_type = 0, device_index = 0;
  TORCH_ERROR_CODE_CHECK(aoti_torch_get_device_type(like.get(), &device_type));
  TORCH_ERROR_CODE_CHECK(aoti_torch_get_device_index(like.get(), &device_index));
  const auto shim_dtype = torch::stable::detail::to<int32_t>(torch::stable::detail::from(dtype));
  AtenTensorHandle handle = nullptr;
  TORCH_ERROR_CODE_CHECK(aoti_torch_empty_strided(n, size.data(), stride.data(), shim_dtype, device_type,
                                                  device_index, &handle));
  return Tensor(handle);
}

// The workspace pointer is aligned up to flashmla::kWorkspaceAlign inside an over-allocated
// byte tensor (torch's CPU allocator only guarantees 64 bytes).
using flashmla::kWorkspaceAlign;

// ---------------------------------------------------------------------------------------------
// Ops
// ---------------------------------------------------------------------------------------------

int plan_num_sm_parts(bool is_cuda, int device_index, int64_t q_rows_per_kv_head, int64_t h_kv) {
  FLASHMLA_CHECK(q_rows_per_kv_head > 0 && q_rows_per_kv_head <= INT_MAX,
                 "num_q_tokens_per_head_k must be positive (s_q * h_q / h_kv), got ", q_rows_per_kv_head);
  FLASHMLA_CHECK(h_kv > 0 && h_kv <= INT_MAX, "num_heads_k must be positive, got ", h_kv);
  return flashmla::num_sm_parts(device_num_sms(is_cuda, device_index), int(q_rows_per_kv_head), int(h_kv));
}

// The plan of one decode step: get_mla_metadata's work, shared by the op of that name and by
// fwd_kvcache_planned.
std::tuple<Tensor, Tensor> make_plan(const Tensor& cache_seqlens, int64_t num_q_tokens_per_head_k, int64_t num_heads_k) {
  const bool cuda = cache_seqlens.is_cuda();
  const int device = cuda ? cache_seqlens.get_device_index() : 0;
  const int batch = int(cache_seqlens.size(0));
  const int parts = plan_num_sm_parts(cuda, device, num_q_tokens_per_head_k, num_heads_k);

  Tensor metadata = new_tensor(cache_seqlens, {parts, flashmla::kMetadataInts}, ScalarType::Int);
  Tensor num_splits = new_tensor(cache_seqlens, {batch + 1}, ScalarType::Int);

  flashmla::MetadataArgs args;
  args.backend = cuda ? flashmla::Backend::kCuda : flashmla::Backend::kHost;
  args.cache_seqlens = static_cast<const int32_t*>(cache_seqlens.const_data_ptr());
  args.batch = batch;
  args.num_sm_parts = parts;
  args.tile_scheduler_metadata = static_cast<int32_t*>(metadata.mutable_data_ptr());
  args.num_splits = static_cast<int32_t*>(num_splits.mutable_data_ptr());
  if (cuda) {
    torch::stable::accelerator::DeviceGuard guard(device);
    check_status(flashmla::get_mla_metadata(args, current_cuda_stream(device)));
  } else {
    check_status(flashmla::get_mla_metadata(args, nullptr));
  }
  return {metadata, num_splits};
}

std::tuple<Tensor, Tensor> get_mla_metadata(Tensor cache_seqlens, int64_t num_q_tokens_per_head_k,
                                            int64_t num_heads_k) {
  check_tensor(cache_seqlens, "cache_seqlens", "[batch]", {-1});
  check_dtype(cache_seqlens, "cache_seqlens", ScalarType::Int);
  FLASHMLA_CHECK(cache_seqlens.is_cuda() || cache_seqlens.is_cpu(), "cache_seqlens must be a CUDA or CPU tensor, got ",
                 device_of(cache_seqlens));
  FLASHMLA_CHECK(cache_seqlens.is_contiguous(), "cache_seqlens must be contiguous, got stride ", cache_seqlens.stride(0));
  return make_plan(cache_seqlens, num_q_tokens_per_head_k, num_heads_k);
}

// Checks of everything but the plan; fills the non-plan fields of the decode arguments.
flashmla::DecodeArgs decode_args(const Tensor& q, const Tensor& k_cache, const Tensor& block_table,
                                 const Tensor& cache_seqlens, int64_t head_dim_v,
                                 const std::optional<double>& softmax_scale, bool causal,
                                 const std::optional<Tensor>& attn_sink) {
  constexpr int64_t D = flashmla::kHeadDimQK, DV = flashmla::kHeadDimV;
  check_tensor(q, "q", "[batch, s_q, h_q, 576]", {-1, -1, -1, D});
  const int64_t batch = q.size(0), h_q = q.size(2);
  check_tensor(k_cache, "k_cache", "[num_blocks, page_size, h_kv, 576]", {-1, -1, -1, D});
  check_tensor(block_table, "block_table", "[batch, max_blocks_per_seq]", {batch, -1});
  check_tensor(cache_seqlens, "cache_seqlens", "[batch]", {batch});
  FLASHMLA_CHECK(head_dim_v == DV, "head_dim_v must be ", DV, ", got ", head_dim_v);

  const ScalarType dtype = q.scalar_type();
  FLASHMLA_CHECK(dtype == ScalarType::BFloat16 || dtype == ScalarType::Half,
                 "q must be torch.bfloat16 or torch.float16, got ", dtype_name(dtype));
  check_dtype(k_cache, "k_cache", dtype);
  check_dtype(block_table, "block_table", ScalarType::Int);
  check_dtype(cache_seqlens, "cache_seqlens", ScalarType::Int);
  FLASHMLA_CHECK(cache_seqlens.is_contiguous(), "cache_seqlens must be contiguous, got stride ", cache_seqlens.stride(0));

  FLASHMLA_CHECK(q.is_cuda() || q.is_cpu(), "q must be a CUDA or CPU tensor, got ", device_of(q));
  check_same_device(k_cache, "k_cache", q, "q");
  check_same_device(block_table, "block_table", q, "q");
  check_same_device(cache_seqlens, "cache_seqlens", q, "q");
  if (attn_sink.has_value()) {
    check_tensor(*attn_sink, "attn_sink", "[h_q]", {h_q});
    check_dtype(*attn_sink, "attn_sink", ScalarType::Float);
    check_same_device(*attn_sink, "attn_sink", q, "q");
  }

  flashmla::DecodeArgs a;
  a.backend = q.is_cuda() ? flashmla::Backend::kCuda : flashmla::Backend::kHost;
  a.dtype = dtype == ScalarType::BFloat16 ? flashmla::DataType::kBFloat16 : flashmla::DataType::kFloat16;
  a.batch = int(batch);
  a.s_q = int(q.size(1));
  a.h_q = int(h_q);
  a.h_kv = int(k_cache.size(2));
  a.head_dim_v = int(head_dim_v);
  a.q = q.const_data_ptr();
  a.q_batch_stride = q.stride(0), a.q_token_stride = q.stride(1), a.q_head_stride = q.stride(2);
  a.k_cache = k_cache.const_data_ptr();
  a.num_blocks = int(k_cache.size(0));
  a.page_size = int(k_cache.size(1));
  a.k_block_stride = k_cache.stride(0), a.k_token_stride = k_cache.stride(1), a.k_head_stride = k_cache.stride(2);
  a.block_table = static_cast<const int32_t*>(block_table.const_data_ptr());
  a.max_blocks_per_seq = int(std::min<int64_t>(readable_block_table_cols(block_table, k_cache.size(1)), INT_MAX));
  a.block_table_batch_stride = block_table.stride(0);
  a.cache_seqlens = static_cast<const int32_t*>(cache_seqlens.const_data_ptr());
  if (softmax_scale.has_value()) {
    // A finite double beyond float's range would turn into inf: name the value given.
    FLASHMLA_CHECK(std::isfinite(*softmax_scale) && std::fabs(*softmax_scale) <= FLT_MAX,
                   "flash_mla: softmax_scale: expected a finite float32 value, or None for 1/sqrt(576), got ",
                   *softmax_scale);
    a.softmax_scale = float(*softmax_scale);
  }
  a.causal = causal;
  a.attn_sink = attn_sink.has_value() ? static_cast<const float*>(attn_sink->const_data_ptr()) : nullptr;
  return a;
}

// Runs the decode with the plan tensors (already checked) into new out / lse tensors.
std::tuple<Tensor, Tensor> run_decode(flashmla::DecodeArgs a, const Tensor& q, const Tensor& tile_scheduler_metadata,
                                      const Tensor& num_splits) {
  a.tile_scheduler_metadata = static_cast<const int32_t*>(tile_scheduler_metadata.const_data_ptr());
  a.num_splits = static_cast<const int32_t*>(num_splits.const_data_ptr());
  a.num_sm_parts = int(tile_scheduler_metadata.size(0));

  Tensor out = new_tensor(q, {a.batch, a.s_q, a.h_q, flashmla::kHeadDimV}, q.scalar_type());
  Tensor lse = new_tensor(q, {a.batch, a.h_q, a.s_q}, ScalarType::Float);
  a.out = out.mutable_data_ptr();
  a.out_batch_stride = out.stride(0), a.out_token_stride = out.stride(1), a.out_head_stride = out.stride(2);
  a.softmax_lse = static_cast<float*>(lse.mutable_data_ptr());

  const size_t ws_bytes = flashmla::decode_workspace_size(a.batch, a.s_q, a.h_q, a.h_kv, a.num_sm_parts);
  Tensor ws = new_tensor(q, {int64_t(ws_bytes + kWorkspaceAlign)}, ScalarType::Byte);
  const uintptr_t base = reinterpret_cast<uintptr_t>(ws.mutable_data_ptr());
  void* workspace = reinterpret_cast<void*>((base + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign);

  if (q.is_cuda()) {
    const int device = q.get_device_index();
    torch::stable::accelerator::DeviceGuard guard(device);
    check_status(flashmla::mla_decode(a, workspace, ws_bytes, current_cuda_stream(device)));
  } else {
    check_status(flashmla::mla_decode(a, workspace, ws_bytes, nullptr));
  }
  return {out, lse};
}

std::tuple<Tensor, Tensor> fwd_kvcache(Tensor q, Tensor k_cache, Tensor block_table, Tensor cache_seqlens,
                                       int64_t head_dim_v, Tensor tile_scheduler_metadata, Tensor num_splits,
                                       std::optional<double> softmax_scale, bool causal,
                                       std::optional<Tensor> attn_sink) {
  const flashmla::DecodeArgs a =
      decode_args(q, k_cache, block_table, cache_seqlens, head_dim_v, softmax_scale, causal, attn_sink);
  check_tensor(tile_scheduler_metadata, "tile_scheduler_metadata", "[num_sm_parts, 8]", {-1, flashmla::kMetadataInts});
  check_tensor(num_splits, "num_splits", "[batch + 1]", {a.batch + 1});
  check_dtype(tile_scheduler_metadata, "tile_scheduler_metadata", ScalarType::Int);
  check_dtype(num_splits, "num_splits", ScalarType::Int);
  FLASHMLA_CHECK(tile_scheduler_metadata.is_contiguous() && num_splits.is_contiguous(),
                 "tile_scheduler_metadata and num_splits must be contiguous");
  check_same_device(tile_scheduler_metadata, "tile_scheduler_metadata", q, "q");
  check_same_device(num_splits, "num_splits", q, "q");
  return run_decode(a, q, tile_scheduler_metadata, num_splits);
}

// Plans and decodes in one call, returning the plan for reuse (FlashMLA's dense_decode_fwd with
// no plan yet): what the first call with a FlashMLASchedMeta runs, inside a CUDA graph when one
// is being captured.
std::tuple<Tensor, Tensor, Tensor, Tensor> fwd_kvcache_planned(Tensor q, Tensor k_cache, Tensor block_table,
                                                               Tensor cache_seqlens, int64_t head_dim_v,
                                                               std::optional<double> softmax_scale, bool causal,
                                                               std::optional<Tensor> attn_sink) {
  const flashmla::DecodeArgs a =
      decode_args(q, k_cache, block_table, cache_seqlens, head_dim_v, softmax_scale, causal, attn_sink);
  // Shapes no plan fits (h_kv = 0, h_q not a multiple of h_kv, ...) get a one-part placeholder
  // plan: mla_decode rejects them before reading it, with the message naming the argument.
  const bool plannable = a.h_kv >= 1 && a.s_q >= 1 && a.h_q >= 1 && a.h_q % a.h_kv == 0;
  auto [metadata, num_splits] =
      plannable ? make_plan(cache_seqlens, int64_t(a.s_q) * (a.h_q / a.h_kv), a.h_kv)
                : std::tuple<Tensor, Tensor>{new_tensor(q, {1, flashmla::kMetadataInts}, ScalarType::Int),
                                             new_tensor(q, {a.batch + 1}, ScalarType::Int)};
  auto [out, lse] = run_decode(a, q, metadata, num_splits);
  return {out, lse, metadata, num_splits};
}

}  // namespace

// For the Python fake (meta) implementation of get_mla_metadata: the same num_sm_parts the op
// computes, so traced and eager shapes agree. Called through ctypes.
extern "C" __attribute__((visibility("default"))) int flash_mla_num_sm_parts(int is_cuda, int device_index,
                                                                            int q_rows_per_kv_head, int h_kv) {
  try {
    return plan_num_sm_parts(is_cuda != 0, device_index, q_rows_per_kv_head, h_kv);
  } catch (...) {
    return -1;
  }
}

STABLE_TORCH_LIBRARY(flash_mla, m) {
  m.def("get_mla_metadata(Tensor cache_seqlens, int num_q_tokens_per_head_k, int num_heads_k) -> (Tensor, Tensor)");
  m.def("fwd_kvcache(Tensor q, Tensor k_cache, Tensor block_table, Tensor cache_seqlens, int head_dim_v, "
        "Tensor tile_scheduler_metadata, Tensor num_splits, float? softmax_scale, bool causal, "
        "Tensor? attn_sink=None) -> (Tensor, Tensor)");
  m.def("fwd_kvcache_planned(Tensor q, Tensor k_cache, Tensor block_table, Tensor cache_seqlens, int head_dim_v, "
        "float? softmax_scale, bool causal, Tensor? attn_sink=None) -> (Tensor, Tensor, Tensor, Tensor)");
}

STABLE_TORCH_LIBRARY_IMPL(flash_mla, CUDA, m) {
  m.impl("get_mla_metadata", TORCH_BOX(&get_mla_metadata));
  m.impl("fwd_kvcache", TORCH_BOX(&fwd_kvcache));
  m.impl("fwd_kvcache_planned", TORCH_BOX(&fwd_kvcache_planned));
}

STABLE_TORCH_LIBRARY_IMPL(flash_mla, CPU, m) {
  m.impl("get_mla_metadata", TORCH_BOX(&get_mla_metadata));
  m.impl("fwd_kvcache", TORCH_BOX(&fwd_kvcache));
  m.impl("fwd_kvcache_planned", TORCH_BOX(&fwd_kvcache_planned));
}
