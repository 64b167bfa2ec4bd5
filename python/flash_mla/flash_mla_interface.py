"""DeepSeek FlashMLA's Python interface on FlashMLA-cpp (same module path as FlashMLA's).

Code written for either generation of FlashMLA's API runs unchanged:

Tensor plans (FlashMLA before 2026-01; SGLang, lmdeploy, vLLM 2025)::

    tile_scheduler_metadata, num_splits = get_mla_metadata(cache_seqlens, s_q * h_q // h_kv, h_kv)
    out, lse = flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, 512,
                                      tile_scheduler_metadata, num_splits, causal=True)

Schedule objects (FlashMLA from 2026-01)::

    sched_meta, _ = get_mla_metadata()            # (FlashMLASchedMeta(), None)
    out, lse = flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, 512, sched_meta,
                                      causal=True)

The first call with a FlashMLASchedMeta computes the plan (inside the CUDA graph being captured,
if any) and later calls reuse it while their configuration stays the same; a changed
configuration is an error, as in FlashMLA. get_mla_metadata called with cache_seqlens returns the
tensor plan, as older FlashMLA did; code of the new generation that calls it with its arguments
and passes only the first element on (without num_splits) gets the same lazy planning: the
tensor then only identifies the decode step.

Features FlashMLA-cpp does not have (FP8 KV cache, sparse attention, FP8 descaling) raise
NotImplementedError naming the feature. ``attn_sink`` works for dense decode, which FlashMLA
itself does not offer.
"""

import dataclasses
from typing import Optional, Tuple, Union

import torch

from flash_mla import _ops

__all__ = ["FlashMLASchedMeta", "get_mla_metadata", "flash_mla_with_kvcache"]


@dataclasses.dataclass
class FlashMLASchedMeta:
    """The tile-scheduler plan of one decode step, filled by the first flash_mla_with_kvcache call.

    Create one per decode step (get_mla_metadata() does) and pass it to every layer of the step.
    """

    @dataclasses.dataclass(frozen=True)
    class Config:
        b: int
        s_q: int
        h_q: int
        page_block_size: int
        h_k: int
        causal: bool
        is_fp8_kvcache: bool
        topk: Optional[int]
        extra_page_block_size: Optional[int]
        extra_topk: Optional[int]

    have_initialized: bool = False
    config: Optional[Config] = None
    tile_scheduler_metadata: Optional[torch.Tensor] = None  # (num_sm_parts, 8), torch.int32
    num_splits: Optional[torch.Tensor] = None                # (batch_size + 1), torch.int32
    # What the plan was computed from: (cache_seqlens data pointer, its version counter, whether a
    # CUDA graph was being captured). A change re-plans, so a plan is never read for lengths it
    # was not made for in eager mode, and a capture always records the planning kernel.
    planned_for: Optional[tuple] = None


def _not_implemented(feature: str):
    raise NotImplementedError(f"flash_mla: {feature} is not implemented by FlashMLA-cpp "
                              "(dense bf16/fp16 decode only)")


def get_mla_metadata(
    cache_seqlens: Optional[torch.Tensor] = None,
    num_q_tokens_per_head_k: Optional[int] = None,
    num_heads_k: Optional[int] = None,
    num_heads_q: Optional[int] = None,
    is_fp8_kvcache: bool = False,
    topk: Optional[int] = None,
    **kwargs,
) -> Union[Tuple[torch.Tensor, torch.Tensor], Tuple[FlashMLASchedMeta, None]]:
    """The split plan of one decode step, shared by every layer.

    Without cache_seqlens (FlashMLA >= 2026-01 style): returns (FlashMLASchedMeta(), None); the
    plan is computed by the first flash_mla_with_kvcache call that uses it.

    With cache_seqlens (older style): returns the tensors
        tile_scheduler_metadata: (num_sm_parts, 8), torch.int32
        num_splits: (batch_size + 1), torch.int32
    computed asynchronously on cache_seqlens' device (CUDA-graph capturable). Their shapes depend
    only on the arguments' shapes and the device (CPU tensors plan as a 132-SM H200).

    Arguments:
        cache_seqlens: (batch_size), torch.int32.
        num_q_tokens_per_head_k: seq_len_q * num_heads_q // num_heads_k.
        num_heads_k: number of KV heads (1 for MLA).
        num_heads_q, is_fp8_kvcache, topk: FlashMLA's; FP8 caches and sparse attention (topk)
            raise NotImplementedError. Other keywords are accepted and ignored, as in FlashMLA.
    """
    if is_fp8_kvcache:
        _not_implemented("FP8 KV cache (is_fp8_kvcache=True)")
    if topk is not None:
        _not_implemented(f"sparse attention (topk={topk})")
    if cache_seqlens is None:
        return FlashMLASchedMeta(), None
    if num_q_tokens_per_head_k is None or num_heads_k is None:
        raise ValueError("flash_mla: get_mla_metadata(cache_seqlens, num_q_tokens_per_head_k, num_heads_k): "
                         f"num_q_tokens_per_head_k and num_heads_k are required with cache_seqlens, got "
                         f"{num_q_tokens_per_head_k} and {num_heads_k}")
    return _ops.get_mla_metadata_op(cache_seqlens, num_q_tokens_per_head_k, num_heads_k)


def flash_mla_with_kvcache(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    block_table: Optional[torch.Tensor] = None,
    cache_seqlens: Optional[torch.Tensor] = None,
    head_dim_v: int = _ops.HEAD_DIM_V,
    tile_scheduler_metadata: Union[FlashMLASchedMeta, torch.Tensor, None] = None,
    num_splits: Optional[torch.Tensor] = None,
    softmax_scale: Optional[float] = None,
    causal: bool = False,
    is_fp8_kvcache: bool = False,
    indices: Optional[torch.Tensor] = None,
    attn_sink: Optional[torch.Tensor] = None,
    extra_k_cache: Optional[torch.Tensor] = None,
    extra_indices_in_kvcache: Optional[torch.Tensor] = None,
    topk_length: Optional[torch.Tensor] = None,
    extra_topk_length: Optional[torch.Tensor] = None,
    descale_q: Optional[torch.Tensor] = None,
    descale_k: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """MLA decoding attention over a paged KV cache.

    Arguments:
        q: (batch_size, seq_len_q, num_heads_q, 576), bfloat16 or float16; last dim contiguous.
        k_cache: (num_blocks, page_block_size, num_heads_k, 576), same dtype as q; V is the first
            512 channels of the same rows.
        block_table: (batch_size, max_num_blocks_per_seq), torch.int32. Rows may be read up to
            their pitch (stride(0)), as FlashMLA does: lengths may exceed the view's width.
        cache_seqlens: (batch_size), torch.int32.
        head_dim_v: head dim of v; must be 512.
        tile_scheduler_metadata: a FlashMLASchedMeta, or the tensor returned by get_mla_metadata.
        num_splits: the tensor returned by get_mla_metadata with tile_scheduler_metadata; None
            with a FlashMLASchedMeta (or with only the tensor: the plan is then made on first use).
        softmax_scale: scaling of QK^T before the softmax, used as given (any finite value, 0
            and negative too). None selects 1 / sqrt(576).
        causal: bottom-right aligned causal mask: query token i sees keys
            [0, cache_seqlen - seq_len_q + i].
        attn_sink: optional (num_heads_q), torch.float32: each output row is scaled by
            exp(lse) / (exp(lse) + exp(attn_sink[head])); softmax_lse is unchanged.
        is_fp8_kvcache, indices, extra_k_cache, extra_indices_in_kvcache, topk_length,
        extra_topk_length, descale_q, descale_k: FlashMLA's and SGLang's keywords for features
            FlashMLA-cpp does not have: accepted, and NotImplementedError when used.

    Returns:
        out: (batch_size, seq_len_q, num_heads_q, 512), dtype of q.
        softmax_lse: (batch_size, num_heads_q, seq_len_q), torch.float32, natural log;
            +inf (and out 0) for query rows that see no key.
    """
    if is_fp8_kvcache:
        _not_implemented("FP8 KV cache (is_fp8_kvcache=True)")
    if indices is not None or topk_length is not None:
        _not_implemented("sparse attention (indices / topk_length)")
    if extra_k_cache is not None or extra_indices_in_kvcache is not None or extra_topk_length is not None:
        _not_implemented("sparse attention over an extra KV cache (extra_k_cache / extra_indices_in_kvcache / "
                         "extra_topk_length)")
    if descale_q is not None or descale_k is not None:
        _not_implemented("FP8 descaling (descale_q / descale_k)")
    if block_table is None or cache_seqlens is None:
        raise ValueError("flash_mla: block_table and cache_seqlens are required for dense decode, got "
                         f"block_table={'None' if block_table is None else 'a tensor'}, "
                         f"cache_seqlens={'None' if cache_seqlens is None else 'a tensor'}")
    if num_splits is not None:  # the tensor plan of older FlashMLA: the fast path
        if not isinstance(tile_scheduler_metadata, torch.Tensor):
            raise ValueError("flash_mla: num_splits: expected None with a FlashMLASchedMeta (or no plan), got a "
                             f"tensor while tile_scheduler_metadata is {type(tile_scheduler_metadata).__name__}")
        return _ops.fwd_kvcache_op(q, k_cache, block_table, cache_seqlens, head_dim_v, tile_scheduler_metadata,
                                   num_splits, softmax_scale, causal, attn_sink)
    return _decode_lazy_plan(q, k_cache, block_table, cache_seqlens, head_dim_v, tile_scheduler_metadata,
                             softmax_scale, causal, attn_sink)


def _decode_lazy_plan(q, k_cache, block_table, cache_seqlens, head_dim_v, plan, softmax_scale, causal, attn_sink):
    """Decode with a plan made on first use and kept in a FlashMLASchedMeta: the given one, or,
    for a bare metadata tensor, one attached to that tensor (the tensor identifies the step)."""
    args = (q, k_cache, block_table, cache_seqlens, head_dim_v, softmax_scale, causal, attn_sink)
    if isinstance(plan, FlashMLASchedMeta):
        sched, strict = plan, True
    elif isinstance(plan, torch.Tensor):
        sched = getattr(plan, "_flash_mla_sched", None)
        if sched is None and not torch.compiler.is_compiling():
            sched = FlashMLASchedMeta()
            plan._flash_mla_sched = sched
        strict = False
    elif plan is None:
        sched, strict = None, False
    else:
        raise ValueError("flash_mla: tile_scheduler_metadata: expected a FlashMLASchedMeta or the tensor from "
                         f"get_mla_metadata, got {type(plan).__name__}")
    # Under torch.compile, without a plan, or with shapes the op will reject: plan for this call.
    if sched is None or torch.compiler.is_compiling() or q.dim() != 4 or k_cache.dim() != 4:
        return _ops.fwd_kvcache_planned_op(*args)[:2]

    config = FlashMLASchedMeta.Config(b=q.shape[0], s_q=q.shape[1], h_q=q.shape[2],
                                      page_block_size=k_cache.shape[1], h_k=k_cache.shape[2], causal=causal,
                                      is_fp8_kvcache=False, topk=None, extra_page_block_size=None,
                                      extra_topk=None)
    if strict and sched.config is not None and sched.config != config:
        # FlashMLA's check between calls: one schedule serves one configuration.
        raise ValueError(f"flash_mla: tile_scheduler_metadata: this FlashMLASchedMeta was planned for {sched.config}, "
                         f"this call has {config}; get a new one from get_mla_metadata() when the configuration "
                         "changes")
    planned_for = (cache_seqlens.data_ptr(), cache_seqlens._version,
                   q.is_cuda and torch.cuda.is_current_stream_capturing())
    if sched.tile_scheduler_metadata is not None and sched.config == config and sched.planned_for == planned_for:
        return _ops.fwd_kvcache_op(q, k_cache, block_table, cache_seqlens, head_dim_v, sched.tile_scheduler_metadata,
                                   sched.num_splits, softmax_scale, causal, attn_sink)
    out, lse, metadata, num_splits = _ops.fwd_kvcache_planned_op(*args)
    sched.have_initialized, sched.config, sched.planned_for = True, config, planned_for
    sched.tile_scheduler_metadata, sched.num_splits = metadata, num_splits
    return out, lse
