// Programmatic dependent launch between the split-KV kernel and the combine (PTX griddepcontrol,
// sm_90 and newer; both wrappers compile to nothing for older targets, where the combine is never
// launched that way). The combine's launch then overlaps the split-KV kernel's tail.
//
// Why a trigger anywhere is safe: griddepcontrol.wait blocks until the whole prerequisite grid has
// completed and its memory operations are visible, wherever (and whether) its CTAs triggered; the
// trigger only lets the dependent grid be scheduled sooner. Without a programmatic dependency
// (older GPUs, FLASHMLA_PDL=0) the wait returns at once and the trigger does nothing.
#pragma once

// griddepcontrol exists from sm_90 on (in __CUDA_ARCH__ units).
#define FLASHMLA_PDL_MIN_ARCH 900

namespace flashmla::pdl {

// Split-KV kernels, once the main loop is done: the combine may be scheduled once every CTA has
// called this (the first call of a CTA counts, later ones are free) or exited.
__device__ __forceinline__ void launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= FLASHMLA_PDL_MIN_ARCH
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// Combine, before its first read: keeps it from reading partials (or out / lse) early.
__device__ __forceinline__ void wait_for_prerequisite_grid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= FLASHMLA_PDL_MIN_ARCH
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

}  // namespace flashmla::pdl
