// Tile sizes and shared-memory layout of the portable (sm_80+) split-KV decode kernel.
// One place for each number: the kernel and its launcher read them from here.
#pragma once

#include "common/config.h"

namespace flashmla::sm80 {

struct PortableTraits {
  static constexpr int kBlockM = flashmla::kBlockM;   // query rows per CTA
  static constexpr int kRowsPerWarp = 16;             // one mma.m16n8k16 row tile
  static constexpr int kRowGroups = kBlockM / kRowsPerWarp;
  // Two warps share each 16-row group: each computes the scores over half of the 576
  // channels (the halves are exchanged through shared memory) and accumulates half of the
  // 512 output channels, so the fp32 accumulator is 128 registers per thread.
  static constexpr int kWarpsPerRowGroup = 2;
  static constexpr int kWarps = kRowGroups * kWarpsPerRowGroup;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kKeysPerStep = 16;  // keys per pipeline stage = the k of the P·V mma

  static constexpr int kChunksPerRow = kHeadDimQK * 2 / 16;  // 16-byte chunks of one bf16 row
  static constexpr int kRowBytes = kHeadDimQK * 2;
  static constexpr int kQkStepsPerWarp = kHeadDimQK / kWarpsPerRowGroup / 16;  // mma k-steps
  static constexpr int kColsPerWarp = kHeadDimV / kWarpsPerRowGroup;
  static constexpr int kOutTilesPerWarp = kColsPerWarp / 8;  // n=8 accumulator tiles

  static constexpr int kQBytes = kBlockM * kRowBytes;
  static constexpr int kExchangeBytes = kWarps * 32 * 8 * int(sizeof(float));  // 8 partial scores a lane
  static constexpr int kStageBytes = kKeysPerStep * kRowBytes;
  static constexpr int kMaxStages = 8;

  static constexpr int smem_bytes(int stages) { return kQBytes + kExchangeBytes + stages * kStageBytes; }
};

}  // namespace flashmla::sm80
