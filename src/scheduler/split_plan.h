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
#include "common/params.h"

namespace flashmla {

// 64-bit: seqlen + 63 overflows int32 for lengths near INT32_MAX. Negative lengths count as 0.
FLASHMLA_HD int sched_blocks(int seqlen) {
  return seqlen > 0 ? int((int64_t(seqlen) + kSchedBlockKeys - 1) / kSchedBlockKeys) : 0;
}

FLASHMLA_HD int64_t request_cost(int seqlen) { return kFixedOverheadBlocks + sched_blocks(seqlen); }

// Units per part: an equal share of the total, but at least min_payload (so short work is
// not scattered over idle SMs; parts past the end of the axis stay empty).
FLASHMLA_HD int64_t part_payload(int64_t total_cost, int num_parts, int64_t min_payload = kMinPartPayload) {
  const int64_t l = (total_cost + num_parts - 1) / num_parts;
  return l > min_payload ? l : min_payload;
}

// The floor both schedulers use: kMinPartPayload, or FLASHMLA_SCHED_MIN_PAYLOAD=n (n >= 1, read
// once per process) for the experiments of docs/PERF.md. Host only.
int64_t min_part_payload();

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

// ---------------------------------------------------------------------------------------------
// Reading a plan from memory. A plan is only trusted as far as memory safety goes: on the GPU it
// cannot be checked against the lengths without a host sync, and a corrupted one (or one made
// for other lengths) must give wrong numbers or NaN rows, never an out-of-bounds access. Every
// consumer (split-KV kernels, combine, host backend) reads plan entries through these helpers.
// ---------------------------------------------------------------------------------------------

// A metadata row made safe to walk: the requests begin_req..end_req lie in [0, batch) (a row
// that points elsewhere becomes an empty part), block and split indices are non-negative.
FLASHMLA_HD MetadataRow sanitize_part(MetadataRow row, int batch) {
  const bool empty = row.end_req < row.begin_req;
  const bool in_range = row.begin_req >= 0 && row.end_req < batch;
  if (empty || !in_range) {
    row.begin_req = 0;
    row.end_req = -1;
  }
  row.begin_block = row.begin_block > 0 ? row.begin_block : 0;
  row.end_block = row.end_block > 0 ? row.end_block : 0;
  row.begin_split = row.begin_split > 0 ? row.begin_split : 0;
  return row;
}

// The workspace splits of request `req` (0 <= req < batch): num_splits[req] .. + count - 1.
// `valid` is false when the entries are not a range inside the workspace's max_splits
// (= batch + num_sm_parts) slots: nothing may then be read or written for the request's splits;
// its rows become NaN.
struct SplitRange {
  int first, count;
  bool valid;
  // Piece `split` of the request may use workspace slot first + split.
  FLASHMLA_HD bool has(int split) const { return valid && split >= 0 && split < count; }
};
FLASHMLA_HD SplitRange request_splits(const int32_t* num_splits, int req, int64_t max_splits) {
  const int64_t first = num_splits[req], end = num_splits[req + 1];
  const bool valid = first >= 0 && end > first && end <= max_splits;
  return {valid ? int(first) : 0, valid ? int(end - first) : 0, valid};
}

// The keys [key_begin, key_end) of request `req` that the part `part` processes (before any
// causal clipping), and the index of that piece among the request's splits. Kernels and the
// host backend walk a part's requests begin_req..end_req with this one function. 64-bit and
// clamped to [0, seqlen]: corrupted block indices give an empty or shorter piece, never keys
// outside the request.
struct PieceKeys {
  int key_begin, key_end, split;
};
template <typename Row>
FLASHMLA_HD PieceKeys piece_keys(const Row& part, int req, int seqlen) {
  const int64_t len = seqlen > 0 ? seqlen : 0;
  const int64_t b0 = req == part.begin_req ? part.begin_block : 0;
  const int64_t b1 = req == part.end_req ? part.end_block : sched_blocks(seqlen);
  const int64_t begin = b0 * kSchedBlockKeys, end = b1 * kSchedBlockKeys;
  const int64_t key_begin = begin < 0 ? 0 : (begin < len ? begin : len);
  const int64_t key_end = end < key_begin ? key_begin : (end < len ? end : len);
  return {int(key_begin), int(key_end), req == part.begin_req ? part.begin_split : 0};
}

}  // namespace flashmla
