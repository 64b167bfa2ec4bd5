// GPU robustness (ctest label "gpu"; ctest gpu_sanitizer_robustness_memcheck runs it under
// compute-sanitizer memcheck). Every test skips without a CUDA device.
//
// A plan on the device cannot be checked against the lengths without a host sync, so the
// contract there is memory safety: corrupted plans and out-of-range lengths give NaN rows (or
// wrong values), never a CUDA error or an out-of-bounds access. Also: lengths near INT32_MAX in
// the metadata kernel, attention sinks, softmax_scale 0 / negative and empty batches, each
// against the host backend.
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include "flashmla/flashmla.h"
#include "test_util.h"

namespace flashmla_test {
namespace {

constexpr int32_t kIntMax = std::numeric_limits<int32_t>::max();

#define CUDA_OK(expr)                                                                         \
  do {                                                                                        \
    const cudaError_t e_ = (expr);                                                            \
    ASSERT_EQ(e_, cudaSuccess) << #expr << ": " << cudaGetErrorName(e_) << " (" << cudaGetErrorString(e_) << ")"; \
  } while (0)

// Owning device copy of a host vector.
template <typename T>
class DeviceArray {
 public:
  explicit DeviceArray(const std::vector<T>& h) : n_(h.size()) {
    if (cudaMalloc(reinterpret_cast<void**>(&p_), (n_ == 0 ? 1 : n_) * sizeof(T)) == cudaSuccess && n_ > 0)
      cudaMemcpy(p_, h.data(), n_ * sizeof(T), cudaMemcpyHostToDevice);
  }
  ~DeviceArray() { cudaFree(p_); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  T* get() const { return p_; }
  std::vector<T> download() const {
    std::vector<T> h(n_);
    cudaMemcpy(h.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost);
    return h;
  }

 private:
  T* p_ = nullptr;
  size_t n_ = 0;
};

class GpuRobustness : public ::testing::Test {
 protected:
  void SetUp() override {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
      cudaGetLastError();
      GTEST_SKIP() << "no CUDA device";
    }
    int major = 0;
    CUDA_OK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0));
    if (major < 8) GTEST_SKIP() << "the decode kernels need compute capability 8.0+";
  }

  static void host_plan(const std::vector<int32_t>& seqlens, int parts, std::vector<int32_t>& md,
                        std::vector<int32_t>& ns) {
    md.assign(size_t(parts) * flashmla::kMetadataInts, 0);
    ns.assign(seqlens.size() + 1, 0);
    MetadataArgs m;
    m.backend = Backend::kHost;
    m.cache_seqlens = seqlens.data();
    m.batch = int(seqlens.size());
    m.num_sm_parts = parts;
    m.tile_scheduler_metadata = md.data();
    m.num_splits = ns.data();
    ASSERT_TRUE(flashmla::get_mla_metadata(m, nullptr).ok());
  }

  // mla_decode(kCuda) of `p` with the given host plan and lengths; the outputs (poisoned first)
  // land in p.out / p.lse. Any CUDA error fails the test.
  void gpu_decode(HostProblem& p, const std::vector<int32_t>& md, const std::vector<int32_t>& ns,
                  const std::vector<int32_t>& seqlens, const float* host_sink = nullptr) {
    p.poison_outputs();
    DeviceArray<uint16_t> q(p.q), k(p.k_cache), out(p.out);
    DeviceArray<int32_t> table(p.block_table), lens(seqlens), d_md(md), d_ns(ns);
    DeviceArray<float> lse(p.lse);
    std::vector<float> sink_h;
    if (host_sink != nullptr) sink_h.assign(host_sink, host_sink + p.spec.h_q);
    DeviceArray<float> sink(sink_h);
    const int parts = int(md.size() / flashmla::kMetadataInts);
    const size_t ws_bytes = flashmla::decode_workspace_size(p.batch, p.spec.s_q, p.spec.h_q, p.spec.h_kv, parts);
    DeviceArray<uint8_t> ws(std::vector<uint8_t>(ws_bytes, 0xFF));
    DecodeArgs a = p.args();
    a.backend = Backend::kCuda;
    a.q = q.get();
    a.k_cache = k.get();
    a.block_table = table.get();
    a.cache_seqlens = lens.get();
    a.out = out.get();
    a.softmax_lse = lse.get();
    a.tile_scheduler_metadata = d_md.get();
    a.num_splits = d_ns.get();
    a.num_sm_parts = parts;
    a.attn_sink = host_sink ? sink.get() : nullptr;
    const flashmla::Status st = flashmla::mla_decode(a, ws.get(), ws_bytes, nullptr);
    ASSERT_TRUE(st.ok()) << st.message();
    CUDA_OK(cudaDeviceSynchronize());
    CUDA_OK(cudaGetLastError());
    p.out = out.download();
    p.lse = lse.download();
  }

  // Host backend result of `p` (split plan with `parts`), into p.out / p.lse.
  static void host_decode(HostProblem& p, int parts, const float* sink = nullptr) {
    std::vector<int32_t> md, ns;
    host_plan(p.seqlens, parts, md, ns);
    AlignedBuffer ws(flashmla::decode_workspace_size(p.batch, p.spec.s_q, p.spec.h_q, p.spec.h_kv, parts));
    p.poison_outputs();
    DecodeArgs a = p.args();
    a.tile_scheduler_metadata = md.data();
    a.num_splits = ns.data();
    a.num_sm_parts = parts;
    a.attn_sink = sink;
    const flashmla::Status st = flashmla::mla_decode(a, ws.data(), ws.size(), nullptr);
    ASSERT_TRUE(st.ok()) << st.message();
  }

  static bool request_is_nan(const HostProblem& p, int b) {
    for (int t = 0; t < p.spec.s_q; ++t)
      for (int h = 0; h < p.spec.h_q; ++h) {
        if (!std::isnan(p.lse[p.lse_index(b, h, t)])) return false;
        for (int d = 0; d < flashmla::kHeadDimV; ++d)
          if (!is_nan16(p.spec.dtype, p.out[p.out_index(b, t, h, d)])) return false;
      }
    return true;
  }
};

ProblemSpec small_spec() {
  ProblemSpec spec;
  spec.s_q = 2;
  spec.h_q = 16;
  spec.seqlens = {300, 0, 1000, 64};
  return spec;
}

TEST_F(GpuRobustness, MetadataWithLengthsNearInt32Max) {
  const std::vector<int32_t> seqlens = {2147483600, kIntMax, 5, -1, 0, kIntMax};
  for (int parts : {1, 7, 132, flashmla::kMaxSmParts}) {
    std::vector<int32_t> want_md, want_ns;
    host_plan(seqlens, parts, want_md, want_ns);
    DeviceArray<int32_t> lens(seqlens), md(std::vector<int32_t>(want_md.size(), -1)),
        ns(std::vector<int32_t>(want_ns.size(), -1));
    MetadataArgs m;
    m.backend = Backend::kCuda;
    m.cache_seqlens = lens.get();
    m.batch = int(seqlens.size());
    m.num_sm_parts = parts;
    m.tile_scheduler_metadata = md.get();
    m.num_splits = ns.get();
    ASSERT_TRUE(flashmla::get_mla_metadata(m, nullptr).ok());
    CUDA_OK(cudaDeviceSynchronize());
    EXPECT_EQ(md.download(), want_md) << "num_sm_parts " << parts;
    EXPECT_EQ(ns.download(), want_ns) << "num_sm_parts " << parts;
  }
}

// The plan: requests 0 and 1 have no valid split range, so their rows are NaN.
TEST_F(GpuRobustness, CorruptedNumSplitsGiveNaNRows) {
  HostProblem p = make_problem(small_spec());
  std::vector<int32_t> md, ns;
  host_plan(p.seqlens, 7, md, ns);
  ns[0] = 0, ns[1] = 1000, ns[2] = -3;
  gpu_decode(p, md, ns, p.seqlens);
  ASSERT_FALSE(HasFatalFailure());
  EXPECT_TRUE(request_is_nan(p, 0));
  EXPECT_TRUE(request_is_nan(p, 1));
}

// Random plans and lengths: no CUDA error, ever (memcheck: no out-of-bounds access).
TEST_F(GpuRobustness, RandomCorruptionNeverFaults) {
  HostProblem p = make_problem(small_spec());
  std::vector<int32_t> md0, ns0;
  host_plan(p.seqlens, 7, md0, ns0);
  std::mt19937_64 rng(99);
  const int32_t extremes[] = {kIntMax, std::numeric_limits<int32_t>::min(), -1, 0, 1, 4096, 1 << 25};
  auto value = [&](int32_t near) -> int32_t {
    switch (rng() % 3) {
      case 0: return extremes[rng() % (sizeof(extremes) / sizeof(extremes[0]))];
      case 1: return near + int32_t(rng() % 7) - 3;
      default: return int32_t(rng());
    }
  };
  for (int iter = 0; iter < 60; ++iter) {
    SCOPED_TRACE("iteration " + std::to_string(iter));
    std::vector<int32_t> md = md0, ns = ns0, lens = p.seqlens;
    for (int m = 0; m < 3; ++m) {
      switch (rng() % 3) {
        case 0: { int32_t& v = md[rng() % md.size()]; v = value(v); break; }
        case 1: { int32_t& v = ns[rng() % ns.size()]; v = value(v); break; }
        default: { int32_t& v = lens[rng() % lens.size()]; v = value(v); break; }
      }
    }
    gpu_decode(p, md, ns, lens);
    ASSERT_FALSE(HasFatalFailure());
  }
  // The context is intact: a valid call matches the host backend.
  HostProblem want = p;
  host_decode(want, 7);
  gpu_decode(p, md0, ns0, p.seqlens);
  ASSERT_FALSE(HasFatalFailure());
  EXPECT_TRUE(outputs_close(p, p.out, p.lse, want.out, want.lse, 2, 1e-5, 1e-5, 1e-2));
}

TEST_F(GpuRobustness, LengthPastTheBlockTableGivesNaNRows) {
  HostProblem p = make_problem(small_spec());
  std::vector<int32_t> lens = p.seqlens;
  lens[2] = kIntMax;
  std::vector<int32_t> md, ns;
  host_plan(lens, 132, md, ns);
  gpu_decode(p, md, ns, lens);
  ASSERT_FALSE(HasFatalFailure());
  EXPECT_TRUE(request_is_nan(p, 2));
  EXPECT_FALSE(request_is_nan(p, 0));
}

// Sinks on split and unsplit requests, softmax_scale 0 and negative: GPU == host backend.
TEST_F(GpuRobustness, AttentionSinkAndScalesMatchTheHost) {
  std::vector<float> sink(16);
  for (int h = 0; h < 16; ++h) sink[size_t(h)] = float(h - 8) * 0.5f;
  sink[0] = -std::numeric_limits<float>::infinity();
  const std::optional<float> scales[] = {std::nullopt, 0.f, -0.05f};
  for (const std::optional<float>& scale : scales)
    for (bool with_sink : {false, true})
      for (int parts : {1, 7, 132}) {
        ProblemSpec spec = small_spec();
        spec.softmax_scale = scale;
        spec.causal = true;
        HostProblem p = make_problem(spec);
        SCOPED_TRACE(spec.describe() + " sink=" + std::to_string(with_sink) + " parts=" + std::to_string(parts));
        HostProblem want = p;
        host_decode(want, parts, with_sink ? sink.data() : nullptr);
        std::vector<int32_t> md, ns;
        host_plan(p.seqlens, parts, md, ns);
        gpu_decode(p, md, ns, p.seqlens, with_sink ? sink.data() : nullptr);
        ASSERT_FALSE(HasFatalFailure());
        EXPECT_TRUE(outputs_close(p, p.out, p.lse, want.out, want.lse, 2, 1e-5, 1e-5, 1e-2));
      }
}

TEST_F(GpuRobustness, EmptyBatchLaunchesNothing) {
  DecodeArgs a;
  a.backend = Backend::kCuda;
  a.batch = 0;
  a.s_q = 1;
  a.h_q = 16;
  a.h_kv = 1;
  const flashmla::Status st = flashmla::mla_decode(a, nullptr, 0, nullptr);
  EXPECT_TRUE(st.ok()) << st.message();
  CUDA_OK(cudaDeviceSynchronize());
  CUDA_OK(cudaGetLastError());
}

}  // namespace
}  // namespace flashmla_test
