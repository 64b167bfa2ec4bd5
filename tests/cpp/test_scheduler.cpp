// Scheduler invariants of the split plan, on the host backend (Backend::kHost).
//
// For every batch and num_sm_parts P, check_split_plan() (test_util.cpp) asserts:
//   * coverage: every scheduler block (kSchedBlockKeys keys) of every request is processed by
//     exactly one part; the pieces of a request, in part order, tile [0, blocks) left to right;
//     no piece is empty; a zero-length request is owned by exactly one part;
//   * num_splits[0] == 0 and num_splits[i+1] - num_splits[i] == number of parts processing
//     request i (>= 1), so num_splits is a strictly increasing prefix sum;
//   * begin_split: the pieces of a request have split indices 0..n-1 in part order (a part's
//     first request starts at begin_split, its later requests at 0);
//   * total splits num_splits[batch] <= batch + num_sm_parts (the workspace bound);
//   * balance: with T = sum_i (blocks_i + kFixedOverheadBlocks) and L = max(ceil(T / P),
//     kMinPartPayload), every part's cost sum over its pieces of (piece blocks +
//     kFixedOverheadBlocks) is <= L + kFixedOverheadBlocks.
// MatchesSplitPlanDefinition additionally recomputes the plan from the definition in
// src/scheduler/split_plan.h (cuts every L units on the cost axis) and compares rows.
#include <algorithm>
#include <random>
#include <sstream>
#include <vector>

#include <gtest/gtest.h>

#include "common/config.h"
#include "common/params.h"
#include "flashmla/flashmla.h"
#include "scheduler/split_plan.h"
#include "test_util.h"

namespace flashmla_test {
namespace {

constexpr int kGuardInts = 64;
constexpr int32_t kGuardValue = -123456789;

struct Plan {
  std::vector<int32_t> metadata;    // [P, kMetadataInts] + guard
  std::vector<int32_t> num_splits;  // [batch + 1] + guard
};

::testing::AssertionResult host_plan(const std::vector<int32_t>& seqlens, int P, Plan& plan) {
  const int batch = int(seqlens.size());
  plan.metadata.assign(size_t(P) * flashmla::kMetadataInts + kGuardInts, kGuardValue);
  plan.num_splits.assign(size_t(batch) + 1 + kGuardInts, kGuardValue);
  MetadataArgs a;
  a.backend = Backend::kHost;
  a.cache_seqlens = seqlens.data();
  a.batch = batch;
  a.num_sm_parts = P;
  a.tile_scheduler_metadata = plan.metadata.data();
  a.num_splits = plan.num_splits.data();
  const flashmla::Status st = flashmla::get_mla_metadata(a, nullptr);
  if (!st.ok()) return ::testing::AssertionFailure() << "get_mla_metadata: " << st.message();
  for (int k = 0; k < kGuardInts; ++k) {
    if (plan.metadata[size_t(P) * flashmla::kMetadataInts + k] != kGuardValue)
      return ::testing::AssertionFailure() << "metadata written past [num_sm_parts, kMetadataInts]";
    if (plan.num_splits[size_t(batch) + 1 + k] != kGuardValue)
      return ::testing::AssertionFailure() << "num_splits written past [batch + 1]";
  }
  return ::testing::AssertionSuccess();
}

struct BatchCase {
  std::vector<int32_t> seqlens;
  int num_sm_parts;
  std::string what;
};

// The random grid: batch sizes from 1 to 4096, five length distributions, P in {1,2,7,132,264}.
std::vector<BatchCase> random_cases() {
  static const int kParts[] = {1, 2, 7, 132, 264};
  static const int kBatches[] = {1, 2, 3, 5, 8, 13, 64, 127, 128, 131, 133, 263, 265, 1000, 4095, 4096};
  static const SeqlenDist kDists[] = {SeqlenDist::kUniform, SeqlenDist::kSkewed,
                                      SeqlenDist::kSomeZeros, SeqlenDist::kAllZero,
                                      SeqlenDist::kSingle};
  std::vector<BatchCase> cases;
  std::mt19937_64 rng(20240611);
  for (int P : kParts)
    for (SeqlenDist dist : kDists) {
      std::vector<int> batches(std::begin(kBatches), std::end(kBatches));
      for (int r = 0; r < 4; ++r) batches.push_back(std::uniform_int_distribution<int>(1, 4096)(rng));
      if (dist == SeqlenDist::kSingle) batches.assign(12, 1);
      for (int b : batches)
        for (int rep = 0; rep < 4; ++rep) {
          std::ostringstream what;
          what << dist_name(dist) << " batch=" << b << " rep=" << rep;
          cases.push_back({make_seqlens(dist, b, rng), P, what.str()});
        }
    }
  return cases;
}

std::vector<BatchCase> edge_cases() {
  std::vector<std::vector<int32_t>> lens = {
      {0},          {1},           {63},         {64},          {65},
      {1000000},    {0, 0, 0},     {0, 1, 0},    {64, 0, 64},   {1, 1, 1, 1, 1, 1, 1, 1},
      {0, 1000000}, {1000000, 0},  {128, 128},   {320, 0, 0, 320},
  };
  // Long requests exactly on scheduler-block boundaries.
  std::vector<int32_t> aligned;
  for (int i = 0; i < 37; ++i) aligned.push_back(64 * (i + 1));
  lens.push_back(aligned);
  // Alternating empty and huge.
  std::vector<int32_t> alternating;
  for (int i = 0; i < 50; ++i) alternating.push_back(i % 2 ? 0 : 131072);
  lens.push_back(alternating);
  std::vector<BatchCase> cases;
  for (const auto& l : lens)
    for (int P : {1, 2, 3, 5, 7, 64, 132, 264, 1000})
      cases.push_back({l, P, "edge"});
  return cases;
}

TEST(Scheduler, RandomBatchInvariants) {
  const auto cases = random_cases();
  ASSERT_GT(cases.size(), 500u);
  int failures = 0;
  for (const auto& c : cases) {
    Plan plan;
    ASSERT_TRUE(host_plan(c.seqlens, c.num_sm_parts, plan)) << c.what;
    const auto r = check_split_plan(c.seqlens, c.num_sm_parts, plan.metadata.data(),
                                    plan.num_splits.data());
    EXPECT_TRUE(r) << c.what;
    if (!r && ++failures > 10) FAIL() << "stopping after 10 failing batches";
  }
}

TEST(Scheduler, EdgeBatchInvariants) {
  for (const auto& c : edge_cases()) {
    Plan plan;
    ASSERT_TRUE(host_plan(c.seqlens, c.num_sm_parts, plan));
    EXPECT_TRUE(check_split_plan(c.seqlens, c.num_sm_parts, plan.metadata.data(),
                                 plan.num_splits.data()));
  }
}

// The plan exactly as src/scheduler/split_plan.h defines it, recomputed independently.
// Only non-empty parts are compared field by field (empty parts must have end_req < begin_req).
::testing::AssertionResult matches_definition(const std::vector<int32_t>& seqlens, int P,
                                              const Plan& plan) {
  using flashmla::kFixedOverheadBlocks;
  const int batch = int(seqlens.size());
  std::vector<int64_t> blocks(static_cast<size_t>(batch)), start(size_t(batch) + 1, 0);
  for (int i = 0; i < batch; ++i) {
    blocks[size_t(i)] = seqlens[size_t(i)] > 0 ? (seqlens[size_t(i)] + 63) / 64 : 0;
    start[size_t(i) + 1] = start[size_t(i)] + kFixedOverheadBlocks + blocks[size_t(i)];
  }
  const int64_t T = start[size_t(batch)];
  const int64_t L = std::max<int64_t>(flashmla::kMinPartPayload, (T + P - 1) / P);
  struct Cut {
    int req;
    int64_t block;
    int split;
  };
  std::vector<Cut> cuts;
  std::vector<int> inner_cuts(static_cast<size_t>(batch), 0);
  for (int p = 0; p <= P; ++p) {
    const int64_t x = int64_t(p) * L;
    if (x >= T) {
      cuts.push_back({batch, 0, 0});
      continue;
    }
    const int i = int(std::upper_bound(start.begin(), start.end(), x) - start.begin()) - 1;
    const int64_t b = std::max<int64_t>(0, x - start[size_t(i)] - kFixedOverheadBlocks);
    int split = 0;
    if (b > 0) split = ++inner_cuts[size_t(i)];
    cuts.push_back({i, b, split});
  }
  for (int p = 0; p < P; ++p) {
    const int32_t* row = plan.metadata.data() + size_t(p) * flashmla::kMetadataInts;
    const Cut& a = cuts[size_t(p)];
    const Cut& e = cuts[size_t(p) + 1];
    const bool empty = a.req == e.req && a.block == e.block;
    std::ostringstream got;
    got << "part " << p << " row {" << row[0] << "," << row[1] << "," << row[2] << ","
        << row[3] << "," << row[4] << "}";
    if (empty) {
      if (row[2] >= row[0])
        return ::testing::AssertionFailure() << got.str() << " should be empty (P=" << P
                                             << ", seqlens " << summarize_seqlens(seqlens) << ")";
      continue;
    }
    const int end_req = e.block == 0 ? e.req - 1 : e.req;
    const int64_t end_block = e.block == 0 ? blocks[size_t(end_req)] : e.block;
    if (row[0] != a.req || row[1] != a.block || row[2] != end_req || row[3] != end_block ||
        row[4] != a.split)
      return ::testing::AssertionFailure()
             << got.str() << ", definition gives {" << a.req << "," << a.block << "," << end_req
             << "," << end_block << "," << a.split << "} (P=" << P << ", L=" << L << ", T=" << T
             << ", seqlens " << summarize_seqlens(seqlens) << ")";
  }
  return ::testing::AssertionSuccess();
}

TEST(Scheduler, MatchesSplitPlanDefinition) {
  auto cases = random_cases();
  const auto edges = edge_cases();
  cases.insert(cases.end(), edges.begin(), edges.end());
  int failures = 0;
  for (const auto& c : cases) {
    Plan plan;
    ASSERT_TRUE(host_plan(c.seqlens, c.num_sm_parts, plan));
    const auto r = matches_definition(c.seqlens, c.num_sm_parts, plan);
    EXPECT_TRUE(r) << c.what;
    if (!r && ++failures > 10) FAIL() << "stopping after 10 failing batches";
  }
}

TEST(Scheduler, DeterministicAndIndependentOfOutputContents) {
  std::mt19937_64 rng(7);
  const auto seqlens = make_seqlens(SeqlenDist::kUniform, 300, rng);
  Plan a, b;
  ASSERT_TRUE(host_plan(seqlens, 132, a));
  // Different garbage in the output arrays must not matter.
  b.metadata.assign(a.metadata.size(), 0x5A5A5A5A);
  b.num_splits.assign(a.num_splits.size(), 0x5A5A5A5A);
  MetadataArgs args;
  args.backend = Backend::kHost;
  args.cache_seqlens = seqlens.data();
  args.batch = int(seqlens.size());
  args.num_sm_parts = 132;
  args.tile_scheduler_metadata = b.metadata.data();
  args.num_splits = b.num_splits.data();
  ASSERT_TRUE(flashmla::get_mla_metadata(args, nullptr).ok());
  for (size_t i = 0; i < size_t(132) * flashmla::kMetadataInts; ++i)
    ASSERT_EQ(a.metadata[i], b.metadata[i]) << "metadata int " << i;
  for (size_t i = 0; i <= seqlens.size(); ++i) ASSERT_EQ(a.num_splits[i], b.num_splits[i]) << i;
}

TEST(Scheduler, NumSmParts) {
  // FlashMLA: num_sm_parts = num_sms / h_kv / ceil(q_rows_per_kv_head / 64).
  EXPECT_EQ(flashmla::num_sm_parts(132, 64, 1), 132);
  EXPECT_EQ(flashmla::num_sm_parts(132, 128, 1), 66);
  EXPECT_EQ(flashmla::num_sm_parts(132, 16, 1), 132);
  EXPECT_EQ(flashmla::num_sm_parts(132, 256, 2), 16);
  EXPECT_EQ(flashmla::num_sm_parts(108, 65, 1), 54);
  // Never zero, even when the grid is larger than the GPU.
  EXPECT_GE(flashmla::num_sm_parts(1, 4096, 8), 1);
  EXPECT_GE(flashmla::num_sm_parts(4, 64, 8), 1);
}

}  // namespace
}  // namespace flashmla_test
