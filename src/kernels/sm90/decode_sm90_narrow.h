// The narrow Hopper decode kernel (decode_sm90_narrow.cu: at most 16 query rows per KV head),
// for the launcher in decode_sm90.cu. Both kernels take the same Sm90Params.
#pragma once

#include "flashmla/flashmla.h"

namespace flashmla::sm90 {

struct NarrowKernel {
  const void* fn;  // a __global__ function taking one Sm90Params, or null
  int smem_bytes;  // dynamic shared memory it needs
  int rows;        // query rows per tile
};

// The narrow kernel for tiles of rows_per_kv_head packed query rows, or {null, 0, 0} where they
// need the wide kernel (Sm90Traits::narrow_rows).
NarrowKernel narrow_kernel(DataType dtype, int rows_per_kv_head);

}  // namespace flashmla::sm90
