"""torch.compile and torch.library.opcheck on CPU tensors (the fake implementations and schemas
are device independent)."""

import pytest
import torch

import flash_mla
from flash_mla import flash_mla_with_kvcache, get_mla_metadata
from mla_testing import Case, make_inputs


def small_inputs(causal=True):
    c = Case(b=2, s_q=2, s_k=90, h_q=4, h_kv=1, varlen=True, causal=causal)
    return c, make_inputs(c, torch.bfloat16, "cpu")


def decode_step(q, k_cache, block_table, cache_seqlens):
    meta, splits = get_mla_metadata(cache_seqlens, q.shape[1] * q.shape[2] // k_cache.shape[2], k_cache.shape[2])
    out, lse = flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, 512, meta, splits, causal=True)
    return out * 2, lse + 1  # some work around the ops for the compiler to fuse


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()
    c, inp = small_inputs()
    args = (inp.q, inp.blocked_k, inp.block_table, inp.cache_seqlens)
    compiled = torch.compile(decode_step, fullgraph=True, backend=backend)
    out_c, lse_c = compiled(*args)
    out_e, lse_e = decode_step(*args)
    assert torch.equal(out_c, out_e)
    assert torch.equal(lse_c, lse_e)


def test_torch_compile_dynamic_shapes():
    # Batch size and s_q vary between calls under dynamic=True.
    torch._dynamo.reset()
    compiled = torch.compile(decode_step, fullgraph=True, dynamic=True, backend="aot_eager")
    for b, s_q in [(2, 2), (3, 1), (5, 4)]:
        c = Case(b=b, s_q=s_q, s_k=70, h_q=4, h_kv=1, varlen=True, causal=True, seed=b)
        inp = make_inputs(c, torch.bfloat16, "cpu")
        args = (inp.q, inp.blocked_k, inp.block_table, inp.cache_seqlens)
        out_c, lse_c = compiled(*args)
        out_e, lse_e = decode_step(*args)
        assert torch.equal(out_c, out_e) and torch.equal(lse_c, lse_e)


def test_fake_tensor_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode
    c, inp = small_inputs()
    with FakeTensorMode() as mode:
        q = mode.from_tensor(inp.q)
        k = mode.from_tensor(inp.blocked_k)
        bt = mode.from_tensor(inp.block_table)
        sl = mode.from_tensor(inp.cache_seqlens)
        meta, splits = get_mla_metadata(sl, c.s_q * c.h_q, 1)
        out, lse = flash_mla_with_kvcache(q, k, bt, sl, 512, meta, splits)
    real_meta, real_splits = get_mla_metadata(inp.cache_seqlens, c.s_q * c.h_q, 1)
    assert meta.shape == real_meta.shape and splits.shape == real_splits.shape
    assert meta.dtype == splits.dtype == torch.int32
    assert out.shape == (c.b, c.s_q, c.h_q, 512) and out.dtype == torch.bfloat16
    assert lse.shape == (c.b, c.h_q, c.s_q) and lse.dtype == torch.float32


def test_meta_tensors():
    meta, splits = get_mla_metadata(torch.empty(5, dtype=torch.int32, device="meta"), 64, 1)
    assert meta.device.type == "meta" and splits.shape == (6,)
    q = torch.empty(5, 1, 64, 576, dtype=torch.float16, device="meta")
    k = torch.empty(10, 64, 1, 576, dtype=torch.float16, device="meta")
    bt = torch.empty(5, 2, dtype=torch.int32, device="meta")
    out, lse = flash_mla_with_kvcache(q, k, bt, torch.empty(5, dtype=torch.int32, device="meta"), 512, meta, splits)
    assert out.shape == (5, 1, 64, 512) and out.dtype == torch.float16
    assert lse.shape == (5, 64, 1)


def test_opcheck_get_mla_metadata():
    _, inp = small_inputs()
    torch.library.opcheck(torch.ops.flash_mla.get_mla_metadata.default, (inp.cache_seqlens, 8, 1))


def test_opcheck_fwd_kvcache():
    c, inp = small_inputs()
    meta, splits = get_mla_metadata(inp.cache_seqlens, c.s_q * c.h_q, 1)
    torch.library.opcheck(
        torch.ops.flash_mla.fwd_kvcache.default,
        (inp.q, inp.blocked_k, inp.block_table, inp.cache_seqlens, 512, meta, splits, 576 ** -0.5, True))


def test_ops_are_registered():
    assert torch.ops.flash_mla.get_mla_metadata.default is flash_mla._get_mla_metadata_op
    schema = str(torch.ops.flash_mla.fwd_kvcache.default._schema)
    assert schema.startswith("flash_mla::fwd_kvcache(Tensor q, Tensor k_cache, Tensor block_table")
