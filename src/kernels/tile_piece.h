// The work of one CTA on one request of its SM part: which keys it processes and where its
// results go. Shared by every split-KV kernel (and by every role inside a warp-specialized
// one: producer and consumers derive the same pieces independently).
#pragma once

#include <cstdint>

#include "common/params.h"
#include "kernels/decode_params.h"
#include "scheduler/split_plan.h"

namespace flashmla {

struct TilePiece {
  int seqlen;
  bool bad_length;  // outside [0, max_blocks_per_seq * page_size]: the request's rows become NaN
  int key_begin;    // a multiple of kSchedBlockKeys
  int key_end;      // keys at or past this are invisible to every row of the tile
  int split;        // index of this piece among the request's splits
  int split_base;   // num_splits[req]: the request's first workspace split
  int num_splits;   // 1: the piece is the whole request and writes out / lse directly
  bool writable;    // false when a corrupted plan gives the piece no slot: nothing is written
  FLASHMLA_HD int num_key_blocks(int keys_per_block) const {
    return key_end > key_begin ? (key_end - key_begin + keys_per_block - 1) / keys_per_block : 0;
  }
  FLASHMLA_HD bool final_write() const { return num_splits == 1; }
  FLASHMLA_HD int64_t workspace_split() const { return int64_t(split_base) + split; }
  // Query token i sees keys < causal_shift() + i (bottom-right aligned causal mask).
  FLASHMLA_HD int causal_shift(int s_q) const { return seqlen - s_q + 1; }
};

// `part` must come from sanitize_part(). `last_row_token`: the query token of the tile's last
// row, which sees the most keys.
FLASHMLA_HD TilePiece tile_piece(const DecodeParams& p, const MetadataRow& part, int req, int last_row_token) {
  TilePiece t;
  t.seqlen = p.cache_seqlens[req];
  t.bad_length = t.seqlen < 0 || int64_t(t.seqlen) > int64_t(p.max_blocks_per_seq) * p.page_size;
  const PieceKeys keys = piece_keys(part, req, t.bad_length ? 0 : t.seqlen);
  t.key_begin = keys.key_begin;
  t.key_end = t.bad_length ? keys.key_begin : keys.key_end;
  if (p.causal) {
    const int horizon = t.causal_shift(p.s_q) + last_row_token;
    t.key_end = t.key_end < horizon ? t.key_end : horizon;
  }
  t.split = keys.split;
  // Plan entries are trusted only as far as memory safety goes (split_plan.h): a split range
  // outside the workspace leaves the request to the combine, which writes NaN rows.
  const SplitRange splits = request_splits(p.num_splits, req, p.max_splits);
  t.split_base = splits.first;
  t.num_splits = splits.count;
  t.writable = t.final_write() || splits.has(t.split);
  return t;
}

}  // namespace flashmla
