// The pipeline shared by the Hopper (sm_90a) decode kernels (wide and narrow): kernel
// parameters, the shared-memory view, the ring of key-block stages and its producer, the Q
// load and the development trace. Device code for the two kernel sources; nothing here is
// visible outside them (anonymous namespace).
#pragma once

#include <cstdint>

#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common/params.h"
#include "kernels/decode_params.h"
#include "kernels/sm80/ptx.cuh"
#include "kernels/sm90/decode_sm90_traits.h"
#include "kernels/sm90/ptx_sm90.cuh"
#include "kernels/tile_piece.h"

namespace flashmla::sm90 {
namespace {

using Tr = Sm90Traits;
using namespace ptx90;
constexpr float kLn2 = 0.693147180559945309f;

// Development trace (FLASHMLA_SM90_TRACE=file): clock64() at pipeline events of the first
// kTraceCtas CTAs, for the first kTraceBlocks key blocks of each; then, for the first
// kTraceSpanCtas CTAs of the grid, the SM it ran on, its start and end (%globaltimer, ns,
// comparable across SMs) and clock64() at both (the SM clock's real rate during the call, to
// convert the events to time). Null pointer when off.
enum TraceEvent : int { kTrIssue, kTrFirstBox, kTrLastBox, kTrScoresDone, kTrRelease0, kTrRelease1, kTrEvents };
constexpr int kTraceCtas = 4, kTraceBlocks = 64, kTraceSpanCtas = 1024;
constexpr int kTraceEventLongs = kTraceCtas * kTrEvents * kTraceBlocks;
constexpr int kSpanLongs = 5;  // {sm, start ns, end ns, start clock, end clock}
constexpr int kTraceLongs = kTraceEventLongs + kSpanLongs * kTraceSpanCtas;

struct Sm90Params {
  DecodeParams p;
  int l2_prefetch_blocks;  // Sm90Traits::kL2PrefetchBlocks unless FLASHMLA_SM90_L2_PREFETCH says otherwise
  long long* trace;        // kTraceLongs: [kTraceCtas][kTrEvents][kTraceBlocks], [kTraceSpanCtas][3]; or null
  // The cache as a 4-D tensor [num_blocks][page_size][h_kv][576] (innermost last), read in
  // boxes of 64 tokens x 64 channels.
  CUtensorMap k_map;
};

// Shared-memory buffers of one CTA, in the layout L (an Sm90Layout).
template <class L>
struct Smem {
  uint8_t* base;  // 1024-byte aligned
  __device__ uint8_t* q() const { return base + L::kQOffset; }
  __device__ uint8_t* k_stage(int s) const { return base + L::kKOffset + s * Tr::kTileBytes; }
  __device__ uint8_t* p_tile() const { return base + L::kPOffset; }
  __device__ float* row_scale() const { return reinterpret_cast<float*>(base + L::kRowScaleOffset); }
  __device__ float* row_inv() const { return reinterpret_cast<float*>(base + L::kRowInvOffset); }
  __device__ float* reduce() const { return reinterpret_cast<float*>(base + L::kReduceOffset); }
  __device__ uint32_t full_bar(int s, int box) const {
    return smem_addr(base + L::kFullBarOffset + 8 * (s * Tr::kBoxesQK + box));
  }
  // half 0: boxes [0, kFirstHighBox), released by warpgroup 0; half 1: the rest, by warpgroup 1.
  __device__ uint32_t empty_bar(int s, int half) const {
    return smem_addr(base + L::kEmptyBarOffset + 8 * (2 * s + half));
  }
};

// The aligned view of the dynamic shared memory, with the ring's barriers initialized (thread
// 0; the caller syncs the CTA before any use).
template <class L>
__device__ Smem<L> smem_view(uint8_t* raw) {
  const Smem<L> sm{raw + ((1024 - (smem_addr(raw) & 1023)) & 1023)};
  if (threadIdx.x == 0) {
    for (int s = 0; s < Tr::kStages; ++s) {
      for (int box = 0; box < Tr::kBoxesQK; ++box) mbar_init(sm.full_bar(s, box), 1);  // producer arrive + TMA bytes
      for (int half = 0; half < 2; ++half) mbar_init(sm.empty_bar(s, half), 4);  // the 4 warps of one warpgroup
    }
    mbar_fence_init();
  }
  return sm;
}

// Ring position of the n-th key block a CTA processes (counted over all its requests).
struct RingSlot {
  int stage;
  uint32_t parity;
  __device__ explicit RingSlot(int n) : stage(n % Tr::kStages), parity((n / Tr::kStages) & 1) {}
};

// K-major operand: rows x 16 channels starting at `k16` (a multiple of 16) of a 9-box tile
// whose boxes are box_bytes apart (64 rows: kBoxBytes; a narrow Q tile: fewer).
__device__ __forceinline__ uint64_t kmajor_desc(const uint8_t* tile, int k16, int box_bytes = Tr::kBoxBytes) {
  const int box = k16 / Tr::kBoxCols, in_box = k16 % Tr::kBoxCols;
  return smem_desc_sw128(smem_addr(tile + box * box_bytes + in_box * 2), 16, Tr::kSwizzleAtomBytes);
}
// V as the MN-major B operand: keys [key16, key16 + 16) x channels [256 * half, +256).
// Leading offset: from one 64-channel box to the next; stride: from 8 keys to the next 8.
__device__ __forceinline__ uint64_t v_desc(const uint8_t* stage, int half, int key16) {
  return smem_desc_sw128(smem_addr(stage + half * Tr::kBoxesPerConsumerV * Tr::kBoxBytes + key16 * Tr::kRowBytes),
                         Tr::kBoxBytes, Tr::kSwizzleAtomBytes);
}
// Byte offset of 16-byte chunk `chunk` (0..7) of row `row` in a box (128-byte swizzle).
__device__ __forceinline__ int swizzled(int row, int chunk) { return row * Tr::kRowBytes + ((chunk ^ (row & 7)) << 4); }

__device__ __forceinline__ void trace(const Sm90Params& sp, int event, int n) {
  if (sp.trace != nullptr && n < kTraceBlocks && blockIdx.x == 0 && blockIdx.y == 0 && blockIdx.z < kTraceCtas)
    sp.trace[(blockIdx.z * kTrEvents + event) * kTraceBlocks + n] = clock64();
}

// This CTA's SM and start time (start = true) or end time, for the span part of the trace.
__device__ __forceinline__ void trace_span(const Sm90Params& sp, bool start) {
  const int cta = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  if (sp.trace == nullptr || cta >= kTraceSpanCtas) return;
  long long* span = sp.trace + kTraceEventLongs + kSpanLongs * cta;
  uint64_t now;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
  const long long clock = clock64();
  if (start) {
    uint32_t sm;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
    span[0] = sm;
    span[1] = (long long)now;
    span[3] = clock;
  } else {
    span[2] = (long long)now;
    span[4] = clock;
  }
}

// ---------------------------------------------------------------------------------------------
// Producer
// ---------------------------------------------------------------------------------------------
// Page of the key block starting at key0, or -1 if the block table holds no valid page there.
__device__ __forceinline__ int block_page(const DecodeParams& p, int req, int64_t key0) {
  const int page = p.block_table[int64_t(req) * p.block_table_batch_stride + key0 / p.page_size];
  return page >= 0 && page < p.num_blocks ? page : -1;
}

template <class L>
__device__ void produce(const Sm90Params& sp, const MetadataRow& part, int kv_head, int last_row_token,
                        const Smem<L>& sm) {
  const DecodeParams& p = sp.p;
  prefetch_tensor_map(&sp.k_map);
  // With one m-block the cache is streamed once per call: evict it first. With several, the
  // CTAs of the other m-blocks read the same keys at about the same time: keep them.
  const uint64_t l2_policy = gridDim.x == 1 ? l2_evict_first_policy() : l2_evict_normal_policy();
  int block_counter = 0;
  for (int req = part.begin_req; req <= part.end_req; ++req) {
    const TilePiece piece = tile_piece(p, part, req, last_row_token);
    const int blocks = piece.num_key_blocks(Tr::kBlockN);
    // Optional (off by default, docs/PERF.md): blocks l2_prefetch_blocks ahead of the one being
    // loaded are requested into L2 first, so the TMA load that follows waits for L2, not HBM.
    auto prefetch = [&](int n) {
      if (n >= blocks) return;
      const int64_t key0 = piece.key_begin + int64_t(n) * Tr::kBlockN;
      const int page = block_page(p, req, key0);
      if (page < 0) return;
#pragma unroll
      for (int box = 0; box < Tr::kBoxesQK; ++box)
        tma_prefetch_l2_4d(&sp.k_map, box * Tr::kBoxCols, kv_head, int(key0 % p.page_size), page);
    };
    for (int n = 0; n < sp.l2_prefetch_blocks; ++n) prefetch(n);
    for (int n = 0; n < blocks; ++n, ++block_counter) {
      if (sp.l2_prefetch_blocks > 0) prefetch(n + sp.l2_prefetch_blocks);
      const RingSlot slot(block_counter);
      const int64_t key0 = piece.key_begin + int64_t(n) * Tr::kBlockN;
      const int page = block_page(p, req, key0);
      // Once per block, into a register: inside the box loop every barrier operation (an asm
      // with a memory clobber) made the compiler reload page_size and redo this 64-bit division
      // for each of the 9 boxes, on the producer's one thread, between its TMA issues.
      const int token_in_page = int(key0 % p.page_size);
      const uint32_t dst = smem_addr(sm.k_stage(slot.stage));
#pragma unroll
      for (int box = 0; box < Tr::kBoxesQK; ++box) {
        if (box == 0 || box == Tr::kFirstHighBox) {  // a fresh barrier passes parity 1
          mbar_wait(sm.empty_bar(slot.stage, box == 0 ? 0 : 1), slot.parity ^ 1);
          if (box == 0) trace(sp, kTrIssue, block_counter);
        }
        const uint32_t full = sm.full_bar(slot.stage, box);
        if (page < 0) {  // nothing to load: the stage keeps stale data, the consumers poison the request
          mbar_arrive(full);
          continue;
        }
        mbar_arrive_expect_tx(full, Tr::kBoxBytes);
        tma_load_4d(dst + box * Tr::kBoxBytes, &sp.k_map, full, box * Tr::kBoxCols, kv_head, token_in_page, page,
                    l2_policy);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Query tile
// ---------------------------------------------------------------------------------------------

// Starts loading the query rows of request `req` into Q's 9 boxes (cp.async; wait_q completes
// it). Rows past the tile are zero, written on the CTA's first request only: nothing else
// writes them. Warpgroup 0 only.
template <typename T, class L>
__device__ void issue_q_load(const DecodeParams& p, int req, int kv_head, int tile_row0, int tile_rows,
                             bool zero_padding_rows, const Smem<L>& sm) {
  constexpr int kChunks = kHeadDimQK * 2 / 16;  // 72 per row
  const RowMap rows{p.q_heads_per_kv};
  const T* q = static_cast<const T*>(p.q);
  const int loaded_rows = zero_padding_rows ? L::kQBoxBytes / Tr::kRowBytes : tile_rows;
  for (int i = threadIdx.x; i < loaded_rows * kChunks; i += 128) {
    const int r = i / kChunks, chunk = i % kChunks;
    const int row = tile_row0 + r;
    const bool valid = r < tile_rows;
    const T* src = valid ? q + req * p.q_batch_stride + rows.token(row) * p.q_token_stride +
                               rows.head(kv_head, row) * p.q_head_stride + chunk * 8
                         : q;
    ptx::cp_async_16(smem_addr(sm.q() + (chunk / 8) * L::kQBoxBytes + swizzled(r, chunk % 8)), src, valid);
  }
  ptx::cp_async_commit();
}

// Q is in shared memory, visible to the tensor cores of all of warpgroup 0.
__device__ __forceinline__ void wait_q() {
  ptx::cp_async_wait<0>();
  fence_proxy_async();
  named_barrier_sync(Tr::kBarQReady, 128);
}

}  // namespace
}  // namespace flashmla::sm90
