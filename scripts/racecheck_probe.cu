// Does compute-sanitizer racecheck order shared-memory accesses across a named barrier that
// only some warpgroups use (bar.sync id, 256 in a 384-thread CTA)? The Hopper decode kernel
// exchanges row scales between its two consumer warpgroups exactly so (docs/PERF.md).
// Variant 0: the third warpgroup exits at once (as the kernel's producer threads do);
// variant 1: it stays and meets the others at a final __syncthreads.
// Build: nvcc -gencode=arch=compute_90a,code=sm_90a -o probe scripts/racecheck_probe.cu
// Run:   compute-sanitizer --tool racecheck ./probe 0 ; ... ./probe 1
#include <cstdio>
#include <cstdlib>

__global__ void probe(int variant, float* out) {
  __shared__ float buf[64];
  const int wg = threadIdx.x / 128, t = threadIdx.x % 128;
  if (wg == 2) {
    if (variant == 0) return;
    __syncthreads();
    return;
  }
  for (int round = 0; round < 4; ++round) {
    if (wg == 0 && t < 64) buf[t] = float(round + t);  // written by warpgroup 0
    asm volatile("bar.sync 1, 256;" ::: "memory");
    if (wg == 1 && t < 64) out[round * 64 + t] = buf[t];  // read by warpgroup 1
    asm volatile("bar.sync 2, 256;" ::: "memory");
  }
  if (variant == 1) __syncthreads();
}

int main(int argc, char** argv) {
  const int variant = argc > 1 ? std::atoi(argv[1]) : 0;
  float* out = nullptr;
  if (cudaMalloc(&out, 256 * sizeof(float)) != cudaSuccess) return 2;
  probe<<<1, 384>>>(variant, out);
  const cudaError_t e = cudaDeviceSynchronize();
  std::printf("variant %d: %s\n", variant, cudaGetErrorString(e));
  return e == cudaSuccess ? 0 : 1;
}
