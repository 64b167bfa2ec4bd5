// GPU tests (ctest label "gpu"): the CUDA backend against the host backend.
// Every test skips (GTEST_SKIP) when cudaGetDeviceCount reports no device.
//
//   * GpuMetadata: get_mla_metadata(kCuda) == get_mla_metadata(kHost), bit for bit.
//   * GpuDecode:   mla_decode(kCuda) vs reference_decode (float64 on the host), outputs
//                  poisoned with 0xFF bytes (NaN) before the call, every CUDA call checked.
//   * GpuGraph:    metadata + decode captured in a CUDA graph, replayed after the device
//                  seqlens change.
//   * GpuDispatch: the kernel family chosen per device and page size, and FLASHMLA_KERNEL.
//   * GpuPdl:      the combine as a programmatic dependent launch (FLASHMLA_PDL=1 or 0): the
//                  same bits either way, eagerly and replayed from a CUDA graph.
//   * GpuQuick:    a few small cases, fast enough for compute-sanitizer (see README.md).
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include <cuda_runtime_api.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "flashmla/flashmla.h"
#include "test_util.h"

namespace flashmla_test {
namespace {

#define CUDA_OK(expr)                                                                      \
  do {                                                                                     \
    const cudaError_t e_ = (expr);                                                         \
    ASSERT_EQ(e_, cudaSuccess) << #expr << ": " << cudaGetErrorName(e_) << " ("           \
                               << cudaGetErrorString(e_) << ")";                           \
  } while (0)

#define STATUS_OK(expr)                                          \
  do {                                                           \
    const ::flashmla::Status s_ = (expr);                        \
    ASSERT_TRUE(s_.ok()) << #expr << ": " << s_.message();       \
  } while (0)

// Owning device allocation. Check ok() (or use alloc()) before use.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  ~DeviceBuffer() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  cudaError_t alloc(size_t bytes) {
    bytes_ = bytes;
    return cudaMalloc(&ptr_, bytes == 0 ? 1 : bytes);
  }
  template <typename T>
  T* as() const { return static_cast<T*>(ptr_); }
  void* get() const { return ptr_; }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

template <typename T>
void upload(DeviceBuffer& d, const std::vector<T>& h) {
  CUDA_OK(d.alloc(h.size() * sizeof(T)));
  CUDA_OK(cudaMemcpy(d.get(), h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
}

template <typename T>
void download(std::vector<T>& h, const DeviceBuffer& d, size_t count) {
  h.resize(count);
  CUDA_OK(cudaMemcpy(h.data(), d.get(), count * sizeof(T), cudaMemcpyDeviceToHost));
}

struct DeviceProps {
  int sms = 0;
  int major = 0;
  int minor = 0;
};

// Skips the calling test when there is no usable device.
class Gpu : public ::testing::Test {
 protected:
  void SetUp() override {
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
      cudaGetLastError();
      GTEST_SKIP() << "no CUDA device (cudaGetDeviceCount: "
                   << (e == cudaSuccess ? "0 devices" : cudaGetErrorName(e)) << ")";
    }
    CUDA_OK(cudaDeviceGetAttribute(&props_.sms, cudaDevAttrMultiProcessorCount, 0));
    CUDA_OK(cudaDeviceGetAttribute(&props_.major, cudaDevAttrComputeCapabilityMajor, 0));
    CUDA_OK(cudaDeviceGetAttribute(&props_.minor, cudaDevAttrComputeCapabilityMinor, 0));
    if (props_.major < 8) GTEST_SKIP() << "the decode kernels need compute capability 8.0+";
  }
  DeviceProps props_;
};

// ---------------------------------------------------------------------------------------------
// Metadata
// ---------------------------------------------------------------------------------------------

struct Plan {
  std::vector<int32_t> metadata, num_splits;
};

void host_plan(const std::vector<int32_t>& seqlens, int parts, Plan& plan) {
  plan.metadata.assign(size_t(parts) * flashmla::kMetadataInts, -1);
  plan.num_splits.assign(seqlens.size() + 1, -1);
  MetadataArgs m;
  m.backend = Backend::kHost;
  m.cache_seqlens = seqlens.data();
  m.batch = int(seqlens.size());
  m.num_sm_parts = parts;
  m.tile_scheduler_metadata = plan.metadata.data();
  m.num_splits = plan.num_splits.data();
  STATUS_OK(flashmla::get_mla_metadata(m, nullptr));
}

// Device plan from device seqlens; the output arrays are poisoned first.
void device_plan(const DeviceBuffer& d_seqlens, int batch, int parts, DeviceBuffer& d_metadata,
                 DeviceBuffer& d_num_splits, cudaStream_t stream) {
  CUDA_OK(d_metadata.alloc(size_t(parts) * flashmla::kMetadataInts * sizeof(int32_t)));
  CUDA_OK(d_num_splits.alloc((size_t(batch) + 1) * sizeof(int32_t)));
  CUDA_OK(cudaMemset(d_metadata.get(), 0xFF, d_metadata.bytes()));
  CUDA_OK(cudaMemset(d_num_splits.get(), 0xFF, d_num_splits.bytes()));
  MetadataArgs m;
  m.backend = Backend::kCuda;
  m.cache_seqlens = d_seqlens.as<int32_t>();
  m.batch = batch;
  m.num_sm_parts = parts;
  m.tile_scheduler_metadata = d_metadata.as<int32_t>();
  m.num_splits = d_num_splits.as<int32_t>();
  STATUS_OK(flashmla::get_mla_metadata(m, stream));
}

void expect_device_plan_matches_host(const std::vector<int32_t>& seqlens, int parts,
                                     const std::string& what) {
  SCOPED_TRACE(what + " num_sm_parts=" + std::to_string(parts) + " seqlens=" +
               summarize_seqlens(seqlens));
  Plan want, got;
  host_plan(seqlens, parts, want);
  DeviceBuffer d_seqlens, d_md, d_ns;
  upload(d_seqlens, seqlens);
  if (::testing::Test::HasFatalFailure()) return;
  device_plan(d_seqlens, int(seqlens.size()), parts, d_md, d_ns, nullptr);
  if (::testing::Test::HasFatalFailure()) return;
  CUDA_OK(cudaDeviceSynchronize());
  CUDA_OK(cudaGetLastError());
  download(got.metadata, d_md, want.metadata.size());
  download(got.num_splits, d_ns, want.num_splits.size());
  ASSERT_FALSE(::testing::Test::HasFatalFailure());
  EXPECT_TRUE(check_split_plan(seqlens, parts, got.metadata.data(), got.num_splits.data()));
  for (size_t i = 0; i < want.num_splits.size(); ++i)
    ASSERT_EQ(got.num_splits[i], want.num_splits[i]) << "num_splits[" << i << "]";
  for (size_t i = 0; i < want.metadata.size(); ++i)
    ASSERT_EQ(got.metadata[i], want.metadata[i])
        << "metadata part " << i / flashmla::kMetadataInts << " int " << i % flashmla::kMetadataInts;
}

class GpuMetadata : public Gpu {};

TEST_F(GpuMetadata, MatchesHostOnRandomBatches) {
  std::mt19937_64 rng(31337);
  const int device_parts = flashmla::num_sm_parts(props_.sms, 128, 1);
  for (int parts : {1, 2, 7, 132, 264, device_parts, 2048})
    for (SeqlenDist dist : {SeqlenDist::kUniform, SeqlenDist::kSkewed, SeqlenDist::kSomeZeros,
                            SeqlenDist::kAllZero, SeqlenDist::kSingle})
      for (int batch : {1, 3, 64, 511, 513, 1000, 4096, 20000}) {
        if (dist == SeqlenDist::kSingle && batch != 1) continue;
        const auto seqlens = make_seqlens(dist, batch, rng);
        expect_device_plan_matches_host(seqlens, parts, dist_name(dist));
        if (HasFailure()) return;
      }
}

// A huge num_sm_parts is either planned correctly or rejected naming num_sm_parts.
TEST_F(GpuMetadata, HugePartCount) {
  const std::vector<int32_t> seqlens = {10, 20000, 0};
  const int parts = 1 << 16;
  DeviceBuffer d_seqlens, d_md, d_ns;
  upload(d_seqlens, seqlens);
  ASSERT_FALSE(HasFatalFailure());
  CUDA_OK(d_md.alloc(size_t(parts) * flashmla::kMetadataInts * sizeof(int32_t)));
  CUDA_OK(d_ns.alloc((seqlens.size() + 1) * sizeof(int32_t)));
  MetadataArgs m;
  m.backend = Backend::kCuda;
  m.cache_seqlens = d_seqlens.as<int32_t>();
  m.batch = int(seqlens.size());
  m.num_sm_parts = parts;
  m.tile_scheduler_metadata = d_md.as<int32_t>();
  m.num_splits = d_ns.as<int32_t>();
  const flashmla::Status st = flashmla::get_mla_metadata(m, nullptr);
  CUDA_OK(cudaDeviceSynchronize());
  CUDA_OK(cudaGetLastError());
  if (!st.ok()) {
    EXPECT_THAT(st.message(), ::testing::HasSubstr("num_sm_parts"));
    return;
  }
  expect_device_plan_matches_host(seqlens, parts, "huge part count");
}

// ---------------------------------------------------------------------------------------------
// Decode
// ---------------------------------------------------------------------------------------------

struct Result {
  std::vector<uint16_t> out;
  std::vector<float> lse;
};

// A problem on the device: inputs, plan, outputs and workspace, and the arguments over them.
struct DeviceProblem {
  DeviceBuffer q, k, table, seqlens, md, ns, out, lse, ws;
  DecodeArgs args;
};

// Uploads the problem and plans it with `parts` parts on `stream`; outputs and workspace are
// poisoned with NaN.
void to_device(const HostProblem& p, int parts, DeviceProblem& d, cudaStream_t stream) {
  upload(d.q, p.q);
  upload(d.k, p.k_cache);
  upload(d.table, p.block_table);
  upload(d.seqlens, p.seqlens);
  device_plan(d.seqlens, p.batch, parts, d.md, d.ns, stream);
  if (::testing::Test::HasFatalFailure()) return;
  CUDA_OK(d.out.alloc(p.out.size() * sizeof(uint16_t)));
  CUDA_OK(d.lse.alloc(p.lse.size() * sizeof(float)));
  CUDA_OK(d.ws.alloc(flashmla::decode_workspace_size(p.batch, p.spec.s_q, p.spec.h_q, p.spec.h_kv, parts)));
  for (const DeviceBuffer* b : {&d.out, &d.lse, &d.ws})
    CUDA_OK(cudaMemset(b->get(), 0xFF, b->bytes()));  // NaN in bf16, fp16 and float

  HostProblem shape = p;  // args() over host vectors; swap in the device pointers
  DecodeArgs& a = d.args;
  a = shape.args();
  a.backend = Backend::kCuda;
  a.q = d.q.get();
  a.k_cache = d.k.get();
  a.block_table = d.table.as<int32_t>();
  a.cache_seqlens = d.seqlens.as<int32_t>();
  a.tile_scheduler_metadata = d.md.as<int32_t>();
  a.num_splits = d.ns.as<int32_t>();
  a.num_sm_parts = parts;
  a.out = d.out.get();
  a.softmax_lse = d.lse.as<float>();
}

void download_result(const HostProblem& p, const DeviceProblem& d, Result& r) {
  download(r.out, d.out, p.out.size());
  download(r.lse, d.lse, p.lse.size());
}

// Uploads the problem, plans and decodes on the GPU with `parts` parts, downloads out and lse
// (out in the problem's padded layout, so padding can be checked).
void gpu_decode(const HostProblem& p, int parts, Result& r, cudaStream_t stream = nullptr) {
  DeviceProblem d;
  to_device(p, parts, d, stream);
  if (::testing::Test::HasFatalFailure()) return;
  STATUS_OK(flashmla::mla_decode(d.args, d.ws.get(), d.ws.bytes(), stream));
  CUDA_OK(cudaStreamSynchronize(stream));
  CUDA_OK(cudaGetLastError());
  download_result(p, d, r);
}

void host_reference(HostProblem& p, Result& r) {
  p.poison_outputs();
  STATUS_OK(flashmla::reference_decode(p.args()));
  r.out = p.out;
  r.lse = p.lse;
}

// The host reference's outputs as the float64 "truth" for the tolerance comparison.
NaiveResult as_truth(const HostProblem& p, const Result& ref) {
  constexpr int DV = flashmla::kHeadDimV;
  NaiveResult t;
  t.out.resize(size_t(p.batch) * p.spec.s_q * p.spec.h_q * DV);
  t.lse.assign(ref.lse.begin(), ref.lse.end());
  for (int b = 0; b < p.batch; ++b)
    for (int s = 0; s < p.spec.s_q; ++s)
      for (int h = 0; h < p.spec.h_q; ++h)
        for (int d = 0; d < DV; ++d)
          t.out[((size_t(b) * p.spec.s_q + s) * p.spec.h_q + h) * DV + d] =
              bits_to_float(p.spec.dtype, ref.out[p.out_index(b, s, h, d)]);
  return t;
}

// GPU accuracy: scores in fp32, probabilities rounded to the input dtype for the PV product,
// output rounded to the dtype. Per element |gpu - ref| <= row_rtol * max|ref row|.
Tolerance gpu_tolerance(DataType dt) {
  Tolerance t;
  t.max_ulp = -1;
  t.row_rtol = dt == DataType::kBFloat16 ? 1.0 / 64 : 1.0 / 256;
  t.lse_rtol = 1e-4;
  return t;
}

std::vector<int32_t> grid_seqlens(int batch, uint64_t seed) {
  std::mt19937_64 rng(seed);
  if (batch == 1) return {4999};
  if (batch == 3) return {0, 5000, 77};
  std::vector<int32_t> s(static_cast<size_t>(batch));
  for (auto& v : s) v = std::uniform_int_distribution<int>(1, 600)(rng);
  s[2] = 0;
  s[5] = 5003;
  s[11] = 64;
  return s;
}

using GpuGridParam = std::tuple<DataType, int, int, int, bool>;  // dtype, batch, s_q, h_q, causal

class GpuDecode : public Gpu, public ::testing::WithParamInterface<GpuGridParam> {};

TEST_P(GpuDecode, MatchesReference) {
  const auto [dtype, batch, s_q, h_q, causal] = GetParam();
  ProblemSpec spec;
  spec.dtype = dtype;
  spec.s_q = s_q;
  spec.h_q = h_q;
  spec.h_kv = 1;
  spec.causal = causal;
  spec.seed = uint64_t(batch * 1000 + s_q * 100 + h_q + causal * 7 + (dtype == DataType::kFloat16) * 50000);
  spec.seqlens = grid_seqlens(batch, spec.seed);
  spec.q_amplitude = 2.f;
  HostProblem p = make_problem(spec);
  SCOPED_TRACE(spec.describe());

  Result ref;
  host_reference(p, ref);
  ASSERT_FALSE(HasFatalFailure());
  const NaiveResult truth = as_truth(p, ref);

  const int device_parts = flashmla::num_sm_parts(props_.sms, s_q * h_q, 1);
  for (int parts : {device_parts, 1}) {
    SCOPED_TRACE("num_sm_parts=" + std::to_string(parts));
    Result got;
    gpu_decode(p, parts, got);
    ASSERT_FALSE(HasFatalFailure());
    EXPECT_TRUE(outputs_match_reference(p, got.out, got.lse, truth, gpu_tolerance(dtype)));
  }
}

INSTANTIATE_TEST_SUITE_P(
    Grid, GpuDecode,
    ::testing::Combine(::testing::Values(DataType::kBFloat16, DataType::kFloat16),
                       // batch; on an H200 (132 SM parts) the combine puts 4, 4, 4, 2 warps on each row
                       ::testing::Values(1, 3, 17, 24),
                       ::testing::Values(1, 2),       // s_q
                       ::testing::Values(16, 128),    // h_q
                       ::testing::Bool()),            // causal
    [](const ::testing::TestParamInfo<GpuGridParam>& info) {
      std::ostringstream s;
      s << dtype_name(std::get<0>(info.param)) << "_b" << std::get<1>(info.param) << "_sq"
        << std::get<2>(info.param) << "_hq" << std::get<3>(info.param)
        << (std::get<4>(info.param) ? "_causal" : "_full");
      return s.str();
    });

class GpuDecodeShapes : public Gpu {};

// Shapes off the main grid: two KV heads, page size 128, s_q 3, contiguous and padded strides.
TEST_F(GpuDecodeShapes, KvHeadsPageSizesStrides) {
  struct Case {
    int h_kv, h_q, s_q, page_size;
    bool padded, causal;
  };
  for (const Case& c : {Case{2, 32, 3, 128, true, true}, Case{1, 64, 4, 128, false, false},
                        Case{1, 16, 1, 64, false, false}, Case{4, 16, 2, 64, true, true}})
    for (DataType dtype : {DataType::kBFloat16, DataType::kFloat16}) {
      ProblemSpec spec;
      spec.dtype = dtype;
      spec.h_kv = c.h_kv;
      spec.h_q = c.h_q;
      spec.s_q = c.s_q;
      spec.page_size = c.page_size;
      spec.padded_strides = c.padded;
      spec.causal = c.causal;
      spec.seqlens = {1, 0, 2500, 129, 700};
      spec.seed = uint64_t(c.h_kv * 100 + c.s_q * 10 + c.page_size);
      HostProblem p = make_problem(spec);
      SCOPED_TRACE(spec.describe());
      Result ref, got;
      host_reference(p, ref);
      ASSERT_FALSE(HasFatalFailure());
      const int parts = flashmla::num_sm_parts(props_.sms, c.s_q * c.h_q / c.h_kv, c.h_kv);
      gpu_decode(p, parts, got);
      ASSERT_FALSE(HasFatalFailure());
      EXPECT_TRUE(outputs_match_reference(p, got.out, got.lse, as_truth(p, ref), gpu_tolerance(dtype)));
    }
}

// Out-of-range lengths or pages: NaN for that request only, no out-of-bounds access.
void check_bad_request_is_nan(const HostProblem& good, const Tolerance& tol, int parts) {
  HostProblem ref_problem = good;
  Result ref;
  host_reference(ref_problem, ref);
  ASSERT_FALSE(::testing::Test::HasFatalFailure());
  for (int variant = 0; variant < 4; ++variant) {
    HostProblem bad = good;
    const char* what = "";
    switch (variant) {
      case 0: bad.seqlens[1] = bad.max_blocks_per_seq * bad.spec.page_size + 1; what = "seqlen > capacity"; break;
      case 1: bad.seqlens[1] = -5; what = "negative seqlen"; break;
      case 2: bad.block_table[size_t(bad.block_table_batch_stride + 1)] = bad.num_blocks; what = "page == num_blocks"; break;
      case 3: bad.block_table[size_t(bad.block_table_batch_stride)] = kBadPage; what = "page 2147480000"; break;
    }
    SCOPED_TRACE(what);
    Result got;
    gpu_decode(bad, parts, got);
    ASSERT_FALSE(::testing::Test::HasFatalFailure());
    const DataType dt = good.spec.dtype;
    for (int t = 0; t < good.spec.s_q; ++t)
      for (int h = 0; h < good.spec.h_q; ++h) {
        EXPECT_TRUE(std::isnan(got.lse[good.lse_index(1, h, t)])) << "t=" << t << " h=" << h;
        for (int d = 0; d < flashmla::kHeadDimV; ++d)
          ASSERT_TRUE(is_nan16(dt, got.out[good.out_index(1, t, h, d)])) << "t=" << t << " h=" << h << " d=" << d;
      }
    // The other requests are unaffected: compare them against the reference.
    NaiveResult truth = as_truth(good, ref);
    Result masked = got;
    for (int t = 0; t < good.spec.s_q; ++t)
      for (int h = 0; h < good.spec.h_q; ++h) {
        masked.lse[good.lse_index(1, h, t)] = ref.lse[good.lse_index(1, h, t)];
        for (int d = 0; d < flashmla::kHeadDimV; ++d)
          masked.out[good.out_index(1, t, h, d)] = ref.out[good.out_index(1, t, h, d)];
      }
    EXPECT_TRUE(outputs_match_reference(good, masked.out, masked.lse, truth, tol));
  }
}

TEST_F(GpuDecodeShapes, OutOfRangeLengthsAndPagesGiveNaN) {
  ProblemSpec spec;
  spec.dtype = DataType::kBFloat16;
  spec.s_q = 2;
  spec.h_q = 16;
  spec.seqlens = {300, 1000, 50};
  spec.extra_table_cols = 0;
  HostProblem p = make_problem(spec);
  for (int parts : {1, 7, flashmla::num_sm_parts(props_.sms, 32, 1)}) {
    SCOPED_TRACE("num_sm_parts=" + std::to_string(parts));
    check_bad_request_is_nan(p, gpu_tolerance(spec.dtype), parts);
  }
}

// ---------------------------------------------------------------------------------------------
// CUDA graph: the plan is computed on the device, so one captured graph serves any lengths.
// ---------------------------------------------------------------------------------------------

class GpuGraph : public Gpu {};

TEST_F(GpuGraph, CaptureOnceReplayWithNewLengths) {
  ProblemSpec spec;
  spec.dtype = DataType::kBFloat16;
  spec.s_q = 2;
  spec.h_q = 64;
  spec.seqlens = {900, 2000, 0, 33};
  HostProblem p = make_problem(spec);  // cache sized for these lengths
  const int parts = flashmla::num_sm_parts(props_.sms, spec.s_q * spec.h_q, 1);

  DeviceBuffer q, k, table, seqlens, md, ns, out, lse, ws;
  upload(q, p.q);
  upload(k, p.k_cache);
  upload(table, p.block_table);
  upload(seqlens, p.seqlens);
  ASSERT_FALSE(HasFatalFailure());
  CUDA_OK(md.alloc(size_t(parts) * flashmla::kMetadataInts * sizeof(int32_t)));
  CUDA_OK(ns.alloc((size_t(p.batch) + 1) * sizeof(int32_t)));
  CUDA_OK(out.alloc(p.out.size() * sizeof(uint16_t)));
  CUDA_OK(lse.alloc(p.lse.size() * sizeof(float)));
  const size_t ws_bytes = flashmla::decode_workspace_size(p.batch, spec.s_q, spec.h_q, 1, parts);
  CUDA_OK(ws.alloc(ws_bytes));

  cudaStream_t stream;
  CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  MetadataArgs m;
  m.backend = Backend::kCuda;
  m.cache_seqlens = seqlens.as<int32_t>();
  m.batch = p.batch;
  m.num_sm_parts = parts;
  m.tile_scheduler_metadata = md.as<int32_t>();
  m.num_splits = ns.as<int32_t>();
  DecodeArgs a = p.args();
  a.backend = Backend::kCuda;
  a.q = q.get();
  a.k_cache = k.get();
  a.block_table = table.as<int32_t>();
  a.cache_seqlens = seqlens.as<int32_t>();
  a.tile_scheduler_metadata = md.as<int32_t>();
  a.num_splits = ns.as<int32_t>();
  a.num_sm_parts = parts;
  a.out = out.get();
  a.softmax_lse = lse.as<float>();

  cudaGraph_t graph;
  CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  const flashmla::Status s1 = flashmla::get_mla_metadata(m, stream);
  const flashmla::Status s2 = flashmla::mla_decode(a, ws.get(), ws_bytes, stream);
  CUDA_OK(cudaStreamEndCapture(stream, &graph));
  ASSERT_TRUE(s1.ok()) << s1.message();
  ASSERT_TRUE(s2.ok()) << s2.message();
  cudaGraphExec_t exec;
  CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));

  // Shorter lengths (fit in the same pages), then the original ones.
  for (const std::vector<int32_t>& lens : {std::vector<int32_t>{17, 1999, 0, 1},
                                           std::vector<int32_t>{900, 2000, 0, 33},
                                           std::vector<int32_t>{0, 0, 0, 0}}) {
    SCOPED_TRACE("seqlens " + summarize_seqlens(lens));
    HostProblem cur = p;
    cur.seqlens = lens;
    CUDA_OK(cudaMemcpyAsync(seqlens.get(), lens.data(), lens.size() * sizeof(int32_t),
                            cudaMemcpyHostToDevice, stream));
    CUDA_OK(cudaMemsetAsync(out.get(), 0xFF, out.bytes(), stream));
    CUDA_OK(cudaMemsetAsync(lse.get(), 0xFF, lse.bytes(), stream));
    CUDA_OK(cudaGraphLaunch(exec, stream));
    CUDA_OK(cudaStreamSynchronize(stream));
    Result got, ref;
    download(got.out, out, p.out.size());
    download(got.lse, lse, p.lse.size());
    host_reference(cur, ref);
    ASSERT_FALSE(HasFatalFailure());
    EXPECT_TRUE(outputs_match_reference(cur, got.out, got.lse, as_truth(cur, ref), gpu_tolerance(spec.dtype)));
  }
  CUDA_OK(cudaGraphExecDestroy(exec));
  CUDA_OK(cudaGraphDestroy(graph));
  CUDA_OK(cudaStreamDestroy(stream));
}

// ---------------------------------------------------------------------------------------------
// Quick cases for compute-sanitizer (memcheck / racecheck / synccheck / initcheck)
// ---------------------------------------------------------------------------------------------

class GpuQuick : public Gpu {};

// ---------------------------------------------------------------------------------------------
// Dispatch: which kernel family runs, and the FLASHMLA_KERNEL switch
// ---------------------------------------------------------------------------------------------

// Sets an environment variable (FLASHMLA_KERNEL, FLASHMLA_PDL) for one scope, or unsets it
// (nullptr), and restores the previous value.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    const char* old = std::getenv(name);
    had_old_ = old != nullptr;
    if (had_old_) old_ = old;
    set(value);
  }
  ~ScopedEnv() { set(had_old_ ? old_.c_str() : nullptr); }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  void set(const char* value) {
    if (value == nullptr)
      unsetenv(name_);
    else
      setenv(name_, value, 1);
  }
  const char* name_;
  bool had_old_ = false;
  std::string old_;
};

class GpuDispatch : public Gpu {};

TEST_F(GpuDispatch, HopperWhenPossiblePortableOtherwise) {
  ProblemSpec spec;
  spec.seqlens = {300, 70};
  const bool hopper = props_.major == 9 && props_.minor == 0;
  for (int page : {64, 128, 16, 1, 100}) {
    spec.page_size = page;
    HostProblem p = make_problem(spec);
    flashmla::DecodeArgs args = p.args();
    args.backend = flashmla::Backend::kCuda;
    SCOPED_TRACE("page_size=" + std::to_string(page));
    const bool sm90_can = hopper && page % 64 == 0;
    {
      ScopedEnv env(flashmla::kKernelEnvVar, nullptr);
      const char* name = flashmla::decode_kernel_name(args);
      ASSERT_NE(name, nullptr);
      EXPECT_STREQ(name, sm90_can ? "sm90" : "portable");
    }
    {
      ScopedEnv env(flashmla::kKernelEnvVar, "portable");
      const char* name = flashmla::decode_kernel_name(args);
      ASSERT_NE(name, nullptr);
      EXPECT_STREQ(name, "portable");
    }
    {
      ScopedEnv env(flashmla::kKernelEnvVar, "sm90");
      const char* name = flashmla::decode_kernel_name(args);
      if (sm90_can) {
        ASSERT_NE(name, nullptr);
        EXPECT_STREQ(name, "sm90");
      } else {
        EXPECT_EQ(name, nullptr);
      }
    }
    {
      ScopedEnv env(flashmla::kKernelEnvVar, "fastest");
      EXPECT_EQ(flashmla::decode_kernel_name(args), nullptr);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Programmatic dependent launch of the combine (compute capability 9.0+), and FLASHMLA_PDL
// ---------------------------------------------------------------------------------------------

// Long requests split over many SM parts next to short ones: many partials for the combine.
HostProblem split_problem() {
  ProblemSpec spec;
  spec.h_q = 16;
  spec.seqlens = {12000, 300, 0, 5000};
  return make_problem(spec);
}

template <typename T>
::testing::AssertionResult same_bits(const std::vector<T>& a, const std::vector<T>& b, const char* what) {
  if (a.size() != b.size()) return ::testing::AssertionFailure() << what << ": sizes differ";
  for (size_t i = 0; i < a.size(); ++i)
    if (std::memcmp(&a[i], &b[i], sizeof(T)) != 0)
      return ::testing::AssertionFailure() << what << "[" << i << "] differs: " << a[i] << " vs " << b[i];
  return ::testing::AssertionSuccess();
}

// Programmatic edges (a kernel launched as a programmatic dependent of the one before) of a graph.
int programmatic_edges(cudaGraph_t graph) {
#if CUDART_VERSION >= 13000
  auto get_edges = cudaGraphGetEdges;
#else
  auto get_edges = cudaGraphGetEdges_v2;
#endif
  size_t n = 0;
  EXPECT_EQ(get_edges(graph, nullptr, nullptr, nullptr, &n), cudaSuccess);
  std::vector<cudaGraphNode_t> from(n), to(n);
  std::vector<cudaGraphEdgeData> data(n);
  EXPECT_EQ(get_edges(graph, from.data(), to.data(), data.data(), &n), cudaSuccess);
  int programmatic = 0;
  for (size_t i = 0; i < n; ++i) programmatic += data[i].type == cudaGraphDependencyTypeProgrammatic;
  return programmatic;
}

class GpuPdl : public Gpu {
 protected:
  int parts(const HostProblem& p) const { return flashmla::num_sm_parts(props_.sms, p.spec.s_q * p.spec.h_q, 1); }
};

// The overlap changes when the combine runs, never what it computes.
TEST_F(GpuPdl, SameBitsWithAndWithout) {
  HostProblem p = split_problem();
  SCOPED_TRACE(p.spec.describe());
  Result with, without, ref;
  {
    ScopedEnv env(flashmla::kPdlEnvVar, "1");
    gpu_decode(p, parts(p), with);
  }
  ASSERT_FALSE(HasFatalFailure());
  {
    ScopedEnv env(flashmla::kPdlEnvVar, "0");
    gpu_decode(p, parts(p), without);
  }
  ASSERT_FALSE(HasFatalFailure());
  EXPECT_TRUE(same_bits(with.out, without.out, "out"));
  EXPECT_TRUE(same_bits(with.lse, without.lse, "lse"));
  host_reference(p, ref);
  ASSERT_FALSE(HasFatalFailure());
  EXPECT_TRUE(outputs_match_reference(p, with.out, with.lse, as_truth(p, ref), gpu_tolerance(p.spec.dtype)));

  DeviceProblem d;
  to_device(p, parts(p), d, nullptr);
  ASSERT_FALSE(HasFatalFailure());
  ScopedEnv env(flashmla::kPdlEnvVar, "on");
  const flashmla::Status st = flashmla::mla_decode(d.args, d.ws.get(), d.ws.bytes(), nullptr);
  EXPECT_FALSE(st.ok());
  EXPECT_THAT(st.message(), ::testing::HasSubstr(flashmla::kPdlEnvVar));
}

// Stream capture keeps the programmatic edge (CUDA 12.3+), and the graph replays to the same bits.
TEST_F(GpuPdl, GraphCaptureAndReplay) {
  HostProblem p = split_problem();
  SCOPED_TRACE(p.spec.describe());
  Result eager;
  {
    ScopedEnv env(flashmla::kPdlEnvVar, "0");
    gpu_decode(p, parts(p), eager);
  }
  ASSERT_FALSE(HasFatalFailure());
  DeviceProblem d;
  to_device(p, parts(p), d, nullptr);  // the plan, outside the graph
  ASSERT_FALSE(HasFatalFailure());
  CUDA_OK(cudaDeviceSynchronize());

  // Programmatic edges: none when off or before sm_90. The default build's sm_90a code runs on
  // compute capability 9.0 only, where the combine must be programmatic; on newer GPUs that
  // depends on the targets the library was built for (compute_80 PTX has no griddepcontrol).
  bool sm90_code_runs = false;
  {
    ScopedEnv env(flashmla::kKernelEnvVar, nullptr);
    const char* name = flashmla::decode_kernel_name(d.args);
    sm90_code_runs = name != nullptr && std::string(name) == "sm90";
  }

  cudaStream_t stream;
  CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  for (const char* pdl : {"1", "0"}) {
    SCOPED_TRACE(std::string(flashmla::kPdlEnvVar) + "=" + pdl);
    ScopedEnv env(flashmla::kPdlEnvVar, pdl);
    cudaGraph_t graph;
    CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    const flashmla::Status st = flashmla::mla_decode(d.args, d.ws.get(), d.ws.bytes(), stream);
    CUDA_OK(cudaStreamEndCapture(stream, &graph));
    ASSERT_TRUE(st.ok()) << st.message();
    const bool off = std::string(pdl) == "0" || props_.major < 9;
    if (off || sm90_code_runs) {
      EXPECT_EQ(programmatic_edges(graph), off ? 0 : 1);
    }
    cudaGraphExec_t exec;
    CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
    for (int replay = 0; replay < 3; ++replay) {
      for (const DeviceBuffer* b : {&d.out, &d.lse, &d.ws}) CUDA_OK(cudaMemsetAsync(b->get(), 0xFF, b->bytes(), stream));
      CUDA_OK(cudaGraphLaunch(exec, stream));
      CUDA_OK(cudaStreamSynchronize(stream));
      Result got;
      download_result(p, d, got);
      ASSERT_FALSE(HasFatalFailure());
      EXPECT_TRUE(same_bits(got.out, eager.out, "out")) << "replay " << replay;
      EXPECT_TRUE(same_bits(got.lse, eager.lse, "lse")) << "replay " << replay;
    }
    CUDA_OK(cudaGraphExecDestroy(exec));
    CUDA_OK(cudaGraphDestroy(graph));
  }
  CUDA_OK(cudaStreamDestroy(stream));
}

TEST_F(GpuQuick, Metadata) {
  std::mt19937_64 rng(5);
  for (int parts : {1, 7, 132})
    expect_device_plan_matches_host(make_seqlens(SeqlenDist::kSomeZeros, 300, rng), parts, "quick");
}

TEST_F(GpuQuick, Decode) {
  for (DataType dtype : {DataType::kBFloat16, DataType::kFloat16})
    for (bool causal : {false, true}) {
      ProblemSpec spec;
      spec.dtype = dtype;
      spec.s_q = 2;
      spec.h_q = 16;
      spec.causal = causal;
      spec.seqlens = {0, 100, 700, 1};
      HostProblem p = make_problem(spec);
      SCOPED_TRACE(spec.describe());
      Result ref;
      host_reference(p, ref);
      ASSERT_FALSE(HasFatalFailure());
      for (int parts : {1, 7, flashmla::num_sm_parts(props_.sms, 32, 1)}) {
        Result got;
        gpu_decode(p, parts, got);
        ASSERT_FALSE(HasFatalFailure());
        EXPECT_TRUE(outputs_match_reference(p, got.out, got.lse, as_truth(p, ref), gpu_tolerance(dtype)))
            << "num_sm_parts=" << parts;
      }
    }
}

TEST_F(GpuQuick, OutOfRange) {
  ProblemSpec spec;
  spec.s_q = 1;
  spec.h_q = 16;
  spec.seqlens = {100, 200, 10};
  spec.extra_table_cols = 0;
  HostProblem p = make_problem(spec);
  check_bad_request_is_nan(p, gpu_tolerance(spec.dtype), 7);
}

}  // namespace
}  // namespace flashmla_test
