#include "api/validate.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "api/backends.h"
#include "common/params.h"
#include "scheduler/split_plan.h"

namespace flashmla::detail {
namespace {

// A message part: written as is, or, for a callable, what it returns (parts that cost a string
// to build are passed as lambdas, so a call whose arguments are valid builds no string at all:
// these checks run on every decode call, in its host time).
template <typename T>
void write_part(std::ostream& os, const T& part) {
  if constexpr (std::is_invocable_v<const T&>)
    os << part();
  else
    os << part;
}

// Collects the first failed rule as "argument: expected ..., got ...".
class Checker {
 public:
  template <typename Expected, typename Got>
  Checker& require(bool ok, const char* name, const Expected& expected, const Got& got) {
    if (!ok && message_.empty()) {
      std::ostringstream os;
      os << name << ": expected ";
      write_part(os, expected);
      os << ", got ";
      write_part(os, got);
      message_ = os.str();
    }
    return *this;
  }
  Checker& not_null(const void* p, const char* name) {
    return require(p != nullptr, name, "a non-null pointer", "nullptr");
  }
  // 16-byte vector loads/stores: pointer 16-byte aligned, strides a multiple of 8 elements.
  Checker& vector_aligned(const void* p, const char* name) {
    return require(reinterpret_cast<uintptr_t>(p) % 16 == 0, name,
                   "a 16-byte aligned pointer (rows are moved with 16-byte loads)", p);
  }
  Checker& int_aligned(const void* p, const char* name) {
    return require(reinterpret_cast<uintptr_t>(p) % 4 == 0, name, "a 4-byte aligned pointer", p);
  }
  Checker& stride(int64_t s, const char* name) {
    return require(s >= 0 && s % 8 == 0, name,
                   "a non-negative multiple of 8 elements (16-byte aligned rows)", s);
  }
  Status status() const { return message_.empty() ? Status::Ok() : Status::Error(message_); }
  bool ok() const { return message_.empty(); }

 private:
  std::string message_;
};

bool valid_backend(Backend b) { return b == Backend::kCuda || b == Backend::kHost; }

template <typename... T>
std::string cat(const T&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  return os.str();
}

// Different (batch, token, head) rows of `out` must not share memory, or the GPU writes race:
// sorted by stride, every dimension of size > 1 must step over everything the smaller ones span.
bool outputs_disjoint(const DecodeArgs& a) {
  std::array<std::pair<int64_t, int64_t>, 3> dims = {{{a.out_batch_stride, a.batch},
                                                      {a.out_token_stride, a.s_q},
                                                      {a.out_head_stride, a.h_q}}};
  std::sort(dims.begin(), dims.end());
  int64_t extent = kHeadDimV;
  for (const auto& [stride, size] : dims) {
    if (size <= 1) continue;
    if (stride < extent) return false;
    extent = stride * size;
  }
  return true;
}

std::string describe_out_strides(const DecodeArgs& a) {
  std::ostringstream os;
  os << "(batch " << a.out_batch_stride << ", token " << a.out_token_stride << ", head " << a.out_head_stride << ")";
  return os.str();
}

}  // namespace

Status validate_metadata_args(const MetadataArgs& a) {
  Checker c;
  c.require(valid_backend(a.backend), "backend", "Backend::kCuda or Backend::kHost", int(a.backend))
      .require(a.batch >= 0, "batch", ">= 0", a.batch)
      .require(a.batch == 0 || a.cache_seqlens != nullptr, "cache_seqlens", "a non-null pointer (batch > 0)",
               "nullptr")
      .require(a.num_sm_parts >= 1 && a.num_sm_parts <= kMaxSmParts, "num_sm_parts",
               "a value in [1, 2048] (from flashmla::num_sm_parts)", a.num_sm_parts)
      .not_null(a.tile_scheduler_metadata, "tile_scheduler_metadata")
      .not_null(a.num_splits, "num_splits")
      .int_aligned(a.cache_seqlens, "cache_seqlens")
      .int_aligned(a.tile_scheduler_metadata, "tile_scheduler_metadata")
      .int_aligned(a.num_splits, "num_splits");
  return c.status();
}

Status validate_decode_args(const DecodeArgs& a, const void* workspace, size_t workspace_bytes,
                            bool check_plan) {
  Checker c;
  // Sizes first: a size of 0 makes torch hand over a null pointer, and the message must name the
  // size, not the pointer.
  c.require(valid_backend(a.backend), "backend", "Backend::kCuda or Backend::kHost", int(a.backend))
      .require(a.dtype == DataType::kBFloat16 || a.dtype == DataType::kFloat16, "dtype",
               "DataType::kBFloat16 or DataType::kFloat16", int(a.dtype))
      .require(a.batch >= 0, "batch", ">= 0", a.batch)
      .require(a.s_q >= 1, "s_q", ">= 1", a.s_q)
      .require(a.h_q >= 1, "h_q", ">= 1", a.h_q)
      .require(a.h_kv >= 1, "h_kv", ">= 1", a.h_kv)
      .require(a.h_kv >= 1 && a.h_q % a.h_kv == 0, "h_q", [&] { return cat("a multiple of h_kv = ", a.h_kv); }, a.h_q)
      .require(a.h_kv <= kMaxKvHeads, "h_kv", "<= 65535 (a grid dimension)", a.h_kv)
      .require(a.h_kv < 1 || int64_t(a.s_q) * (a.h_q / a.h_kv) <= kMaxRowsPerKvHead, "s_q",
               [] { return cat("s_q * h_q / h_kv <= ", kMaxRowsPerKvHead, " (a grid dimension)"); }, a.s_q)
      .require(a.head_dim_v == kHeadDimV, "head_dim_v", "512 (V is the first 512 of 576 channels)",
               a.head_dim_v)
      .require(!a.softmax_scale.has_value() || std::isfinite(*a.softmax_scale), "softmax_scale",
               "a finite value, or none for 1/sqrt(576)", a.softmax_scale.value_or(0.f));
  if (a.batch == 0 || !c.ok()) return c.status();  // an empty batch reads and writes nothing

  c.require(a.num_blocks >= 1, "num_blocks", ">= 1 (pages in k_cache)", a.num_blocks)
      .require(a.page_size >= 1, "page_size", ">= 1 (tokens per k_cache page)", a.page_size)
      .require(a.max_blocks_per_seq >= 1, "max_blocks_per_seq", ">= 1", a.max_blocks_per_seq)
      .require(a.batch == 1 || a.block_table_batch_stride >= a.max_blocks_per_seq, "block_table_batch_stride",
               [&] { return cat(">= max_blocks_per_seq = ", a.max_blocks_per_seq, " (rows must not overlap)"); },
               a.block_table_batch_stride)
      .require(int64_t(a.max_blocks_per_seq) * a.page_size <= INT32_MAX, "max_blocks_per_seq",
               "max_blocks_per_seq * page_size to fit in int32", int64_t(a.max_blocks_per_seq) * a.page_size)
      // q
      .not_null(a.q, "q")
      .vector_aligned(a.q, "q")
      .stride(a.q_batch_stride, "q_batch_stride")
      .stride(a.q_token_stride, "q_token_stride")
      .stride(a.q_head_stride, "q_head_stride")
      // k_cache
      .not_null(a.k_cache, "k_cache")
      .vector_aligned(a.k_cache, "k_cache")
      .stride(a.k_block_stride, "k_block_stride")
      .stride(a.k_token_stride, "k_token_stride")
      .stride(a.k_head_stride, "k_head_stride")
      // block table and lengths
      .not_null(a.block_table, "block_table")
      .int_aligned(a.block_table, "block_table")
      .not_null(a.cache_seqlens, "cache_seqlens")
      .int_aligned(a.cache_seqlens, "cache_seqlens")
      // outputs
      .not_null(a.out, "out")
      .vector_aligned(a.out, "out")
      .stride(a.out_batch_stride, "out_batch_stride")
      .stride(a.out_token_stride, "out_token_stride")
      .stride(a.out_head_stride, "out_head_stride")
      .require(outputs_disjoint(a), "out_batch_stride/out_token_stride/out_head_stride",
               "non-overlapping rows of 512 elements (each stride >= the extent of the smaller ones)",
               [&] { return describe_out_strides(a); })
      .not_null(a.softmax_lse, "softmax_lse")
      .int_aligned(a.softmax_lse, "softmax_lse")
      .int_aligned(a.attn_sink, "attn_sink");
  if (check_plan) {
    c.require(a.num_sm_parts >= 1 && a.num_sm_parts <= kMaxSmParts, "num_sm_parts",
              "a value in [1, 2048] (rows of tile_scheduler_metadata)", a.num_sm_parts)
        .not_null(a.tile_scheduler_metadata, "tile_scheduler_metadata")
        .not_null(a.num_splits, "num_splits")
        .int_aligned(a.tile_scheduler_metadata, "tile_scheduler_metadata")
        .int_aligned(a.num_splits, "num_splits");
    if (a.h_kv >= 1 && a.num_sm_parts >= 1) {
      const size_t need = decode_workspace_size(a.batch, a.s_q, a.h_q, a.h_kv, a.num_sm_parts);
      c.require(workspace_bytes >= need, "workspace_bytes",
                [&] {
                  return cat("at least ", need, " bytes (decode_workspace_size(batch = ", a.batch, ", s_q = ", a.s_q,
                             ", h_q = ", a.h_q, ", h_kv = ", a.h_kv, ", num_sm_parts = ", a.num_sm_parts, "))");
                },
                workspace_bytes)
          .require(need == 0 || workspace != nullptr, "workspace", "a non-null pointer", "nullptr")
          .require(reinterpret_cast<uintptr_t>(workspace) % kWorkspaceAlign == 0, "workspace",
                   "a 256-byte aligned pointer", workspace);
    }
  }
  return c.status();
}

Status validate_host_lengths(const DecodeArgs& a) {
  const int64_t capacity = int64_t(a.max_blocks_per_seq) * a.page_size;
  for (int b = 0; b < a.batch; ++b) {
    const int seqlen = a.cache_seqlens[b];
    if (seqlen < 0 || seqlen > capacity) {
      std::ostringstream os;
      os << "cache_seqlens[" << b << "]: expected a value in [0, max_blocks_per_seq * page_size = "
         << a.max_blocks_per_seq << " * " << a.page_size << " = " << capacity << "], got " << seqlen;
      return Status::Error(os.str());
    }
    const int64_t pages = (int64_t(seqlen) + a.page_size - 1) / a.page_size;
    for (int64_t i = 0; i < pages; ++i) {
      const int page = a.block_table[b * a.block_table_batch_stride + i];
      if (page < 0 || page >= a.num_blocks) {
        std::ostringstream os;
        os << "block_table[" << b << "][" << i << "]: expected a page index in [0, num_blocks = "
           << a.num_blocks << "), got " << page;
        return Status::Error(os.str());
      }
    }
  }
  return Status::Ok();
}

Status validate_host_plan(const DecodeArgs& a) {
  // The host sees the lengths, so the plan can be checked cheaply: it must be exactly the one
  // get_mla_metadata computes for them (O(batch + num_sm_parts)). This catches corrupted plans
  // and plans made for other lengths, which the GPU path can only survive, not detect.
  std::vector<int32_t> metadata(size_t(a.num_sm_parts) * kMetadataInts), num_splits(size_t(a.batch) + 1);
  MetadataArgs m;
  m.backend = Backend::kHost;
  m.cache_seqlens = a.cache_seqlens;
  m.batch = a.batch;
  m.num_sm_parts = a.num_sm_parts;
  m.tile_scheduler_metadata = metadata.data();
  m.num_splits = num_splits.data();
  metadata_host(m);
  auto why = [&] {
    return cat(" (the plan must be get_mla_metadata's for this call's cache_seqlens and num_sm_parts = ",
               a.num_sm_parts, "; one made for other lengths, or modified, is rejected)");
  };
  for (int i = 0; i <= a.batch; ++i)
    if (a.num_splits[i] != num_splits[size_t(i)])
      return Status::Error(cat("num_splits[", i, "]: expected ", num_splits[size_t(i)], ", got ", a.num_splits[i], why()));
  // Only the fields a plan defines: the reserved ones are never read.
  constexpr int kPlanFields = 5;
  static_assert(kPlanFields <= kMetadataInts, "metadata row fields");
  for (int p = 0; p < a.num_sm_parts; ++p)
    for (int f = 0; f < kPlanFields; ++f) {
      const size_t i = size_t(p) * kMetadataInts + f;
      if (a.tile_scheduler_metadata[i] != metadata[i])
        return Status::Error(cat("tile_scheduler_metadata[", p, "][", f, "]: expected ", metadata[i], ", got ",
                                 a.tile_scheduler_metadata[i], why()));
    }
  return Status::Ok();
}

}  // namespace flashmla::detail
