// Split-KV combine: out = sum_i w_i * out_i with w_i = exp(lse_i - lse), lse = log sum_i exp(lse_i),
// then the attention sink, if any: out *= exp(lse) / (exp(lse) + exp(sink[head])).
//
// Grid (batch, h_kv, ceil(rows / rows per CTA)); `groups` warps per packed query row (1, 2 or 4)
// take the request's splits round-robin and add their sums in shared memory: a short batch spread
// over every SM has ~100 splits per request, which one warp walked in turn, latency-bound. Requests the
// plan did not split were written by the split-KV kernel: they return at once, or with a sink
// get their rows rescaled in place. num_splits is read through request_splits(): entries that
// are not a range inside the workspace (a corrupted plan) give NaN rows, never a read or write
// outside it.
//
// On sm_90 and newer the decode launches it as a programmatic dependent (common/pdl.cuh), so its
// CTAs may start before the split-KV kernel has finished: everything the kernel reads waits for
// that first.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "combine/combine.h"
#include "common/params.h"
#include "common/pdl.cuh"
#include "scheduler/split_plan.h"

namespace flashmla {
namespace {

constexpr int kWarpsPerCta = 4;
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
__device__ __forceinline__ float4 load4(const T* src);
template <>
__device__ __forceinline__ float4 load4<__nv_bfloat16>(const __nv_bfloat16* src) {
  const uint2 u = *reinterpret_cast<const uint2*>(src);
  const float2 lo = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.x));
  const float2 hi = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.y));
  return make_float4(lo.x, lo.y, hi.x, hi.y);
}
template <>
__device__ __forceinline__ float4 load4<__half>(const __half* src) {
  const uint2 u = *reinterpret_cast<const uint2*>(src);
  const float2 lo = __half22float2(*reinterpret_cast<const __half2*>(&u.x));
  const float2 hi = __half22float2(*reinterpret_cast<const __half2*>(&u.y));
  return make_float4(lo.x, lo.y, hi.x, hi.y);
}

// exp(lse) / (exp(lse) + exp(sink)); 1 for a row without keys (final lse +inf, out 0).
__device__ __forceinline__ float sink_factor(const DecodeParams& p, int head, float final_lse) {
  if (p.attn_sink == nullptr || final_lse == INFINITY) return 1.f;
  return 1.f / (1.f + expf(p.attn_sink[head] - final_lse));
}

template <typename T>
__global__ void __launch_bounds__(kWarpsPerCta * 32)
    mla_combine_kernel(const __grid_constant__ DecodeParams p, int groups) {
  __shared__ float4 group_sums[kWarpsPerCta][kColsPerLane / 4][32];
  pdl::wait_for_prerequisite_grid();
  const int req = blockIdx.x, kv_head = blockIdx.y;
  const SplitRange splits = request_splits(p.num_splits, req, p.max_splits);
  const bool unsplit = splits.valid && splits.count == 1;
  if (unsplit && p.attn_sink == nullptr) return;  // the whole CTA: one request
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, group = warp % groups;
  const int row = blockIdx.z * (kWarpsPerCta / groups) + warp / groups;
  if (groups == 1 && row >= p.rows_per_kv_head) return;
  const bool active = row < p.rows_per_kv_head;  // with groups > 1 every warp reaches the barrier

  const RowMap row_map{p.q_heads_per_kv};
  const int token = row_map.token(row), head = row_map.head(kv_head, row);
  T* out = static_cast<T*>(p.out) + req * p.out_batch_stride + token * p.out_token_stride + head * p.out_head_stride;
  float* lse_out = p.softmax_lse + lse_offset(req, p.h_q, p.s_q, head, token);

  if (unsplit && active && group == 0) {  // attention sink on a row the split-KV kernel finished
    const float f = sink_factor(p, head, *lse_out);
#pragma unroll
    for (int j = 0; j < kColsPerLane / 4; ++j) {
      float4 v = load4(out + (j * 32 + lane) * 4);
      store4(out + (j * 32 + lane) * 4, make_float4(v.x * f, v.y * f, v.z * f, v.w * f));
    }
    return;
  }
  if (unsplit) return;
  if (!splits.valid) {  // num_splits does not describe this request: NaN, touch no workspace
    if (!active || group != 0) return;
#pragma unroll
    for (int j = 0; j < kColsPerLane / 4; ++j) store4(out + (j * 32 + lane) * 4, make_float4(NAN, NAN, NAN, NAN));
    if (lane == 0) *lse_out = NAN;
    return;
  }

  const int first = splits.first, n_splits = splits.count;
  auto slot = [&](int i) { return partial_slot(first + i, p.h_kv, kv_head, p.rows_per_kv_head, row); };

  // Max of the partial lse (-inf: the piece saw no key); NaN anywhere poisons the row.
  float max_lse = -INFINITY;
  bool nan = false;
  for (int i = lane; active && i < n_splits; i += 32) {
    const float v = p.partial_lse[slot(i)];
    nan |= isnan(v);
    max_lse = fmaxf(max_lse, v);
  }
#pragma unroll
  for (int o = 16; o > 0; o /= 2) max_lse = fmaxf(max_lse, __shfl_xor_sync(0xffffffff, max_lse, o));
  nan = __any_sync(0xffffffff, nan);
  const bool empty = max_lse == -INFINITY;
  float sum = 0.f;
  if (active && !empty)
    for (int i = lane; i < n_splits; i += 32) sum += expf(p.partial_lse[slot(i)] - max_lse);
#pragma unroll
  for (int o = 16; o > 0; o /= 2) sum += __shfl_xor_sync(0xffffffff, sum, o);

  float4 acc[kColsPerLane / 4] = {};
  if (active && !empty) {
    const float inv_sum = 1.f / sum;
    // Unrolled so the loads of several partials are in flight at once: with many splits
    // (a long request over many SMs) one split per round trip made this loop latency-bound.
#pragma unroll 4
    for (int i = group; i < n_splits; i += groups) {
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
  if (groups > 1) {  // the same for the whole grid, so the barrier is uniform
#pragma unroll
    for (int j = 0; j < kColsPerLane / 4; ++j) group_sums[warp][j][lane] = acc[j];
    __syncthreads();
    if (group != 0 || !active) return;
    for (int g = 1; g < groups; ++g)
#pragma unroll
      for (int j = 0; j < kColsPerLane / 4; ++j) {
        const float4 v = group_sums[warp + g][j][lane];
        acc[j] = make_float4(acc[j].x + v.x, acc[j].y + v.y, acc[j].z + v.z, acc[j].w + v.w);
      }
  }
  const float lse = nan ? NAN : (empty ? INFINITY : max_lse + logf(sum));
  const float f = sink_factor(p, head, lse);
  for (auto& a : acc) a = nan ? make_float4(NAN, NAN, NAN, NAN) : make_float4(a.x * f, a.y * f, a.z * f, a.w * f);
#pragma unroll
  for (int j = 0; j < kColsPerLane / 4; ++j) store4(out + (j * 32 + lane) * 4, acc[j]);
  if (lane == 0) *lse_out = lse;
}

// Warps per row: enough that each walks at most ~4 of a request's splits on average. The plan has
// at most batch + num_sm_parts splits; how they fall on requests is known only on the GPU. Fewer
// rows per CTA must keep the grid's z within its limit (kMaxRowsPerKvHead assumes 4 rows per CTA).
int combine_groups(const DecodeParams& p) {
  const int64_t mean_splits = (p.max_splits + p.batch - 1) / (p.batch > 0 ? p.batch : 1);
  const auto z_fits = [&](int groups) { return int64_t(p.rows_per_kv_head) * groups <= kMaxRowsPerKvHead; };
  int groups = 1;
  while (groups < kWarpsPerCta && mean_splits > 4 * groups && z_fits(groups * 2)) groups *= 2;
  return groups;
}

}  // namespace

cudaError_t launch_combine(DataType dtype, const DecodeParams& params, bool programmatic, cudaStream_t stream) {
  auto kernel = dtype == DataType::kBFloat16 ? mla_combine_kernel<__nv_bfloat16> : mla_combine_kernel<__half>;
  cudaLaunchAttribute pdl = {};
  pdl.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  pdl.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config = {};
  const int groups = combine_groups(params), rows_per_cta = kWarpsPerCta / groups;
  config.gridDim = dim3(params.batch, params.h_kv, (params.rows_per_kv_head + rows_per_cta - 1) / rows_per_cta);
  config.blockDim = dim3(kWarpsPerCta * 32);
  config.stream = stream;
  config.attrs = &pdl;
  config.numAttrs = programmatic ? 1 : 0;  // none: an ordinary launch, as on GPUs before sm_90
  const cudaError_t launched = cudaLaunchKernelEx(&config, kernel, params, groups);
  const cudaError_t last = cudaGetLastError();  // clears a launch error, as after <<<>>>
  return launched != cudaSuccess ? launched : last;
}

bool combine_waits_for_prerequisite() {
  for (auto kernel : {mla_combine_kernel<__nv_bfloat16>, mla_combine_kernel<__half>}) {
    cudaFuncAttributes attr{};
    if (cudaFuncGetAttributes(&attr, kernel) != cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    if (attr.ptxVersion * 10 < FLASHMLA_PDL_MIN_ARCH) return false;  // ptxVersion: 90 for compute_90
  }
  return true;
}

}  // namespace flashmla
