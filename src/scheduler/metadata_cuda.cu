// GPU version of the split plan (split_plan.h), bit-identical to metadata_host.cpp.
//
// One CTA: each thread walks a contiguous chunk of requests; two block-wide scans turn the
// per-chunk costs into axis positions and the per-request split counts into num_splits.
// Reads seqlens from device memory, writes the plan, never synchronizes with the host.
#include <cub/block/block_scan.cuh>

#include "api/backends.h"
#include "common/cuda_check.h"
#include "scheduler/split_plan.h"

namespace flashmla::detail {
namespace {

constexpr int kThreads = 512;

__global__ void __launch_bounds__(kThreads) mla_metadata_kernel(const int32_t* __restrict__ seqlens, int batch,
                                                                int parts, int64_t min_payload,
                                                                int32_t* __restrict__ metadata,
                                                                int32_t* __restrict__ num_splits) {
  using Scan = cub::BlockScan<int64_t, kThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  // Cut p: (request, block, split index of the piece it starts).
  __shared__ int32_t cut_req[kMaxSmParts + 1], cut_blk[kMaxSmParts + 1], cut_split[kMaxSmParts + 1];

  const int chunk = (batch + kThreads - 1) / kThreads;
  const int first = min(batch, int(threadIdx.x) * chunk);
  const int last = min(batch, first + chunk);

  int64_t my_cost = 0;
  for (int i = first; i < last; ++i) my_cost += request_cost(seqlens[i]);
  int64_t c, total;
  Scan(scan_storage).ExclusiveSum(my_cost, c, total);
  const int64_t payload = part_payload(total, parts, min_payload);

  for (int p = threadIdx.x; p <= parts; p += kThreads) {
    cut_req[p] = batch;
    cut_blk[p] = 0;
    cut_split[p] = 0;
  }
  __syncthreads();

  int64_t my_splits = 0;
  for (int i = first; i < last; ++i) {
    const int64_t cost = request_cost(seqlens[i]);
    int rank = 0;
    for (int64_t p = first_cut_at_or_after(c, payload); p <= parts && p * payload < c + cost; ++p) {
      const int block = cut_block(p * payload, c);
      cut_req[p] = i;
      cut_blk[p] = block;
      cut_split[p] = block > 0 ? ++rank : 0;
    }
    num_splits[i + 1] = 1 + rank;  // a count for now, a prefix sum below
    my_splits += 1 + rank;
    c += cost;
  }
  __syncthreads();  // scan storage reuse
  int64_t split_base, unused;
  Scan(scan_storage).ExclusiveSum(my_splits, split_base, unused);
  for (int i = first; i < last; ++i) {
    split_base += num_splits[i + 1];
    num_splits[i + 1] = int32_t(split_base);
  }
  if (threadIdx.x == 0) num_splits[0] = 0;
  __syncthreads();  // cuts complete

  for (int p = threadIdx.x; p < parts; p += kThreads) {
    const int end_req = cut_req[p + 1];
    const int prev_blocks = end_req > 0 ? sched_blocks(seqlens[end_req - 1]) : 0;
    make_part(cut_req[p], cut_blk[p], cut_split[p], end_req, cut_blk[p + 1], prev_blocks,
              metadata + p * kMetadataInts);
  }
}

}  // namespace

Status metadata_cuda(const MetadataArgs& args, cudaStream_t stream) {
  mla_metadata_kernel<<<1, kThreads, 0, stream>>>(args.cache_seqlens, args.batch, args.num_sm_parts,
                                                     min_part_payload(), args.tile_scheduler_metadata,
                                                     args.num_splits);
  return check_launch("mla_metadata_kernel");
}

}  // namespace flashmla::detail
