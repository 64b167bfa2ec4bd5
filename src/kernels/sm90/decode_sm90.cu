// Hopper (sm_90a) split-KV MLA decode kernel: wgmma tensor cores, TMA loads of the paged cache
// into a two-stage shared-memory ring guarded by mbarriers, warp specialization.
//
// Grid (m_blocks, h_kv, num_sm_parts), like the portable kernel: CTA (m, h, p) owns the 64
// packed query rows [64m, 64m + 64) of KV head h and walks the pieces of SM part p. Per 64-key
// block of a piece:
//   producer (warpgroup 2, one thread): looks the block's page up and issues 9 TMA boxes
//     (64 keys x 64 channels, 128-byte swizzle) into the free stage;
//   warpgroup 0: S = Q K^T (36 x wgmma m64n64k16, Q and K from shared memory), mask, online
//     softmax in exp2, writes P (bf16/fp16) and the rows' rescale factors to shared memory,
//     then O[:, 0:256) = O * rescale + P V;
//   warpgroup 1: O[:, 256:512) = O * rescale + P V with the same P.
// V is channels 0..511 of the K rows already in the stage: the cache is read once.
// The same piece, split and output conventions as the portable kernel (kernels/tile_piece.h).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common/params.h"
#include "common/pdl.cuh"
#include "kernels/decode_params.h"
#include "kernels/sm80/ptx.cuh"
#include "kernels/sm90/decode_sm90.h"
#include "kernels/sm90/decode_sm90_narrow.h"
#include "kernels/sm90/decode_sm90_traits.h"
#include "kernels/sm90/pipeline_sm90.cuh"
#include "kernels/sm90/ptx_sm90.cuh"
#include "kernels/tile_piece.h"

namespace flashmla::sm90 {
namespace {

using WideLayout = Sm90Layout<Tr::kBlockM>;
using WideSmem = Smem<WideLayout>;

// ---------------------------------------------------------------------------------------------
// Consumers of the wide kernel
// ---------------------------------------------------------------------------------------------

// Writes this thread's share of one consumer's 64 x 256 output: rows r_lo and r_lo + 8 of the
// tile, columns col0 + 8j + 2 (lane % 4) + {0, 1}.
template <typename T>
__device__ void store_output(const DecodeParams& p, const TilePiece& piece, int req, int kv_head, int tile_row0,
                             int tile_rows, int r_lo, int col0, const float (&o)[128], const float (&inv)[2],
                             const float* lse /* null: not this warpgroup's job */) {
  const int lane = threadIdx.x % 32;
  const RowMap rows{p.q_heads_per_kv};
  if (!piece.writable) return;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = r_lo + 8 * h;
    if (r >= tile_rows) continue;
    const int row = tile_row0 + r, token = rows.token(row), head = rows.head(kv_head, row);
    const int col = col0 + 2 * (lane % 4);
    if (piece.final_write()) {
      T* dst = static_cast<T*>(p.out) + req * p.out_batch_stride + token * p.out_token_stride +
               head * p.out_head_stride + col;
#pragma unroll
      for (int j = 0; j < 32; ++j)
        *reinterpret_cast<uint32_t*>(dst + 8 * j) = ptx::pack2<T>(o[4 * j + 2 * h] * inv[h], o[4 * j + 2 * h + 1] * inv[h]);
      if (lse != nullptr && lane % 4 == 0) p.softmax_lse[lse_offset(req, p.h_q, p.s_q, head, token)] = lse[h];
    } else {
      const int64_t slot = partial_slot(piece.workspace_split(), p.h_kv, kv_head, p.rows_per_kv_head, row);
      float* dst = p.partial_out + slot * kHeadDimV + col;
#pragma unroll
      for (int j = 0; j < 32; ++j)
        *reinterpret_cast<float2*>(dst + 8 * j) = make_float2(o[4 * j + 2 * h] * inv[h], o[4 * j + 2 * h + 1] * inv[h]);
      if (lse != nullptr && lane % 4 == 0) p.partial_lse[slot] = lse[h];
    }
  }
}

__device__ __forceinline__ void zero_accumulator(float (&o)[128]) {
#pragma unroll
  for (int i = 0; i < 128; ++i) o[i] = 0.f;
}

__device__ __forceinline__ void rescale_accumulator(float (&o)[128], const float (&scale)[2]) {
#pragma unroll
  for (int j = 0; j < 32; ++j) {
    o[4 * j + 0] *= scale[0];
    o[4 * j + 1] *= scale[0];
    o[4 * j + 2] *= scale[1];
    o[4 * j + 3] *= scale[1];
  }
}

// O[:, 256 half, +256) += P V over the 64 keys of `stage`, as one wgmma commit group.
template <typename T>
__device__ __forceinline__ void issue_pv(float (&o)[128], const WideSmem& sm, const uint8_t* stage, int half) {
  wgmma_fence();
#pragma unroll
  for (int k16 = 0; k16 < Tr::kBlockN; k16 += 16)
    wgmma_m64n256k16_ss_tb<T>(o, kmajor_desc(sm.p_tile(), k16), v_desc(stage, half, k16), true);
  wgmma_commit();
}

// Warpgroup 0: scores, softmax, P, and the left half of the output.
template <typename T>
__device__ void consume_scores(const Sm90Params& sp, const MetadataRow& part, int kv_head, int tile_row0,
                               int tile_rows, const WideSmem& sm) {
  const DecodeParams& p = sp.p;
  const int tid = threadIdx.x, lane = tid % 32;
  const int r_lo = (tid / 32) * 16 + lane / 4;  // this thread's tile rows: r_lo, r_lo + 8
  const RowMap rows{p.q_heads_per_kv};
  const int last_row_token = rows.token(tile_row0 + tile_rows - 1);
  const int row_token[2] = {rows.token(tile_row0 + r_lo), rows.token(tile_row0 + r_lo + 8)};
  float o[128];
  int block_counter = 0;
  // The next request's Q is loaded while the current one finishes (from its last S on), so a
  // request transition does not wait for a Q round trip.
  int q_req = part.begin_req;
  issue_q_load<T, WideLayout>(p, q_req, kv_head, tile_row0, tile_rows, true, sm);

  for (int req = part.begin_req; req <= part.end_req; ++req) {
    const TilePiece piece = tile_piece(p, part, req, last_row_token);
    const int blocks = piece.num_key_blocks(Tr::kBlockN);
    if (q_req != req) {  // the previous request had no key block
      q_req = req;
      issue_q_load<T, WideLayout>(p, q_req, kv_head, tile_row0, tile_rows, false, sm);
    }
    wait_q();
    zero_accumulator(o);
    float row_max[2] = {-INFINITY, -INFINITY};  // log2 units: scores * scale_log2
    float row_sum[2] = {0.f, 0.f};              // this thread's columns; reduced over the quad at the end
    int key_limit[2];                           // row h sees keys < key_limit[h]
#pragma unroll
    for (int h = 0; h < 2; ++h)
      key_limit[h] = p.causal ? min(piece.key_end, piece.causal_shift(p.s_q) + row_token[h]) : piece.key_end;
    bool poisoned = piece.bad_length;

    float s[32];
    for (int n = 0; n < blocks; ++n, ++block_counter) {
      const RingSlot slot(block_counter);
      uint8_t* const stage = sm.k_stage(slot.stage);
      const int key0 = piece.key_begin + n * Tr::kBlockN;
      // A bad page index was not loaded (the producer checks it too): the request becomes NaN.
      // Read before the wait so the block-table round trip overlaps the load.
      const bool bad_page = block_page(p, req, key0) < 0;
      // S = Q K^T, issued box by box as the boxes land. The wait loop is a branch between wgmma
      // instructions: without a wgmma.fence of our own after it, ptxas inserts one on that
      // path and serializes every wgmma of the kernel (C7520, scripts/check_ptxas.sh).
      mbar_wait(sm.full_bar(slot.stage, 0), slot.parity);
      if (tid == 0) trace(sp, kTrFirstBox, block_counter);
#pragma unroll
      for (int box = 0; box < Tr::kBoxesQK; ++box) {
        if (box > 0) mbar_wait(sm.full_bar(slot.stage, box), slot.parity);
        wgmma_fence();
#pragma unroll
        for (int k16 = box * Tr::kBoxCols; k16 < (box + 1) * Tr::kBoxCols; k16 += 16)
          wgmma_m64n64k16_ss<T>(s, kmajor_desc(sm.q(), k16), kmajor_desc(stage, k16), k16 > 0);
      }
      wgmma_commit();
      if (tid == 0) trace(sp, kTrLastBox, block_counter);
      wgmma_wait<0>();
      fence_operands(s);
      if (tid == 0) trace(sp, kTrScoresDone, block_counter);

      // s[4j + 2h + e]: row r_lo + 8h, key key0 + 8j + 2 (lane % 4) + e.
      poisoned |= bad_page;
      float block_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int h = i / 2, key = key0 + 8 * j + 2 * (lane % 4) + i % 2;
          s[4 * j + i] = key < key_limit[h] ? s[4 * j + i] * p.scale_log2 : -INFINITY;
          block_max[h] = fmaxf(block_max[h], s[4 * j + i]);
        }
      float rescale[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        block_max[h] = fmaxf(block_max[h], __shfl_xor_sync(0xffffffff, block_max[h], 1));
        block_max[h] = fmaxf(block_max[h], __shfl_xor_sync(0xffffffff, block_max[h], 2));
        const float new_max = fmaxf(row_max[h], block_max[h]);
        // A row that has seen no visible key keeps max -inf; subtract 0 to avoid inf - inf.
        const float base = new_max == -INFINITY ? 0.f : new_max;
        rescale[h] = exp2f(row_max[h] - base);
        row_max[h] = new_max;
        row_sum[h] *= rescale[h];
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            float& v = s[4 * j + 2 * h + e];
            v = exp2f(v - base);
            row_sum[h] += v;
          }
      }

      // Cache rows past seqlen hold anything (NaN in the tests); P is 0 there but 0 * NaN is
      // NaN, so their V channels are zeroed before P V. Only a request's last block has them;
      // S is done with this stage and warpgroup 1 reads it only after the barrier below.
      const int valid_keys = piece.seqlen - key0;
      if (valid_keys < Tr::kBlockN) {
        constexpr int kChunksPerKey = Tr::kBoxesV * 8;  // 16-byte chunks of a key's 512 V channels
        for (int i = tid + max(valid_keys, 0) * kChunksPerKey; i < Tr::kBlockN * kChunksPerKey; i += 128) {
          const int r = i / kChunksPerKey, box = (i / 8) % Tr::kBoxesV, chunk = i % 8;
          *reinterpret_cast<uint4*>(stage + box * Tr::kBoxBytes + r * Tr::kRowBytes + chunk * 16) = make_uint4(0, 0, 0, 0);
        }
        fence_proxy_async();
      }

      named_barrier_sync(Tr::kBarPFree, Tr::kConsumerThreads);  // warpgroup 1 is done with the last P
      uint8_t* const p_tile = sm.p_tile();
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = r_lo + 8 * h;
#pragma unroll
        for (int j = 0; j < 8; ++j)
          *reinterpret_cast<uint32_t*>(p_tile + swizzled(r, j) + 4 * (lane % 4)) =
              ptx::pack2<T>(s[4 * j + 2 * h], s[4 * j + 2 * h + 1]);
        if (lane % 4 == 0) sm.row_scale()[r] = rescale[h];
      }
      fence_proxy_async();
      named_barrier_sync(Tr::kBarPReady, Tr::kConsumerThreads);

      rescale_accumulator(o, rescale);
      issue_pv<T>(o, sm, stage, 0);
      // The stage is released once P V is done with it; the next block's S then starts as its
      // boxes land. (Issuing that S behind P V instead holds this stage until the next block has
      // landed, which with two stages serializes the loads: docs/PERF.md, second version.)
      wgmma_wait<0>();
      fence_operands(o);
      if (lane == 0) mbar_arrive(sm.empty_bar(slot.stage, 0));
      if (tid == 0) trace(sp, kTrRelease0, block_counter);
    }
    if (blocks > 0 && req < part.end_req) {
      named_barrier_sync(Tr::kBarQReady, 128);  // every warp's S has read Q
      q_req = req + 1;
      issue_q_load<T, WideLayout>(p, q_req, kv_head, tile_row0, tile_rows, false, sm);
    }
    // The CTA's last key block is done; only its output stores remain: the combine may launch.
    if (req == part.end_req) pdl::launch_dependents();

    // Normalize: 1 / row sum and the lse (natural log); a row with no key gets out 0 and
    // lse +inf (final) or -inf (a partial the combine skips); a poisoned request gets NaN.
    float inv[2], lse[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float sum = row_sum[h];
      sum += __shfl_xor_sync(0xffffffff, sum, 1);
      sum += __shfl_xor_sync(0xffffffff, sum, 2);
      const bool empty = sum == 0.f;
      inv[h] = empty ? 0.f : 1.f / sum;
      lse[h] = empty ? (piece.final_write() ? INFINITY : -INFINITY) : (row_max[h] + __log2f(sum)) * kLn2;
      if (poisoned) inv[h] = lse[h] = NAN;
    }
    named_barrier_sync(Tr::kBarPFree, Tr::kConsumerThreads);
    if (lane % 4 == 0) {
      sm.row_inv()[r_lo] = inv[0];
      sm.row_inv()[r_lo + 8] = inv[1];
    }
    named_barrier_sync(Tr::kBarPReady, Tr::kConsumerThreads);
    store_output<T>(p, piece, req, kv_head, tile_row0, tile_rows, r_lo, 0, o, inv, lse);
  }
  named_barrier_sync(Tr::kBarPFree, Tr::kConsumerThreads);  // pairs with warpgroup 1's last arrive
  if (tid == 0) trace_span(sp, false);
}

// Warpgroup 1: the right half of the output, with warpgroup 0's P and rescale factors.
template <typename T>
__device__ void consume_values(const Sm90Params& sp, const MetadataRow& part, int kv_head, int tile_row0,
                               int tile_rows, const WideSmem& sm) {
  const DecodeParams& p = sp.p;
  const int lane = threadIdx.x % 32;
  const int r_lo = ((threadIdx.x - 128) / 32) * 16 + lane / 4;
  const RowMap rows{p.q_heads_per_kv};
  const int last_row_token = rows.token(tile_row0 + tile_rows - 1);
  float o[128];
  int block_counter = 0;
  named_barrier_sync(Tr::kBarPFree, Tr::kConsumerThreads);  // the P buffer starts free

  for (int req = part.begin_req; req <= part.end_req; ++req) {
    const TilePiece piece = tile_piece(p, part, req, last_row_token);
    const int blocks = piece.num_key_blocks(Tr::kBlockN);
    zero_accumulator(o);
    for (int n = 0; n < blocks; ++n, ++block_counter) {
      const RingSlot slot(block_counter);
      named_barrier_sync(Tr::kBarPReady, Tr::kConsumerThreads);
      // Makes the TMA writes of this warpgroup's V boxes visible here too.
      for (int box = 0; box < Tr::kBoxesPerConsumerV; ++box)
        mbar_wait(sm.full_bar(slot.stage, Tr::kBoxesPerConsumerV + box), slot.parity);
      const float rescale[2] = {sm.row_scale()[r_lo], sm.row_scale()[r_lo + 8]};
      rescale_accumulator(o, rescale);
      issue_pv<T>(o, sm, sm.k_stage(slot.stage), 1);
      wgmma_wait<0>();
      fence_operands(o);
      if (lane == 0) mbar_arrive(sm.empty_bar(slot.stage, 1));
      if (threadIdx.x == 128) trace(sp, kTrRelease1, block_counter);
      named_barrier_sync(Tr::kBarPFree, Tr::kConsumerThreads);
    }
    named_barrier_sync(Tr::kBarPReady, Tr::kConsumerThreads);
    const float inv[2] = {sm.row_inv()[r_lo], sm.row_inv()[r_lo + 8]};
    named_barrier_sync(Tr::kBarPFree, Tr::kConsumerThreads);
    store_output<T>(p, piece, req, kv_head, tile_row0, tile_rows, r_lo, Tr::kColsPerConsumer, o, inv, nullptr);
  }
}

template <typename T>
__global__ void __launch_bounds__(Tr::kThreads, 1) mla_decode_sm90_kernel(const __grid_constant__ Sm90Params sp) {
  extern __shared__ uint8_t smem_raw[];
  const WideSmem sm = smem_view<WideLayout>(smem_raw);
  const DecodeParams& p = sp.p;
  if (threadIdx.x == 0) trace_span(sp, true);
  __syncthreads();

  const int kv_head = blockIdx.y;
  const int tile_row0 = blockIdx.x * Tr::kBlockM;
  const int tile_rows = min(Tr::kBlockM, p.rows_per_kv_head - tile_row0);
  const MetadataRow part =
      sanitize_part(reinterpret_cast<const MetadataRow*>(p.tile_scheduler_metadata)[blockIdx.z], p.batch);
  const int warpgroup = threadIdx.x / 128;

  if (warpgroup == 2) {
    setmaxnreg_dec<Tr::kProducerRegs>();
    if (threadIdx.x == 256) {
      const RowMap rows{p.q_heads_per_kv};
      produce(sp, part, kv_head, rows.token(tile_row0 + tile_rows - 1), sm);
    }
    return;
  }
  setmaxnreg_inc<Tr::kConsumerRegs>();
  if (warpgroup == 0)
    consume_scores<T>(sp, part, kv_head, tile_row0, tile_rows, sm);
  else
    consume_values<T>(sp, part, kv_head, tile_row0, tile_rows, sm);
}

// ---------------------------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------------------------

PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult found{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &found) !=
            cudaSuccess ||
        found != cudaDriverEntryPointSuccess)
      f = nullptr;
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  return fn;
}

Status encode_k_map(const DecodeArgs& a, CUtensorMap* map) {
  auto encode = tensor_map_encoder();
  if (encode == nullptr) return Status::Error("k_cache: the driver does not provide cuTensorMapEncodeTiled");
  constexpr int64_t kElem = 2;
  // A KV-head dimension of size 1 is never stepped over: any valid stride describes it.
  const int64_t head_stride = a.h_kv == 1 ? int64_t(kHeadDimQK) : a.k_head_stride;
  const cuuint64_t dims[4] = {cuuint64_t(kHeadDimQK), cuuint64_t(a.h_kv), cuuint64_t(a.page_size),
                              cuuint64_t(a.num_blocks)};
  const cuuint64_t strides[3] = {cuuint64_t(head_stride * kElem), cuuint64_t(a.k_token_stride * kElem),
                                 cuuint64_t(a.k_block_stride * kElem)};
  const cuuint32_t box[4] = {cuuint32_t(Tr::kBoxCols), 1, cuuint32_t(Tr::kBlockN), 1};
  const cuuint32_t element_strides[4] = {1, 1, 1, 1};
  const CUresult r =
      encode(map, a.dtype == DataType::kBFloat16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
             4, const_cast<void*>(a.k_cache), dims, strides, box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
             CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    return Status::Error("k_cache: cuTensorMapEncodeTiled failed with CUresult " + std::to_string(int(r)) +
                         " (block/token/head strides " + std::to_string(a.k_block_stride) + "/" +
                         std::to_string(a.k_token_stride) + "/" + std::to_string(a.k_head_stride) + ")");
  return Status::Ok();
}

// The prefetch distance, overridable for experiments (docs/PERF.md) by FLASHMLA_SM90_L2_PREFETCH.
int l2_prefetch_blocks() {
  static const int blocks = [] {
    const char* env = std::getenv("FLASHMLA_SM90_L2_PREFETCH");
    return env != nullptr ? std::max(0, std::atoi(env)) : Tr::kL2PrefetchBlocks;
  }();
  return blocks;
}

// FLASHMLA_SM90_TRACE=file: every launch outside a CUDA-graph capture is followed by a stream
// synchronize and one JSON line appended to the file with the pipeline events (TraceEvent) of
// the first CTAs, in SM clock cycles. For performance work only: it serializes the calls.
const char* trace_path() {
  static const char* path = std::getenv("FLASHMLA_SM90_TRACE");
  return path;
}

long long* trace_buffer() {
  static long long* buffer = [] {
    void* b = nullptr;
    return cudaMalloc(&b, sizeof(long long) * kTraceLongs) == cudaSuccess
               ? static_cast<long long*>(b)
               : nullptr;
  }();
  return buffer;
}

void write_trace(const long long* device_buffer, const dim3& grid, cudaStream_t stream) {
  std::vector<long long> t(kTraceLongs);
  if (cudaMemcpyAsync(t.data(), device_buffer, t.size() * sizeof(long long), cudaMemcpyDeviceToHost, stream) !=
          cudaSuccess ||
      cudaStreamSynchronize(stream) != cudaSuccess)
    return;
  std::FILE* f = std::fopen(trace_path(), "a");
  if (f == nullptr) return;
  static const char* names[kTrEvents] = {"issue", "first_box", "last_box", "scores_done", "release0",
                                         "release1"};
  std::fprintf(f, "{\"grid\": [%u, %u, %u], \"l2_prefetch\": %d, \"ctas\": [", grid.x, grid.y, grid.z,
               l2_prefetch_blocks());
  for (int c = 0; c < kTraceCtas; ++c) {
    std::fprintf(f, "%s{", c ? ", " : "");
    for (int e = 0; e < kTrEvents; ++e) {
      std::fprintf(f, "%s\"%s\": [", e ? ", " : "", names[e]);
      for (int n = 0; n < kTraceBlocks; ++n)
        std::fprintf(f, "%s%lld", n ? ", " : "", t[(size_t(c) * kTrEvents + e) * kTraceBlocks + n]);
      std::fprintf(f, "]");
    }
    std::fprintf(f, "}");
  }
  // [sm, start ns, end ns, start clock, end clock] per CTA, in launch order
  std::fprintf(f, "], \"spans\": [");
  const int ctas = std::min<int>(kTraceSpanCtas, grid.x * grid.y * grid.z);
  for (int c = 0; c < ctas; ++c) {
    const long long* span = t.data() + kTraceEventLongs + kSpanLongs * c;
    std::fprintf(f, "%s[%lld, %lld, %lld, %lld, %lld]", c ? ", " : "", span[0], span[1], span[2], span[3], span[4]);
  }
  std::fprintf(f, "]}\n");
  std::fclose(f);
}

// FLASHMLA_SM90_NARROW=0 runs the wide kernel for every row count (for A/B measurements and to
// test it on narrow tiles too); read once per process. Default: the narrow kernel where it applies.
bool narrow_enabled() {
  static const bool enabled = [] {
    const char* env = std::getenv("FLASHMLA_SM90_NARROW");
    return env == nullptr || std::string(env) != "0";
  }();
  return enabled;
}

// The kernel that runs a launch: the narrow one for at most 16 rows per KV head, else the wide.
struct Variant {
  const void* fn;
  int smem_bytes;
  int rows;   // query rows per tile (grid.x = ceil(rows_per_kv_head / rows))
  int index;  // for the per-kernel one-time setup: dtype x {wide, narrow}
};
constexpr int kVariants = 4;

Variant choose_variant(DataType dtype, int rows_per_kv_head) {
  const int dtype_index = dtype == DataType::kBFloat16 ? 0 : 1;
  if (narrow_enabled()) {
    const NarrowKernel k = narrow_kernel(dtype, rows_per_kv_head);
    if (k.fn != nullptr) return {k.fn, k.smem_bytes, k.rows, 2 * dtype_index + 1};
  }
  const void* wide = dtype == DataType::kBFloat16 ? reinterpret_cast<const void*>(mla_decode_sm90_kernel<__nv_bfloat16>)
                                                  : reinterpret_cast<const void*>(mla_decode_sm90_kernel<__half>);
  return {wide, WideLayout::kSmemBytes, Tr::kBlockM, 2 * dtype_index};
}

}  // namespace

std::string cannot_run(const detail::DeviceFacts& device, const DecodeArgs& args) {
  if (device.major != 9 || device.minor != 0)
    return "sm_90a code runs on compute capability 9.0 only, the device is " + std::to_string(device.major) + "." +
           std::to_string(device.minor);
  if (args.page_size % Tr::kBlockN != 0)
    return "page_size " + std::to_string(args.page_size) + " is not a multiple of " + std::to_string(Tr::kBlockN) +
           " (one TMA box of keys per pipeline stage)";
  if (device.smem_optin < WideLayout::kSmemBytes)
    return "the kernel needs " + std::to_string(WideLayout::kSmemBytes) + " bytes of shared memory per block, the device allows " +
           std::to_string(device.smem_optin);
  // TMA steps over every dimension of size > 1 with a non-zero stride.
  if (args.k_token_stride == 0 || (args.h_kv > 1 && args.k_head_stride == 0) ||
      (args.num_blocks > 1 && args.k_block_stride == 0))
    return "k_cache has a zero stride over a dimension of size > 1";
  return {};
}

Status launch_decode(const DecodeArgs& args, const DecodeParams& params, const detail::DeviceFacts& device,
                     cudaStream_t stream) {
  Sm90Params sp;
  sp.p = params;
  sp.l2_prefetch_blocks = l2_prefetch_blocks();
  sp.trace = nullptr;
  if (trace_path() != nullptr) {
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(stream, &capture) == cudaSuccess && capture == cudaStreamCaptureStatusNone) {
      sp.trace = trace_buffer();
      if (sp.trace != nullptr)
        cudaMemsetAsync(sp.trace, 0, sizeof(long long) * kTraceLongs, stream);
    }
  }
  if (Status s = encode_k_map(args, &sp.k_map); !s.ok()) return s;

  const Variant v = choose_variant(args.dtype, params.rows_per_kv_head);
  // Raising the dynamic shared-memory limit costs a driver call: once per device and kernel.
  static std::once_flag configured[kMaxCudaDevices][kVariants];
  cudaError_t err = cudaSuccess;
  std::call_once(configured[device.index][v.index], [&] {
    err = cudaFuncSetAttribute(v.fn, cudaFuncAttributeMaxDynamicSharedMemorySize, v.smem_bytes);
  });
  if (err != cudaSuccess) return Status::Error(std::string("cudaFuncSetAttribute: ") + cudaGetErrorString(err));

  const dim3 grid((params.rows_per_kv_head + v.rows - 1) / v.rows, params.h_kv, args.num_sm_parts);
  void* kernel_args[] = {&sp};
  err = cudaLaunchKernel(v.fn, grid, dim3(Tr::kThreads), kernel_args, v.smem_bytes, stream);
  if (err != cudaSuccess) return Status::Error(std::string("mla_decode_sm90 kernel launch: ") + cudaGetErrorString(err));
  if (sp.trace != nullptr) write_trace(sp.trace, grid, stream);
  return Status::Ok();
}

}  // namespace flashmla::sm90
