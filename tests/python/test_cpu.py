"""CPU tests (no GPU needed): CPU tensors run the C++ host backend of FlashMLA-cpp, compared with
an independent float64 torch reference (mla_testing.reference)."""

import math

import pytest
import torch

import flash_mla
from flash_mla import flash_mla_with_kvcache, get_mla_metadata
from mla_testing import Case, check_outputs, make_inputs, reference

CPU_NUM_SMS = 132  # what the CPU ops plan for (an H200)


def run(c: Case, dtype, softmax_scale=None):
    inp = make_inputs(c, dtype, "cpu")
    meta, splits = get_mla_metadata(inp.cache_seqlens, c.s_q * c.h_q // c.h_kv, c.h_kv)
    out, lse = flash_mla_with_kvcache(inp.q, inp.blocked_k, inp.block_table, inp.cache_seqlens, 512,
                                      meta, splits, softmax_scale=softmax_scale, causal=c.causal)
    return inp, out, lse


def check(c: Case, dtype, softmax_scale=None):
    inp, out, lse = run(c, dtype, softmax_scale)
    assert out.shape == (c.b, c.s_q, c.h_q, 512) and out.dtype == dtype and out.is_contiguous()
    assert lse.shape == (c.b, c.h_q, c.s_q) and lse.dtype == torch.float32
    out_ref, lse_ref = reference(inp, c.causal, softmax_scale)
    err = check_outputs(out, lse, out_ref, lse_ref)
    assert err is None, f"{c}: {err}"


DTYPES = [torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16"])
@pytest.mark.parametrize("h_kv", [1, 2])
@pytest.mark.parametrize("s_q", [1, 2, 4])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("page_size", [64, 128, 100])
@pytest.mark.parametrize("group", [3, 8])  # query heads per KV head
def test_decode_matches_reference(dtype, h_kv, s_q, causal, page_size, group):
    c = Case(b=3, s_q=s_q, s_k=150, h_q=group * h_kv, h_kv=h_kv, varlen=True, causal=causal,
             page_size=page_size, seed=s_q * 7 + h_kv + group)
    check(c, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_zero_and_short_seqlens(dtype, causal):
    # Length 0 requests (out 0, lse +inf), lengths below s_q (causal rows that see no key),
    # exactly one page and one past a page.
    c = Case(b=6, s_q=4, s_k=0, h_q=8, h_kv=1, varlen=False, causal=causal,
             seqlens=[0, 1, 3, 64, 0, 65])
    check(c, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16"])
def test_all_seqlens_zero(dtype):
    c = Case(b=2, s_q=2, s_k=0, h_q=4, h_kv=1, varlen=False, causal=False, seqlens=[0, 0])
    inp, out, lse = run(c, dtype)
    assert torch.all(out == 0)
    assert torch.all(lse == float("inf"))


def test_zero_seqlens_flag():
    # FlashMLA's "have_zero_seqlen_k" data on a small varlen batch.
    check(Case(b=8, s_q=2, s_k=100, h_q=4, h_kv=2, varlen=True, causal=True, zero_seqlens=True, seed=3),
          torch.bfloat16)


@pytest.mark.parametrize("scale", [0.3, 0.0, -0.2, 1e-30, 3.0])
def test_softmax_scale_used_as_given(scale):
    # Any finite value is used as is, as in FlashMLA (0: uniform attention; negative: inverted).
    c = Case(b=2, s_q=2, s_k=70, h_q=4, h_kv=1, varlen=False, causal=False)
    check(c, torch.bfloat16, softmax_scale=scale)


def test_softmax_scale_none_is_one_over_sqrt_576():
    c = Case(b=2, s_q=2, s_k=70, h_q=4, h_kv=1, varlen=False, causal=False)
    check(c, torch.bfloat16, softmax_scale=None)
    _, out_none, lse_none = run(c, torch.bfloat16, None)
    _, out_default, lse_default = run(c, torch.bfloat16, 576 ** -0.5)
    assert torch.equal(out_none, out_default) and torch.equal(lse_none, lse_default)
    # Scale 0: every key weighs the same, lse = log(70).
    _, _, lse_zero = run(c, torch.bfloat16, 0.0)
    assert torch.allclose(lse_zero, torch.full_like(lse_zero, math.log(70)))


def test_strided_inputs():
    # q and k_cache views with padded rows (strides != shape), block_table with padded rows.
    c = Case(b=2, s_q=2, s_k=130, h_q=4, h_kv=1, varlen=True, causal=True)
    inp = make_inputs(c, torch.bfloat16, "cpu")
    out_ref, lse_ref = reference(inp, c.causal)
    q_big = torch.full((c.b, c.s_q, c.h_q, 576 + 64), float("nan"), dtype=torch.bfloat16)
    q_big[..., :576] = inp.q
    k_big = torch.full((inp.blocked_k.shape[0], inp.blocked_k.shape[1], 1, 576 + 8), float("nan"),
                       dtype=torch.bfloat16)
    k_big[..., :576] = inp.blocked_k
    bt_big = torch.full((c.b, inp.block_table.shape[1] + 3), -1, dtype=torch.int32)
    bt_big[:, :inp.block_table.shape[1]] = inp.block_table
    q, k, bt = q_big[..., :576], k_big[..., :576], bt_big[:, :inp.block_table.shape[1]]
    assert not q.is_contiguous() and not k.is_contiguous() and not bt.is_contiguous()
    meta, splits = get_mla_metadata(inp.cache_seqlens, c.s_q * c.h_q, 1)
    out, lse = flash_mla_with_kvcache(q, k, bt, inp.cache_seqlens, 512, meta, splits, causal=True)
    assert check_outputs(out, lse, out_ref, lse_ref) is None


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_long_request_split_over_many_parts(causal):
    # One long request over a plan of many SM parts: many splits combined through the workspace.
    c = Case(b=1, s_q=2, s_k=3000, h_q=2, h_kv=1, varlen=False, causal=causal, seed=5)
    inp = make_inputs(c, torch.bfloat16, "cpu")
    meta, splits = get_mla_metadata(inp.cache_seqlens, c.s_q * c.h_q, 1)
    assert int(splits[-1]) > 1, "expected the request to be split"
    out, lse = flash_mla_with_kvcache(inp.q, inp.blocked_k, inp.block_table, inp.cache_seqlens, 512,
                                      meta, splits, causal=causal)
    err = check_outputs(out, lse, *reference(inp, causal))
    assert err is None, err


# ---------------------------------------------------------------------------------------------
# Metadata
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("b", [1, 5, 64])
@pytest.mark.parametrize("q_rows,h_kv", [(1, 1), (128, 1), (256, 1), (64, 2), (16, 8)])
def test_metadata_shapes(b, q_rows, h_kv):
    seqlens = torch.randint(0, 5000, (b,), dtype=torch.int32, generator=torch.Generator().manual_seed(b))
    meta, splits = get_mla_metadata(seqlens, q_rows, h_kv)
    assert meta.dtype == torch.int32 and splits.dtype == torch.int32
    assert meta.device.type == "cpu" and splits.device.type == "cpu"
    parts = flash_mla._num_sm_parts(torch.device("cpu"), q_rows, h_kv)
    assert meta.shape == (parts, 8)
    assert splits.shape == (b + 1,)
    s = splits.tolist()
    assert s[0] == 0
    assert all(s[i + 1] > s[i] for i in range(b)), f"each request needs at least one split: {s}"
    assert s[-1] <= b + parts
    # Deterministic.
    meta2, splits2 = get_mla_metadata(seqlens.clone(), q_rows, h_kv)
    assert torch.equal(meta, meta2) and torch.equal(splits, splits2)


def test_metadata_num_sm_parts_is_h200_plan():
    # The CPU ops plan for 132 SMs: one grid of num_sm_parts CTAs per (m-block, kv head) fills it.
    parts = flash_mla._num_sm_parts(torch.device("cpu"), 128, 1)
    assert 1 <= parts <= CPU_NUM_SMS
    assert flash_mla._num_sm_parts(torch.device("meta"), 128, 1) == parts


def test_metadata_shape_independent_of_values():
    a = torch.zeros(7, dtype=torch.int32)
    b = torch.full((7,), 100000, dtype=torch.int32)
    assert get_mla_metadata(a, 64, 1)[0].shape == get_mla_metadata(b, 64, 1)[0].shape


def test_api_signature_matches_flashmla():
    # FlashMLA's parameters in FlashMLA's order (both API generations), then SGLang's descales.
    import inspect
    p = inspect.signature(flash_mla_with_kvcache).parameters
    assert list(p) == ["q", "k_cache", "block_table", "cache_seqlens", "head_dim_v",
                       "tile_scheduler_metadata", "num_splits", "softmax_scale", "causal",
                       "is_fp8_kvcache", "indices", "attn_sink", "extra_k_cache", "extra_indices_in_kvcache",
                       "topk_length", "extra_topk_length", "descale_q", "descale_k"]
    assert p["softmax_scale"].default is None and p["causal"].default is False
    assert p["num_splits"].default is None
    assert list(inspect.signature(get_mla_metadata).parameters) == [
        "cache_seqlens", "num_q_tokens_per_head_k", "num_heads_k", "num_heads_q", "is_fp8_kvcache", "topk",
        "kwargs"]
    assert math.isclose(flash_mla._DEFAULT_SOFTMAX_SCALE, 1 / math.sqrt(576))
