"""FlashMLA-compatible Python API on the FlashMLA-cpp library.

A drop-in replacement for DeepSeek FlashMLA's Python interface, both generations of it (see
flash_mla.flash_mla_interface)::

    from flash_mla import get_mla_metadata, flash_mla_with_kvcache

    tile_scheduler_metadata, num_splits = get_mla_metadata(cache_seqlens, s_q * h_q // h_kv, h_kv)
    for layer in layers:
        o, lse = flash_mla_with_kvcache(q, kvcache, block_table, cache_seqlens, 512,
                                        tile_scheduler_metadata, num_splits, causal=True)

The functions are thin wrappers over the torch ops ``torch.ops.flash_mla.*`` (stable-ABI C++
library ``_C.so``). CUDA tensors run the GPU kernels on the current stream; CPU tensors run the
C++ host reference implementation (float64 accumulation), planned as on a 132-SM H200. The ops
have fake (meta) implementations, so they work under ``torch.compile(fullgraph=True)``, and
allocate only through torch's allocator, so they can be captured in CUDA graphs.
"""

from flash_mla import _ops
from flash_mla.flash_mla_interface import FlashMLASchedMeta, flash_mla_with_kvcache, get_mla_metadata

__all__ = ["FlashMLASchedMeta", "get_mla_metadata", "flash_mla_with_kvcache"]
__version__ = "0.1.0"

# Used by the tests and tools.
_get_mla_metadata_op = _ops.get_mla_metadata_op
_fwd_kvcache_op = _ops.fwd_kvcache_op
_num_sm_parts = _ops.num_sm_parts
_DEFAULT_SOFTMAX_SCALE = _ops.DEFAULT_SOFTMAX_SCALE
