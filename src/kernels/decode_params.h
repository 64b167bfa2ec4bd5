// Device-side parameters of one decode call, filled once on the host (kernels/launch.cpp)
// and shared by the split-KV kernels and the combine kernel.
#pragma once

#include <cstdint>

namespace flashmla {

struct DecodeParams {
  // q [batch, s_q, h_q, 576]
  const void* q;
  int64_t q_batch_stride, q_token_stride, q_head_stride;
  // k_cache [num_blocks, page_size, h_kv, 576]
  const void* k_cache;
  int64_t k_block_stride, k_token_stride, k_head_stride;
  int num_blocks, page_size;
  // block_table [batch, max_blocks_per_seq], cache_seqlens [batch]
  const int32_t* block_table;
  int64_t block_table_batch_stride;
  int max_blocks_per_seq;
  const int32_t* cache_seqlens;
  // plan
  const int32_t* tile_scheduler_metadata;  // [num_sm_parts, kMetadataInts]
  const int32_t* num_splits;               // [batch + 1]
  // out [batch, s_q, h_q, 512], softmax_lse [batch, h_q, s_q]
  void* out;
  int64_t out_batch_stride, out_token_stride, out_head_stride;
  float* softmax_lse;
  // workspace: partial_out [max_splits, h_kv, rows, 512], partial_lse [max_splits, h_kv, rows]
  float* partial_out;
  float* partial_lse;

  int batch, s_q, h_q, h_kv;
  int q_heads_per_kv;    // h_q / h_kv
  int rows_per_kv_head;  // s_q * q_heads_per_kv: the packed query rows of one KV head
  float scale_log2;      // softmax_scale * log2(e): scores are exponentiated with exp2
  bool causal;

  // Added for range safety and attention sinks (src/combine, src/scheduler/split_plan.h).
  const float* attn_sink;  // [h_q] float32 or null: out *= exp(lse) / (exp(lse) + exp(sink[head]))
  int64_t max_splits;      // workspace split slots, batch + num_sm_parts: the bound of request_splits()
};

}  // namespace flashmla
