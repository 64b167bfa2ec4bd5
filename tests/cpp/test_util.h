// Shared helpers of the C++ test suite: 16-bit float conversions, a random paged-KV decode
// problem on host memory, an independent float64 reference and comparison helpers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "flashmla/flashmla.h"

namespace flashmla_test {

using flashmla::Backend;
using flashmla::DataType;
using flashmla::DecodeArgs;
using flashmla::MetadataArgs;

// ---------------------------------------------------------------------------------------------
// 16-bit floats stored as uint16 bit patterns
// ---------------------------------------------------------------------------------------------

uint16_t float_to_bf16_bits(float f);   // round to nearest even; NaN stays NaN
float bf16_bits_to_float(uint16_t h);
uint16_t float_to_fp16_bits(float f);   // round to nearest even, subnormals, overflow to inf
float fp16_bits_to_float(uint16_t h);

uint16_t float_to_bits(DataType t, float f);
float bits_to_float(DataType t, uint16_t h);

// 0xFFFF is a NaN in both bf16 and fp16: the poison written into outputs and unused memory.
constexpr uint16_t kNaNBits = 0xFFFF;
// A block-table entry that is never a valid page: written past each request's last used page.
constexpr int32_t kBadPage = 2147480000;

// Distance in units in the last place between two 16-bit floats of the same format
// (sign-magnitude ordered, so +0 and -0 are 0 apart). Returns a huge value if either is NaN.
int ulp_distance16(uint16_t a, uint16_t b);
bool is_nan16(DataType t, uint16_t h);

const char* dtype_name(DataType t);

// ---------------------------------------------------------------------------------------------
// Host-side 256-byte-aligned buffer (workspace) with a poisoned guard region behind it
// ---------------------------------------------------------------------------------------------

class AlignedBuffer {
 public:
  static constexpr size_t kGuard = 4096;
  explicit AlignedBuffer(size_t bytes, unsigned char fill = 0xFF);
  ~AlignedBuffer();
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  void* data() { return data_; }
  size_t size() const { return bytes_; }
  // True if the guard bytes behind the buffer still hold the fill pattern.
  bool guard_intact() const;

 private:
  unsigned char* data_ = nullptr;
  size_t bytes_ = 0;
  unsigned char fill_;
};

// ---------------------------------------------------------------------------------------------
// A random decode problem in host memory
// ---------------------------------------------------------------------------------------------

struct ProblemSpec {
  DataType dtype = DataType::kBFloat16;
  int s_q = 1;
  int h_q = 16;
  int h_kv = 1;
  int page_size = 64;
  bool causal = false;
  std::optional<float> softmax_scale;  // none: the library default 1/sqrt(576)
  std::vector<int32_t> seqlens;
  uint64_t seed = 1;
  // Pad every stride (q, k_cache, out, block_table) so that stride mix-ups show; padding is
  // filled with NaN and must never be read (inputs) or written (outputs).
  bool padded_strides = true;
  int extra_pages = 3;     // pages no request references (NaN-filled)
  int extra_table_cols = 1;  // block-table columns past the longest request (kBadPage)
  float q_amplitude = 1.f;   // q values uniform in [-q_amplitude, q_amplitude]

  std::string describe() const;
};

struct HostProblem {
  ProblemSpec spec;
  int batch = 0;
  int num_blocks = 0;
  int max_blocks_per_seq = 0;

  int64_t q_batch_stride = 0, q_token_stride = 0, q_head_stride = 0;
  int64_t k_block_stride = 0, k_token_stride = 0, k_head_stride = 0;
  int64_t out_batch_stride = 0, out_token_stride = 0, out_head_stride = 0;
  int64_t block_table_batch_stride = 0;

  std::vector<uint16_t> q;        // bit patterns of spec.dtype
  std::vector<uint16_t> k_cache;  // bit patterns of spec.dtype
  std::vector<int32_t> block_table;
  std::vector<int32_t> seqlens;
  std::vector<uint16_t> out;      // poisoned with kNaNBits by poison_outputs()
  std::vector<float> lse;         // [batch, h_q, s_q], poisoned with NaN

  void poison_outputs();
  // Arguments over the host vectors above (plan fields left empty). Backend::kHost.
  DecodeArgs args();

  size_t out_index(int b, int t, int h, int d) const {
    return size_t(b * out_batch_stride + t * out_token_stride + h * out_head_stride + d);
  }
  size_t lse_index(int b, int h, int t) const {
    return (size_t(b) * spec.h_q + h) * spec.s_q + t;
  }
  // Number of keys query token t of request b sees.
  int visible_keys(int b, int t) const;
};

HostProblem make_problem(const ProblemSpec& spec);

// Independent float64 reference of the documented semantics, computed from the problem's
// host arrays: out [batch, s_q, h_q, 512] and lse [batch, h_q, s_q] (dense, +inf for rows
// that see no key, out 0 there).
struct NaiveResult {
  std::vector<double> out;
  std::vector<double> lse;
};
NaiveResult naive_decode(const HostProblem& p);

// ---------------------------------------------------------------------------------------------
// Comparisons (all return an AssertionResult listing the first mismatches)
// ---------------------------------------------------------------------------------------------

// Two outputs of the same problem. Each out element: within max_ulp of the output dtype, or
// |a - b| <= row_rtol * max |b| over its 512-wide row (near-zero values from cancellation have
// few significant bits left, so ulps alone are too strict there). lse:
// |a - b| <= lse_rtol * max(|a|, |b|) + lse_atol, infinities exact. No NaN anywhere, and the
// out padding of `a` untouched (still kNaNBits).
::testing::AssertionResult outputs_close(const HostProblem& p, const std::vector<uint16_t>& out_a,
                                         const std::vector<float>& lse_a,
                                         const std::vector<uint16_t>& out_b,
                                         const std::vector<float>& lse_b, int max_ulp,
                                         double lse_rtol, double lse_atol = 1e-6,
                                         double row_rtol = 0.0);

// Output vs the float64 reference. If max_ulp >= 0: every out element within max_ulp of the
// reference rounded to the dtype. Otherwise: |out - ref| <= row_rtol * max|ref row| + 1e-6.
// lse: |lse - ref| <= lse_rtol * max(1, |ref|), infinities exact. Padding must be untouched.
struct Tolerance {
  int max_ulp = 1;
  double row_rtol = 0.0;
  double lse_rtol = 1e-6;
};
::testing::AssertionResult outputs_match_reference(const HostProblem& p,
                                                   const std::vector<uint16_t>& out,
                                                   const std::vector<float>& lse,
                                                   const NaiveResult& ref, Tolerance tol);

// ---------------------------------------------------------------------------------------------
// Random sequence-length batches for the scheduler tests
// ---------------------------------------------------------------------------------------------

enum class SeqlenDist { kUniform, kSkewed, kSomeZeros, kAllZero, kSingle };
const char* dist_name(SeqlenDist d);
std::vector<int32_t> make_seqlens(SeqlenDist dist, int batch, std::mt19937_64& rng);
std::string summarize_seqlens(const std::vector<int32_t>& s);

// Checks every invariant of a split plan (see test_scheduler.cpp for the list).
::testing::AssertionResult check_split_plan(const std::vector<int32_t>& seqlens, int num_sm_parts,
                                            const int32_t* metadata, const int32_t* num_splits);

}  // namespace flashmla_test
