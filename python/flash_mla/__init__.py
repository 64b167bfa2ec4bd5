"""FlashMLA-compatible Python API on the FlashMLA-cpp library.

A drop-in replacement for DeepSeek FlashMLA's (Hopper-era) Python interface::

    from flash_mla import get_mla_metadata, flash_mla_with_kvcache

    tile_scheduler_metadata, num_splits = get_mla_metadata(cache_seqlens, s_q * h_q // h_kv, h_kv)
    for layer in layers:
        o, lse = flash_mla_with_kvcache(q, kvcache, block_table, cache_seqlens, 512,
                                        tile_scheduler_metadata, num_splits, causal=True)

Both functions are thin wrappers over the torch ops ``torch.ops.flash_mla.get_mla_metadata``
and ``torch.ops.flash_mla.fwd_kvcache`` (stable-ABI C++ library ``_C.so``). CUDA tensors run
the GPU kernels on the current stream; CPU tensors run the C++ host reference implementation
(float64 accumulation), planned as on a 132-SM H200. The ops have fake (meta) implementations,
so they work under ``torch.compile(fullgraph=True)``, and allocate only through torch's
allocator, so they can be captured in CUDA graphs.
"""

import ctypes
import os
from typing import Optional, Tuple

import torch

__all__ = ["get_mla_metadata", "flash_mla_with_kvcache"]
__version__ = "0.1.0"


def _find_library() -> str:
    # __path__ holds the package dir (and, for editable installs, the source dir too).
    for d in __path__:
        p = os.path.join(d, "_C.so")
        if os.path.exists(p):
            return p
    raise ImportError(f"flash_mla: the op library _C.so was not found in {list(__path__)}; "
                      "build and install the package (pip install --no-build-isolation .)")


_LIBRARY_PATH = _find_library()
torch.ops.load_library(_LIBRARY_PATH)
_lib = ctypes.CDLL(_LIBRARY_PATH)  # same handle; for flash_mla_num_sm_parts (fake impl)
_lib.flash_mla_num_sm_parts.argtypes = [ctypes.c_int] * 4
_lib.flash_mla_num_sm_parts.restype = ctypes.c_int

# OpOverloads are resolved once: calling them skips the OpOverloadPacket lookup.
_get_mla_metadata_op = torch.ops.flash_mla.get_mla_metadata.default
_fwd_kvcache_op = torch.ops.flash_mla.fwd_kvcache.default

_HEAD_DIM_QK = 576
_HEAD_DIM_V = 512
_METADATA_INTS = 8
_DEFAULT_SOFTMAX_SCALE = _HEAD_DIM_QK ** -0.5


def get_mla_metadata(
    cache_seqlens: torch.Tensor,
    num_q_tokens_per_head_k: int,
    num_heads_k: int,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Splits the batch's KV work over the GPU's multiprocessors (once per decode step).

    Arguments:
        cache_seqlens: (batch_size), dtype torch.int32.
        num_q_tokens_per_head_k: seq_len_q * num_heads_q // num_heads_k.
        num_heads_k: number of KV heads (1 for MLA).

    Returns:
        tile_scheduler_metadata: (num_sm_parts, 8), dtype torch.int32.
        num_splits: (batch_size + 1), dtype torch.int32.

    Output shapes depend only on the arguments' shapes and the device (its SM count; CPU tensors
    plan as a 132-SM H200), never on the seqlen values: the op runs asynchronously on the GPU and
    is CUDA-graph capturable.
    """
    return _get_mla_metadata_op(cache_seqlens, num_q_tokens_per_head_k, num_heads_k)


def flash_mla_with_kvcache(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    block_table: torch.Tensor,
    cache_seqlens: torch.Tensor,
    head_dim_v: int,
    tile_scheduler_metadata: torch.Tensor,
    num_splits: torch.Tensor,
    softmax_scale: Optional[float] = None,
    causal: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """MLA decoding attention over a paged KV cache.

    Arguments:
        q: (batch_size, seq_len_q, num_heads_q, 576), bfloat16 or float16; last dim contiguous.
        k_cache: (num_blocks, page_block_size, num_heads_k, 576), same dtype as q; V is the first
            512 channels of the same rows.
        block_table: (batch_size, max_num_blocks_per_seq), torch.int32.
        cache_seqlens: (batch_size), torch.int32.
        head_dim_v: head dim of v; must be 512.
        tile_scheduler_metadata: (num_sm_parts, 8), torch.int32, returned by get_mla_metadata.
        num_splits: (batch_size + 1), torch.int32, returned by get_mla_metadata.
        softmax_scale: scaling of QK^T before the softmax. None (or <= 0) selects 1 / sqrt(576).
        causal: bottom-right aligned causal mask: query token i sees keys
            [0, cache_seqlen - seq_len_q + i].

    Returns:
        out: (batch_size, seq_len_q, num_heads_q, 512), dtype of q.
        softmax_lse: (batch_size, num_heads_q, seq_len_q), torch.float32, natural log;
            +inf (and out 0) for query rows that see no key.
    """
    if softmax_scale is None or softmax_scale <= 0:
        softmax_scale = _DEFAULT_SOFTMAX_SCALE
    return _fwd_kvcache_op(q, k_cache, block_table, cache_seqlens, head_dim_v,
                           tile_scheduler_metadata, num_splits, softmax_scale, causal)


# -------------------------------------------------------------------------------------------------
# Fake (meta) implementations: output shapes for tracing (torch.compile, FakeTensor, meta tensors).
# -------------------------------------------------------------------------------------------------

def _num_sm_parts(device: torch.device, num_q_tokens_per_head_k: int, num_heads_k: int) -> int:
    # The C++ function the op itself uses (SM count of a CUDA device; 132 otherwise). Symbolic
    # sizes (dynamic shapes) are specialized: the plan's row count depends on their values.
    num_q_tokens_per_head_k, num_heads_k = int(num_q_tokens_per_head_k), int(num_heads_k)
    is_cuda = device.type == "cuda"
    index = (device.index if device.index is not None else torch.cuda.current_device()) if is_cuda else 0
    parts = _lib.flash_mla_num_sm_parts(int(is_cuda), index, num_q_tokens_per_head_k, num_heads_k)
    torch._check(parts > 0, lambda: "flash_mla: num_q_tokens_per_head_k and num_heads_k must be positive, got "
                                    f"{num_q_tokens_per_head_k} and {num_heads_k}")
    return parts


@torch.library.register_fake("flash_mla::get_mla_metadata")
def _get_mla_metadata_fake(cache_seqlens, num_q_tokens_per_head_k, num_heads_k):
    torch._check(cache_seqlens.dim() == 1 and cache_seqlens.dtype == torch.int32,
                 lambda: "cache_seqlens must be a 1-D int32 tensor [batch]")
    parts = _num_sm_parts(cache_seqlens.device, num_q_tokens_per_head_k, num_heads_k)
    metadata = cache_seqlens.new_empty((parts, _METADATA_INTS), dtype=torch.int32)
    num_splits = cache_seqlens.new_empty((cache_seqlens.shape[0] + 1,), dtype=torch.int32)
    return metadata, num_splits


@torch.library.register_fake("flash_mla::fwd_kvcache")
def _fwd_kvcache_fake(q, k_cache, block_table, cache_seqlens, head_dim_v, tile_scheduler_metadata,
                      num_splits, softmax_scale, causal):
    torch._check(q.dim() == 4 and q.shape[-1] == _HEAD_DIM_QK,
                 lambda: f"q must be a 4-D tensor [batch, s_q, h_q, 576], got shape {tuple(q.shape)}")
    torch._check(head_dim_v == _HEAD_DIM_V, lambda: f"head_dim_v must be 512, got {head_dim_v}")
    b, s_q, h_q, _ = q.shape
    out = q.new_empty((b, s_q, h_q, head_dim_v))
    lse = q.new_empty((b, h_q, s_q), dtype=torch.float32)
    return out, lse
