// Hopper (sm_90a) split-KV decode kernel for narrow tiles: at most 16 packed query rows per KV
// head (s_q * h_q / h_kv <= 16, e.g. h_q = 16 with one KV head; the code also takes 32, which
// measured slower than the wide kernel: Sm90Traits::narrow_rows).
//
// The wide kernel puts the query rows on the wgmma M side, which is 64 rows at least: with 16
// real rows three quarters of its tensor work, and of its Q and P tiles, is padding. Here the
// products are transposed so the rows sit on the N side (16 or 32):
//   S^T = K Q^T      (A = the key tile, 64 keys x 16 channels per wgmma; B = Q)
//   O^T = V^T P^T    (A = V^T, read MN-major from the same key tile; B = P^T)
// Same pipeline as the wide kernel (pipeline_sm90.cuh: producer, ring, split release), same
// roles: warpgroup 0 computes S^T, the softmax and O^T for channels 0..255, warpgroup 1 the
// channels 256..511 with warpgroup 0's P^T. The softmax runs down the columns of S^T (one
// column per query row), so its maxima and sums are reduced across the 4 warps through shared
// memory.
//
// Accumulator layout of an m64 x kRows tile (thread t of a warpgroup, warp w = t / 32, lane):
// element i = 4j + 2h + e holds M index 16w + lane / 4 + 8h and N index 8j + 2 (lane % 4) + e.
// Each thread therefore owns kRows / 4 query rows (columns) q = 2j + e, and 2 keys (or channels).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common/params.h"
#include "common/pdl.cuh"
#include "kernels/decode_params.h"
#include "kernels/sm80/ptx.cuh"
#include "kernels/sm90/decode_sm90_narrow.h"
#include "kernels/sm90/decode_sm90_traits.h"
#include "kernels/sm90/pipeline_sm90.cuh"
#include "kernels/sm90/ptx_sm90.cuh"
#include "kernels/tile_piece.h"

namespace flashmla::sm90 {
namespace {

template <int kRows>
struct Narrow {
  using L = Sm90Layout<kRows>;
  static constexpr int kAcc = kRows / 2;    // floats per thread of one m64 x kRows accumulator
  static constexpr int kCols = kRows / 4;   // query rows (columns) per thread
  static constexpr int kBoxesPerWg = Tr::kBoxesPerConsumerV;  // 4 channel boxes of 64 per warpgroup

  // Query row (tile column) of this thread's column q.
  static __device__ __forceinline__ int col(int q, int lane) { return 8 * (q / 2) + 2 * (lane % 4) + q % 2; }
  // Column of accumulator element i, as an index q into the thread's kCols columns.
  static __device__ __forceinline__ int q_of(int i) { return 2 * (i / 4) + i % 2; }
};

// V^T as the MN-major A operand: channels [64 box, +64) x keys [key16, key16 + 16) of a stage.
// Stride: from 8 keys to the next 8 (the leading offset is unused with one 64-channel box).
__device__ __forceinline__ uint64_t vt_desc(const uint8_t* stage, int box, int key16) {
  return smem_desc_sw128(smem_addr(stage + box * Tr::kBoxBytes + key16 * Tr::kRowBytes), Tr::kBoxBytes,
                         Tr::kSwizzleAtomBytes);
}

// O^T[channels of `first_box`.. +4 boxes) += V^T P^T over the 64 keys of `stage`.
template <typename T, int kRows>
__device__ __forceinline__ void issue_pv_t(float (&o)[Narrow<kRows>::kBoxesPerWg][Narrow<kRows>::kAcc],
                                           const Smem<Sm90Layout<kRows>>& sm, const uint8_t* stage, int first_box) {
  // Pin the rescaled accumulators before the fence: wgmma must not see registers written after it.
#pragma unroll
  for (int b = 0; b < Narrow<kRows>::kBoxesPerWg; ++b) fence_operands(o[b]);
  wgmma_fence();
#pragma unroll
  for (int k16 = 0; k16 < Tr::kBlockN; k16 += 16)
#pragma unroll
    for (int b = 0; b < Narrow<kRows>::kBoxesPerWg; ++b)
      wgmma_m64nNk16_ss<T, kRows, 1>(o[b], vt_desc(stage, first_box + b, k16),
                                      kmajor_desc(sm.p_tile(), k16, Sm90Layout<kRows>::kQBoxBytes), true);
  wgmma_commit();
}

template <int kRows>
__device__ __forceinline__ void rescale_t(float (&o)[Narrow<kRows>::kBoxesPerWg][Narrow<kRows>::kAcc],
                                          const float (&scale)[Narrow<kRows>::kCols]) {
#pragma unroll
  for (int b = 0; b < Narrow<kRows>::kBoxesPerWg; ++b)
#pragma unroll
    for (int i = 0; i < Narrow<kRows>::kAcc; ++i) o[b][i] *= scale[Narrow<kRows>::q_of(i)];
}

// Writes this thread's share of one warpgroup's O^T (channels first_box * 64 .. + 256) scaled
// by 1 / row sum, and the lse of its columns if `lse` is given (warpgroup 0).
template <typename T, int kRows>
__device__ void store_output_t(const DecodeParams& p, const TilePiece& piece, int req, int kv_head, int tile_row0,
                               int tile_rows, int first_box,
                               const float (&o)[Narrow<kRows>::kBoxesPerWg][Narrow<kRows>::kAcc],
                               const float (&inv)[Narrow<kRows>::kCols], const float* lse) {
  using N = Narrow<kRows>;
  const int lane = threadIdx.x % 32, warp = (threadIdx.x % 128) / 32;
  const RowMap rows{p.q_heads_per_kv};
  if (!piece.writable) return;
#pragma unroll
  for (int i = 0; i < N::kAcc; ++i) {
    const int q = N::q_of(i), r = N::col(q, lane);
    if (r >= tile_rows) continue;
    const int row = tile_row0 + r, token = rows.token(row), head = rows.head(kv_head, row);
    const int ch_in_box = 16 * warp + lane / 4 + 8 * ((i / 2) % 2);
    if (piece.final_write()) {
      T* dst = static_cast<T*>(p.out) + req * p.out_batch_stride + token * p.out_token_stride +
               head * p.out_head_stride + ch_in_box;
#pragma unroll
      for (int b = 0; b < N::kBoxesPerWg; ++b) dst[(first_box + b) * Tr::kBoxCols] = T(o[b][i] * inv[q]);
    } else {
      const int64_t slot = partial_slot(piece.workspace_split(), p.h_kv, kv_head, p.rows_per_kv_head, row);
      float* dst = p.partial_out + slot * kHeadDimV + ch_in_box;
#pragma unroll
      for (int b = 0; b < N::kBoxesPerWg; ++b) dst[(first_box + b) * Tr::kBoxCols] = o[b][i] * inv[q];
    }
  }
  if (lse == nullptr || warp != 0 || lane >= 4) return;  // lanes 0..3 of warp 0 own every column once
#pragma unroll
  for (int q = 0; q < N::kCols; ++q) {
    const int r = N::col(q, lane);
    if (r >= tile_rows) continue;
    const int row = tile_row0 + r, token = rows.token(row), head = rows.head(kv_head, row);
    if (piece.final_write())
      p.softmax_lse[lse_offset(req, p.h_q, p.s_q, head, token)] = lse[q];
    else
      p.partial_lse[partial_slot(piece.workspace_split(), p.h_kv, kv_head, p.rows_per_kv_head, row)] = lse[q];
  }
}

// Column-wise (over the 64 keys of the tile) maximum or sum of this thread's kCols values
// `v`: over the 8 lanes that share the columns, then over the 4 warps through `buf`
// (float[4][kRows]). Warpgroup 0 only.
template <int kRows, bool kMax>
__device__ __forceinline__ void reduce_columns(float (&v)[Narrow<kRows>::kCols], float* buf) {
  using N = Narrow<kRows>;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int q = 0; q < N::kCols; ++q)
#pragma unroll
    for (int m = 4; m < 32; m *= 2) {
      const float other = __shfl_xor_sync(0xffffffff, v[q], m);
      v[q] = kMax ? fmaxf(v[q], other) : v[q] + other;
    }
  if (lane < 4)
#pragma unroll
    for (int q = 0; q < N::kCols; ++q) buf[warp * kRows + N::col(q, lane)] = v[q];
  named_barrier_sync(Tr::kBarReduce, 128);
#pragma unroll
  for (int q = 0; q < N::kCols; ++q) {
    const int c = N::col(q, lane);
    const float a = buf[c], b = buf[kRows + c], d = buf[2 * kRows + c], e = buf[3 * kRows + c];
    v[q] = kMax ? fmaxf(fmaxf(a, b), fmaxf(d, e)) : (a + b) + (d + e);
  }
}

// Warpgroup 0: S^T, the softmax, P^T, and O^T for channels 0..255.
template <typename T, int kRows>
__device__ void consume_scores_t(const Sm90Params& sp, const MetadataRow& part, int kv_head, int tile_row0,
                                 int tile_rows, const Smem<Sm90Layout<kRows>>& sm) {
  using N = Narrow<kRows>;
  using L = Sm90Layout<kRows>;
  const DecodeParams& p = sp.p;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int key_lo = 16 * warp + lane / 4;  // this thread's keys of a block: key_lo, key_lo + 8
  const RowMap rows{p.q_heads_per_kv};
  const int last_row_token = rows.token(tile_row0 + tile_rows - 1);
  int col_token[N::kCols];  // query token of each of this thread's columns (padding: the last row's)
#pragma unroll
  for (int q = 0; q < N::kCols; ++q) col_token[q] = rows.token(tile_row0 + min(N::col(q, lane), tile_rows - 1));
  float o[N::kBoxesPerWg][N::kAcc];
  int block_counter = 0;
  int q_req = part.begin_req;
  issue_q_load<T, L>(p, q_req, kv_head, tile_row0, tile_rows, true, sm);

  for (int req = part.begin_req; req <= part.end_req; ++req) {
    const TilePiece piece = tile_piece(p, part, req, last_row_token);
    const int blocks = piece.num_key_blocks(Tr::kBlockN);
    if (q_req != req) {  // the previous request had no key block
      q_req = req;
      issue_q_load<T, L>(p, q_req, kv_head, tile_row0, tile_rows, false, sm);
    }
    wait_q();
#pragma unroll
    for (int b = 0; b < N::kBoxesPerWg; ++b)
#pragma unroll
      for (int i = 0; i < N::kAcc; ++i) o[b][i] = 0.f;
    float col_max[N::kCols], col_sum[N::kCols];  // log2 units; col_sum: this thread's keys only
    int key_limit[N::kCols];                      // column q sees keys < key_limit[q]
#pragma unroll
    for (int q = 0; q < N::kCols; ++q) {
      col_max[q] = -INFINITY;
      col_sum[q] = 0.f;
      key_limit[q] = p.causal ? min(piece.key_end, piece.causal_shift(p.s_q) + col_token[q]) : piece.key_end;
    }
    bool poisoned = piece.bad_length;

    float s[N::kAcc];
    for (int n = 0; n < blocks; ++n, ++block_counter) {
      const RingSlot slot(block_counter);
      uint8_t* const stage = sm.k_stage(slot.stage);
      const int key0 = piece.key_begin + n * Tr::kBlockN;
      const bool bad_page = block_page(p, req, key0) < 0;  // read before the wait: overlaps the load
      // S^T = K Q^T box by box as the boxes land (each wait followed by a fence: no C7520).
      mbar_wait(sm.full_bar(slot.stage, 0), slot.parity);
      if (tid == 0) trace(sp, kTrFirstBox, block_counter);
#pragma unroll
      for (int box = 0; box < Tr::kBoxesQK; ++box) {
        if (box > 0) mbar_wait(sm.full_bar(slot.stage, box), slot.parity);
        wgmma_fence();
#pragma unroll
        for (int k16 = box * Tr::kBoxCols; k16 < (box + 1) * Tr::kBoxCols; k16 += 16)
          wgmma_m64nNk16_ss<T, kRows, 0>(s, kmajor_desc(stage, k16), kmajor_desc(sm.q(), k16, L::kQBoxBytes),
                                          k16 > 0);
      }
      wgmma_commit();
      if (tid == 0) trace(sp, kTrLastBox, block_counter);
      wgmma_wait<0>();
      fence_operands(s);
      if (tid == 0) trace(sp, kTrScoresDone, block_counter);
      poisoned |= bad_page;

      float block_max[N::kCols];
#pragma unroll
      for (int q = 0; q < N::kCols; ++q) block_max[q] = -INFINITY;
#pragma unroll
      for (int i = 0; i < N::kAcc; ++i) {
        const int q = N::q_of(i), key = key0 + key_lo + 8 * ((i / 2) % 2);
        s[i] = key < key_limit[q] ? s[i] * p.scale_log2 : -INFINITY;
        block_max[q] = fmaxf(block_max[q], s[i]);
      }
      reduce_columns<kRows, true>(block_max, sm.reduce() + (block_counter & 1) * 4 * kRows);
      float rescale[N::kCols], base[N::kCols];
#pragma unroll
      for (int q = 0; q < N::kCols; ++q) {
        const float new_max = fmaxf(col_max[q], block_max[q]);
        // A column that has seen no visible key keeps max -inf; subtract 0 to avoid inf - inf.
        base[q] = new_max == -INFINITY ? 0.f : new_max;
        rescale[q] = exp2f(col_max[q] - base[q]);
        col_max[q] = new_max;
        col_sum[q] *= rescale[q];
      }
#pragma unroll
      for (int i = 0; i < N::kAcc; ++i) {
        const int q = N::q_of(i);
        s[i] = exp2f(s[i] - base[q]);
        col_sum[q] += s[i];
      }

      // Cache rows past seqlen hold anything (NaN in the tests): P is 0 there but 0 * NaN is
      // NaN, so their V channels are zeroed before V^T P^T (only a request's last block).
      const int valid_keys = piece.seqlen - key0;
      if (valid_keys < Tr::kBlockN) {
        constexpr int kChunksPerKey = Tr::kBoxesV * 8;
        for (int i = tid + max(valid_keys, 0) * kChunksPerKey; i < Tr::kBlockN * kChunksPerKey; i += 128) {
          const int r = i / kChunksPerKey, box = (i / 8) % Tr::kBoxesV, chunk = i % 8;
          *reinterpret_cast<uint4*>(stage + box * Tr::kBoxBytes + r * Tr::kRowBytes + chunk * 16) = make_uint4(0, 0, 0, 0);
        }
        fence_proxy_async();
      }

      named_barrier_sync(Tr::kBarPFree, Tr::kConsumerThreads);  // warpgroup 1 is done with the last P^T
      // P^T as the K-major B operand: row = query row (column of S^T), 64 keys of 2 bytes.
      uint8_t* const p_tile = sm.p_tile();
#pragma unroll
      for (int i = 0; i < N::kAcc; ++i) {
        const int key = key_lo + 8 * ((i / 2) % 2);
        *reinterpret_cast<T*>(p_tile + swizzled(N::col(N::q_of(i), lane), key / 8) + (key % 8) * 2) = T(s[i]);
      }
      if (warp == 0 && lane < 4)
#pragma unroll
        for (int q = 0; q < N::kCols; ++q) sm.row_scale()[N::col(q, lane)] = rescale[q];
      fence_proxy_async();
      named_barrier_sync(Tr::kBarPReady, Tr::kConsumerThreads);

      rescale_t<kRows>(o, rescale);
      issue_pv_t<T, kRows>(o, sm, stage, 0);
      wgmma_wait<0>();
#pragma unroll
      for (int b = 0; b < N::kBoxesPerWg; ++b) fence_operands(o[b]);
      if (lane == 0) mbar_arrive(sm.empty_bar(slot.stage, 0));
      if (tid == 0) trace(sp, kTrRelease0, block_counter);
    }
    if (blocks > 0 && req < part.end_req) {
      named_barrier_sync(Tr::kBarQReady, 128);  // every warp's S^T has read Q
      q_req = req + 1;
      issue_q_load<T, L>(p, q_req, kv_head, tile_row0, tile_rows, false, sm);
    }
    if (req == part.end_req) pdl::launch_dependents();

    // Normalize: 1 / column sum and the lse (natural log); a column with no key gets out 0 and
    // lse +inf (final) or -inf (a partial the combine skips); a poisoned request gets NaN.
    reduce_columns<kRows, false>(col_sum, sm.reduce() + 2 * 4 * kRows);
    float inv[N::kCols], lse[N::kCols];
#pragma unroll
    for (int q = 0; q < N::kCols; ++q) {
      const bool empty = col_sum[q] == 0.f;
      inv[q] = empty ? 0.f : 1.f / col_sum[q];
      lse[q] = empty ? (piece.final_write() ? INFINITY : -INFINITY) : (col_max[q] + __log2f(col_sum[q])) * kLn2;
      if (poisoned) inv[q] = lse[q] = NAN;
    }
    named_barrier_sync(Tr::kBarPFree, Tr::kConsumerThreads);
    if (warp == 0 && lane < 4)
#pragma unroll
      for (int q = 0; q < N::kCols; ++q) sm.row_inv()[N::col(q, lane)] = inv[q];
    named_barrier_sync(Tr::kBarPReady, Tr::kConsumerThreads);
    store_output_t<T, kRows>(p, piece, req, kv_head, tile_row0, tile_rows, 0, o, inv, lse);
  }
  named_barrier_sync(Tr::kBarPFree, Tr::kConsumerThreads);  // pairs with warpgroup 1's last one
  if (tid == 0) trace_span(sp, false);
}

// Warpgroup 1: O^T for channels 256..511, with warpgroup 0's P^T and rescale factors.
template <typename T, int kRows>
__device__ void consume_values_t(const Sm90Params& sp, const MetadataRow& part, int kv_head, int tile_row0,
                                 int tile_rows, const Smem<Sm90Layout<kRows>>& sm) {
  using N = Narrow<kRows>;
  const DecodeParams& p = sp.p;
  const int lane = threadIdx.x % 32;
  const RowMap rows{p.q_heads_per_kv};
  const int last_row_token = rows.token(tile_row0 + tile_rows - 1);
  float o[N::kBoxesPerWg][N::kAcc];
  int block_counter = 0;
  named_barrier_sync(Tr::kBarPFree, Tr::kConsumerThreads);  // the P buffer starts free

  for (int req = part.begin_req; req <= part.end_req; ++req) {
    const TilePiece piece = tile_piece(p, part, req, last_row_token);
    const int blocks = piece.num_key_blocks(Tr::kBlockN);
#pragma unroll
    for (int b = 0; b < N::kBoxesPerWg; ++b)
#pragma unroll
      for (int i = 0; i < N::kAcc; ++i) o[b][i] = 0.f;
    for (int n = 0; n < blocks; ++n, ++block_counter) {
      const RingSlot slot(block_counter);
      named_barrier_sync(Tr::kBarPReady, Tr::kConsumerThreads);
      // Makes the TMA writes of this warpgroup's V boxes visible here too.
      for (int box = 0; box < N::kBoxesPerWg; ++box)
        mbar_wait(sm.full_bar(slot.stage, Tr::kFirstHighBox + box), slot.parity);
      float rescale[N::kCols];
#pragma unroll
      for (int q = 0; q < N::kCols; ++q) rescale[q] = sm.row_scale()[N::col(q, lane)];
      rescale_t<kRows>(o, rescale);
      issue_pv_t<T, kRows>(o, sm, sm.k_stage(slot.stage), Tr::kFirstHighBox);
      wgmma_wait<0>();
#pragma unroll
      for (int b = 0; b < N::kBoxesPerWg; ++b) fence_operands(o[b]);
      if (lane == 0) mbar_arrive(sm.empty_bar(slot.stage, 1));
      if (threadIdx.x == 128) trace(sp, kTrRelease1, block_counter);
      named_barrier_sync(Tr::kBarPFree, Tr::kConsumerThreads);
    }
    named_barrier_sync(Tr::kBarPReady, Tr::kConsumerThreads);
    float inv[N::kCols];
#pragma unroll
    for (int q = 0; q < N::kCols; ++q) inv[q] = sm.row_inv()[N::col(q, lane)];
    named_barrier_sync(Tr::kBarPFree, Tr::kConsumerThreads);
    store_output_t<T, kRows>(p, piece, req, kv_head, tile_row0, tile_rows, Tr::kFirstHighBox, o, inv, nullptr);
  }
}

template <typename T, int kRows>
__global__ void __launch_bounds__(Tr::kThreads, 1) mla_decode_sm90_narrow_kernel(const __grid_constant__ Sm90Params sp) {
  using L = Sm90Layout<kRows>;
  extern __shared__ uint8_t smem_raw[];
  const Smem<L> sm = smem_view<L>(smem_raw);
  const DecodeParams& p = sp.p;
  if (threadIdx.x == 0) trace_span(sp, true);
  __syncthreads();

  const int kv_head = blockIdx.y;
  const int tile_row0 = blockIdx.x * kRows;
  const int tile_rows = min(kRows, p.rows_per_kv_head - tile_row0);
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
    consume_scores_t<T, kRows>(sp, part, kv_head, tile_row0, tile_rows, sm);
  else
    consume_values_t<T, kRows>(sp, part, kv_head, tile_row0, tile_rows, sm);
}

}  // namespace

NarrowKernel narrow_kernel(DataType dtype, int rows_per_kv_head) {
  // One instantiation per dtype: Tr::narrow_rows picks 16 rows or none (32 measured slower
  // than the wide kernel; the template takes 16 or 32).
  constexpr int kRows = Tr::kMaxNarrowRows;
  if (Tr::narrow_rows(rows_per_kv_head) != kRows) return {nullptr, 0, 0};
  const void* fn = dtype == DataType::kBFloat16
                       ? reinterpret_cast<const void*>(mla_decode_sm90_narrow_kernel<__nv_bfloat16, kRows>)
                       : reinterpret_cast<const void*>(mla_decode_sm90_narrow_kernel<__half, kRows>);
  return {fn, Sm90Layout<kRows>::kSmemBytes, kRows};
}

}  // namespace flashmla::sm90
