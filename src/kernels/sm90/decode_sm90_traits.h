// Tile sizes, roles and the shared-memory layouts of the Hopper (sm_90a) split-KV decode kernels
// (wide: 64 query rows per tile; narrow: 16 or 32). One place for each number: the kernels and
// their launcher read them from here.
#pragma once

#include "common/config.h"

namespace flashmla::sm90 {

struct Sm90Traits {
  // One wgmma M = 64 packed query rows per CTA; one pipeline stage = one scheduler block of keys.
  static constexpr int kBlockM = flashmla::kBlockM;
  static constexpr int kBlockN = flashmla::kSchedBlockKeys;
  static_assert(kBlockM == 64 && kBlockN == 64, "the wgmma shapes below assume 64 x 64 tiles");
  static constexpr int kStages = 2;
  // Key blocks requested into L2 ahead of the block being loaded into shared memory. Off: on
  // the H200 every distance tried (2, 4, 8; tensor-map or bulk prefetch) was slower than none
  // (docs/PERF.md, third version); FLASHMLA_SM90_L2_PREFETCH=n turns it on for experiments.
  static constexpr int kL2PrefetchBlocks = 0;

  // Warpgroups: 0 computes S = Q K^T, the softmax and O[:, 0:256); 1 computes O[:, 256:512);
  // 2 is the producer (one thread issues the TMA loads). setmaxnreg moves the producer's
  // registers to the consumers: 2 * 128 * 240 + 128 * 24 = 64512 of the SM's 65536.
  static constexpr int kWarpgroups = 3;
  static constexpr int kThreads = kWarpgroups * 128;
  static constexpr int kConsumerThreads = 256;
  static constexpr int kConsumerRegs = 240;
  static constexpr int kProducerRegs = 24;
  static constexpr int kColsPerConsumer = kHeadDimV / 2;  // 256: one m64n256 accumulator each

  // A tile of rows x 576 channels is stored as 9 boxes of rows x 64 channels: one TMA box
  // each, 128-byte rows in the 128-byte swizzle (16-byte chunk c of row r at c ^ (r % 8)).
  static constexpr int kBoxCols = 64;
  static constexpr int kRowBytes = kBoxCols * 2;             // 128
  static constexpr int kBoxBytes = 64 * kRowBytes;           // 8192 (64 rows or 64 keys)
  static constexpr int kBoxesQK = kHeadDimQK / kBoxCols;     // 9
  static constexpr int kBoxesV = kHeadDimV / kBoxCols;     // 8
  static constexpr int kBoxesPerConsumerV = kColsPerConsumer / kBoxCols;  // 4
  static constexpr int kTileBytes = kBoxesQK * kBoxBytes;    // 73728
  static constexpr int kSwizzleAtomBytes = 8 * kRowBytes;    // 1024: 8 rows of the swizzle pattern

  // Each stage is released in two halves, each refilled as soon as its last reader is done:
  // boxes 0..3 (V[:, 0:256)) by warpgroup 0 after its P V, boxes 4..8 by warpgroup 1 after its.
  static constexpr int kFirstHighBox = kBoxesPerConsumerV;  // 4

  // Named barriers (0 is __syncthreads).
  static constexpr int kBarPReady = 1;  // WG0 wrote P and the row scales; both consumers sync
  // WG1 finished reading them. Both warpgroups use bar.sync (with bar.arrive on WG1's side,
  // compute-sanitizer racecheck reported the ordered reuse of the buffers as races).
  static constexpr int kBarPFree = 2;
  static constexpr int kBarQReady = 3;  // WG0's Q tile is in shared memory (WG0 only)
  static constexpr int kBarReduce = 4;  // narrow kernel: WG0's cross-warp column reductions (WG0 only)

  // Query rows per tile of the narrow kernel for a KV head's packed rows (s_q * h_q / h_kv),
  // or 0: the wide kernel. Measured on the H200 (docs/PERF.md): narrow wins at 16 rows (308 vs
  // 323 us, b = 128, 8K) but loses at 32 (360 vs 331), so 17..32 rows stay wide.
  static constexpr int kMaxNarrowRows = 16;
  static constexpr int narrow_rows(int rows_per_kv_head) {
    return rows_per_kv_head <= kMaxNarrowRows ? kMaxNarrowRows : 0;
  }
};

// Shared memory of a kernel whose query tile has kRows rows, in bytes from a 1024-byte aligned
// base. The wide kernel (kRows = 64 = the wgmma M) computes S = Q K^T; the narrow one (kRows =
// 16 or 32, the wgmma N) computes S^T = K Q^T, so Q and P take a quarter or half the space and
// the tensor cores do no work for padding rows (docs/ARCHITECTURE.md).
template <int kRows>
struct Sm90Layout {
  using Tr = Sm90Traits;
  static_assert(kRows % 16 == 0 && kRows <= Tr::kBlockM, "rows: a multiple of 16, at most one wgmma M");
  static constexpr bool kNarrow = kRows < Tr::kBlockM;
  static constexpr int kQBoxBytes = kRows * Tr::kRowBytes;  // rows x 64 channels, 128-byte swizzle
  static constexpr int kKOffset = 0;                           // the ring: kStages tiles of 64 keys
  static constexpr int kQOffset = kKOffset + Tr::kStages * Tr::kTileBytes;
  static constexpr int kPOffset = kQOffset + Tr::kBoxesQK * kQBoxBytes;  // P (rows x 64 keys), one box
  static constexpr int kRowScaleOffset = kPOffset + kQBoxBytes;          // float[kRows] per block
  static constexpr int kRowInvOffset = kRowScaleOffset + kRows * 4;      // float[kRows]: 1 / row sum
  // Narrow kernel: per-warp column maxima (two blocks in flight) and sums, float[3][4][kRows].
  static constexpr int kReduceOffset = kRowInvOffset + kRows * 4;
  static constexpr int kReduceBytes = kNarrow ? 3 * 4 * kRows * 4 : 0;
  // One "full" barrier per box of each stage, so S starts on the first box that lands.
  static constexpr int kFullBarOffset = kReduceOffset + kReduceBytes;  // uint64[kStages][kBoxesQK]
  static constexpr int kEmptyBarOffset = kFullBarOffset + 8 * Tr::kStages * Tr::kBoxesQK;  // uint64[kStages][2]
  static constexpr int kSmemUsed = kEmptyBarOffset + 8 * Tr::kStages * 2;
  // The dynamic shared-memory base is only 16-byte aligned: ask for room to align it.
  static constexpr int kSmemBytes = kSmemUsed + 1024;
  static_assert(kQOffset % 1024 == 0 && kPOffset % 1024 == 0 && kQBoxBytes % 1024 == 0,
                "swizzled tiles start on 1024-byte swizzle atoms");
  static_assert(kSmemBytes <= 227 * 1024, "one CTA per SM: at most 227 KB of shared memory on sm_90");
};

}  // namespace flashmla::sm90
