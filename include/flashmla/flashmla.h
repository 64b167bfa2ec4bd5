// FlashMLA-cpp public API: Multi-head Latent Attention decoding over a paged KV cache.
//
// Framework-free: raw pointers, int64 element strides, cudaStream_t. Nothing here allocates,
// synchronizes the device or aborts the process; every call returns a Status whose message
// names the offending argument.
//
// A decode step is three calls:
//   1. get_mla_metadata   once per step (shared by every layer): splits the batch's KV work
//                         over the GPU's multiprocessors. Runs on the GPU from device seqlens,
//                         so it is CUDA-graph capturable. Output sizes depend only on the
//                         shape (num_sm_parts, batch), never on seqlen values.
//   2. decode_workspace_size  bytes the split-KV partial results need (CUB-style query).
//   3. mla_decode         once per layer: split-KV attention + log-sum-exp combine.
//
// Backend::kHost runs the same three calls on host memory with the C++ reference
// implementation (float64 accumulation): the executable specification of the semantics.
//
// An empty batch (batch == 0) is valid: nothing is read or written, and the per-request
// pointers (cache_seqlens, q, block_table, out, softmax_lse) may be null.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include <cuda_runtime_api.h>

namespace flashmla {

// Head dimensions of DeepSeek-V2/V3 MLA: 512 latent + 64 RoPE channels for Q and K;
// V is the first 512 channels of the same cache rows.
constexpr int kHeadDimQK = 576;
constexpr int kHeadDimV = 512;
// Ints per row of the tile-scheduler metadata (one row per "SM part").
constexpr int kMetadataInts = 8;
// Most SM parts a plan may have: far above any GPU's SM count (the GPU scheduler keeps its
// per-part table in shared memory).
constexpr int kMaxSmParts = 2048;
// Required alignment of the decode workspace, in bytes.
constexpr size_t kWorkspaceAlign = 256;

enum class DataType { kBFloat16, kFloat16 };
enum class Backend { kCuda, kHost };

class Status {
 public:
  Status() = default;
  static Status Ok() { return Status(); }
  static Status Error(std::string message) { return Status(std::move(message), true); }
  bool ok() const { return !failed_; }
  const std::string& message() const { return message_; }

 private:
  Status(std::string message, bool failed) : message_(std::move(message)), failed_(failed) {}
  std::string message_;
  bool failed_ = false;
};

// ---------------------------------------------------------------------------------------------
// Scheduling
// ---------------------------------------------------------------------------------------------

// Number of CTAs ("SM parts") each (m-block, kv-head) pair is spread over so that the whole
// grid fills the GPU once. q_rows_per_kv_head = s_q * h_q / h_kv (FlashMLA's
// num_q_tokens_per_head_k). Depends only on shapes, never on sequence lengths.
int num_sm_parts(int num_sms, int q_rows_per_kv_head, int h_kv);

struct MetadataArgs {
  Backend backend = Backend::kCuda;
  // [batch], device (kCuda) or host (kHost) memory. Any int32 value is planned safely
  // (negative counts as 0); mla_decode decides what an out-of-range length gives.
  const int32_t* cache_seqlens = nullptr;
  int batch = 0;                            // >= 0; 0 plans an empty batch (num_splits = {0})
  int num_sm_parts = 0;                     // from num_sm_parts()
  int32_t* tile_scheduler_metadata = nullptr;  // out: [num_sm_parts, kMetadataInts]
  int32_t* num_splits = nullptr;               // out: [batch + 1], prefix sums of splits per request
};

// Computes the split plan. No host synchronization, no allocation.
Status get_mla_metadata(const MetadataArgs& args, cudaStream_t stream);

// ---------------------------------------------------------------------------------------------
// Decode
// ---------------------------------------------------------------------------------------------

struct DecodeArgs {
  Backend backend = Backend::kCuda;
  DataType dtype = DataType::kBFloat16;  // of q, k_cache and out

  int batch = 0;                // b (0: nothing to do)
  int s_q = 0;                  // query tokens per request (>1 for speculative decoding)
  int h_q = 0;                  // query heads
  int h_kv = 0;                 // KV heads (1 for MLA); h_q % h_kv == 0
  int head_dim_v = kHeadDimV;   // must be 512; checked so callers passing FlashMLA's argument learn early

  // q: [batch, s_q, h_q, 576]; strides in elements, the last dim contiguous.
  const void* q = nullptr;
  int64_t q_batch_stride = 0, q_token_stride = 0, q_head_stride = 0;

  // k_cache: [num_blocks, page_size, h_kv, 576]; V is channels [0, 512) of the same rows.
  const void* k_cache = nullptr;
  int num_blocks = 0;
  int page_size = 0;
  int64_t k_block_stride = 0, k_token_stride = 0, k_head_stride = 0;

  // block_table: [batch, max_blocks_per_seq] int32; entries past a request's last page are never
  // read. max_blocks_per_seq is how many entries of each row may be read: it may exceed the
  // logical width of a row view, up to the row pitch of the buffer underneath (SGLang captures
  // narrow views of a wider table in CUDA graphs, as FlashMLA allows).
  const int32_t* block_table = nullptr;
  int max_blocks_per_seq = 0;
  int64_t block_table_batch_stride = 0;

  // cache_seqlens: [batch] int32 in [0, max_blocks_per_seq * page_size]. Values are only known
  // on the device: an out-of-range length (or block-table entry) makes that request's
  // out and lse NaN instead of reading out of bounds.
  const int32_t* cache_seqlens = nullptr;

  // The plan from get_mla_metadata for the same cache_seqlens. Backend::kHost checks that it is
  // exactly that plan (an error otherwise). Backend::kCuda cannot check it without a host sync:
  // a plan made for other lengths gives wrong results and a corrupted one NaN rows or wrong
  // results, but never an out-of-bounds access.
  const int32_t* tile_scheduler_metadata = nullptr;  // [num_sm_parts, kMetadataInts]
  const int32_t* num_splits = nullptr;               // [batch + 1]
  int num_sm_parts = 0;

  // out: [batch, s_q, h_q, 512] in dtype; strides in elements, last dim contiguous.
  void* out = nullptr;
  int64_t out_batch_stride = 0, out_token_stride = 0, out_head_stride = 0;
  // softmax_lse: [batch, h_q, s_q] float32, contiguous, natural log; +inf for rows that see no key.
  float* softmax_lse = nullptr;

  // Scale of q·k before the softmax. Any finite value is used as is (0 and negative too, as in
  // FlashMLA); std::nullopt (the default) selects 1/sqrt(576). NaN and infinity are rejected.
  std::optional<float> softmax_scale;
  bool causal = false;        // bottom-right aligned: query token i sees keys [0, seqlen - s_q + i]

  // Optional attention sink, float32 [h_q], in the decode's memory (null: none). Each output
  // row is scaled by exp(lse) / (exp(lse) + exp(attn_sink[head])); softmax_lse is unchanged.
  const float* attn_sink = nullptr;
};

// Bytes of workspace mla_decode needs for this shape (CUB-style; 0 for an empty batch or an
// invalid shape). Depends only on (batch, s_q, h_q, h_kv, num_sm_parts).
size_t decode_workspace_size(int batch, int s_q, int h_q, int h_kv, int num_sm_parts);

// Runs the decode. workspace: caller-owned, at least decode_workspace_size() bytes, aligned to
// kWorkspaceAlign, in the backend's memory. Asynchronous on `stream` for Backend::kCuda.
Status mla_decode(const DecodeArgs& args, void* workspace, size_t workspace_bytes,
                  cudaStream_t stream);

// The split-KV kernel family mla_decode would run for these arguments on the current device:
// "sm90" (Hopper: wgmma + TMA, compute capability 9.0, page_size a multiple of 64),
// "portable" (mma.sync, compute capability 8.0 and newer), "host" for Backend::kHost, or
// nullptr when none can run (mla_decode then returns the reason). The environment variable
// FLASHMLA_KERNEL, read on every call, overrides the choice: "portable" forces the portable
// kernel, "sm90" turns any reason the Hopper kernel cannot run into an error, "auto" (or unset)
// picks the best.
constexpr const char* kKernelEnvVar = "FLASHMLA_KERNEL";
const char* decode_kernel_name(const DecodeArgs& args);

// On compute capability 9.0 and newer the combine kernel is launched as a programmatic dependent
// of the split-KV kernel (its launch overlaps that kernel's tail). FLASHMLA_PDL, read on every
// call: "0" launches it the ordinary way (for A/B measurements), "1" (or unset) is the default.
constexpr const char* kPdlEnvVar = "FLASHMLA_PDL";

// Backend::kHost (mla_decode and reference_decode) spreads its rows over the host's cores; each
// row is computed by one thread in a fixed order, so results do not depend on the thread count.
// FLASHMLA_HOST_THREADS=n, read on every call, caps the threads (1: the calling thread only).
constexpr const char* kHostThreadsEnvVar = "FLASHMLA_HOST_THREADS";

// ---------------------------------------------------------------------------------------------
// Reference (host)
// ---------------------------------------------------------------------------------------------

// Unsplit float64 reference on host memory: one pass per request over its whole paged cache.
// Same argument conventions as mla_decode; the plan fields of `args` are ignored.
Status reference_decode(const DecodeArgs& args);

}  // namespace flashmla
