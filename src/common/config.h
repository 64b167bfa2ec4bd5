// Compile-time facts shared by the scheduler, the kernels and the reference.
#pragma once

#include <cstddef>
#include <cstdint>

#include "flashmla/flashmla.h"

#if defined(__CUDACC__)
#define FLASHMLA_HD __host__ __device__ __forceinline__
#else
#define FLASHMLA_HD inline
#endif

namespace flashmla {

// The scheduler counts work in blocks of this many keys (independent of the cache page size).
constexpr int kSchedBlockKeys = 64;
// Cost of starting one request (loading its Q tile, writing its output), in scheduler blocks.
constexpr int kFixedOverheadBlocks = 5;
// Least work, in scheduler units, the plan gives one part. 1: no floor, short requests spread
// over as many SMs as they have blocks, as FlashMLA's plan does. On the H200 (docs/PERF.md,
// 2026-12-03) a floor of 10 units made the serving grid's short cases 1.2-1.9x slower (a CTA
// walks 5+ blocks in sequence) and helped only b = 1 with ~120 blocks, where our combine of
// ~120 splits is slow; FLASHMLA_SCHED_MIN_PAYLOAD=n overrides it for experiments.
constexpr int kMinPartPayload = 1;
// Query rows (heads of one KV head x query tokens) one CTA processes together.
constexpr int kBlockM = 64;
// Grid-dimension limits of the decode and combine launches.
constexpr int kMaxKvHeads = 65535;
constexpr int64_t kMaxRowsPerKvHead = 4 * 65535;
// Per-device caches (attributes, kernel configuration) have this many entries.
constexpr int kMaxCudaDevices = 64;

}  // namespace flashmla
