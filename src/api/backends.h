// Internal entry points behind the public API, one per backend and phase. Arguments are
// already validated when these run.
#pragma once

#include "flashmla/flashmla.h"

namespace flashmla::detail {

// Host backend (src/scheduler/metadata_host.cpp, src/reference/decode_host.cpp).
void metadata_host(const MetadataArgs& args);
void decode_host(const DecodeArgs& args, void* workspace);
void reference_host(const DecodeArgs& args);

// CUDA backend (src/scheduler/metadata_cuda.cu, src/kernels/*, src/combine/combine_cuda.cu).
Status metadata_cuda(const MetadataArgs& args, cudaStream_t stream);
Status decode_cuda(const DecodeArgs& args, void* workspace, cudaStream_t stream);

}  // namespace flashmla::detail
