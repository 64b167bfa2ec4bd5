// Portable split-KV MLA decode kernel (sm_80 and newer): mma.sync tensor cores, 16-byte
// cp.async loads, a multi-stage shared-memory pipeline. The fallback for every GPU without a
// specialized kernel, and the GPU reference for the specialized ones.
//
// Grid (m_blocks, h_kv, num_sm_parts). CTA (m, h, p) owns the 64 packed query rows
// [64m, 64m + 64) of KV head h (row r = token * (h_q / h_kv) + head-in-group) and walks the
// pieces of SM part p of the split plan. For each request piece it streams the piece's keys
// 16 at a time through `stages` shared-memory buffers and runs an online softmax. A request
// that the plan did not split writes out/lse directly; otherwise each piece writes a partial
// (normalized output, natural-log lse) that combine_cuda.cu merges.
//
// Warp w serves row group w / 2 and half w % 2: it computes the partial scores of its 16 rows
// over channels [288 * half, 288 * half + 288), swaps them with its partner warp through
// shared memory, and accumulates output channels [256 * half, 256 * half + 256).
#include <atomic>
#include <string>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common/params.h"
#include "common/pdl.cuh"
#include "kernels/decode_params.h"
#include "kernels/sm80/decode_portable.h"
#include "kernels/sm80/decode_portable_traits.h"
#include "kernels/sm80/ptx.cuh"
#include "kernels/tile_piece.h"

namespace flashmla::sm80 {
namespace {

using Tr = PortableTraits;
constexpr float kLn2 = 0.693147180559945309f;

// Byte offset of 16-byte chunk `chunk` of row `row` in a [rows][576] tile. Chunks are XOR
// swizzled by the row's low 3 bits so the 8 rows an ldmatrix reads hit 8 different bank groups.
__device__ __forceinline__ uint32_t tile_offset(int row, int chunk) {
  return uint32_t(row * Tr::kRowBytes + ((chunk ^ (row & 7)) << 4));
}

template <typename T>
__device__ __forceinline__ void store_out_pair(T* dst, float a, float b) {
  *reinterpret_cast<uint32_t*>(dst) = ptx::pack2<T>(a, b);
}

template <typename T>
__global__ void __launch_bounds__(Tr::kThreads, 1)
    mla_decode_portable_kernel(const __grid_constant__ DecodeParams p, const int stages) {
  extern __shared__ __align__(128) uint8_t smem[];
  uint8_t* const s_q = smem;                                               // [64][576]
  float* const s_exchange = reinterpret_cast<float*>(smem + Tr::kQBytes);  // [warps][8][32]
  uint8_t* const s_k = smem + Tr::kQBytes + Tr::kExchangeBytes;            // [stages][16][576]

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int kv_head = blockIdx.y;
  const int row_group = warp / Tr::kWarpsPerRowGroup, half = warp % Tr::kWarpsPerRowGroup;
  const int tile_row0 = blockIdx.x * Tr::kBlockM;
  const int tile_rows = min(Tr::kBlockM, p.rows_per_kv_head - tile_row0);
  const bool warp_has_rows = row_group * Tr::kRowsPerWarp < tile_rows;
  const RowMap row_map{p.q_heads_per_kv};

  // This thread's two accumulator rows (mma C layout: lane / 4 and lane / 4 + 8).
  const int my_row[2] = {tile_row0 + row_group * Tr::kRowsPerWarp + lane / 4,
                         tile_row0 + row_group * Tr::kRowsPerWarp + lane / 4 + 8};

  const MetadataRow part =
      sanitize_part(reinterpret_cast<const MetadataRow*>(p.tile_scheduler_metadata)[blockIdx.z], p.batch);
  const T* const q_base = static_cast<const T*>(p.q);
  const T* const k_base = static_cast<const T*>(p.k_cache);
  constexpr int kThreadsPerKey = Tr::kThreads / Tr::kKeysPerStep;
  static_assert(Tr::kThreads % Tr::kKeysPerStep == 0, "whole keys per thread group");
  const int load_key = tid / kThreadsPerKey, load_chunk0 = tid % kThreadsPerKey;

  for (int req = part.begin_req; req <= part.end_req; ++req) {
    const TilePiece piece = tile_piece(p, part, req, row_map.token(tile_row0 + tile_rows - 1));
    const int key_begin = piece.key_begin, key_end = piece.key_end;
    const int causal_shift = piece.causal_shift(p.s_q);  // row r sees keys < causal_shift + token(r)
    const int num_steps = piece.num_key_blocks(Tr::kKeysPerStep);
    bool bad_page = false;

    __syncthreads();  // the previous request's shared-memory reads are done

    // Q tile: rows past the tile are zero (they are computed, never stored).
    for (int i = tid; i < Tr::kBlockM * Tr::kChunksPerRow; i += Tr::kThreads) {
      const int r = i / Tr::kChunksPerRow, c = i % Tr::kChunksPerRow;
      const int row = tile_row0 + r;
      const bool valid = r < tile_rows;
      const T* src = valid ? q_base + req * p.q_batch_stride + row_map.token(row) * p.q_token_stride +
                                 row_map.head(kv_head, row) * p.q_head_stride + c * 8
                           : q_base;
      ptx::cp_async_16(ptx::smem_addr(s_q + tile_offset(r, c)), src, valid);
    }
    ptx::cp_async_commit();

    // Keys of step `step` into stage `step % stages`; keys past key_end are zero so that
    // masked probabilities (0) never meet NaN data. Each key's row is copied by
    // kThreadsPerKey threads, so a thread looks its page up once per step.
    auto load_step = [&](int step) {
      if (step < num_steps) {
        uint8_t* stage = s_k + (step % stages) * Tr::kStageBytes;
        const int key = key_begin + step * Tr::kKeysPerStep + load_key;
        bool valid = key < key_end;
        const T* row = k_base;
        if (valid) {
          const int page = p.block_table[req * p.block_table_batch_stride + key / p.page_size];
          valid = page >= 0 && page < p.num_blocks;
          bad_page |= !valid;
          if (valid)
            row = k_base + page * p.k_block_stride + (key % p.page_size) * p.k_token_stride + kv_head * p.k_head_stride;
        }
#pragma unroll
        for (int j = 0; j < (Tr::kChunksPerRow + kThreadsPerKey - 1) / kThreadsPerKey; ++j) {
          const int c = load_chunk0 + j * kThreadsPerKey;
          if (c < Tr::kChunksPerRow)
            ptx::cp_async_16(ptx::smem_addr(stage + tile_offset(load_key, c)), row + c * 8, valid);
        }
      }
      ptx::cp_async_commit();  // uniform group count, even when empty
    };

    for (int s = 0; s < stages - 1; ++s) load_step(s);

    float acc_o[Tr::kOutTilesPerWarp][4];
#pragma unroll
    for (int t = 0; t < Tr::kOutTilesPerWarp; ++t) acc_o[t][0] = acc_o[t][1] = acc_o[t][2] = acc_o[t][3] = 0.f;
    float row_max[2] = {-INFINITY, -INFINITY};  // in log2 units (scores * scale_log2)
    float row_sum[2] = {0.f, 0.f};              // this thread's share; reduced over the quad at the end

    for (int step = 0; step < num_steps; ++step) {
      if (stages == 1) load_step(step);
      ptx::cp_async_wait_dynamic(stages > 1 ? stages - 2 : 0);
      __syncthreads();  // step's keys visible to all; every warp is done with step - 1's stage
      if (stages > 1) load_step(step + stages - 1);

      if (warp_has_rows) {
        const uint8_t* stage = s_k + (step % stages) * Tr::kStageBytes;
        // Partial scores over this warp's half of the channels; two accumulator sets keep
        // two independent mma chains in flight.
        float acc_s[2][2][4] = {};
#pragma unroll
        for (int ks = 0; ks < Tr::kQkStepsPerWarp; ++ks) {
          const int chunk0 = half * Tr::kQkStepsPerWarp * 2 + ks * 2;
          uint32_t a[4], b[4];
          const int q_row = row_group * Tr::kRowsPerWarp + (lane & 7) + ((lane >> 3) & 1) * 8;
          ptx::ldmatrix_x4(a, ptx::smem_addr(s_q + tile_offset(q_row, chunk0 + (lane >> 4))));
          const int k_row = (lane & 7) + (lane >> 4) * 8;
          ptx::ldmatrix_x4(b, ptx::smem_addr(stage + tile_offset(k_row, chunk0 + ((lane >> 3) & 1))));
          ptx::mma_16816<T>(acc_s[ks & 1][0], a, b[0], b[1]);
          ptx::mma_16816<T>(acc_s[ks & 1][1], a, b[2], b[3]);
        }
        float* my_x = s_exchange + warp * 8 * 32;
        float* partner_x = s_exchange + (warp ^ 1) * 8 * 32;
        float score[2][4];
#pragma unroll
        for (int t = 0; t < 2; ++t)
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            score[t][i] = acc_s[0][t][i] + acc_s[1][t][i];
            my_x[(t * 4 + i) * 32 + lane] = score[t][i];
          }
        ptx::named_barrier_sync(1 + row_group, 32 * Tr::kWarpsPerRowGroup);
#pragma unroll
        for (int t = 0; t < 2; ++t)
#pragma unroll
          for (int i = 0; i < 4; ++i) score[t][i] += partner_x[(t * 4 + i) * 32 + lane];

        // Mask and online softmax. score[t][i]: row my_row[i / 2], key t * 8 + (lane % 4) * 2 + i % 2.
        const int key0 = key_begin + step * Tr::kKeysPerStep;
        float new_max[2] = {row_max[0], row_max[1]};
#pragma unroll
        for (int t = 0; t < 2; ++t)
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const int key = key0 + t * 8 + (lane & 3) * 2 + (i & 1);
            int limit = key_end;
            if (p.causal) limit = min(limit, causal_shift + row_map.token(my_row[i / 2]));
            score[t][i] = key < limit ? score[t][i] * p.scale_log2 : -INFINITY;
            new_max[i / 2] = fmaxf(new_max[i / 2], score[t][i]);
          }
        float rescale[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          new_max[h] = fmaxf(new_max[h], __shfl_xor_sync(0xffffffff, new_max[h], 1));
          new_max[h] = fmaxf(new_max[h], __shfl_xor_sync(0xffffffff, new_max[h], 2));
          // A row with no visible key yet keeps max -inf; subtract 0 instead to avoid inf - inf.
          const float base = new_max[h] == -INFINITY ? 0.f : new_max[h];
          rescale[h] = exp2f(row_max[h] - base);
          row_max[h] = new_max[h];
          row_sum[h] *= rescale[h];
#pragma unroll
          for (int t = 0; t < 2; ++t)
#pragma unroll
            for (int j = 0; j < 2; ++j) {
              score[t][h * 2 + j] = exp2f(score[t][h * 2 + j] - base);
              row_sum[h] += score[t][h * 2 + j];
            }
        }
#pragma unroll
        for (int t = 0; t < Tr::kOutTilesPerWarp; ++t) {
          acc_o[t][0] *= rescale[0];
          acc_o[t][1] *= rescale[0];
          acc_o[t][2] *= rescale[1];
          acc_o[t][3] *= rescale[1];
        }

        // P (16 rows x 16 keys) as the A operand straight from the score registers.
        const uint32_t a_p[4] = {ptx::pack2<T>(score[0][0], score[0][1]), ptx::pack2<T>(score[0][2], score[0][3]),
                                 ptx::pack2<T>(score[1][0], score[1][1]), ptx::pack2<T>(score[1][2], score[1][3])};
#pragma unroll
        for (int t = 0; t < Tr::kOutTilesPerWarp; t += 2) {
          uint32_t b[4];
          const int v_row = (lane & 7) + ((lane >> 3) & 1) * 8;
          const int chunk = (half * Tr::kColsPerWarp + t * 8) / 8 + (lane >> 4);
          ptx::ldmatrix_x4_trans(b, ptx::smem_addr(stage + tile_offset(v_row, chunk)));
          ptx::mma_16816<T>(acc_o[t], a_p, b[0], b[1]);
          ptx::mma_16816<T>(acc_o[t + 1], a_p, b[2], b[3]);
        }
      }
      // Every warp is done with this stage before anyone refills it. The barrier at the top of
      // the next step should already order the refill after these reads, but without this one
      // compute-sanitizer racecheck reports the P·V ldmatrix reads racing with the refill
      // (docs/PERF.md, open questions); with it the tool is clean. It also serves stages == 1.
      __syncthreads();
    }
    ptx::cp_async_wait<0>();
    const bool poisoned = __syncthreads_or(bad_page || piece.bad_length);
    // The CTA's last key block is done; only its output stores remain: the combine may launch.
    if (req == part.end_req) pdl::launch_dependents();

    if (warp_has_rows && piece.writable) {
      const bool final_write = piece.final_write();
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float sum = row_sum[h];
        sum += __shfl_xor_sync(0xffffffff, sum, 1);
        sum += __shfl_xor_sync(0xffffffff, sum, 2);
        const int row = my_row[h];
        if (row >= tile_row0 + tile_rows) continue;
        const bool empty = sum == 0.f;
        float inv = empty ? 0.f : 1.f / sum;
        float lse = empty ? (final_write ? INFINITY : -INFINITY) : (row_max[h] + __log2f(sum)) * kLn2;
        if (poisoned) inv = lse = NAN;
        const int col0 = half * Tr::kColsPerWarp + (lane & 3) * 2;
        if (final_write) {
          const int token = row_map.token(row), head = row_map.head(kv_head, row);
          T* out = static_cast<T*>(p.out) + req * p.out_batch_stride + token * p.out_token_stride +
                   head * p.out_head_stride + col0;
#pragma unroll
          for (int t = 0; t < Tr::kOutTilesPerWarp; ++t)
            store_out_pair(out + t * 8, acc_o[t][2 * h] * inv, acc_o[t][2 * h + 1] * inv);
          if (half == 0 && (lane & 3) == 0) p.softmax_lse[lse_offset(req, p.h_q, p.s_q, head, token)] = lse;
        } else {
          const int64_t slot = partial_slot(piece.workspace_split(), p.h_kv, kv_head, p.rows_per_kv_head, row);
          float* out = p.partial_out + slot * kHeadDimV + col0;
#pragma unroll
          for (int t = 0; t < Tr::kOutTilesPerWarp; ++t)
            *reinterpret_cast<float2*>(out + t * 8) = make_float2(acc_o[t][2 * h] * inv, acc_o[t][2 * h + 1] * inv);
          if (half == 0 && (lane & 3) == 0) p.partial_lse[slot] = lse;
        }
      }
    }
  }
}

// As many 16-key stages as the device's shared memory holds, up to kMaxStages (< 1: cannot run).
int max_stages(int smem_optin_bytes) {
  const int stages = (smem_optin_bytes - Tr::smem_bytes(0)) / Tr::kStageBytes;
  return stages < Tr::kMaxStages ? stages : Tr::kMaxStages;
}

}  // namespace

std::string cannot_run(const detail::DeviceFacts& device, const DecodeArgs&) {
  if (device.major < 8)
    return "the portable kernel needs compute capability 8.0 or newer (tensor-core mma.sync), the device is " +
           std::to_string(device.major) + "." + std::to_string(device.minor);
  if (max_stages(device.smem_optin) < 1)
    return "the portable kernel needs " + std::to_string(Tr::smem_bytes(1)) +
           " bytes of shared memory per block, the device allows " + std::to_string(device.smem_optin);
  return {};
}

Status launch_decode(const DecodeArgs& args, const DecodeParams& params, const detail::DeviceFacts& device,
                     cudaStream_t stream) {
  auto kernel = args.dtype == DataType::kBFloat16 ? mla_decode_portable_kernel<__nv_bfloat16>
                                                  : mla_decode_portable_kernel<__half>;
  const int stages = max_stages(device.smem_optin);
  const int smem = Tr::smem_bytes(stages);
  // Raising the dynamic shared-memory limit costs a driver call; do it once per device and dtype.
  static std::atomic<int> configured[kMaxCudaDevices][2];
  std::atomic<int>& done = configured[device.index][args.dtype == DataType::kBFloat16 ? 0 : 1];
  if (done.load(std::memory_order_acquire) < smem) {
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) return Status::Error(std::string("cudaFuncSetAttribute: ") + cudaGetErrorString(err));
    done.store(smem, std::memory_order_release);
  }
  const dim3 grid((params.rows_per_kv_head + Tr::kBlockM - 1) / Tr::kBlockM, params.h_kv, args.num_sm_parts);
  kernel<<<grid, Tr::kThreads, smem, stream>>>(params, stages);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return Status::Error(std::string("mla_decode_portable_kernel launch: ") + cudaGetErrorString(err));
  return Status::Ok();
}

}  // namespace flashmla::sm80
