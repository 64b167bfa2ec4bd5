// Every argument rule of the public API (src/api/validate.cpp): a violating call returns a
// non-ok Status whose message names the argument, and writes nothing.
#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "flashmla/flashmla.h"
#include "test_util.h"

namespace flashmla_test {
namespace {

using ::testing::HasSubstr;

// The message names `name` as a whole identifier (so "q" does not match inside "s_q").
bool names_argument(const std::string& msg, const std::string& name) {
  auto ident = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; };
  for (size_t pos = msg.find(name); pos != std::string::npos; pos = msg.find(name, pos + 1)) {
    const bool left = pos == 0 || !ident(msg[pos - 1]);
    const bool right = pos + name.size() == msg.size() || !ident(msg[pos + name.size()]);
    if (left && right) return true;
  }
  return false;
}

#define EXPECT_REJECTED(status_expr, name)                                              \
  do {                                                                                  \
    const ::flashmla::Status st_ = (status_expr);                                       \
    EXPECT_FALSE(st_.ok()) << "accepted; expected an error naming `" << (name) << "`"; \
    if (!st_.ok()) {                                                                    \
      EXPECT_THAT(st_.message(), HasSubstr(name));                                      \
      EXPECT_TRUE(names_argument(st_.message(), name))                                  \
          << "message `" << st_.message() << "` does not name `" << (name) << "`";      \
    }                                                                                   \
  } while (0)

// A small valid host problem with its plan and workspace; each case mutates one field.
class DecodeValidation : public ::testing::Test {
 protected:
  static constexpr int kParts = 5;

  void SetUp() override {
    ProblemSpec spec;
    spec.s_q = 2;
    spec.h_q = 16;
    spec.seqlens = {70, 0, 200};
    problem_ = make_problem(spec);
    metadata_.assign(size_t(kParts) * flashmla::kMetadataInts, 0);
    num_splits_.assign(size_t(problem_.batch) + 1, 0);
    MetadataArgs m;
    m.backend = Backend::kHost;
    m.cache_seqlens = problem_.seqlens.data();
    m.batch = problem_.batch;
    m.num_sm_parts = kParts;
    m.tile_scheduler_metadata = metadata_.data();
    m.num_splits = num_splits_.data();
    ASSERT_TRUE(flashmla::get_mla_metadata(m, nullptr).ok());
    ws_bytes_ = flashmla::decode_workspace_size(problem_.batch, spec.s_q, spec.h_q, spec.h_kv, kParts);
    ASSERT_GT(ws_bytes_, 0u);
    workspace_ = std::make_unique<AlignedBuffer>(ws_bytes_ + 512);
  }

  DecodeArgs valid_args() {
    DecodeArgs a = problem_.args();
    a.tile_scheduler_metadata = metadata_.data();
    a.num_splits = num_splits_.data();
    a.num_sm_parts = kParts;
    return a;
  }

  flashmla::Status decode(const DecodeArgs& a) {
    return flashmla::mla_decode(a, workspace_->data(), ws_bytes_, nullptr);
  }

  // Applies `mutate` to valid arguments; mla_decode (and reference_decode, for the fields it
  // reads) must reject them, naming `name`, and must not touch the outputs.
  void expect_rejected(const std::string& name, const std::function<void(DecodeArgs&)>& mutate,
                       bool reference_too = true) {
    SCOPED_TRACE("argument " + name);
    problem_.poison_outputs();
    DecodeArgs a = valid_args();
    mutate(a);
    EXPECT_REJECTED(decode(a), name);
    if (reference_too) EXPECT_REJECTED(flashmla::reference_decode(a), name);
    for (uint16_t v : problem_.out) ASSERT_EQ(v, kNaNBits) << "out written by a rejected call";
    for (float v : problem_.lse) ASSERT_TRUE(std::isnan(v)) << "lse written by a rejected call";
  }

  HostProblem problem_;
  std::vector<int32_t> metadata_, num_splits_;
  size_t ws_bytes_ = 0;
  std::unique_ptr<AlignedBuffer> workspace_;
};

TEST_F(DecodeValidation, BaselineIsAccepted) {
  ASSERT_TRUE(decode(valid_args()).ok()) << decode(valid_args()).message();
  ASSERT_TRUE(flashmla::reference_decode(valid_args()).ok());
}

TEST_F(DecodeValidation, EnumsAndShapes) {
  expect_rejected("backend", [](DecodeArgs& a) { a.backend = static_cast<Backend>(7); });
  expect_rejected("dtype", [](DecodeArgs& a) { a.dtype = static_cast<DataType>(9); });
  expect_rejected("batch", [](DecodeArgs& a) { a.batch = -1; });
  expect_rejected("s_q", [](DecodeArgs& a) { a.s_q = 0; });
  expect_rejected("s_q", [](DecodeArgs& a) { a.s_q = -2; });
  expect_rejected("h_q", [](DecodeArgs& a) { a.h_q = 0; });
  expect_rejected("h_q", [](DecodeArgs& a) { a.h_q = -16; });
  expect_rejected("h_kv", [](DecodeArgs& a) { a.h_kv = 0; });
  expect_rejected("h_kv", [](DecodeArgs& a) { a.h_kv = -1; });
  expect_rejected("h_q", [](DecodeArgs& a) { a.h_kv = 3; });  // 16 % 3 != 0
  expect_rejected("head_dim_v", [](DecodeArgs& a) { a.head_dim_v = 576; });
  expect_rejected("head_dim_v", [](DecodeArgs& a) { a.head_dim_v = 0; });
  expect_rejected("head_dim_v", [](DecodeArgs& a) { a.head_dim_v = 128; });
}

TEST_F(DecodeValidation, Query) {
  expect_rejected("q", [](DecodeArgs& a) { a.q = nullptr; });
  expect_rejected("q", [](DecodeArgs& a) { a.q = static_cast<const char*>(a.q) + 2; });  // not 16-byte aligned
  expect_rejected("q", [](DecodeArgs& a) { a.q = static_cast<const char*>(a.q) + 8; });
  expect_rejected("q_batch_stride", [](DecodeArgs& a) { a.q_batch_stride = -8; });
  expect_rejected("q_batch_stride", [](DecodeArgs& a) { a.q_batch_stride += 4; });  // rows 8-byte aligned only
  expect_rejected("q_token_stride", [](DecodeArgs& a) { a.q_token_stride = -a.q_token_stride; });
  expect_rejected("q_token_stride", [](DecodeArgs& a) { a.q_token_stride += 1; });
  expect_rejected("q_head_stride", [](DecodeArgs& a) { a.q_head_stride = 577; });
  expect_rejected("q_head_stride", [](DecodeArgs& a) { a.q_head_stride = -576; });
}

TEST_F(DecodeValidation, KvCache) {
  expect_rejected("k_cache", [](DecodeArgs& a) { a.k_cache = nullptr; });
  expect_rejected("k_cache", [](DecodeArgs& a) { a.k_cache = static_cast<const char*>(a.k_cache) + 2; });
  expect_rejected("num_blocks", [](DecodeArgs& a) { a.num_blocks = 0; });
  expect_rejected("num_blocks", [](DecodeArgs& a) { a.num_blocks = -3; });
  expect_rejected("page_size", [](DecodeArgs& a) { a.page_size = 0; });
  expect_rejected("page_size", [](DecodeArgs& a) { a.page_size = -64; });
  expect_rejected("k_block_stride", [](DecodeArgs& a) { a.k_block_stride += 2; });
  expect_rejected("k_block_stride", [](DecodeArgs& a) { a.k_block_stride = -a.k_block_stride; });
  expect_rejected("k_token_stride", [](DecodeArgs& a) { a.k_token_stride = 580; });
  expect_rejected("k_token_stride", [](DecodeArgs& a) { a.k_token_stride = -8; });
  expect_rejected("k_head_stride", [](DecodeArgs& a) { a.k_head_stride = 575; });
  expect_rejected("k_head_stride", [](DecodeArgs& a) { a.k_head_stride = -576; });
}

TEST_F(DecodeValidation, BlockTableAndLengths) {
  expect_rejected("block_table", [](DecodeArgs& a) { a.block_table = nullptr; });
  expect_rejected("max_blocks_per_seq", [](DecodeArgs& a) { a.max_blocks_per_seq = 0; });
  expect_rejected("max_blocks_per_seq", [](DecodeArgs& a) { a.max_blocks_per_seq = -1; });
  expect_rejected("block_table_batch_stride",
                  [](DecodeArgs& a) { a.block_table_batch_stride = a.max_blocks_per_seq - 1; });
  // max_blocks_per_seq * page_size must fit int32 (token positions are int32).
  expect_rejected("max_blocks_per_seq", [](DecodeArgs& a) {
    a.max_blocks_per_seq = 1 << 20;
    a.block_table_batch_stride = 1 << 20;
    a.page_size = 1 << 12;
  });
  expect_rejected("cache_seqlens", [](DecodeArgs& a) { a.cache_seqlens = nullptr; });
}

// On the host the lengths and the pages they use are visible, so they are checked.
TEST_F(DecodeValidation, HostChecksSeqlensAndPages) {
  std::vector<int32_t> seqlens = problem_.seqlens;
  std::vector<int32_t> table = problem_.block_table;
  const int capacity = problem_.max_blocks_per_seq * problem_.spec.page_size;
  auto with_seqlen = [&](int b, int32_t v) {
    return [&, b, v](DecodeArgs& a) {
      seqlens = problem_.seqlens;
      seqlens[size_t(b)] = v;
      a.cache_seqlens = seqlens.data();
    };
  };
  // These keep the plan computed for the original lengths, so only mla_decode's length check
  // and reference_decode (which ignores the plan) are exercised.
  expect_rejected("cache_seqlens", with_seqlen(1, -1));
  expect_rejected("cache_seqlens", with_seqlen(2, capacity + 1));
  expect_rejected("cache_seqlens", with_seqlen(0, std::numeric_limits<int32_t>::max()));
  auto with_page = [&](int b, int col, int32_t v) {
    return [&, b, col, v](DecodeArgs& a) {
      table = problem_.block_table;
      table[size_t(b * problem_.block_table_batch_stride + col)] = v;
      a.block_table = table.data();
    };
  };
  expect_rejected("block_table", with_page(0, 1, problem_.num_blocks));  // request 0 uses 2 pages
  expect_rejected("block_table", with_page(2, 0, -1));
  expect_rejected("block_table", with_page(2, 3, kBadPage));  // request 2 uses 4 pages
  // Entries past a request's last page are never read: kBadPage there is fine.
  {
    problem_.poison_outputs();
    DecodeArgs a = valid_args();
    table = problem_.block_table;
    for (int col = 0; col < problem_.max_blocks_per_seq; ++col)
      table[size_t(1 * problem_.block_table_batch_stride + col)] = -5;  // request 1 is empty
    a.block_table = table.data();
    EXPECT_TRUE(decode(a).ok());
  }
  // A length exactly at capacity is allowed.
  {
    ProblemSpec spec = problem_.spec;
    spec.seqlens = {128, 64};
    spec.extra_table_cols = 0;
    HostProblem p = make_problem(spec);
    ASSERT_EQ(p.max_blocks_per_seq * spec.page_size, 128);
    EXPECT_TRUE(flashmla::reference_decode(p.args()).ok());
  }
}

TEST_F(DecodeValidation, Outputs) {
  expect_rejected("out", [](DecodeArgs& a) { a.out = nullptr; });
  expect_rejected("out", [](DecodeArgs& a) { a.out = static_cast<char*>(a.out) + 2; });
  expect_rejected("out_batch_stride", [](DecodeArgs& a) { a.out_batch_stride += 4; });
  expect_rejected("out_batch_stride", [](DecodeArgs& a) { a.out_batch_stride = -8; });
  expect_rejected("out_token_stride", [](DecodeArgs& a) { a.out_token_stride += 1; });
  expect_rejected("out_head_stride", [](DecodeArgs& a) { a.out_head_stride = 513; });
  expect_rejected("out_head_stride", [](DecodeArgs& a) { a.out_head_stride = -512; });
  expect_rejected("softmax_lse", [](DecodeArgs& a) { a.softmax_lse = nullptr; });
  expect_rejected("softmax_lse", [](DecodeArgs& a) { a.softmax_lse = reinterpret_cast<float*>(reinterpret_cast<char*>(a.softmax_lse) + 1); });
  // Rows of out that share memory would be written concurrently.
  expect_rejected("out_head_stride", [](DecodeArgs& a) { a.out_head_stride = 256; });
  expect_rejected("out_head_stride", [](DecodeArgs& a) { a.out_head_stride = 0; });
  expect_rejected("out_token_stride", [](DecodeArgs& a) { a.out_token_stride = a.out_head_stride; });
  expect_rejected("out_batch_stride", [](DecodeArgs& a) { a.out_batch_stride = 8; });
}

TEST_F(DecodeValidation, OutputLayoutsThatDoNotOverlapAreAccepted) {
  // Heads outermost (a transposed layout) is fine as long as rows are disjoint.
  DecodeArgs a = valid_args();
  AlignedBuffer out(size_t(a.batch) * a.s_q * a.h_q * flashmla::kHeadDimV * sizeof(uint16_t));
  a.out = out.data();
  a.out_head_stride = int64_t(a.batch) * a.s_q * flashmla::kHeadDimV;
  a.out_batch_stride = int64_t(a.s_q) * flashmla::kHeadDimV;
  a.out_token_stride = flashmla::kHeadDimV;
  EXPECT_TRUE(decode(a).ok()) << decode(a).message();
}

TEST_F(DecodeValidation, PointerAlignmentAndGridLimits) {
  expect_rejected("block_table", [](DecodeArgs& a) { a.block_table = reinterpret_cast<const int32_t*>(reinterpret_cast<const char*>(a.block_table) + 2); });
  expect_rejected("cache_seqlens", [](DecodeArgs& a) { a.cache_seqlens = reinterpret_cast<const int32_t*>(reinterpret_cast<const char*>(a.cache_seqlens) + 1); });
  expect_rejected("h_kv", [](DecodeArgs& a) { a.h_kv = 70000; a.h_q = 70000; });
  expect_rejected("s_q", [](DecodeArgs& a) { a.s_q = 300000; });
  expect_rejected("tile_scheduler_metadata", [](DecodeArgs& a) { a.tile_scheduler_metadata = reinterpret_cast<const int32_t*>(reinterpret_cast<const char*>(a.tile_scheduler_metadata) + 2); }, false);
  expect_rejected("num_sm_parts", [](DecodeArgs& a) { a.num_sm_parts = flashmla::kMaxSmParts + 1; }, false);
}

TEST_F(DecodeValidation, SoftmaxScale) {
  // Any finite value is used as is (0 and negative too: see test_robustness.cpp); only
  // non-finite ones are rejected.
  expect_rejected("softmax_scale", [](DecodeArgs& a) { a.softmax_scale = std::nanf(""); });
  expect_rejected("softmax_scale", [](DecodeArgs& a) {
    a.softmax_scale = std::numeric_limits<float>::infinity();
  });
}

TEST_F(DecodeValidation, PlanAndWorkspace) {
  // reference_decode ignores the plan fields.
  expect_rejected("tile_scheduler_metadata", [](DecodeArgs& a) { a.tile_scheduler_metadata = nullptr; },
                  /*reference_too=*/false);
  expect_rejected("num_splits", [](DecodeArgs& a) { a.num_splits = nullptr; }, false);
  expect_rejected("num_sm_parts", [](DecodeArgs& a) { a.num_sm_parts = 0; }, false);
  expect_rejected("num_sm_parts", [](DecodeArgs& a) { a.num_sm_parts = -5; }, false);
  DecodeArgs a = valid_args();
  problem_.poison_outputs();
  EXPECT_TRUE(flashmla::reference_decode(
                  [&] {
                    DecodeArgs r = a;
                    r.tile_scheduler_metadata = nullptr;
                    r.num_splits = nullptr;
                    r.num_sm_parts = 0;
                    return r;
                  }())
                  .ok());

  EXPECT_REJECTED(flashmla::mla_decode(a, workspace_->data(), ws_bytes_ - 1, nullptr), "workspace_bytes");
  EXPECT_REJECTED(flashmla::mla_decode(a, workspace_->data(), 0, nullptr), "workspace_bytes");
  EXPECT_REJECTED(flashmla::mla_decode(a, nullptr, ws_bytes_, nullptr), "workspace");
  EXPECT_REJECTED(flashmla::mla_decode(a, static_cast<char*>(workspace_->data()) + 16, ws_bytes_, nullptr),
                  "workspace");
  EXPECT_REJECTED(flashmla::mla_decode(a, static_cast<char*>(workspace_->data()) + 128, ws_bytes_, nullptr),
                  "workspace");
  // More than needed is fine.
  EXPECT_TRUE(flashmla::mla_decode(a, workspace_->data(), ws_bytes_ + 512, nullptr).ok());
}

TEST_F(DecodeValidation, ReferenceRunsOnHostOnly) {
  DecodeArgs a = valid_args();
  a.backend = Backend::kCuda;
  EXPECT_REJECTED(flashmla::reference_decode(a), "backend");
}

TEST(WorkspaceSize, ZeroForInvalidShapes) {
  EXPECT_GT(flashmla::decode_workspace_size(1, 1, 16, 1, 1), 0u);
  EXPECT_EQ(flashmla::decode_workspace_size(0, 1, 16, 1, 132), 0u);
  EXPECT_EQ(flashmla::decode_workspace_size(1, 0, 16, 1, 132), 0u);
  EXPECT_EQ(flashmla::decode_workspace_size(1, 1, 0, 1, 132), 0u);
  EXPECT_EQ(flashmla::decode_workspace_size(1, 1, 16, 0, 132), 0u);
  EXPECT_EQ(flashmla::decode_workspace_size(1, 1, 16, 3, 132), 0u);
  EXPECT_EQ(flashmla::decode_workspace_size(1, 1, 16, 1, 0), 0u);
  // Grows with every shape argument it depends on.
  const size_t base = flashmla::decode_workspace_size(4, 1, 16, 1, 8);
  EXPECT_GT(flashmla::decode_workspace_size(5, 1, 16, 1, 8), base);
  EXPECT_GT(flashmla::decode_workspace_size(4, 2, 16, 1, 8), base);
  EXPECT_GT(flashmla::decode_workspace_size(4, 1, 32, 1, 8), base);
  EXPECT_GT(flashmla::decode_workspace_size(4, 1, 32, 2, 8), base);
  EXPECT_GT(flashmla::decode_workspace_size(4, 1, 16, 1, 9), base);
}

TEST(NumSmParts, InvalidInputsGiveZero) {
  EXPECT_EQ(flashmla::num_sm_parts(0, 64, 1), 0);
  EXPECT_EQ(flashmla::num_sm_parts(132, 0, 1), 0);
  EXPECT_EQ(flashmla::num_sm_parts(132, 64, 0), 0);
}

// ---------------------------------------------------------------------------------------------
// get_mla_metadata
// ---------------------------------------------------------------------------------------------

class MetadataValidation : public ::testing::Test {
 protected:
  void expect_rejected(const std::string& name, const std::function<void(MetadataArgs&)>& mutate) {
    SCOPED_TRACE("argument " + name);
    std::vector<int32_t> seqlens = {5, 0, 300};
    std::vector<int32_t> metadata(size_t(8) * flashmla::kMetadataInts, -99), num_splits(4, -99);
    MetadataArgs a;
    a.backend = Backend::kHost;
    a.cache_seqlens = seqlens.data();
    a.batch = 3;
    a.num_sm_parts = 8;
    a.tile_scheduler_metadata = metadata.data();
    a.num_splits = num_splits.data();
    ASSERT_TRUE(flashmla::get_mla_metadata(a, nullptr).ok());
    std::fill(metadata.begin(), metadata.end(), -99);
    std::fill(num_splits.begin(), num_splits.end(), -99);
    mutate(a);
    EXPECT_REJECTED(flashmla::get_mla_metadata(a, nullptr), name);
    for (int32_t v : metadata) ASSERT_EQ(v, -99) << "metadata written by a rejected call";
    for (int32_t v : num_splits) ASSERT_EQ(v, -99) << "num_splits written by a rejected call";
  }
};

TEST_F(MetadataValidation, EveryField) {
  expect_rejected("backend", [](MetadataArgs& a) { a.backend = static_cast<Backend>(3); });
  expect_rejected("cache_seqlens", [](MetadataArgs& a) { a.cache_seqlens = nullptr; });
  expect_rejected("batch", [](MetadataArgs& a) { a.batch = -4; });
  expect_rejected("num_sm_parts", [](MetadataArgs& a) { a.num_sm_parts = 0; });
  expect_rejected("num_sm_parts", [](MetadataArgs& a) { a.num_sm_parts = -1; });
  expect_rejected("num_sm_parts", [](MetadataArgs& a) { a.num_sm_parts = 2049; });
  expect_rejected("num_splits", [](MetadataArgs& a) { a.num_splits = reinterpret_cast<int32_t*>(reinterpret_cast<char*>(a.num_splits) + 1); });
  expect_rejected("tile_scheduler_metadata", [](MetadataArgs& a) { a.tile_scheduler_metadata = nullptr; });
  expect_rejected("num_splits", [](MetadataArgs& a) { a.num_splits = nullptr; });
}

// Without a GPU the CUDA backend must fail with a Status (never crash or abort).
TEST(NoDevice, CudaBackendReturnsAnError) {
  int n = 0;
  if (cudaGetDeviceCount(&n) == cudaSuccess && n > 0) GTEST_SKIP() << "a CUDA device is present";
  cudaGetLastError();
  std::vector<int32_t> seqlens = {5, 0, 300};
  std::vector<int32_t> metadata(size_t(8) * flashmla::kMetadataInts), num_splits(4);
  MetadataArgs m;
  m.backend = Backend::kCuda;
  m.cache_seqlens = seqlens.data();
  m.batch = 3;
  m.num_sm_parts = 8;
  m.tile_scheduler_metadata = metadata.data();
  m.num_splits = num_splits.data();
  const flashmla::Status ms = flashmla::get_mla_metadata(m, nullptr);
  EXPECT_FALSE(ms.ok());
  EXPECT_THAT(ms.message(), HasSubstr("CUDA"));

  ProblemSpec spec;
  spec.seqlens = seqlens;
  HostProblem p = make_problem(spec);
  DecodeArgs a = p.args();
  a.backend = Backend::kCuda;
  a.tile_scheduler_metadata = metadata.data();
  a.num_splits = num_splits.data();
  a.num_sm_parts = 8;
  AlignedBuffer ws(flashmla::decode_workspace_size(3, 1, 16, 1, 8));
  const flashmla::Status ds = flashmla::mla_decode(a, ws.data(), ws.size(), nullptr);
  EXPECT_FALSE(ds.ok());
  EXPECT_THAT(ds.message(), HasSubstr("CUDA"));
}

}  // namespace
}  // namespace flashmla_test
