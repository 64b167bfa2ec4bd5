// Plain data shared between host launchers, kernels and the reference: the metadata row
// layout and the workspace layout. One place for each fact.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <optional>

#include "common/config.h"

namespace flashmla {

// One row of tile_scheduler_metadata = the work of one SM part: the half-open range of
// (request, scheduler block) positions [(begin_req, begin_block), (end_req, end_block)),
// where end is stored inclusive in the request: the part processes requests
// begin_req..end_req, blocks [begin_block, ...) of begin_req and [..., end_block) of end_req.
// An empty part has end_req < begin_req. begin_split is the split index (within its
// request) of the piece that starts the part; later requests in the part start at split 0.
struct MetadataRow {
  int32_t begin_req;
  int32_t begin_block;
  int32_t end_req;
  int32_t end_block;
  int32_t begin_split;
  int32_t reserved[kMetadataInts - 5];
};
static_assert(sizeof(MetadataRow) == kMetadataInts * sizeof(int32_t), "metadata row layout");

// Split-KV partial results live in the workspace:
//   partial_out [max_splits, h_kv, rows_per_kv_head, 512] float32
//   partial_lse [max_splits, h_kv, rows_per_kv_head]      float32 (natural log, -inf if empty)
// indexed by num_splits[req] + split. Each plan boundary splits at most one request once more,
// so max_splits = batch + num_sm_parts.
struct WorkspaceLayout {
  int64_t max_splits;
  int64_t rows_per_kv_head;  // s_q * h_q / h_kv
  int64_t h_kv;
  size_t out_offset, lse_offset, total_bytes;

  static size_t align_up(size_t x) { return (x + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign; }

  WorkspaceLayout(int batch, int s_q, int h_q, int h_kv_, int num_sm_parts)
      : max_splits(int64_t(batch) + num_sm_parts),
        rows_per_kv_head(h_kv_ > 0 ? int64_t(s_q) * (h_q / h_kv_) : 0),
        h_kv(h_kv_) {
    const size_t slots = size_t(max_splits * h_kv * rows_per_kv_head);
    out_offset = 0;
    lse_offset = align_up(slots * kHeadDimV * sizeof(float));
    total_bytes = lse_offset + align_up(slots * sizeof(float));
  }
};

// Row r (0-based) of the packed query tile of one KV head: r = token * q_heads_per_kv + g,
// the query head is kv_head * q_heads_per_kv + g. Causal visibility uses the token.
struct RowMap {
  int q_heads_per_kv;
  FLASHMLA_HD int token(int r) const { return r / q_heads_per_kv; }
  FLASHMLA_HD int head(int kv_head, int r) const { return kv_head * q_heads_per_kv + r % q_heads_per_kv; }
};

// Where results go, for the kernels, the combine and the host backend alike.
// Partial results of split `split_id` (num_splits[req] + split), KV head h, packed row r.
FLASHMLA_HD int64_t partial_slot(int64_t split_id, int h_kv, int kv_head, int rows_per_kv_head, int row) {
  return (split_id * h_kv + kv_head) * rows_per_kv_head + row;
}
// softmax_lse is [batch, h_q, s_q].
FLASHMLA_HD int64_t lse_offset(int req, int h_q, int s_q, int head, int token) {
  return (int64_t(req) * h_q + head) * s_q + token;
}

// The softmax scale a decode call uses: the caller's value as is (any finite value, 0 and
// negative included, as FlashMLA does), or 1/sqrt(576) when none is given. The one place of
// this rule: the host backend and the CUDA parameters both call it.
// In double: the host backend computes in float64; the GPU narrows it to float.
inline double resolve_softmax_scale(const std::optional<float>& softmax_scale) {
  return softmax_scale.has_value() ? double(*softmax_scale) : 1.0 / std::sqrt(double(kHeadDimQK));
}

}  // namespace flashmla
