// Inputs that must never crash, hang or give silent garbage (host backend and the plan helpers
// the GPU kernels share), each case asserting the exact error text or the exact safe result:
//   * the plan helpers of split_plan.h on extreme and corrupted values;
//   * get_mla_metadata with lengths near INT32_MAX and negative ones;
//   * corrupted plans and plans made for other lengths (rejected on the host);
//   * empty batches, size-0 pages, softmax_scale 0 / negative / non-finite, attention sinks;
//   * messages that give the numbers (required workspace bytes, h_kv, capacity);
//   * a randomized run of corrupted plans, lengths and pages through mla_decode and through
//     the host execution itself (which, like the GPU, must survive what validation rejects).
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "api/backends.h"
#include "common/params.h"
#include "flashmla/flashmla.h"
#include "scheduler/split_plan.h"
#include "test_util.h"

namespace flashmla_test {
namespace {

using flashmla::MetadataRow;
using ::testing::HasSubstr;
constexpr int32_t kIntMax = std::numeric_limits<int32_t>::max();
constexpr int32_t kIntMin = std::numeric_limits<int32_t>::min();

// ---------------------------------------------------------------------------------------------
// Plan helpers (src/scheduler/split_plan.h): what every kernel reads a plan through
// ---------------------------------------------------------------------------------------------

TEST(PlanHelpers, SchedBlocksIn64Bit) {
  const struct {
    int32_t seqlen, blocks;
  } cases[] = {{0, 0}, {1, 1}, {64, 1}, {65, 2}, {-1, 0}, {kIntMin, 0},
               {2147483600, 33554432}, {kIntMax, 33554432}, {kIntMax - 62, 33554432}, {kIntMax - 63, 33554431}};
  for (const auto& c : cases) EXPECT_EQ(flashmla::sched_blocks(c.seqlen), c.blocks) << "seqlen " << c.seqlen;
}

TEST(PlanHelpers, SanitizePart) {
  auto row = [](int br, int bb, int er, int eb, int bs) { return MetadataRow{br, bb, er, eb, bs, {0, 0, 0}}; };
  const struct {
    MetadataRow in;
    int batch;
    MetadataRow want;
  } cases[] = {
      {row(0, 0, 2, 5, 0), 3, row(0, 0, 2, 5, 0)},                // valid: unchanged
      {row(1, 4, 1, 9, 2), 3, row(1, 4, 1, 9, 2)},                // valid piece of one request
      {row(3, 0, 2, 7, 0), 3, row(0, 0, -1, 7, 0)},               // the empty part past the end
      {row(0, 0, 3, 1, 0), 3, row(0, 0, -1, 1, 0)},               // end_req == batch
      {row(-3, 0, 1, 1, 0), 3, row(0, 0, -1, 1, 0)},              // negative begin_req
      {row(0, -5, 0, -2, -1), 3, row(0, 0, 0, 0, 0)},             // negative blocks / split
      {row(kIntMin, 0, kIntMax, 0, 0), 3, row(0, 0, -1, 0, 0)},   // the whole int range
      {row(0, kIntMax, 0, kIntMax, kIntMax), 1, row(0, kIntMax, 0, kIntMax, kIntMax)},
  };
  for (const auto& c : cases) {
    const MetadataRow got = flashmla::sanitize_part(c.in, c.batch);
    SCOPED_TRACE("in (" + std::to_string(c.in.begin_req) + "," + std::to_string(c.in.begin_block) + "," +
                 std::to_string(c.in.end_req) + "," + std::to_string(c.in.end_block) + "," +
                 std::to_string(c.in.begin_split) + ") batch " + std::to_string(c.batch));
    EXPECT_EQ(got.begin_req, c.want.begin_req);
    EXPECT_EQ(got.end_req, c.want.end_req);
    EXPECT_EQ(got.begin_block, c.want.begin_block);
    EXPECT_EQ(got.end_block, c.want.end_block);
    EXPECT_EQ(got.begin_split, c.want.begin_split);
  }
}

TEST(PlanHelpers, RequestSplits) {
  const int64_t max_splits = 10;
  const struct {
    std::vector<int32_t> num_splits;
    int req;
    bool valid;
    int first, count;
  } cases[] = {
      {{0, 1, 3}, 0, true, 0, 1},          {{0, 1, 3}, 1, true, 1, 2},
      {{0, 1000, -3}, 0, false, 0, 0},     {{0, 1000, -3}, 1, false, 0, 0},   // the plan
      {{0, 10}, 0, true, 0, 10},           {{0, 11}, 0, false, 0, 0},         // at / past max_splits
      {{-1, 2}, 0, false, 0, 0},           {{4, 4}, 0, false, 0, 0},          // negative / empty
      {{kIntMin, kIntMax}, 0, false, 0, 0}, {{kIntMax, kIntMin}, 0, false, 0, 0},
  };
  for (const auto& c : cases) {
    const flashmla::SplitRange r = flashmla::request_splits(c.num_splits.data(), c.req, max_splits);
    EXPECT_EQ(r.valid, c.valid) << "num_splits[" << c.req << "..+1] = " << c.num_splits[size_t(c.req)] << ", "
                                << c.num_splits[size_t(c.req) + 1];
    EXPECT_EQ(r.first, c.first);
    EXPECT_EQ(r.count, c.count);
    EXPECT_FALSE(r.has(-1));
    EXPECT_EQ(r.has(0), c.valid);
    EXPECT_FALSE(r.has(r.count));
  }
}

// Whatever a row says, the keys of a piece stay within [0, seqlen] of its request.
TEST(PlanHelpers, PieceKeysStayInsideTheRequest) {
  std::mt19937_64 rng(7);
  const int32_t extremes[] = {kIntMin, -65, -1, 0, 1, 63, 64, 65, 1 << 25, (1 << 25) + 1, kIntMax - 1, kIntMax};
  auto any = [&]() -> int32_t {
    if (rng() % 2) return extremes[rng() % (sizeof(extremes) / sizeof(extremes[0]))];
    return int32_t(rng());
  };
  for (int i = 0; i < 200000; ++i) {
    MetadataRow part{0, any(), int(rng() % 3), any(), any(), {0, 0, 0}};
    const int req = int(rng() % 3);
    const int32_t seqlen = any();
    const flashmla::PieceKeys k = flashmla::piece_keys(part, req, seqlen);
    const int64_t len = seqlen > 0 ? seqlen : 0;
    ASSERT_TRUE(0 <= k.key_begin && k.key_begin <= k.key_end && k.key_end <= len)
        << "row (0," << part.begin_block << "," << part.end_req << "," << part.end_block << ") req " << req
        << " seqlen " << seqlen << " gave keys [" << k.key_begin << ", " << k.key_end << ")";
  }
}

// ---------------------------------------------------------------------------------------------
// get_mla_metadata: any int32 length is planned, never overflowing
// ---------------------------------------------------------------------------------------------

TEST(Robustness, MetadataWithLengthsNearInt32Max) {
  const std::vector<std::vector<int32_t>> batches = {
      {2147483600}, {kIntMax}, {kIntMax, kIntMax, kIntMax}, {5, 2147483600, 0, kIntMax, 64}, {-1, kIntMin, 7}};
  for (const auto& seqlens : batches)
    for (int parts : {1, 7, 132, flashmla::kMaxSmParts}) {
      std::vector<int32_t> metadata(size_t(parts) * flashmla::kMetadataInts, -9), num_splits(seqlens.size() + 1, -9);
      MetadataArgs m;
      m.backend = Backend::kHost;
      m.cache_seqlens = seqlens.data();
      m.batch = int(seqlens.size());
      m.num_sm_parts = parts;
      m.tile_scheduler_metadata = metadata.data();
      m.num_splits = num_splits.data();
      ASSERT_TRUE(flashmla::get_mla_metadata(m, nullptr).ok());
      EXPECT_TRUE(check_split_plan(seqlens, parts, metadata.data(), num_splits.data()));
    }
}

// ---------------------------------------------------------------------------------------------
// mla_decode on the host: a small valid problem with its plan; each case changes one thing
// ---------------------------------------------------------------------------------------------

class HostRobustness : public ::testing::Test {
 protected:
  static constexpr int kParts = 5;

  void SetUp() override {
    spec_.s_q = 2;
    spec_.h_q = 16;
    spec_.seqlens = {70, 0, 200};
    problem_ = make_problem(spec_);
    plan(problem_.seqlens, kParts, metadata_, num_splits_);
    ws_bytes_ = flashmla::decode_workspace_size(problem_.batch, spec_.s_q, spec_.h_q, spec_.h_kv, kParts);
    workspace_ = std::make_unique<AlignedBuffer>(ws_bytes_);
  }

  static void plan(const std::vector<int32_t>& seqlens, int parts, std::vector<int32_t>& metadata,
                   std::vector<int32_t>& num_splits) {
    metadata.assign(size_t(parts) * flashmla::kMetadataInts, 0);
    num_splits.assign(seqlens.size() + 1, 0);
    MetadataArgs m;
    m.backend = Backend::kHost;
    m.cache_seqlens = seqlens.data();
    m.batch = int(seqlens.size());
    m.num_sm_parts = parts;
    m.tile_scheduler_metadata = metadata.data();
    m.num_splits = num_splits.data();
    ASSERT_TRUE(flashmla::get_mla_metadata(m, nullptr).ok());
  }

  DecodeArgs args() {
    DecodeArgs a = problem_.args();
    a.tile_scheduler_metadata = metadata_.data();
    a.num_splits = num_splits_.data();
    a.num_sm_parts = kParts;
    return a;
  }

  flashmla::Status decode(const DecodeArgs& a) {
    problem_.poison_outputs();
    return flashmla::mla_decode(a, workspace_->data(), ws_bytes_, nullptr);
  }

  // The call fails with exactly `message` and writes nothing.
  void expect_error(const DecodeArgs& a, const std::string& message) {
    const flashmla::Status st = decode(a);
    ASSERT_FALSE(st.ok()) << "accepted; expected: " << message;
    EXPECT_EQ(st.message(), message);
    for (uint16_t v : problem_.out) ASSERT_EQ(v, kNaNBits) << "out written by a rejected call";
    EXPECT_TRUE(workspace_->guard_intact());
  }

  ProblemSpec spec_;
  HostProblem problem_;
  std::vector<int32_t> metadata_, num_splits_;
  size_t ws_bytes_ = 0;
  std::unique_ptr<AlignedBuffer> workspace_;
};

constexpr const char* kPlanRule =
    " (the plan must be get_mla_metadata's for this call's cache_seqlens and num_sm_parts = 5; one made for "
    "other lengths, or modified, is rejected)";

// The cases, each with the message it must give.
TEST_F(HostRobustness, CorruptedPlansAreRejected) {
  {
    std::vector<int32_t> ns = {0, 1000, -3, num_splits_[3]};
    DecodeArgs a = args();
    a.num_splits = ns.data();
    expect_error(a, "num_splits[1]: expected " + std::to_string(num_splits_[1]) + ", got 1000" + kPlanRule);
  }
  {
    std::vector<int32_t> md = metadata_;
    md[2 * flashmla::kMetadataInts + 1] = 123456789;  // part 2, begin_block
    DecodeArgs a = args();
    a.tile_scheduler_metadata = md.data();
    expect_error(a, "tile_scheduler_metadata[2][1]: expected " + std::to_string(metadata_[2 * 8 + 1]) +
                        ", got 123456789" + kPlanRule);
  }
  {
    // A plan for other lengths of the same batch (the silently wrong lse).
    std::vector<int32_t> md, ns;
    plan({300, 0, 70}, kParts, md, ns);
    DecodeArgs a = args();
    a.tile_scheduler_metadata = md.data();
    a.num_splits = ns.data();
    const flashmla::Status st = decode(a);
    ASSERT_FALSE(st.ok());
    EXPECT_THAT(st.message(), HasSubstr("one made for other lengths, or modified, is rejected"));
  }
  {
    // The reserved fields are never read: changing them changes nothing.
    std::vector<int32_t> md = metadata_;
    for (int p = 0; p < kParts; ++p) md[size_t(p) * flashmla::kMetadataInts + 6] = -77;
    DecodeArgs a = args();
    ASSERT_TRUE(decode(a).ok());
    const std::vector<uint16_t> want_out = problem_.out;
    a.tile_scheduler_metadata = md.data();
    ASSERT_TRUE(decode(a).ok());
    EXPECT_EQ(problem_.out, want_out);
  }
}

TEST_F(HostRobustness, EmptyBatchIsANoOp) {
  // get_mla_metadata: num_splits = {0}, every part empty; no length is read (null is fine).
  std::vector<int32_t> metadata(size_t(3) * flashmla::kMetadataInts, -9), num_splits(1, -9);
  MetadataArgs m;
  m.backend = Backend::kHost;
  m.batch = 0;
  m.num_sm_parts = 3;
  m.tile_scheduler_metadata = metadata.data();
  m.num_splits = num_splits.data();
  ASSERT_TRUE(flashmla::get_mla_metadata(m, nullptr).ok());
  EXPECT_EQ(num_splits[0], 0);
  for (int p = 0; p < 3; ++p) {
    const auto* row = metadata.data() + p * flashmla::kMetadataInts;
    EXPECT_LT(row[2], row[0]) << "part " << p << " is not empty";
  }
  // mla_decode / reference_decode: nothing to read or write; per-request pointers may be null.
  DecodeArgs a = args();
  a.batch = 0;
  a.q = nullptr;
  a.block_table = nullptr;
  a.cache_seqlens = nullptr;
  a.out = nullptr;
  a.softmax_lse = nullptr;
  a.tile_scheduler_metadata = metadata.data();
  a.num_splits = num_splits.data();
  a.num_sm_parts = 3;
  EXPECT_EQ(flashmla::decode_workspace_size(0, 2, 16, 1, 3), 0u);
  const flashmla::Status st = flashmla::mla_decode(a, nullptr, 0, nullptr);
  EXPECT_TRUE(st.ok()) << st.message();
  const flashmla::Status rs = flashmla::reference_decode(a);
  EXPECT_TRUE(rs.ok()) << rs.message();
  // Shapes are still checked.
  a.h_q = 3;
  a.h_kv = 2;
  EXPECT_EQ(flashmla::mla_decode(a, nullptr, 0, nullptr).message(), "h_q: expected a multiple of h_kv = 2, got 3");
}

// Size-0 dimensions come with null pointers from torch: the message names the size.
TEST_F(HostRobustness, ZeroSizesNameTheSize) {
  DecodeArgs a = args();
  a.page_size = 0;
  a.k_cache = nullptr;
  expect_error(a, "page_size: expected >= 1 (tokens per k_cache page), got 0");
  a = args();
  a.num_blocks = 0;
  a.k_cache = nullptr;
  expect_error(a, "num_blocks: expected >= 1 (pages in k_cache), got 0");
  a = args();
  a.max_blocks_per_seq = 0;
  a.block_table = nullptr;
  expect_error(a, "max_blocks_per_seq: expected >= 1, got 0");
}

TEST_F(HostRobustness, MessagesGiveTheNumbers) {
  DecodeArgs a = args();
  EXPECT_EQ(flashmla::mla_decode(a, workspace_->data(), 100, nullptr).message(),
            "workspace_bytes: expected at least " + std::to_string(ws_bytes_) +
                " bytes (decode_workspace_size(batch = 3, s_q = 2, h_q = 16, h_kv = 1, num_sm_parts = 5)), got 100");
  a.h_kv = 3;
  expect_error(a, "h_q: expected a multiple of h_kv = 3, got 16");
  a = args();
  std::vector<int32_t> seqlens = problem_.seqlens;
  seqlens[2] = kIntMax;
  a.cache_seqlens = seqlens.data();
  const int cols = problem_.max_blocks_per_seq;
  expect_error(a, "cache_seqlens[2]: expected a value in [0, max_blocks_per_seq * page_size = " + std::to_string(cols) +
                      " * 64 = " + std::to_string(cols * 64) + "], got 2147483647");
  a = args();
  a.block_table_batch_stride = cols - 1;
  expect_error(a, "block_table_batch_stride: expected >= max_blocks_per_seq = " + std::to_string(cols) +
                      " (rows must not overlap), got " + std::to_string(cols - 1));
}

// Any finite softmax_scale is used as is; none selects 1/sqrt(576); non-finite is rejected.
TEST_F(HostRobustness, SoftmaxScale) {
  const std::optional<float> scales[] = {0.f, -0.5f, -1e-3f, 0.3f, 1e-30f, std::nullopt};
  for (const std::optional<float>& scale : scales) {
    problem_.spec.softmax_scale = scale;
    SCOPED_TRACE(problem_.spec.describe());
    ASSERT_TRUE(decode(args()).ok());
    EXPECT_TRUE(outputs_match_reference(problem_, problem_.out, problem_.lse, naive_decode(problem_),
                                        Tolerance{1, 1e-5, 1e-5}));
    if (scale == 0.f) {  // uniform attention: lse = log(number of keys) exactly
      EXPECT_FLOAT_EQ(problem_.lse[problem_.lse_index(0, 3, 1)], std::log(70.f));
      EXPECT_FLOAT_EQ(problem_.lse[problem_.lse_index(2, 0, 0)], std::log(200.f));
    }
  }
  const struct {
    float scale;
    const char* got;
  } rejected[] = {{std::nanf(""), "nan"},
                  {std::numeric_limits<float>::infinity(), "inf"},
                  {-std::numeric_limits<float>::infinity(), "-inf"}};
  for (const auto& r : rejected) {
    DecodeArgs a = args();
    a.softmax_scale = r.scale;
    expect_error(a, std::string("softmax_scale: expected a finite value, or none for 1/sqrt(576), got ") + r.got);
    EXPECT_EQ(flashmla::reference_decode(a).message(), flashmla::mla_decode(a, workspace_->data(), ws_bytes_, nullptr).message());
  }
  EXPECT_DOUBLE_EQ(flashmla::resolve_softmax_scale(std::nullopt), 1.0 / 24.0);
  EXPECT_DOUBLE_EQ(flashmla::resolve_softmax_scale(-2.f), -2.0);
  EXPECT_DOUBLE_EQ(flashmla::resolve_softmax_scale(0.f), 0.0);
}

// out *= exp(lse) / (exp(lse) + exp(sink[head])), lse unchanged; rows without keys stay 0 / +inf.
TEST_F(HostRobustness, AttentionSink) {
  std::vector<float> sink(size_t(spec_.h_q));
  for (int h = 0; h < spec_.h_q; ++h) sink[size_t(h)] = float(h - 8) * 0.75f;
  sink[0] = -std::numeric_limits<float>::infinity();  // no sink
  sink[1] = 40.f;                                      // the sink takes (nearly) everything
  const NaiveResult plain = naive_decode(problem_);
  NaiveResult want = plain;
  for (int b = 0; b < problem_.batch; ++b)
    for (int t = 0; t < spec_.s_q; ++t)
      for (int h = 0; h < spec_.h_q; ++h) {
        const double lse = plain.lse[problem_.lse_index(b, h, t)];
        const double f = std::isinf(lse) ? 1.0 : 1.0 / (1.0 + std::exp(double(sink[size_t(h)]) - lse));
        const size_t row = ((size_t(b) * spec_.s_q + t) * spec_.h_q + h) * flashmla::kHeadDimV;  // dense
        for (int d = 0; d < flashmla::kHeadDimV; ++d) want.out[row + size_t(d)] *= f;
      }
  for (bool split : {true, false}) {
    SCOPED_TRACE(split ? "mla_decode (split plan)" : "reference_decode");
    DecodeArgs a = args();
    a.attn_sink = sink.data();
    problem_.poison_outputs();
    const flashmla::Status st = split ? decode(a) : flashmla::reference_decode(a);
    ASSERT_TRUE(st.ok()) << st.message();
    EXPECT_TRUE(outputs_match_reference(problem_, problem_.out, problem_.lse, want, Tolerance{1, 1e-5, 1e-5}));
    EXPECT_LT(std::fabs(bits_to_float(spec_.dtype, problem_.out[problem_.out_index(0, 0, 1, 0)])), 1e-12f)
        << "sink 40 leaves ~e^-36 of the mass";
  }
  DecodeArgs a = args();
  a.attn_sink = reinterpret_cast<const float*>(reinterpret_cast<const char*>(sink.data()) + 2);
  const flashmla::Status st = decode(a);
  EXPECT_THAT(st.message(), HasSubstr("attn_sink: expected a 4-byte aligned pointer"));
}

// ---------------------------------------------------------------------------------------------
// Randomized corrupted plans, lengths and pages
// ---------------------------------------------------------------------------------------------

int32_t random_value(std::mt19937_64& rng, int32_t near) {
  switch (rng() % 6) {
    case 0: return kIntMax - int32_t(rng() % 64);
    case 1: return kIntMin + int32_t(rng() % 64);
    case 2: return -int32_t(rng() % 8) - 1;
    case 3: return near + int32_t(rng() % 7) - 3;
    case 4: return int32_t(rng() % 4096);
    default: return int32_t(rng());
  }
}

// mla_decode either rejects the corrupted input naming what is wrong, or accepts it only when it
// is a valid input (a change nothing reads, or valid lengths/pages with their own plan) and then
// gives exactly the result of a fresh plan for it; it never writes past the workspace. The host execution itself (decode_host, what validation protects) run on the
// corrupted plan must not crash or write out of bounds either: it reads the plan through the
// same helpers as the GPU kernels.
TEST_F(HostRobustness, RandomCorruptionNeverCrashes) {
  std::mt19937_64 rng(2024);
  int rejected = 0, accepted = 0, executed = 0;
  for (int iter = 0; iter < 400; ++iter) {
    std::vector<int32_t> md = metadata_, ns = num_splits_, seqlens = problem_.seqlens, table = problem_.block_table;
    bool lengths_valid = true;
    const int mutations = 1 + int(rng() % 3);
    for (int m = 0; m < mutations; ++m) {
      switch (rng() % 4) {
        case 0: {
          int32_t& v = md[rng() % md.size()];
          v = random_value(rng, v);
          break;
        }
        case 1: {
          int32_t& v = ns[rng() % ns.size()];
          v = random_value(rng, v);
          break;
        }
        case 2: {
          int32_t& v = seqlens[rng() % seqlens.size()];
          v = random_value(rng, v);
          lengths_valid = false;
          break;
        }
        default: {
          int32_t& v = table[rng() % table.size()];
          v = random_value(rng, v);
          lengths_valid = false;
          break;
        }
      }
    }
    DecodeArgs a = args();
    a.tile_scheduler_metadata = md.data();
    a.num_splits = ns.data();
    a.cache_seqlens = seqlens.data();
    a.block_table = table.data();
    const flashmla::Status st = decode(a);
    ASSERT_TRUE(workspace_->guard_intact()) << "iteration " << iter;
    if (!st.ok()) {
      ++rejected;
      const std::string& msg = st.message();
      ASSERT_TRUE(msg.rfind("num_splits[", 0) == 0 || msg.rfind("tile_scheduler_metadata[", 0) == 0 ||
                  msg.rfind("cache_seqlens[", 0) == 0 || msg.rfind("block_table[", 0) == 0)
          << "iteration " << iter << ": " << msg;
    } else {
      ++accepted;
      const std::vector<uint16_t> got_out = problem_.out;
      const std::vector<float> got_lse = problem_.lse;
      std::vector<int32_t> fresh_md, fresh_ns;
      plan(seqlens, kParts, fresh_md, fresh_ns);
      DecodeArgs fresh = a;
      fresh.tile_scheduler_metadata = fresh_md.data();
      fresh.num_splits = fresh_ns.data();
      ASSERT_TRUE(decode(fresh).ok());
      ASSERT_EQ(got_out, problem_.out) << "iteration " << iter << ": accepted, but not the result of its own plan";
      ASSERT_EQ(std::memcmp(got_lse.data(), problem_.lse.data(), got_lse.size() * sizeof(float)), 0);
    }
    // The unvalidated host execution with the corrupted plan (lengths kept valid: they index
    // the caller's cache, which only validation / the kernels' length checks protect).
    if (lengths_valid) {
      ++executed;
      AlignedBuffer ws(ws_bytes_);
      problem_.poison_outputs();
      flashmla::detail::decode_host(a, ws.data());
      ASSERT_TRUE(ws.guard_intact()) << "iteration " << iter << ": decode_host wrote past the workspace";
    }
  }
  EXPECT_GT(rejected, 250);
  EXPECT_GT(executed, 80);
  RecordProperty("rejected", rejected);
  RecordProperty("accepted", accepted);
}

}  // namespace
}  // namespace flashmla_test
