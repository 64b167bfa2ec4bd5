// Split-KV combine: out = sum_i w_i * out_i with w_i = exp(lse_i - lse), lse = log sum_i exp(lse_i).
//
// Grid (batch, h_kv, ceil(rows / kRowsPerCta)); one warp per packed query row. Requests the
// plan did not split return at once (the split-KV kernel already wrote their output).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "combine/combine.h"
#include "common/params.h"

namespace flashmla {
namespace {

constexpr int kRowsPerCta = 4;
constexpr int kColsPerLane = kHeadDimV / 32;  // 16, as 4 float4 loads 128 floats apart

template <typename T>
__device__ __forceinline__ void store4(T* dst, float4 v);
template <>
__device__ __forceinline__ void store4<__nv_bfloat16>(__nv_bfloat16* dst, float4 v) {
  __nv_bfloat162 lo = __floats2bfloat162_rn(v.x, v.y), hi = __floats2bfloat162_rn(v.z, v.w);
  *reinterpret_cast<uint2*>(dst) = make_uint2(*reinterpret_cast<uint32_t*>(&lo), *reinterpret_cast<uint32_t*>(&hi));
}
template <>
__device__ __forceinline__ void store4<__half>(__half* dst, float4 v) {
  __half2 lo = __floats2half2_rn(v.x, v.y), hi = __floats2half2_rn(v.z, v.w);
  *reinterpret_cast<uint2*>(dst) = make_uint2(*reinterpret_cast<uint32_t*>(&lo), *reinterpret_cast<uint32_t*>(&hi));
}

template <typename T>
__global__ void __launch_bounds__(kRowsPerCta * 32) mla_combine_kernel(const __grid_constant__ DecodeParams p) {
  const int req = blockIdx.x, kv_head = blockIdx.y;
  const int first = p.num_splits[req], n_splits = p.num_splits[req + 1] - first;
  if (n_splits <= 1) return;
  const int row = blockIdx.z * kRowsPerCta + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= p.rows_per_kv_head) return;
  auto slot = [&](int i) { return (int64_t(first + i) * p.h_kv + kv_head) * p.rows_per_kv_head + row; };

  // Max of the partial lse (-inf: the piece saw no key); NaN anywhere poisons the row.
  float max_lse = -INFINITY;
  bool nan = false;
  for (int i = lane; i < n_splits; i += 32) {
    const float v = p.partial_lse[slot(i)];
    nan |= isnan(v);
    max_lse = fmaxf(max_lse, v);
  }
#pragma unroll
  for (int o = 16; o > 0; o /= 2) max_lse = fmaxf(max_lse, __shfl_xor_sync(0xffffffff, max_lse, o));
  nan = __any_sync(0xffffffff, nan);
  const bool empty = max_lse == -INFINITY;
  float sum = 0.f;
  if (!empty)
    for (int i = lane; i < n_splits; i += 32) sum += expf(p.partial_lse[slot(i)] - max_lse);
#pragma unroll
  for (int o = 16; o > 0; o /= 2) sum += __shfl_xor_sync(0xffffffff, sum, o);

  float4 acc[kColsPerLane / 4] = {};
  if (!empty) {
    const float inv_sum = 1.f / sum;
    for (int i = 0; i < n_splits; ++i) {
      const float w = expf(p.partial_lse[slot(i)] - max_lse) * inv_sum;
      const float4* src = reinterpret_cast<const float4*>(p.partial_out + slot(i) * kHeadDimV);
#pragma unroll
      for (int j = 0; j < kColsPerLane / 4; ++j) {
        const float4 v = src[j * 32 + lane];
        acc[j].x += w * v.x;
        acc[j].y += w * v.y;
        acc[j].z += w * v.z;
        acc[j].w += w * v.w;
      }
    }
  }
  if (nan)
    for (auto& a : acc) a = make_float4(NAN, NAN, NAN, NAN);

  const RowMap row_map{p.q_heads_per_kv};
  const int token = row_map.token(row), head = row_map.head(kv_head, row);
  T* out = static_cast<T*>(p.out) + req * p.out_batch_stride + token * p.out_token_stride + head * p.out_head_stride;
#pragma unroll
  for (int j = 0; j < kColsPerLane / 4; ++j) store4(out + (j * 32 + lane) * 4, acc[j]);
  if (lane == 0)
    p.softmax_lse[(int64_t(req) * p.h_q + head) * p.s_q + token] =
        nan ? NAN : (empty ? INFINITY : max_lse + logf(sum));
}

}  // namespace

cudaError_t launch_combine(DataType dtype, const DecodeParams& params, cudaStream_t stream) {
  auto kernel = dtype == DataType::kBFloat16 ? mla_combine_kernel<__nv_bfloat16> : mla_combine_kernel<__half>;
  const dim3 grid(params.batch, params.h_kv, (params.rows_per_kv_head + kRowsPerCta - 1) / kRowsPerCta);
  kernel<<<grid, kRowsPerCta * 32, 0, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace flashmla
