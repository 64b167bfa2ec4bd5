// The split plan, shared by the GPU metadata kernel and the host scheduler.
//
// Every request i costs cost_i = kFixedOverheadBlocks + blocks_i scheduler units, laid end to end
// on one axis: request i occupies [C_i, C_i + cost_i) with its overhead first, then its blocks.
// The axis [0, T) is cut into num_sm_parts equal pieces of L = max(ceil(T / P), kMinPartPayload) units; a cut at x
// inside request i lands on block max(0, x - C_i - overhead) of it (a cut inside the overhead
// snaps back to the request's start, so no split is ever empty). Part p covers the positions
// between its two cuts. Hence a part's cost is at most L + kFixedOverheadBlocks, every key
// belongs to exactly one part, and a request gets one split per cut strictly inside its blocks
// plus one.
#pragma once

#include <cstdint>

#include "common/config.h"

namespace flashmla {

FLASHMLA_HD int sched_blocks(int seqlen) {
  return seqlen > 0 ? (seqlen + kSchedBlockKeys - 1) / kSchedBlockKeys : 0;
}

FLASHMLA_HD int64_t request_cost(int seqlen) { return kFixedOverheadBlocks + sched_blocks(seqlen); }

// Units per part: an equal share of the total, but at least kMinPartPayload (so short work is
// not scattered over idle SMs; parts past the end of the axis stay empty).
FLASHMLA_HD int64_t part_payload(int64_t total_cost, int num_parts) {
  const int64_t l = (total_cost + num_parts - 1) / num_parts;
  return l > kMinPartPayload ? l : kMinPartPayload;
}

// Block of the request starting at axis position c where the cut at x (c <= x < c + cost) lands.
FLASHMLA_HD int cut_block(int64_t x, int64_t c) {
  const int64_t b = x - c - kFixedOverheadBlocks;
  return b > 0 ? int(b) : 0;
}

// First cut index p with p * payload >= c.
FLASHMLA_HD int64_t first_cut_at_or_after(int64_t c, int64_t payload) { return (c + payload - 1) / payload; }

// A cut (req, block) is turned into the part rows [cut_p, cut_{p+1}).
FLASHMLA_HD void make_part(int begin_req, int begin_block, int begin_split, int end_req_excl_pos,
                           int end_block_pos, int end_req_blocks, int32_t* row) {
  // The end cut (r, 0) means "up to the end of request r - 1".
  const bool end_at_start = end_block_pos == 0;
  row[0] = begin_req;
  row[1] = begin_block;
  row[2] = end_at_start ? end_req_excl_pos - 1 : end_req_excl_pos;
  row[3] = end_at_start ? end_req_blocks : end_block_pos;
  row[4] = begin_split;
  for (int k = 5; k < kMetadataInts; ++k) row[k] = 0;
}

// The keys [key_begin, key_end) of request `req` that the part `part` processes (before any
// causal clipping), and the index of that piece among the request's splits. Kernels and the
// host backend walk a part's requests begin_req..end_req with this one function.
struct PieceKeys {
  int key_begin, key_end, split;
};
template <typename Row>
FLASHMLA_HD PieceKeys piece_keys(const Row& part, int req, int seqlen) {
  const int b0 = req == part.begin_req ? part.begin_block : 0;
  const int b1 = req == part.end_req ? part.end_block : sched_blocks(seqlen);
  const int64_t end = int64_t(b1) * kSchedBlockKeys;
  return {b0 * kSchedBlockKeys, int(end < seqlen ? end : seqlen), req == part.begin_req ? part.begin_split : 0};
}

}  // namespace flashmla
