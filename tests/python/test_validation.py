"""Argument validation: bad arguments raise with a message naming the argument (CPU tensors;
the checks are shared with the CUDA path)."""

import pytest
import torch

from flash_mla import flash_mla_with_kvcache, get_mla_metadata
from mla_testing import Case, make_inputs

ERRORS = (RuntimeError, ValueError)


@pytest.fixture
def args():
    """Valid arguments of flash_mla_with_kvcache, as a dict to modify."""
    c = Case(b=2, s_q=1, s_k=80, h_q=4, h_kv=1, varlen=False, causal=False)
    inp = make_inputs(c, torch.bfloat16, "cpu")
    meta, splits = get_mla_metadata(inp.cache_seqlens, c.s_q * c.h_q // c.h_kv, c.h_kv)
    return dict(q=inp.q, k_cache=inp.blocked_k, block_table=inp.block_table,
                cache_seqlens=inp.cache_seqlens, head_dim_v=512,
                tile_scheduler_metadata=meta, num_splits=splits)


def call(a):
    return flash_mla_with_kvcache(**a)


def test_valid_arguments_run(args):
    out, lse = call(args)
    assert out.shape == (2, 1, 4, 512)


@pytest.mark.parametrize("dtype", [torch.float32, torch.int32, torch.float64])
def test_q_dtype(args, dtype):
    args["q"] = args["q"].to(dtype)
    with pytest.raises(ERRORS, match=r"q must be torch\.bfloat16 or torch\.float16"):
        call(args)


def test_k_cache_dtype_must_match_q(args):
    args["k_cache"] = args["k_cache"].half()
    with pytest.raises(ERRORS, match=r"k_cache must be torch\.bfloat16, got torch\.float16"):
        call(args)


def test_q_dims(args):
    args["q"] = args["q"][:, 0]
    with pytest.raises(ERRORS, match=r"q must be a 4-D tensor \[batch, s_q, h_q, 576\], got a 3-D tensor"):
        call(args)


def test_k_cache_dims(args):
    args["k_cache"] = args["k_cache"][:, :, 0]
    with pytest.raises(ERRORS, match=r"k_cache must be a 4-D tensor \[num_blocks, page_size, h_kv, 576\]"):
        call(args)


def test_q_head_dim_512(args):
    args["q"] = args["q"][..., :512].contiguous()
    with pytest.raises(ERRORS, match=r"q must be a 4-D tensor \[batch, s_q, h_q, 576\], got .*\[2, 1, 4, 512\]"):
        call(args)


def test_k_cache_head_dim_512(args):
    args["k_cache"] = args["k_cache"][..., :512].contiguous()
    with pytest.raises(ERRORS, match=r"k_cache must be a 4-D tensor .*576.*, got .*512\]"):
        call(args)


@pytest.mark.parametrize("head_dim_v", [576, 256, 0])
def test_head_dim_v(args, head_dim_v):
    args["head_dim_v"] = head_dim_v
    with pytest.raises(ERRORS, match=rf"head_dim_v must be 512, got {head_dim_v}"):
        call(args)


def test_h_q_not_multiple_of_h_kv(args):
    # h_q = 3 query heads over h_kv = 2 KV heads.
    args["q"] = args["q"][:, :, :3].contiguous()
    args["k_cache"] = torch.cat([args["k_cache"]] * 2, dim=2)
    with pytest.raises(ERRORS, match=r"h_q.*multiple of h_kv"):
        call(args)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int16, torch.float32])
def test_block_table_dtype(args, dtype):
    args["block_table"] = args["block_table"].to(dtype)
    with pytest.raises(ERRORS, match=r"block_table must be torch\.int32"):
        call(args)


def test_cache_seqlens_dtype(args):
    args["cache_seqlens"] = args["cache_seqlens"].long()
    with pytest.raises(ERRORS, match=r"cache_seqlens must be torch\.int32, got torch\.int64"):
        call(args)


def test_metadata_dtypes(args):
    a = dict(args, tile_scheduler_metadata=args["tile_scheduler_metadata"].long())
    with pytest.raises(ERRORS, match=r"tile_scheduler_metadata must be torch\.int32"):
        call(a)
    a = dict(args, num_splits=args["num_splits"].long())
    with pytest.raises(ERRORS, match=r"num_splits must be torch\.int32"):
        call(a)


def test_q_last_dim_not_contiguous(args):
    q = args["q"]
    args["q"] = q.transpose(-1, -2).contiguous().transpose(-1, -2)
    assert args["q"].shape == q.shape and args["q"].stride(-1) != 1
    with pytest.raises(ERRORS, match=r"q must be contiguous in its last dim"):
        call(args)


def test_k_cache_last_dim_not_contiguous(args):
    k = args["k_cache"]
    args["k_cache"] = k.transpose(-1, -3).contiguous().transpose(-1, -3)
    assert args["k_cache"].shape == k.shape
    with pytest.raises(ERRORS, match=r"k_cache must be contiguous in its last dim"):
        call(args)


def test_block_table_last_dim_not_contiguous(args):
    bt = args["block_table"]
    args["block_table"] = bt.t().contiguous().t()
    with pytest.raises(ERRORS, match=r"block_table must be contiguous in its last dim"):
        call(args)


def test_batch_mismatch(args):
    a = dict(args, block_table=args["block_table"][:1])
    with pytest.raises(ERRORS, match=r"block_table must be a 2-D tensor \[batch, max_blocks_per_seq\]"):
        call(a)
    a = dict(args, cache_seqlens=args["cache_seqlens"][:1])
    with pytest.raises(ERRORS, match=r"cache_seqlens must be a 1-D tensor \[batch\]"):
        call(a)
    a = dict(args, num_splits=args["num_splits"][:2])
    with pytest.raises(ERRORS, match=r"num_splits must be a 1-D tensor \[batch \+ 1\]"):
        call(a)


def test_tile_scheduler_metadata_shape(args):
    args["tile_scheduler_metadata"] = args["tile_scheduler_metadata"][:, :4]
    with pytest.raises(ERRORS, match=r"tile_scheduler_metadata must be a 2-D tensor \[num_sm_parts, 8\]"):
        call(args)


def test_get_mla_metadata_checks():
    seqlens = torch.full((3,), 10, dtype=torch.int32)
    with pytest.raises(ERRORS, match=r"cache_seqlens must be torch\.int32, got torch\.int64"):
        get_mla_metadata(seqlens.long(), 64, 1)
    with pytest.raises(ERRORS, match=r"cache_seqlens must be a 1-D tensor \[batch\]"):
        get_mla_metadata(seqlens.view(3, 1), 64, 1)
    with pytest.raises(ERRORS, match=r"num_q_tokens_per_head_k must be positive"):
        get_mla_metadata(seqlens, 0, 1)
    with pytest.raises(ERRORS, match=r"num_heads_k must be positive"):
        get_mla_metadata(seqlens, 64, 0)


def test_cache_seqlens_out_of_range_on_host(args):
    # The host backend sees the lengths and rejects one beyond the block table.
    args["cache_seqlens"] = args["cache_seqlens"].clone()
    args["cache_seqlens"][1] = 10 ** 6
    with pytest.raises(ERRORS, match=r"cache_seqlens\[1\]"):
        call(args)
