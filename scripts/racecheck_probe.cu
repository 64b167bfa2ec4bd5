// Does compute-sanitizer racecheck order shared-memory accesses across a named barrier that
// only some warpgroups use (bar.sync id, 256 in a 384-thread CTA)? The Hopper decode kernel
// exchanges row scales between its two consumer warpgroups exactly so (docs/PERF.md).
// Variant 0: the third warpgroup exits at once;
// variant 1: it stays and meets the others at a final __syncthreads;
// variant 2: one thread of it stays alive (as the kernel's producer does) and arrives on an
//            mbarrier each round, which warpgroup 1 waits on before its read (as it waits for
//            its V boxes) while the rest of the third warpgroup exits.
// Variants 0..2 were all clean on the H200 while the kernel is not, so a second argument adds
// the kernel's other traits one by one (a bit mask):
//   1: barrier id and thread count in registers (the kernel's named_barrier_sync helper)
//   2: setmaxnreg (the third warpgroup gives registers to the other two)
//   4: the buffer in dynamic shared memory, each write followed by fence.proxy.async
//   8: a barrier of warpgroup 0 alone (bar.sync 3, 128) between the write and bar.sync 1
// Build: nvcc -gencode=arch=compute_90a,code=sm_90a -o probe scripts/racecheck_probe.cu
// Run:   compute-sanitizer --tool racecheck ./probe N [MASK]   (N = 0, 1, 2; MASK 0..15)
#include <cstdint>
#include <cstdio>
#include <cstdlib>

__device__ void mbar_wait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n.reg .pred done;\nWAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n@!done bra WAIT;\n}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}

__device__ __forceinline__ void bar_sync(int id, int threads, bool in_registers) {
  if (!in_registers) {  // immediates, as in variants 0..2
    if (id == 1) asm volatile("bar.sync 1, 256;" ::: "memory");
    else if (id == 2) asm volatile("bar.sync 2, 256;" ::: "memory");
    else asm volatile("bar.sync 3, 128;" ::: "memory");
    return;
  }
  asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory");
}

__global__ void __launch_bounds__(384, 1) probe(int variant, int mask, float* out) {
  __shared__ float static_buf[64];
  extern __shared__ float dynamic_buf[];
  float* buf = (mask & 4) ? dynamic_buf : static_buf;
  const bool reg_ids = mask & 1;
  __shared__ uint64_t mbar[4];  // one per round, each completes once: phase parity 0
  const uint32_t bar = static_cast<uint32_t>(__cvta_generic_to_shared(mbar));
  const int wg = threadIdx.x / 128, t = threadIdx.x % 128;
  if (threadIdx.x == 0) {
    for (int round = 0; round < 4; ++round) asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(bar + 8 * round));
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  if (wg == 2) {
    if (mask & 2) asm volatile("setmaxnreg.dec.sync.aligned.u32 24;\n" ::: "memory");
    if (variant == 1) __syncthreads();
    if (variant == 2 && t == 0)
      for (int round = 0; round < 4; ++round)
        asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar + 8 * round) : "memory");
    return;
  }
  if (mask & 2) asm volatile("setmaxnreg.inc.sync.aligned.u32 240;\n" ::: "memory");
  for (int round = 0; round < 4; ++round) {
    if (wg == 0 && t < 64) buf[t] = float(round + t);  // written by warpgroup 0
    if (mask & 4) asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    if ((mask & 8) && wg == 0) bar_sync(3, 128, reg_ids);
    bar_sync(1, 256, reg_ids);
    if (variant == 2 && wg == 1) mbar_wait(bar + 8 * round, 0);
    if (wg == 1 && t < 64) out[round * 64 + t] = buf[t];  // read by warpgroup 1
    bar_sync(2, 256, reg_ids);
  }
  if (variant == 1) __syncthreads();
}

int main(int argc, char** argv) {
  const int variant = argc > 1 ? std::atoi(argv[1]) : 0;
  const int mask = argc > 2 ? std::atoi(argv[2]) : 0;
  float* out = nullptr;
  if (cudaMalloc(&out, 256 * sizeof(float)) != cudaSuccess) return 2;
  probe<<<1, 384, (mask & 4) ? 64 * sizeof(float) : 0>>>(variant, mask, out);
  const cudaError_t e = cudaDeviceSynchronize();
  std::printf("variant %d, mask %d: %s\n", variant, mask, cudaGetErrorString(e));
  return e == cudaSuccess ? 0 : 1;
}
