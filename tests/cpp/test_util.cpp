#include "test_util.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <numeric>
#include <sstream>

#include "common/config.h"
#include "common/params.h"
#include "scheduler/split_plan.h"

namespace flashmla_test {

namespace {

uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// 16-bit floats
// ---------------------------------------------------------------------------------------------

uint16_t float_to_bf16_bits(float f) {
  uint32_t u = float_bits(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return uint16_t(((u >> 16) & 0x8000u) | 0x7FC0u);
  u += 0x7FFFu + ((u >> 16) & 1u);  // round to nearest even (overflows into inf correctly)
  return uint16_t(u >> 16);
}

float bf16_bits_to_float(uint16_t h) { return bits_float(uint32_t(h) << 16); }

uint16_t float_to_fp16_bits(float f) {
  const uint32_t x = float_bits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t absx = x & 0x7FFFFFFFu;
  if (absx >= 0x7F800000u) return uint16_t(sign | (absx > 0x7F800000u ? 0x7E00u : 0x7C00u));
  if (absx >= 0x477FF000u) return uint16_t(sign | 0x7C00u);  // >= 65520 rounds to inf
  if (absx < 0x38800000u) {  // below 2^-14: fp16 subnormal (or zero)
    // |f| * 2^24 < 2^10 is exact; nearbyint rounds to nearest even in the default mode.
    const float scaled = std::fabs(f) * 16777216.0f;
    const uint32_t m = uint32_t(std::nearbyint(scaled));  // 0x400 = smallest normal, still right
    return uint16_t(sign | m);
  }
  const uint32_t e = (absx >> 23) - 127 + 15;
  const uint32_t mant = absx & 0x7FFFFFu;
  uint32_t h = (e << 10) | (mant >> 13);
  const uint32_t rem = mant & 0x1FFFu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // carry into the exponent is right
  return uint16_t(sign | h);
}

float fp16_bits_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1Fu;
  const uint32_t m = h & 0x3FFu;
  if (e == 0) {
    const float v = std::ldexp(float(m), -24);
    return sign ? -v : v;
  }
  if (e == 31) return bits_float(sign | 0x7F800000u | (m << 13));
  return bits_float(sign | ((e - 15 + 127) << 23) | (m << 13));
}

uint16_t float_to_bits(DataType t, float f) {
  return t == DataType::kBFloat16 ? float_to_bf16_bits(f) : float_to_fp16_bits(f);
}

float bits_to_float(DataType t, uint16_t h) {
  return t == DataType::kBFloat16 ? bf16_bits_to_float(h) : fp16_bits_to_float(h);
}

bool is_nan16(DataType t, uint16_t h) { return std::isnan(bits_to_float(t, h)); }

int ulp_distance16(uint16_t a, uint16_t b) {
  auto key = [](uint16_t h) { return (h & 0x8000u) ? -int(h & 0x7FFFu) : int(h & 0x7FFFu); };
  return std::abs(key(a) - key(b));
}

const char* dtype_name(DataType t) { return t == DataType::kBFloat16 ? "bf16" : "fp16"; }

// ---------------------------------------------------------------------------------------------
// AlignedBuffer
// ---------------------------------------------------------------------------------------------

AlignedBuffer::AlignedBuffer(size_t bytes, unsigned char fill) : bytes_(bytes), fill_(fill) {
  const size_t total = (bytes + kGuard + 255) / 256 * 256;
  data_ = static_cast<unsigned char*>(std::aligned_alloc(256, total));
  if (data_ != nullptr) std::memset(data_, fill, total);
}

AlignedBuffer::~AlignedBuffer() { std::free(data_); }

bool AlignedBuffer::guard_intact() const {
  for (size_t i = 0; i < kGuard; ++i)
    if (data_[bytes_ + i] != fill_) return false;
  return true;
}

// ---------------------------------------------------------------------------------------------
// Problems
// ---------------------------------------------------------------------------------------------

std::string ProblemSpec::describe() const {
  std::ostringstream s;
  s << dtype_name(dtype) << " s_q=" << s_q << " h_q=" << h_q << " h_kv=" << h_kv
    << " page_size=" << page_size << " causal=" << causal << " scale=" << (softmax_scale ? std::to_string(*softmax_scale) : std::string("default"))
    << " seed=" << seed << " padded=" << padded_strides << " seqlens=" << summarize_seqlens(seqlens);
  return s.str();
}

int HostProblem::visible_keys(int b, int t) const {
  const int len = seqlens[size_t(b)];
  if (!spec.causal) return len;
  const int v = len - spec.s_q + t + 1;
  return std::max(0, std::min(len, v));
}

void HostProblem::poison_outputs() {
  std::fill(out.begin(), out.end(), kNaNBits);
  std::fill(lse.begin(), lse.end(), std::numeric_limits<float>::quiet_NaN());
}

DecodeArgs HostProblem::args() {
  DecodeArgs a;
  a.backend = Backend::kHost;
  a.dtype = spec.dtype;
  a.batch = batch;
  a.s_q = spec.s_q;
  a.h_q = spec.h_q;
  a.h_kv = spec.h_kv;
  a.head_dim_v = flashmla::kHeadDimV;
  a.q = q.data();
  a.q_batch_stride = q_batch_stride;
  a.q_token_stride = q_token_stride;
  a.q_head_stride = q_head_stride;
  a.k_cache = k_cache.data();
  a.num_blocks = num_blocks;
  a.page_size = spec.page_size;
  a.k_block_stride = k_block_stride;
  a.k_token_stride = k_token_stride;
  a.k_head_stride = k_head_stride;
  a.block_table = block_table.data();
  a.max_blocks_per_seq = max_blocks_per_seq;
  a.block_table_batch_stride = block_table_batch_stride;
  a.cache_seqlens = seqlens.data();
  a.out = out.data();
  a.out_batch_stride = out_batch_stride;
  a.out_token_stride = out_token_stride;
  a.out_head_stride = out_head_stride;
  a.softmax_lse = lse.data();
  a.softmax_scale = spec.softmax_scale;
  a.causal = spec.causal;
  return a;
}

HostProblem make_problem(const ProblemSpec& spec) {
  constexpr int D = flashmla::kHeadDimQK, DV = flashmla::kHeadDimV;
  HostProblem p;
  p.spec = spec;
  p.batch = int(spec.seqlens.size());
  p.seqlens = spec.seqlens;
  std::mt19937_64 rng(spec.seed);

  const int ps = spec.page_size;
  std::vector<int> pages(size_t(p.batch));
  int max_pages = 0, used_pages = 0;
  for (int b = 0; b < p.batch; ++b) {
    pages[size_t(b)] = (spec.seqlens[size_t(b)] + ps - 1) / ps;
    max_pages = std::max(max_pages, pages[size_t(b)]);
    used_pages += pages[size_t(b)];
  }
  p.max_blocks_per_seq = std::max(1, max_pages + spec.extra_table_cols);
  p.num_blocks = std::max(1, used_pages + spec.extra_pages);

  // Paddings are multiples of 8 elements (16 bytes) so that every row stays 16-byte aligned.
  const int64_t pad_h = spec.padded_strides ? 8 : 0, pad_t = spec.padded_strides ? 16 : 0,
                pad_b = spec.padded_strides ? 24 : 0;
  p.q_head_stride = D + pad_h;
  p.q_token_stride = spec.h_q * p.q_head_stride + pad_t;
  p.q_batch_stride = spec.s_q * p.q_token_stride + pad_b;
  p.k_head_stride = D + pad_h;
  p.k_token_stride = spec.h_kv * p.k_head_stride + pad_t;
  p.k_block_stride = ps * p.k_token_stride + pad_b;
  p.out_head_stride = DV + pad_h;
  p.out_token_stride = spec.h_q * p.out_head_stride + pad_t;
  p.out_batch_stride = spec.s_q * p.out_token_stride + pad_b;
  p.block_table_batch_stride = p.max_blocks_per_seq + (spec.padded_strides ? 3 : 0);

  std::uniform_real_distribution<float> uni(-1.f, 1.f);
  p.q.assign(size_t(p.batch) * size_t(p.q_batch_stride), kNaNBits);
  for (int b = 0; b < p.batch; ++b)
    for (int t = 0; t < spec.s_q; ++t)
      for (int h = 0; h < spec.h_q; ++h)
        for (int c = 0; c < D; ++c)
          p.q[size_t(b * p.q_batch_stride + t * p.q_token_stride + h * p.q_head_stride + c)] =
              float_to_bits(spec.dtype, spec.q_amplitude * uni(rng));

  // Pages handed out in a random order; never-referenced pages and the tail of each last page
  // stay NaN, so reading past seqlen shows up in the output.
  std::vector<int32_t> perm(size_t(p.num_blocks));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  p.block_table.assign(size_t(p.batch) * size_t(p.block_table_batch_stride), kBadPage);
  size_t next = 0;
  for (int b = 0; b < p.batch; ++b)
    for (int j = 0; j < pages[size_t(b)]; ++j)
      p.block_table[size_t(b * p.block_table_batch_stride + j)] = perm[next++];

  p.k_cache.assign(size_t(p.num_blocks) * size_t(p.k_block_stride), kNaNBits);
  for (int b = 0; b < p.batch; ++b)
    for (int tok = 0; tok < spec.seqlens[size_t(b)]; ++tok) {
      const int64_t page = p.block_table[size_t(b * p.block_table_batch_stride + tok / ps)];
      for (int hk = 0; hk < spec.h_kv; ++hk)
        for (int c = 0; c < D; ++c)
          p.k_cache[size_t(page * p.k_block_stride + (tok % ps) * p.k_token_stride +
                           hk * p.k_head_stride + c)] = float_to_bits(spec.dtype, uni(rng));
    }

  p.out.assign(size_t(p.batch) * size_t(p.out_batch_stride), kNaNBits);
  p.lse.assign(size_t(p.batch) * spec.h_q * spec.s_q, std::numeric_limits<float>::quiet_NaN());
  return p;
}

NaiveResult naive_decode(const HostProblem& p) {
  constexpr int D = flashmla::kHeadDimQK, DV = flashmla::kHeadDimV;
  const ProblemSpec& s = p.spec;
  const double scale = s.softmax_scale ? double(*s.softmax_scale) : 1.0 / std::sqrt(double(D));
  const int group = s.h_q / s.h_kv;
  NaiveResult r;
  r.out.assign(size_t(p.batch) * s.s_q * s.h_q * DV, 0.0);
  r.lse.assign(size_t(p.batch) * s.h_q * s.s_q, std::numeric_limits<double>::infinity());
  std::vector<double> qv(D), scores, kv;
  for (int b = 0; b < p.batch; ++b) {
    const int len = p.seqlens[size_t(b)];
    // Gather this request's keys once per kv head as doubles.
    for (int hk = 0; hk < s.h_kv; ++hk) {
      kv.assign(size_t(len) * D, 0.0);
      for (int tok = 0; tok < len; ++tok) {
        const int64_t page = p.block_table[size_t(b * p.block_table_batch_stride + tok / s.page_size)];
        const uint16_t* row = &p.k_cache[size_t(page * p.k_block_stride +
                                                (tok % s.page_size) * p.k_token_stride +
                                                hk * p.k_head_stride)];
        for (int c = 0; c < D; ++c) kv[size_t(tok) * D + c] = bits_to_float(s.dtype, row[c]);
      }
      for (int t = 0; t < s.s_q; ++t) {
        const int vis = p.visible_keys(b, t);
        for (int g = 0; g < group; ++g) {
          const int h = hk * group + g;
          const uint16_t* qrow =
              &p.q[size_t(b * p.q_batch_stride + t * p.q_token_stride + h * p.q_head_stride)];
          for (int c = 0; c < D; ++c) qv[size_t(c)] = bits_to_float(s.dtype, qrow[c]);
          double* o = &r.out[((size_t(b) * s.s_q + t) * s.h_q + h) * DV];
          if (vis == 0) continue;  // out 0, lse +inf
          scores.assign(size_t(vis), 0.0);
          double m = -std::numeric_limits<double>::infinity();
          for (int j = 0; j < vis; ++j) {
            double acc = 0.0;
            for (int c = 0; c < D; ++c) acc += qv[size_t(c)] * kv[size_t(j) * D + c];
            scores[size_t(j)] = acc * scale;
            m = std::max(m, scores[size_t(j)]);
          }
          double sum = 0.0;
          for (int j = 0; j < vis; ++j) {
            const double w = std::exp(scores[size_t(j)] - m);
            sum += w;
            for (int d = 0; d < DV; ++d) o[d] += w * kv[size_t(j) * D + d];
          }
          for (int d = 0; d < DV; ++d) o[d] /= sum;
          r.lse[(size_t(b) * s.h_q + h) * s.s_q + t] = m + std::log(sum);
        }
      }
    }
  }
  return r;
}

// ---------------------------------------------------------------------------------------------
// Comparisons
// ---------------------------------------------------------------------------------------------

namespace {

constexpr int kMaxReported = 8;

std::vector<char> valid_out_mask(const HostProblem& p) {
  std::vector<char> valid(p.out.size(), 0);
  for (int b = 0; b < p.batch; ++b)
    for (int t = 0; t < p.spec.s_q; ++t)
      for (int h = 0; h < p.spec.h_q; ++h)
        for (int d = 0; d < flashmla::kHeadDimV; ++d) valid[p.out_index(b, t, h, d)] = 1;
  return valid;
}

void check_padding(const HostProblem& p, const std::vector<uint16_t>& out, int& bad,
                   std::ostringstream& msg) {
  const std::vector<char> valid = valid_out_mask(p);
  for (size_t i = 0; i < out.size(); ++i)
    if (!valid[i] && out[i] != kNaNBits) {
      if (bad++ < kMaxReported) msg << "\n  out padding element " << i << " was written";
    }
}

bool lse_close(double a, double b, double rtol, double atol) {
  if (std::isnan(a) || std::isnan(b)) return false;
  if (std::isinf(a) || std::isinf(b)) return a == b;
  return std::fabs(a - b) <= rtol * std::max(std::fabs(a), std::fabs(b)) + atol;
}

}  // namespace

::testing::AssertionResult outputs_close(const HostProblem& p, const std::vector<uint16_t>& out_a,
                                         const std::vector<float>& lse_a,
                                         const std::vector<uint16_t>& out_b,
                                         const std::vector<float>& lse_b, int max_ulp,
                                         double lse_rtol, double lse_atol, double row_rtol) {
  std::ostringstream msg;
  int bad = 0;
  const DataType dt = p.spec.dtype;
  for (int b = 0; b < p.batch; ++b)
    for (int t = 0; t < p.spec.s_q; ++t)
      for (int h = 0; h < p.spec.h_q; ++h) {
        double row_max = 0.0;
        for (int d = 0; d < flashmla::kHeadDimV; ++d)
          row_max = std::max(row_max, double(std::fabs(bits_to_float(dt, out_b[p.out_index(b, t, h, d)]))));
        for (int d = 0; d < flashmla::kHeadDimV; ++d) {
          const size_t i = p.out_index(b, t, h, d);
          const bool nan = is_nan16(dt, out_a[i]) || is_nan16(dt, out_b[i]);
          const double diff = std::fabs(double(bits_to_float(dt, out_a[i])) - bits_to_float(dt, out_b[i]));
          if (nan || (ulp_distance16(out_a[i], out_b[i]) > max_ulp && !(diff <= row_rtol * row_max))) {
            if (bad++ < kMaxReported)
              msg << "\n  out[b=" << b << ",t=" << t << ",h=" << h << ",d=" << d
                  << "]: " << bits_to_float(dt, out_a[i]) << " vs " << bits_to_float(dt, out_b[i])
                  << " (bits 0x" << std::hex << out_a[i] << " vs 0x" << out_b[i] << std::dec << ")";
          }
        }
        const size_t li = p.lse_index(b, h, t);
        if (!lse_close(lse_a[li], lse_b[li], lse_rtol, lse_atol)) {
          if (bad++ < kMaxReported)
            msg << "\n  lse[b=" << b << ",h=" << h << ",t=" << t << "]: " << lse_a[li] << " vs "
                << lse_b[li];
        }
      }
  check_padding(p, out_a, bad, msg);
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << bad << " mismatches (" << p.spec.describe() << "):"
                                       << msg.str();
}

::testing::AssertionResult outputs_match_reference(const HostProblem& p,
                                                   const std::vector<uint16_t>& out,
                                                   const std::vector<float>& lse,
                                                   const NaiveResult& ref, Tolerance tol) {
  constexpr int DV = flashmla::kHeadDimV;
  std::ostringstream msg;
  int bad = 0;
  const DataType dt = p.spec.dtype;
  for (int b = 0; b < p.batch; ++b)
    for (int t = 0; t < p.spec.s_q; ++t)
      for (int h = 0; h < p.spec.h_q; ++h) {
        const double* r = &ref.out[((size_t(b) * p.spec.s_q + t) * p.spec.h_q + h) * DV];
        double row_max = 0.0;
        for (int d = 0; d < DV; ++d) row_max = std::max(row_max, std::fabs(r[d]));
        for (int d = 0; d < DV; ++d) {
          const uint16_t got = out[p.out_index(b, t, h, d)];
          bool ok;
          if (tol.max_ulp >= 0) {
            const uint16_t want = float_to_bits(dt, float(r[d]));
            ok = !is_nan16(dt, got) && ulp_distance16(got, want) <= tol.max_ulp;
          } else {
            const double g = bits_to_float(dt, got);
            ok = !std::isnan(g) && std::fabs(g - r[d]) <= tol.row_rtol * row_max + 1e-6;
          }
          if (!ok && bad++ < kMaxReported)
            msg << "\n  out[b=" << b << ",t=" << t << ",h=" << h << ",d=" << d
                << "]: got " << bits_to_float(dt, got) << " want " << r[d] << " (row max "
                << row_max << ")";
        }
        const size_t li = p.lse_index(b, h, t);
        const double want = ref.lse[li], got = lse[li];
        bool ok;
        if (std::isinf(want) || std::isinf(got) || std::isnan(got))
          ok = got == want;
        else
          ok = std::fabs(got - want) <= tol.lse_rtol * std::max(1.0, std::fabs(want));
        if (!ok && bad++ < kMaxReported)
          msg << "\n  lse[b=" << b << ",h=" << h << ",t=" << t << "]: got " << got << " want "
              << want;
      }
  check_padding(p, out, bad, msg);
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << bad << " mismatches vs float64 reference ("
                                       << p.spec.describe() << "):" << msg.str();
}

// ---------------------------------------------------------------------------------------------
// Scheduler helpers
// ---------------------------------------------------------------------------------------------

const char* dist_name(SeqlenDist d) {
  switch (d) {
    case SeqlenDist::kUniform: return "uniform";
    case SeqlenDist::kSkewed: return "skewed";
    case SeqlenDist::kSomeZeros: return "some_zeros";
    case SeqlenDist::kAllZero: return "all_zero";
    case SeqlenDist::kSingle: return "single";
  }
  return "?";
}

std::vector<int32_t> make_seqlens(SeqlenDist dist, int batch, std::mt19937_64& rng) {
  auto uniform = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  static const int kMaxLens[] = {1, 63, 64, 65, 200, 1000, 8192, 65536, 163840};
  std::vector<int32_t> s(static_cast<size_t>(batch), 0);
  switch (dist) {
    case SeqlenDist::kUniform: {
      const int hi = kMaxLens[uniform(0, int(std::size(kMaxLens)) - 1)];
      const int lo = uniform(0, 1) ? 1 : 0;
      for (auto& v : s) v = uniform(lo, std::max(lo, hi));
      break;
    }
    case SeqlenDist::kSkewed: {
      for (auto& v : s) v = uniform(0, 64);
      s[size_t(uniform(0, batch - 1))] = uniform(100000, 1000000);
      break;
    }
    case SeqlenDist::kSomeZeros: {
      const int hi = kMaxLens[uniform(0, int(std::size(kMaxLens)) - 1)];
      for (auto& v : s) v = uniform(0, 1) ? 0 : uniform(0, hi);
      break;
    }
    case SeqlenDist::kAllZero:
      break;
    case SeqlenDist::kSingle:
      s.assign(1, uniform(0, 1) ? uniform(0, 300) : uniform(0, 300000));
      break;
  }
  return s;
}

std::string summarize_seqlens(const std::vector<int32_t>& s) {
  std::ostringstream o;
  o << "[" << s.size() << "]{";
  const size_t shown = std::min<size_t>(s.size(), 24);
  for (size_t i = 0; i < shown; ++i) o << (i ? "," : "") << s[i];
  if (shown < s.size()) o << ",...";
  o << "}";
  return o.str();
}

::testing::AssertionResult check_split_plan(const std::vector<int32_t>& seqlens, int P,
                                            const int32_t* md, const int32_t* ns) {
  using flashmla::kFixedOverheadBlocks;
  const int batch = int(seqlens.size());
  std::ostringstream ctx;
  ctx << "num_sm_parts=" << P << " seqlens=" << summarize_seqlens(seqlens) << ": ";
  auto fail = [&]() { return ::testing::AssertionFailure() << ctx.str(); };

  std::vector<int64_t> blocks(static_cast<size_t>(batch));
  int64_t total = 0;
  for (int i = 0; i < batch; ++i) {
    blocks[size_t(i)] = flashmla::sched_blocks(seqlens[size_t(i)]);
    total += blocks[size_t(i)] + kFixedOverheadBlocks;
  }
  const int64_t payload = std::max<int64_t>((total + P - 1) / P, flashmla::kMinPartPayload);
  const int64_t bound = payload + kFixedOverheadBlocks;

  if (ns[0] != 0) return fail() << "num_splits[0] = " << ns[0] << ", want 0";

  struct Piece {
    int part;
    int64_t begin, end;
    int split;
  };
  std::vector<std::vector<Piece>> pieces(static_cast<size_t>(batch));
  for (int p = 0; p < P; ++p) {
    const int32_t* row = md + size_t(p) * flashmla::kMetadataInts;
    const int br = row[0], bb = row[1], er = row[2], eb = row[3], bs = row[4];
    if (er < br) continue;  // empty part
    if (br < 0 || er >= batch)
      return fail() << "part " << p << " covers requests " << br << ".." << er << " outside [0,"
                    << batch << ")";
    if (bs < 0) return fail() << "part " << p << " has begin_split " << bs;
    int64_t cost = 0;
    for (int i = br; i <= er; ++i) {
      const int64_t s = i == br ? bb : 0;
      const int64_t e = i == er ? eb : blocks[size_t(i)];
      const bool empty_req = blocks[size_t(i)] == 0;
      if (s < 0 || e > blocks[size_t(i)] || (empty_req ? (s != 0 || e != 0) : s >= e))
        return fail() << "part " << p << " (row " << br << "," << bb << "," << er << "," << eb
                      << "," << bs << ") gives request " << i << " (" << blocks[size_t(i)]
                      << " blocks) the invalid piece [" << s << "," << e << ")";
      pieces[size_t(i)].push_back({p, s, e, i == br ? bs : 0});
      cost += (e - s) + kFixedOverheadBlocks;
    }
    // Balance: part p covers at most L = max(ceil(T/P), kMinPartPayload) units of the cost
    // axis, plus at most one request overhead it pays without covering it (its first piece):
    //   cost_p <= L + kFixedOverheadBlocks.
    if (cost > bound)
      return fail() << "part " << p << " (row " << br << "," << bb << "," << er << "," << eb
                    << ") costs " << cost << " > L + overhead = " << payload << " + "
                    << kFixedOverheadBlocks << " (T=" << total << ")";
  }

  for (int i = 0; i < batch; ++i) {
    const auto& pc = pieces[size_t(i)];
    const int n = int(pc.size());
    if (n < 1) return fail() << "request " << i << " (seqlen " << seqlens[size_t(i)] << ") is owned by no part";
    if (blocks[size_t(i)] == 0 && n != 1)
      return fail() << "zero-length request " << i << " is owned by " << n << " parts";
    if (ns[i + 1] - ns[i] != n)
      return fail() << "num_splits[" << i + 1 << "] - num_splits[" << i << "] = "
                    << ns[i + 1] - ns[i] << " but request " << i << " is processed by " << n
                    << " parts";
    for (int k = 0; k < n; ++k) {
      if (pc[size_t(k)].split != k)
        return fail() << "request " << i << ": piece " << k << " (part " << pc[size_t(k)].part
                      << ") has split index " << pc[size_t(k)].split;
      const int64_t want_begin = k == 0 ? 0 : pc[size_t(k) - 1].end;
      if (pc[size_t(k)].begin != want_begin)
        return fail() << "request " << i << ": piece " << k << " (part " << pc[size_t(k)].part
                      << ") starts at block " << pc[size_t(k)].begin << ", want " << want_begin
                      << " (blocks covered twice or not at all)";
    }
    if (pc.back().end != blocks[size_t(i)])
      return fail() << "request " << i << ": pieces end at block " << pc.back().end << " of "
                    << blocks[size_t(i)];
  }
  if (ns[batch] > int64_t(batch) + P)
    return fail() << "total splits " << ns[batch] << " > batch + num_sm_parts = " << batch + P;
  return ::testing::AssertionSuccess();
}

}  // namespace flashmla_test
