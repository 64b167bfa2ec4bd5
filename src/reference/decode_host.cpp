// Host backend: the executable specification of MLA decode.
//
// attend_rows() is the whole math for one (request, KV head) over a key range, accumulated
// in float64. reference_host() runs it once per request over all keys; decode_host() runs it
// per piece of the scheduler's split plan and merges the pieces with combine_rows(), exactly
// the data flow of the GPU path (split-KV kernel + combine kernel), so the two can be compared.
// Rows are independent, so both spread them over the host's cores (parallel_for); every row is
// computed by one thread in a fixed order, so the results do not depend on the thread count.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <thread>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "api/backends.h"
#include "flashmla/flashmla.h"
#include "common/params.h"
#include "scheduler/split_plan.h"

namespace flashmla::detail {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// Threads the host backend may use: the cores, or FLASHMLA_HOST_THREADS (kHostThreadsEnvVar).
int64_t host_threads() {
  const char* env = std::getenv(kHostThreadsEnvVar);
  const long cap = env != nullptr ? std::strtol(env, nullptr, 10) : 0;
  return cap >= 1 ? cap : std::max(1u, std::thread::hardware_concurrency());
}

// The work of a decode in key x row units, for parallel_for (double: lengths are not validated
// on every path that gets here, and their product must not overflow).
double decode_cost(const DecodeArgs& a) {
  double keys = 0;
  for (int req = 0; req < a.batch; ++req) keys += std::max(a.cache_seqlens[req], 0);
  return keys * a.h_kv * a.s_q * (a.h_q / a.h_kv);
}

// fn(i) for i in [0, n), spread over the host's cores; inline when the work is small (a thread
// start costs tens of microseconds). `cost` estimates the work of all n items in key x row units.
template <class Fn>
void parallel_for(int64_t n, double cost, Fn fn) {
  constexpr double kMinCostPerThread = 1 << 16;
  const int64_t threads =
      std::min({host_threads(), n, int64_t(std::clamp(cost / kMinCostPerThread, 1.0, 64.0))});
  if (threads <= 1) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  std::atomic<int64_t> next{0};  // items of uneven cost (lengths differ): hand them out one by one
  auto worker = [&] {
    for (int64_t i = next++; i < n; i = next++) fn(i);
  };
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < threads; ++t) pool.emplace_back(worker);
  worker();
  for (std::thread& t : pool) t.join();
}

double load(const void* base, int64_t idx, DataType dt) {
  if (dt == DataType::kBFloat16) return double(__bfloat162float(static_cast<const __nv_bfloat16*>(base)[idx]));
  return double(__half2float(static_cast<const __half*>(base)[idx]));
}

void store(void* base, int64_t idx, double v, DataType dt) {
  if (dt == DataType::kBFloat16)
    static_cast<__nv_bfloat16*>(base)[idx] = __float2bfloat16_rn(float(v));
  else
    static_cast<__half*>(base)[idx] = __float2half_rn(float(v));
}

// Softmax-weighted V of one query row over keys [key_begin, key_end): out normalized, lse in
// natural log, -inf when the row sees no key in the range.
struct RowResult {
  std::vector<double> out = std::vector<double>(kHeadDimV, 0.0);
  double lse = -kInf;
};

RowResult attend_row(const DecodeArgs& a, int req, int kv_head, int row, int key_begin, int key_end) {
  const RowMap rows{a.h_q / a.h_kv};
  const int token = rows.token(row), head = rows.head(kv_head, row);
  const int seqlen = a.cache_seqlens[req];
  if (a.causal) key_end = std::min(key_end, seqlen - a.s_q + token + 1);
  RowResult r;
  if (key_end <= key_begin) return r;

  const int64_t q_off = req * a.q_batch_stride + token * a.q_token_stride + head * a.q_head_stride;
  const double scale = resolve_softmax_scale(a.softmax_scale);
  double q[kHeadDimQK];
  for (int d = 0; d < kHeadDimQK; ++d) q[d] = load(a.q, q_off + d, a.dtype);
  std::vector<double> score(key_end - key_begin);
  std::vector<int64_t> k_off(key_end - key_begin);
  double max_score = -kInf;
  for (int k = key_begin; k < key_end; ++k) {
    const int page = a.block_table[req * a.block_table_batch_stride + k / a.page_size];
    const int64_t off = page * a.k_block_stride + (k % a.page_size) * a.k_token_stride + kv_head * a.k_head_stride;
    double dot = 0;
    for (int d = 0; d < kHeadDimQK; ++d) dot += q[d] * load(a.k_cache, off + d, a.dtype);
    score[k - key_begin] = dot * scale;
    k_off[k - key_begin] = off;
    max_score = std::max(max_score, dot * scale);
  }
  double sum = 0;
  for (size_t i = 0; i < score.size(); ++i) {
    const double p = std::exp(score[i] - max_score);
    sum += p;
    for (int d = 0; d < kHeadDimV; ++d) r.out[d] += p * load(a.k_cache, k_off[i] + d, a.dtype);
  }
  for (double& v : r.out) v /= sum;
  r.lse = max_score + std::log(sum);
  return r;
}

// exp(lse) / (exp(lse) + exp(sink)): the share of the softmax mass the keys keep next to an
// attention sink. 1 for a row without keys (lse = -inf there: the output stays 0).
double sink_factor(double lse, double sink) { return 1.0 / (1.0 + std::exp(sink - lse)); }

// Final output of one row: out 0 and lse +inf when the row saw no key.
void write_final(const DecodeArgs& a, int req, int kv_head, int row, const RowResult& r) {
  const RowMap rows{a.h_q / a.h_kv};
  const int token = rows.token(row), head = rows.head(kv_head, row);
  const bool empty = r.lse == -kInf;
  const double factor = a.attn_sink != nullptr && !empty ? sink_factor(r.lse, a.attn_sink[head]) : 1.0;
  const int64_t o = req * a.out_batch_stride + token * a.out_token_stride + head * a.out_head_stride;
  for (int d = 0; d < kHeadDimV; ++d) store(a.out, o + d, empty ? 0.0 : r.out[d] * factor, a.dtype);
  a.softmax_lse[lse_offset(req, a.h_q, a.s_q, head, token)] = empty ? INFINITY : float(r.lse);
}

// A request whose splits the plan does not describe: NaN rows, as on the GPU.
void write_nan(const DecodeArgs& a, int req, int kv_head, int row) {
  write_final(a, req, kv_head, row, RowResult{std::vector<double>(kHeadDimV, NAN), NAN});
}

// Log-sum-exp merge of a request's partial results (the combine kernel's math).
RowResult combine_rows(const std::vector<RowResult>& parts) {
  double m = -kInf;
  for (const RowResult& p : parts) {
    if (std::isnan(p.lse)) return RowResult{std::vector<double>(kHeadDimV, NAN), NAN};
    m = std::max(m, p.lse);
  }
  RowResult r;
  if (m == -kInf) return r;
  double sum = 0;
  for (const RowResult& p : parts) {
    const double w = std::exp(p.lse - m);
    sum += w;
    for (int d = 0; d < kHeadDimV; ++d) r.out[d] += w * p.out[d];
  }
  for (double& v : r.out) v /= sum;
  r.lse = m + std::log(sum);
  return r;
}

}  // namespace

void reference_host(const DecodeArgs& a) {
  const int rows = a.s_q * (a.h_q / a.h_kv);
  // One item per (request, KV head): its rows share the request's keys in cache.
  parallel_for(int64_t(a.batch) * a.h_kv, decode_cost(a), [&](int64_t i) {
    const int req = int(i / a.h_kv), h = int(i % a.h_kv);
    for (int row = 0; row < rows; ++row)
      write_final(a, req, h, row, attend_row(a, req, h, row, 0, a.cache_seqlens[req]));
  });
}

void decode_host(const DecodeArgs& a, void* workspace) {
  const WorkspaceLayout ws(a.batch, a.s_q, a.h_q, a.h_kv, a.num_sm_parts);
  float* part_out = reinterpret_cast<float*>(static_cast<char*>(workspace) + ws.out_offset);
  float* part_lse = reinterpret_cast<float*>(static_cast<char*>(workspace) + ws.lse_offset);
  const int rows = int(ws.rows_per_kv_head);
  auto slot = [&](int split_id, int h, int row) { return partial_slot(split_id, a.h_kv, h, rows, row); };

  // Split-KV phase: every piece of every part, as the GPU kernel's CTAs would. The plan was
  // checked against the lengths (validate_host_plan); it is still read through the same
  // range-safe helpers as on the GPU. One thread owns each (KV head, row) and everything written
  // for it (its workspace slots and output rows), so even a corrupted plan (tests call this
  // without validation) cannot make two threads write one element.
  const auto* plan = reinterpret_cast<const MetadataRow*>(a.tile_scheduler_metadata);
  parallel_for(int64_t(a.h_kv) * rows, decode_cost(a), [&](int64_t i) {
    const int h = int(i / rows), row = int(i % rows);
    for (int p = 0; p < a.num_sm_parts; ++p) {
      const MetadataRow part = sanitize_part(plan[p], a.batch);
      for (int req = part.begin_req; req <= part.end_req; ++req) {
        const PieceKeys keys = piece_keys(part, req, a.cache_seqlens[req]);
        const SplitRange splits = request_splits(a.num_splits, req, ws.max_splits);
        if (!splits.has(keys.split)) continue;  // the combine phase writes the request's NaN rows
        const RowResult r = attend_row(a, req, h, row, keys.key_begin, keys.key_end);
        if (splits.count == 1) {
          write_final(a, req, h, row, r);
          continue;
        }
        const int64_t s = slot(splits.first + keys.split, h, row);
        std::copy(r.out.begin(), r.out.end(), part_out + s * kHeadDimV);  // narrowed to float like the GPU
        part_lse[s] = float(r.lse);
      }
    }

    // Combine phase.
    for (int req = 0; req < a.batch; ++req) {
      const SplitRange splits = request_splits(a.num_splits, req, ws.max_splits);
      if (splits.valid && splits.count == 1) continue;
      if (!splits.valid) {
        write_nan(a, req, h, row);
        continue;
      }
      std::vector<RowResult> parts(splits.count);
      for (int j = 0; j < splits.count; ++j) {
        const int64_t s = slot(splits.first + j, h, row);
        parts[j].out.assign(part_out + s * kHeadDimV, part_out + (s + 1) * kHeadDimV);
        parts[j].lse = part_lse[s];
      }
      write_final(a, req, h, row, combine_rows(parts));
    }
  });
}

}  // namespace flashmla::detail
