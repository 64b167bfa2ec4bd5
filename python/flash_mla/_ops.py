"""The torch ops of FlashMLA-cpp (stable-ABI library ``_C.so``) and their fake implementations.

``torch.ops.flash_mla.get_mla_metadata``  the split plan of one decode step.
``torch.ops.flash_mla.fwd_kvcache``       decode with a plan.
``torch.ops.flash_mla.fwd_kvcache_planned``  plan + decode in one call, returning the plan too
                                          (the first call with a FlashMLASchedMeta).

CUDA tensors run the GPU kernels on the current stream; CPU tensors run the C++ host backend.
The fake implementations give output shapes for tracing (torch.compile, FakeTensor, meta
tensors); like the real ops they reject tensors on different devices.
"""

import ctypes
import os
import sys

import torch

HEAD_DIM_QK = 576
HEAD_DIM_V = 512
METADATA_INTS = 8
DEFAULT_SOFTMAX_SCALE = HEAD_DIM_QK ** -0.5  # what the C++ library uses when none is given


def _find_library() -> str:
    # The package's __path__ holds its dir (and, for editable installs, the source dir too).
    dirs = list(sys.modules[__package__].__path__)
    for d in dirs:
        p = os.path.join(d, "_C.so")
        if os.path.exists(p):
            return p
    raise ImportError(f"flash_mla: the op library _C.so was not found in {dirs}; "
                      "build and install the package (pip install --no-build-isolation .)")


LIBRARY_PATH = _find_library()
torch.ops.load_library(LIBRARY_PATH)
_lib = ctypes.CDLL(LIBRARY_PATH)  # same handle; for flash_mla_num_sm_parts (fake impls)
_lib.flash_mla_num_sm_parts.argtypes = [ctypes.c_int] * 4
_lib.flash_mla_num_sm_parts.restype = ctypes.c_int

# OpOverloads are resolved once: calling them skips the OpOverloadPacket lookup.
get_mla_metadata_op = torch.ops.flash_mla.get_mla_metadata.default
fwd_kvcache_op = torch.ops.flash_mla.fwd_kvcache.default
fwd_kvcache_planned_op = torch.ops.flash_mla.fwd_kvcache_planned.default


def num_sm_parts(device: torch.device, num_q_tokens_per_head_k: int, num_heads_k: int) -> int:
    """Rows of the plan the ops make (SM count of a CUDA device; 132 otherwise). Symbolic sizes
    (dynamic shapes) are specialized: the plan's row count depends on their values."""
    num_q_tokens_per_head_k, num_heads_k = int(num_q_tokens_per_head_k), int(num_heads_k)
    is_cuda = device.type == "cuda"
    index = (device.index if device.index is not None else torch.cuda.current_device()) if is_cuda else 0
    parts = _lib.flash_mla_num_sm_parts(int(is_cuda), index, num_q_tokens_per_head_k, num_heads_k)
    torch._check(parts > 0, lambda: "flash_mla: num_q_tokens_per_head_k and num_heads_k must be positive, got "
                                    f"{num_q_tokens_per_head_k} and {num_heads_k}")
    return parts


def _check_same_device(q, **tensors):
    # Mixing a meta tensor with real ones dispatches to these fakes: without this check they
    # would return uninitialized tensors instead of the error the real op gives.
    for name, t in tensors.items():
        if t is not None and t.device != q.device:
            raise RuntimeError(f"{name} must be on the same device as q ({q.device}), got {t.device}")


def _check_q(q, head_dim_v):
    torch._check(q.dim() == 4 and q.shape[-1] == HEAD_DIM_QK,
                 lambda: f"q must be a 4-D tensor [batch, s_q, h_q, 576], got shape {tuple(q.shape)}")
    torch._check(head_dim_v == HEAD_DIM_V, lambda: f"head_dim_v must be 512, got {head_dim_v}")


@torch.library.register_fake("flash_mla::get_mla_metadata")
def _get_mla_metadata_fake(cache_seqlens, num_q_tokens_per_head_k, num_heads_k):
    torch._check(cache_seqlens.dim() == 1 and cache_seqlens.dtype == torch.int32,
                 lambda: "cache_seqlens must be a 1-D int32 tensor [batch]")
    parts = num_sm_parts(cache_seqlens.device, num_q_tokens_per_head_k, num_heads_k)
    metadata = cache_seqlens.new_empty((parts, METADATA_INTS), dtype=torch.int32)
    num_splits = cache_seqlens.new_empty((cache_seqlens.shape[0] + 1,), dtype=torch.int32)
    return metadata, num_splits


@torch.library.register_fake("flash_mla::fwd_kvcache")
def _fwd_kvcache_fake(q, k_cache, block_table, cache_seqlens, head_dim_v, tile_scheduler_metadata,
                      num_splits, softmax_scale, causal, attn_sink=None):
    _check_same_device(q, k_cache=k_cache, block_table=block_table, cache_seqlens=cache_seqlens,
                       tile_scheduler_metadata=tile_scheduler_metadata, num_splits=num_splits,
                       attn_sink=attn_sink)
    _check_q(q, head_dim_v)
    b, s_q, h_q, _ = q.shape
    out = q.new_empty((b, s_q, h_q, head_dim_v))
    lse = q.new_empty((b, h_q, s_q), dtype=torch.float32)
    return out, lse


@torch.library.register_fake("flash_mla::fwd_kvcache_planned")
def _fwd_kvcache_planned_fake(q, k_cache, block_table, cache_seqlens, head_dim_v, softmax_scale, causal,
                              attn_sink=None):
    _check_same_device(q, k_cache=k_cache, block_table=block_table, cache_seqlens=cache_seqlens,
                       attn_sink=attn_sink)
    _check_q(q, head_dim_v)
    torch._check(k_cache.dim() == 4, lambda: f"k_cache must be a 4-D tensor, got shape {tuple(k_cache.shape)}")
    b, s_q, h_q, _ = q.shape
    h_kv = k_cache.shape[2]
    torch._check(h_kv >= 1 and h_q % h_kv == 0, lambda: f"h_q: expected a multiple of h_kv = {h_kv}, got {h_q}")
    parts = num_sm_parts(q.device, s_q * h_q // h_kv, h_kv)
    out = q.new_empty((b, s_q, h_q, head_dim_v))
    lse = q.new_empty((b, h_q, s_q), dtype=torch.float32)
    metadata = q.new_empty((parts, METADATA_INTS), dtype=torch.int32)
    num_splits = q.new_empty((b + 1,), dtype=torch.int32)
    return out, lse, metadata, num_splits
