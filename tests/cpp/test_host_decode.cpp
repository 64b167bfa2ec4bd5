// The split plan executed on the host (mla_decode with Backend::kHost: every part's partial
// attention + the log-sum-exp combine) must equal the unsplit reference (reference_decode),
// and both must equal an independent float64 implementation written here (naive_decode).
//
// Both library paths accumulate in float64 and round once to the output dtype; the split path
// keeps its partial results in float32 (like the GPU workspace). So: out within 1 ulp of
// bf16/fp16 or within 1e-5 of the row's largest |value| (elements that nearly cancel to zero),
// lse within 1e-5 relative.
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <sstream>
#include <tuple>
#include <vector>

#include <gtest/gtest.h>

#include "flashmla/flashmla.h"
#include "test_util.h"

namespace flashmla_test {
namespace {

constexpr double kLseRtol = 1e-5;
constexpr double kRowRtol = 1e-5;

struct Result {
  std::vector<uint16_t> out;
  std::vector<float> lse;
};

// Plan + workspace + mla_decode on the host, outputs poisoned first.
::testing::AssertionResult run_split(HostProblem& p, int num_sm_parts, Result& r) {
  std::vector<int32_t> metadata(size_t(num_sm_parts) * flashmla::kMetadataInts, -7);
  std::vector<int32_t> num_splits(size_t(p.batch) + 1, -7);
  MetadataArgs m;
  m.backend = Backend::kHost;
  m.cache_seqlens = p.seqlens.data();
  m.batch = p.batch;
  m.num_sm_parts = num_sm_parts;
  m.tile_scheduler_metadata = metadata.data();
  m.num_splits = num_splits.data();
  flashmla::Status st = flashmla::get_mla_metadata(m, nullptr);
  if (!st.ok()) return ::testing::AssertionFailure() << "get_mla_metadata: " << st.message();

  const size_t ws_bytes =
      flashmla::decode_workspace_size(p.batch, p.spec.s_q, p.spec.h_q, p.spec.h_kv, num_sm_parts);
  AlignedBuffer ws(ws_bytes);  // NaN-ish 0xFF bytes; nothing may be read before it is written
  p.poison_outputs();
  DecodeArgs a = p.args();
  a.tile_scheduler_metadata = metadata.data();
  a.num_splits = num_splits.data();
  a.num_sm_parts = num_sm_parts;
  st = flashmla::mla_decode(a, ws.data(), ws.size(), nullptr);
  if (!st.ok()) return ::testing::AssertionFailure() << "mla_decode(kHost): " << st.message();
  if (!ws.guard_intact())
    return ::testing::AssertionFailure() << "mla_decode(kHost) wrote past decode_workspace_size() = "
                                         << ws_bytes << " bytes";
  r.out = p.out;
  r.lse = p.lse;
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult run_reference(HostProblem& p, Result& r) {
  p.poison_outputs();
  const flashmla::Status st = flashmla::reference_decode(p.args());
  if (!st.ok()) return ::testing::AssertionFailure() << "reference_decode: " << st.message();
  r.out = p.out;
  r.lse = p.lse;
  return ::testing::AssertionSuccess();
}

// ---------------------------------------------------------------------------------------------
// Random problems: (dtype, s_q, h_kv, causal, page_size)
// ---------------------------------------------------------------------------------------------

using GridParam = std::tuple<DataType, int, int, bool, int>;

class SplitVsReference : public ::testing::TestWithParam<GridParam> {};

TEST_P(SplitVsReference, RandomData) {
  const auto [dtype, s_q, h_kv, causal, page_size] = GetParam();
  ProblemSpec spec;
  spec.dtype = dtype;
  spec.s_q = s_q;
  spec.h_q = 16;
  spec.h_kv = h_kv;
  spec.causal = causal;
  spec.page_size = page_size;
  // Three long requests, an empty one and a one-token one: with 16 parts each long request
  // is split several times; with 264 parts most cuts fall into request overheads.
  spec.seqlens = {1500, 0, 2300, 1, 1100};
  spec.seed = 1000 + s_q * 100 + h_kv * 10 + causal * 2 + (page_size == 128) +
              (dtype == DataType::kFloat16) * 5000;
  spec.q_amplitude = 2.f;  // scores of a few units: softmax neither flat nor one-hot
  HostProblem p = make_problem(spec);
  SCOPED_TRACE(spec.describe());

  Result ref;
  ASSERT_TRUE(run_reference(p, ref));
  EXPECT_TRUE(outputs_match_reference(p, ref.out, ref.lse, naive_decode(p),
                                      Tolerance{1, 0.0, 1e-6}))
      << "reference_decode disagrees with the test's own float64 implementation";

  for (int parts : {1, 16, 264}) {
    Result split;
    ASSERT_TRUE(run_split(p, parts, split)) << "num_sm_parts=" << parts;
    EXPECT_TRUE(outputs_close(p, split.out, split.lse, ref.out, ref.lse, 1, kLseRtol, 1e-6, kRowRtol))
        << "mla_decode(kHost, num_sm_parts=" << parts << ") vs reference_decode";
  }
}

INSTANTIATE_TEST_SUITE_P(
    Grid, SplitVsReference,
    ::testing::Combine(::testing::Values(DataType::kBFloat16, DataType::kFloat16),
                       ::testing::Values(1, 2, 4),      // s_q
                       ::testing::Values(1, 2),         // h_kv
                       ::testing::Bool(),               // causal
                       ::testing::Values(64, 128)),     // page_size
    [](const ::testing::TestParamInfo<GridParam>& info) {
      std::ostringstream s;
      s << dtype_name(std::get<0>(info.param)) << "_sq" << std::get<1>(info.param) << "_hkv"
        << std::get<2>(info.param) << (std::get<3>(info.param) ? "_causal" : "_full") << "_page"
        << std::get<4>(info.param);
      return s.str();
    });

// 128 query heads x 2 tokens = 256 rows per KV head (several 64-row tiles on the GPU), a long
// request, contiguous strides, an explicit softmax scale, many parts.
TEST(SplitVsReferenceWide, ManyHeadsContiguous) {
  for (DataType dtype : {DataType::kBFloat16, DataType::kFloat16}) {
    ProblemSpec spec;
    spec.dtype = dtype;
    spec.s_q = 2;
    spec.h_q = 128;
    spec.h_kv = 1;
    spec.causal = true;
    spec.padded_strides = false;
    spec.softmax_scale = 0.1f;
    spec.seqlens = {2, 0, 1700};
    spec.seed = dtype == DataType::kBFloat16 ? 11 : 12;
    HostProblem p = make_problem(spec);
    SCOPED_TRACE(spec.describe());
    Result ref, split;
    ASSERT_TRUE(run_reference(p, ref));
    ASSERT_TRUE(run_split(p, 37, split));
    EXPECT_TRUE(outputs_close(p, split.out, split.lse, ref.out, ref.lse, 1, kLseRtol, 1e-6, kRowRtol));
    EXPECT_TRUE(outputs_match_reference(p, ref.out, ref.lse, naive_decode(p), Tolerance{1, 0.0, 1e-6}));
  }
}

// The host backend's rows are spread over threads; one thread owns each row, so the results are
// bitwise the same with one thread and with many (more threads than this machine has cores).
TEST(SplitVsReferenceWide, ThreadCountChangesNoBit) {
  ProblemSpec spec;
  spec.dtype = DataType::kBFloat16, spec.s_q = 2, spec.h_q = 64, spec.h_kv = 2, spec.causal = true;
  spec.seqlens = {900, 3, 1300, 0, 64}, spec.seed = 21;
  HostProblem p = make_problem(spec);
  SCOPED_TRACE(spec.describe());
  Result ref[2], split[2];
  const char* counts[2] = {"1", "7"};
  for (int i = 0; i < 2; ++i) {
    ASSERT_EQ(setenv(flashmla::kHostThreadsEnvVar, counts[i], 1), 0);
    ASSERT_TRUE(run_reference(p, ref[i]));
    ASSERT_TRUE(run_split(p, 23, split[i]));
  }
  unsetenv(flashmla::kHostThreadsEnvVar);
  EXPECT_EQ(ref[0].out, ref[1].out);
  EXPECT_EQ(split[0].out, split[1].out);
  for (const auto* r : {ref, split})
    EXPECT_EQ(std::memcmp(r[0].lse.data(), r[1].lse.data(), r[0].lse.size() * sizeof(float)), 0);
  // And the split path is the reference's result, not only consistent with itself.
  EXPECT_TRUE(outputs_close(p, split[1].out, split[1].lse, ref[1].out, ref[1].lse, 1, kLseRtol, 1e-6, kRowRtol));
}

// Peaky softmax (large scores): the combine's max-shifting must keep it exact.
TEST(SplitVsReferenceWide, LargeScores) {
  ProblemSpec spec;
  spec.dtype = DataType::kBFloat16;
  spec.s_q = 1;
  spec.h_q = 16;
  spec.softmax_scale = 1.0f;  // scores up to ~hundreds
  spec.q_amplitude = 4.f;
  spec.seqlens = {3000, 777};
  spec.seed = 99;
  HostProblem p = make_problem(spec);
  SCOPED_TRACE(spec.describe());
  Result ref, split;
  ASSERT_TRUE(run_reference(p, ref));
  ASSERT_TRUE(run_split(p, 16, split));
  EXPECT_TRUE(outputs_close(p, split.out, split.lse, ref.out, ref.lse, 1, kLseRtol, 1e-6, kRowRtol));
  EXPECT_TRUE(outputs_match_reference(p, ref.out, ref.lse, naive_decode(p), Tolerance{1, 0.0, 1e-6}));
}

// ---------------------------------------------------------------------------------------------
// Semantic corner cases against hand-computed values
// ---------------------------------------------------------------------------------------------

uint16_t& q_at(HostProblem& p, int b, int t, int h, int c) {
  return p.q[size_t(b * p.q_batch_stride + t * p.q_token_stride + h * p.q_head_stride + c)];
}

uint16_t& k_at(HostProblem& p, int b, int tok, int hk, int c) {
  const int64_t page = p.block_table[size_t(b * p.block_table_batch_stride + tok / p.spec.page_size)];
  return p.k_cache[size_t(page * p.k_block_stride + (tok % p.spec.page_size) * p.k_token_stride +
                          hk * p.k_head_stride + c)];
}

// Runs both library paths; calls check(result, path_name) for each.
template <typename Check>
void for_both_paths(HostProblem& p, int num_sm_parts, Check check) {
  Result r;
  ASSERT_TRUE(run_reference(p, r));
  check(r, "reference_decode");
  ASSERT_TRUE(run_split(p, num_sm_parts, r));
  check(r, "mla_decode(kHost)");
}

TEST(HostDecodeSemantics, ZeroLengthRequestGivesZeroOutAndInfLse) {
  for (DataType dtype : {DataType::kBFloat16, DataType::kFloat16})
    for (bool causal : {false, true}) {
      ProblemSpec spec;
      spec.dtype = dtype;
      spec.s_q = 2;
      spec.h_q = 16;
      spec.causal = causal;
      spec.seqlens = {0, 100, 0};
      HostProblem p = make_problem(spec);
      SCOPED_TRACE(spec.describe());
      for_both_paths(p, 7, [&](const Result& r, const char* path) {
        for (int b : {0, 2})
          for (int t = 0; t < spec.s_q; ++t)
            for (int h = 0; h < spec.h_q; ++h) {
              EXPECT_EQ(r.lse[p.lse_index(b, h, t)], std::numeric_limits<float>::infinity())
                  << path << " b=" << b << " t=" << t << " h=" << h;
              for (int d = 0; d < flashmla::kHeadDimV; ++d)
                ASSERT_EQ(bits_to_float(dtype, r.out[p.out_index(b, t, h, d)]), 0.f)
                    << path << " b=" << b << " t=" << t << " h=" << h << " d=" << d;
            }
        // The non-empty request in between is finite.
        EXPECT_TRUE(std::isfinite(r.lse[p.lse_index(1, 0, 0)])) << path;
      });
    }
}

// Causal is bottom-right aligned: token t of s_q sees keys [0, seqlen - s_q + t].
// seqlen 1, s_q 3: tokens 0 and 1 see nothing (out 0, lse +inf); token 2 sees key 0 alone, so
// its output is exactly V of key 0 and its lse is scale * q.k0.
// seqlen 2, s_q 3: token 0 sees nothing, token 1 sees key 0 alone, token 2 sees both.
TEST(HostDecodeSemantics, CausalRowsWithoutKeys) {
  for (DataType dtype : {DataType::kBFloat16, DataType::kFloat16}) {
    ProblemSpec spec;
    spec.dtype = dtype;
    spec.s_q = 3;
    spec.h_q = 16;
    spec.causal = true;
    spec.seqlens = {1, 2};
    spec.seed = 5;
    HostProblem p = make_problem(spec);
    SCOPED_TRACE(spec.describe());
    const double scale = 1.0 / std::sqrt(576.0);
    for_both_paths(p, 5, [&](const Result& r, const char* path) {
      for (int b = 0; b < 2; ++b)
        for (int t = 0; t < 3; ++t)
          for (int h = 0; h < spec.h_q; ++h) {
            const int visible = p.seqlens[size_t(b)] - 3 + t + 1;
            const float lse = r.lse[p.lse_index(b, h, t)];
            if (visible <= 0) {
              EXPECT_EQ(lse, std::numeric_limits<float>::infinity()) << path << " b=" << b << " t=" << t;
              for (int d = 0; d < flashmla::kHeadDimV; ++d)
                ASSERT_EQ(bits_to_float(dtype, r.out[p.out_index(b, t, h, d)]), 0.f)
                    << path << " b=" << b << " t=" << t << " h=" << h << " d=" << d;
            } else if (visible == 1) {
              double dot = 0.0;
              for (int c = 0; c < flashmla::kHeadDimQK; ++c)
                dot += double(bits_to_float(dtype, q_at(p, b, t, h, c))) *
                       bits_to_float(dtype, k_at(p, b, 0, 0, c));
              EXPECT_NEAR(lse, dot * scale, 1e-6 * std::max(1.0, std::fabs(dot * scale)))
                  << path << " b=" << b << " t=" << t << " h=" << h;
              for (int d = 0; d < flashmla::kHeadDimV; ++d)
                ASSERT_EQ(r.out[p.out_index(b, t, h, d)], k_at(p, b, 0, 0, d))
                    << path << ": a row seeing one key must output that key's V exactly; b=" << b
                    << " t=" << t << " h=" << h << " d=" << d;
            } else {
              EXPECT_TRUE(std::isfinite(lse)) << path;
            }
          }
    });
  }
}

// Two keys, scores 2 and 0 (softmax_scale 1): out = (1*e^2 + (-1)*1) / (e^2 + 1) = tanh(1),
// lse = log(1 + e^2). With s_q = 2 and causal, token 0 sees key 0 alone: out 1, lse 2.
TEST(HostDecodeSemantics, TwoKeysHandComputed) {
  for (DataType dtype : {DataType::kBFloat16, DataType::kFloat16})
    for (bool causal : {false, true}) {
      ProblemSpec spec;
      spec.dtype = dtype;
      spec.s_q = 2;
      spec.h_q = 16;
      spec.causal = causal;
      spec.softmax_scale = 1.f;
      spec.seqlens = {2};
      HostProblem p = make_problem(spec);
      SCOPED_TRACE(spec.describe());
      const uint16_t zero = float_to_bits(dtype, 0.f), one = float_to_bits(dtype, 1.f),
                     minus_one = float_to_bits(dtype, -1.f), two = float_to_bits(dtype, 2.f);
      for (int t = 0; t < 2; ++t)
        for (int h = 0; h < spec.h_q; ++h)
          for (int c = 0; c < flashmla::kHeadDimQK; ++c) q_at(p, 0, t, h, c) = c == 512 ? two : zero;
      for (int c = 0; c < flashmla::kHeadDimQK; ++c) {
        // Channel 512 (RoPE part, not in V) carries the score; V channels are +1 / -1.
        k_at(p, 0, 0, 0, c) = c < 512 ? one : (c == 512 ? one : zero);
        k_at(p, 0, 1, 0, c) = c < 512 ? minus_one : zero;
      }
      const double both_out = std::tanh(1.0), both_lse = std::log1p(std::exp(2.0));
      for_both_paths(p, 3, [&](const Result& r, const char* path) {
        for (int t = 0; t < 2; ++t) {
          const bool one_key = causal && t == 0;
          const double want_out = one_key ? 1.0 : both_out;
          const double want_lse = one_key ? 2.0 : both_lse;
          for (int h = 0; h < spec.h_q; ++h) {
            EXPECT_NEAR(r.lse[p.lse_index(0, h, t)], want_lse, 1e-6) << path << " t=" << t;
            for (int d = 0; d < flashmla::kHeadDimV; ++d)
              ASSERT_LE(ulp_distance16(r.out[p.out_index(0, t, h, d)],
                                       float_to_bits(dtype, float(want_out))), 1)
                  << path << " t=" << t << " h=" << h << " d=" << d << ": got "
                  << bits_to_float(dtype, r.out[p.out_index(0, t, h, d)]) << " want " << want_out;
          }
        }
      });
    }
}

TEST(HostDecodeSemantics, CausalChangesNothingForOneQueryToken) {
  for (DataType dtype : {DataType::kBFloat16, DataType::kFloat16}) {
    ProblemSpec spec;
    spec.dtype = dtype;
    spec.s_q = 1;
    spec.h_q = 16;
    spec.seqlens = {0, 1, 300, 129};
    spec.seed = 77;
    HostProblem p = make_problem(spec);
    Result full_ref, full_split;
    ASSERT_TRUE(run_reference(p, full_ref));
    ASSERT_TRUE(run_split(p, 7, full_split));
    p.spec.causal = true;
    Result causal_ref, causal_split;
    ASSERT_TRUE(run_reference(p, causal_ref));
    ASSERT_TRUE(run_split(p, 7, causal_split));
    EXPECT_TRUE(outputs_close(p, causal_ref.out, causal_ref.lse, full_ref.out, full_ref.lse, 0, 0.0, 0.0));
    EXPECT_TRUE(outputs_close(p, causal_split.out, causal_split.lse, full_split.out, full_split.lse, 0, 0.0, 0.0));
  }
}

TEST(HostDecodeSemantics, DefaultSoftmaxScaleIsOneOverSqrt576) {
  ProblemSpec spec;
  spec.dtype = DataType::kBFloat16;
  spec.s_q = 2;
  spec.h_q = 16;
  spec.seqlens = {200, 65};
  spec.q_amplitude = 3.f;
  HostProblem p = make_problem(spec);
  Result dflt, explicit_scale;
  ASSERT_TRUE(run_reference(p, dflt));
  p.spec.softmax_scale = float(1.0 / 24.0);
  ASSERT_TRUE(run_reference(p, explicit_scale));
  EXPECT_TRUE(outputs_close(p, dflt.out, dflt.lse, explicit_scale.out, explicit_scale.lse, 1, 1e-6, 1e-6, kRowRtol));
}

// Out-of-range cache_seqlens / block-table entries: the host backend rejects them (see
// test_validation.cpp, HostChecksSeqlensAndPages); the GPU gives NaN (test_gpu.cpp).

TEST(TestUtil, HalfConversions) {
  EXPECT_EQ(float_to_bf16_bits(1.f), 0x3F80);
  EXPECT_EQ(float_to_bf16_bits(-2.f), 0xC000);
  EXPECT_EQ(float_to_bf16_bits(1.f + 1.f / 256), 0x3F80);  // tie -> even
  EXPECT_EQ(float_to_bf16_bits(1.f + 3.f / 256), 0x3F82);  // tie -> even (up)
  EXPECT_EQ(float_to_fp16_bits(1.f), 0x3C00);
  EXPECT_EQ(float_to_fp16_bits(-2.f), 0xC000);
  EXPECT_EQ(float_to_fp16_bits(65504.f), 0x7BFF);
  EXPECT_EQ(float_to_fp16_bits(65520.f), 0x7C00);
  EXPECT_EQ(float_to_fp16_bits(std::ldexp(1.f, -24)), 0x0001);
  EXPECT_EQ(float_to_fp16_bits(std::ldexp(1.f, -25)), 0x0000);  // tie -> even (0)
  EXPECT_EQ(float_to_fp16_bits(std::ldexp(3.f, -25)), 0x0002);  // tie -> even (2)
  EXPECT_EQ(float_to_fp16_bits(1.f + 1.f / 2048), 0x3C00);
  EXPECT_EQ(float_to_fp16_bits(1.f + 3.f / 2048), 0x3C02);
  EXPECT_TRUE(std::isnan(fp16_bits_to_float(kNaNBits)));
  EXPECT_TRUE(std::isnan(bf16_bits_to_float(kNaNBits)));
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const uint16_t b = uint16_t(h);
    if (!std::isnan(fp16_bits_to_float(b))) {
      ASSERT_EQ(float_to_fp16_bits(fp16_bits_to_float(b)), b);
    }
    if (!std::isnan(bf16_bits_to_float(b))) {
      ASSERT_EQ(float_to_bf16_bits(bf16_bits_to_float(b)), b);
    }
  }
  EXPECT_EQ(ulp_distance16(0x0000, 0x8000), 0);
  EXPECT_EQ(ulp_distance16(0x0001, 0x8001), 2);
  EXPECT_EQ(ulp_distance16(0x3C00, 0x3C01), 1);
}

}  // namespace
}  // namespace flashmla_test
