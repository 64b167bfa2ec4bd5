"""Every validation rule, table-driven (CPU tensors; the checks are shared with the CUDA path):
each bad input raises with a message naming the argument, what was expected and what was given,
and the inputs of the robustness issue give the error or the exact safe result listed.
docs/VALIDATION.md lists the same rules."""

import math

import pytest
import torch

from flash_mla import FlashMLASchedMeta, flash_mla_with_kvcache, get_mla_metadata
from mla_testing import Case, make_inputs

B, S_Q, H_Q, S_K = 2, 1, 4, 80  # seqlens 80, 80; block table [2, 4] of 64-token pages


@pytest.fixture
def args():
    """Valid arguments of flash_mla_with_kvcache, as a dict to modify."""
    c = Case(b=B, s_q=S_Q, s_k=S_K, h_q=H_Q, h_kv=1, varlen=False, causal=False)
    inp = make_inputs(c, torch.bfloat16, "cpu")
    meta, splits = get_mla_metadata(inp.cache_seqlens, S_Q * H_Q, 1)
    return dict(q=inp.q, k_cache=inp.blocked_k, block_table=inp.block_table,
                cache_seqlens=inp.cache_seqlens, head_dim_v=512,
                tile_scheduler_metadata=meta, num_splits=splits)


def with_seqlen(i, v):
    def f(a):
        sl = a["cache_seqlens"].clone()
        sl[i] = v
        a["cache_seqlens"] = sl
    return f


def with_page(i, j, v):
    def f(a):
        bt = a["block_table"].clone()
        bt[i, j] = v
        a["block_table"] = bt
    return f


def setter(**kw):
    def f(a):
        for k, v in kw.items():
            a[k] = v(a) if callable(v) else v
    return f


def other_lengths_plan(a):
    sl = a["cache_seqlens"].clone()
    sl[0] = 10
    a["tile_scheduler_metadata"], a["num_splits"] = get_mla_metadata(sl, S_Q * H_Q, 1)


def corrupt_metadata(a):
    md = a["tile_scheduler_metadata"].clone()
    md[0, 1] = 987654
    a["tile_scheduler_metadata"] = md


def non_contiguous_last(t, dim):
    return t.transpose(-1, dim).contiguous().transpose(-1, dim)


META = torch.device("meta")

# (id, change to the valid arguments, exception, message regex)
CASES = [
    # dtypes
    ("q_float32", setter(q=lambda a: a["q"].float()), RuntimeError,
     r"q must be torch\.bfloat16 or torch\.float16, got torch\.float32"),
    ("q_int32", setter(q=lambda a: a["q"].int()), RuntimeError, r"q must be torch\.bfloat16 or torch\.float16"),
    ("k_cache_dtype", setter(k_cache=lambda a: a["k_cache"].half()), RuntimeError,
     r"k_cache must be torch\.bfloat16, got torch\.float16"),
    ("block_table_int64", setter(block_table=lambda a: a["block_table"].long()), RuntimeError,
     r"block_table must be torch\.int32, got torch\.int64"),
    ("block_table_float", setter(block_table=lambda a: a["block_table"].float()), RuntimeError,
     r"block_table must be torch\.int32, got torch\.float32"),
    ("cache_seqlens_int64", setter(cache_seqlens=lambda a: a["cache_seqlens"].long()), RuntimeError,
     r"cache_seqlens must be torch\.int32, got torch\.int64"),
    ("metadata_int64", setter(tile_scheduler_metadata=lambda a: a["tile_scheduler_metadata"].long()), RuntimeError,
     r"tile_scheduler_metadata must be torch\.int32, got torch\.int64"),
    ("num_splits_int64", setter(num_splits=lambda a: a["num_splits"].long()), RuntimeError,
     r"num_splits must be torch\.int32, got torch\.int64"),
    # shapes, with the numbers expected
    ("q_3d", setter(q=lambda a: a["q"][:, 0]), RuntimeError,
     r"q must be a 4-D tensor \[batch, s_q, h_q, 576\] = \[\*, \*, \*, 576\], got a 3-D tensor \[2, 4, 576\]"),
    ("q_head_dim_512", setter(q=lambda a: a["q"][..., :512].contiguous()), RuntimeError,
     r"q must be a 4-D tensor .*, got a 4-D tensor \[2, 1, 4, 512\]"),
    ("k_cache_3d", setter(k_cache=lambda a: a["k_cache"][:, :, 0]), RuntimeError,
     r"k_cache must be a 4-D tensor \[num_blocks, page_size, h_kv, 576\]"),
    ("k_cache_head_dim_512", setter(k_cache=lambda a: a["k_cache"][..., :512].contiguous()), RuntimeError,
     r"k_cache must be a 4-D tensor .*576.*, got .*512\]"),
    ("head_dim_v_576", setter(head_dim_v=576), RuntimeError, r"head_dim_v must be 512, got 576"),
    ("head_dim_v_0", setter(head_dim_v=0), RuntimeError, r"head_dim_v must be 512, got 0"),
    ("h_q_not_multiple_of_h_kv",
     setter(q=lambda a: a["q"][:, :, :3].contiguous(), k_cache=lambda a: torch.cat([a["k_cache"]] * 2, dim=2)),
     RuntimeError, r"h_q: expected a multiple of h_kv = 2, got 3"),
    ("block_table_batch", setter(block_table=lambda a: a["block_table"][:1]), RuntimeError,
     r"block_table must be a 2-D tensor \[batch, max_blocks_per_seq\] = \[2, \*\], got a 2-D tensor \[1, "),
    ("cache_seqlens_batch", setter(cache_seqlens=lambda a: a["cache_seqlens"][:1]), RuntimeError,
     r"cache_seqlens must be a 1-D tensor \[batch\] = \[2\], got a 1-D tensor \[1\]"),
    ("num_splits_batch", setter(num_splits=lambda a: a["num_splits"][:2]), RuntimeError,
     r"num_splits must be a 1-D tensor \[batch \+ 1\] = \[3\], got a 1-D tensor \[2\]"),
    ("metadata_width", setter(tile_scheduler_metadata=lambda a: a["tile_scheduler_metadata"][:, :4]), RuntimeError,
     r"tile_scheduler_metadata must be a 2-D tensor \[num_sm_parts, 8\] = \[\*, 8\], got a 2-D tensor \[\d+, 4\]"),
    ("page_size_0", setter(k_cache=lambda a: a["k_cache"][:, :0]), RuntimeError,
     r"page_size: expected >= 1 \(tokens per k_cache page\), got 0"),
    ("num_blocks_0", setter(k_cache=lambda a: a["k_cache"][:0]), RuntimeError,
     r"num_blocks: expected >= 1 \(pages in k_cache\), got 0"),
    ("block_table_width_0", setter(block_table=lambda a: a["block_table"][:, :0]), RuntimeError,
     r"max_blocks_per_seq: expected >= 1, got 0"),
    ("metadata_rows_0", setter(tile_scheduler_metadata=lambda a: a["tile_scheduler_metadata"][:0]), RuntimeError,
     r"num_sm_parts: expected a value in \[1, 2048\] \(rows of tile_scheduler_metadata\), got 0"),
    # layouts
    ("q_last_dim_strided", setter(q=lambda a: non_contiguous_last(a["q"], -2)), RuntimeError,
     r"q must be contiguous in its last dim, got stride 4"),
    ("k_cache_last_dim_strided", setter(k_cache=lambda a: non_contiguous_last(a["k_cache"], -3)), RuntimeError,
     r"k_cache must be contiguous in its last dim"),
    ("block_table_last_dim_strided", setter(block_table=lambda a: a["block_table"].t().contiguous().t()),
     RuntimeError, r"block_table must be contiguous in its last dim"),
    ("cache_seqlens_strided", setter(cache_seqlens=lambda a: torch.stack([a["cache_seqlens"]] * 2, 1)[:, 0]),
     RuntimeError, r"cache_seqlens must be contiguous in its last dim, got stride 2"),
    ("q_misaligned", setter(q=lambda a: torch.cat([a["q"], a["q"][..., :4]], -1)[..., 4:]), RuntimeError,
     r"q: expected a 16-byte aligned pointer"),
    # devices: a meta tensor among CPU ones must not run (the fake kernel would return garbage)
    *[(f"{name}_on_meta", setter(**{name: (lambda n: lambda a: a[n].to(META))(name)}), RuntimeError,
       rf"{name} must be on the same device as q \(cpu\), got meta")
      for name in ["k_cache", "block_table", "cache_seqlens", "tile_scheduler_metadata", "num_splits"]],
    ("attn_sink_on_meta", setter(attn_sink=torch.zeros(H_Q, device=META)), RuntimeError,
     r"attn_sink must be on the same device as q \(cpu\), got meta"),
    # softmax_scale: finite values are used as is; only non-finite ones are errors
    ("softmax_scale_nan", setter(softmax_scale=math.nan), RuntimeError,
     r"softmax_scale: expected a finite float32 value, or None for 1/sqrt\(576\), got nan"),
    ("softmax_scale_inf", setter(softmax_scale=math.inf), RuntimeError, r"softmax_scale: expected a finite.*got inf"),
    ("softmax_scale_1e300", setter(softmax_scale=1e300), RuntimeError, r"softmax_scale: expected a finite float32"),
    # attention sink
    ("attn_sink_dtype", setter(attn_sink=torch.zeros(H_Q, dtype=torch.bfloat16)), RuntimeError,
     r"attn_sink must be torch\.float32, got torch\.bfloat16"),
    ("attn_sink_shape", setter(attn_sink=torch.zeros(H_Q + 1)), RuntimeError,
     r"attn_sink must be a 1-D tensor \[h_q\] = \[4\], got a 1-D tensor \[5\]"),
    # lengths and pages (visible on the host; the GPU gives NaN rows)
    ("seqlen_past_block_table", with_seqlen(1, 10 ** 6), RuntimeError,
     r"cache_seqlens\[1\]: expected a value in \[0, max_blocks_per_seq \* page_size = 4 \* 64 = 256\], got 1000000"),
    ("seqlen_int32_max", with_seqlen(0, 2 ** 31 - 1), RuntimeError, r"cache_seqlens\[0\]: .*got 2147483647"),
    ("seqlen_negative", with_seqlen(0, -1), RuntimeError, r"cache_seqlens\[0\]: expected a value in \[0, .*got -1"),
    ("page_out_of_range", with_page(0, 1, 10 ** 6), RuntimeError,
     r"block_table\[0\]\[1\]: expected a page index in \[0, num_blocks = \d+\), got 1000000"),
    ("page_negative", with_page(1, 0, -1), RuntimeError, r"block_table\[1\]\[0\]: .*got -1"),
    # plans: checked against the lengths on the host
    ("num_splits_corrupted", setter(num_splits=torch.tensor([0, 1000, -3], dtype=torch.int32)), RuntimeError,
     r"num_splits\[1\]: expected \d+, got 1000 \(the plan must be get_mla_metadata's for this call's cache_seqlens"),
    ("metadata_corrupted", corrupt_metadata, RuntimeError,
     r"tile_scheduler_metadata\[0\]\[1\]: expected 0, got 987654"),
    ("plan_for_other_lengths", other_lengths_plan, RuntimeError,
     r"one made for other lengths, or modified, is rejected"),
    ("num_splits_without_tensor_plan", setter(tile_scheduler_metadata=FlashMLASchedMeta()), ValueError,
     r"num_splits: expected None with a FlashMLASchedMeta"),
    ("plan_of_wrong_type", setter(tile_scheduler_metadata=[1, 2], num_splits=None), ValueError,
     r"tile_scheduler_metadata: expected a FlashMLASchedMeta or the tensor from get_mla_metadata, got list"),
    ("block_table_none", setter(block_table=None), ValueError,
     r"block_table and cache_seqlens are required for dense decode, got block_table=None"),
    # features FlashMLA-cpp does not have: NotImplementedError naming them
    ("fp8_kvcache", setter(is_fp8_kvcache=True), NotImplementedError, r"FP8 KV cache \(is_fp8_kvcache=True\)"),
    ("sparse_indices", setter(indices=torch.zeros(B, S_Q, 8, dtype=torch.int32)), NotImplementedError,
     r"sparse attention \(indices / topk_length\)"),
    ("topk_length", setter(topk_length=torch.zeros(B, dtype=torch.int32)), NotImplementedError,
     r"sparse attention \(indices / topk_length\)"),
    ("extra_k_cache", setter(extra_k_cache=torch.zeros(1)), NotImplementedError, r"extra KV cache \(extra_k_cache"),
    ("extra_indices", setter(extra_indices_in_kvcache=torch.zeros(1)), NotImplementedError, r"extra KV cache"),
    ("extra_topk_length", setter(extra_topk_length=torch.zeros(1)), NotImplementedError, r"extra KV cache"),
    ("descale_q", setter(descale_q=torch.ones(1)), NotImplementedError, r"FP8 descaling \(descale_q / descale_k\)"),
    ("descale_k", setter(descale_k=torch.ones(1)), NotImplementedError, r"FP8 descaling"),
]


def test_valid_arguments_run(args):
    out, lse = flash_mla_with_kvcache(**args)
    assert out.shape == (B, S_Q, H_Q, 512) and lse.shape == (B, H_Q, S_Q)


@pytest.mark.parametrize("change,exc,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rule(args, change, exc, message):
    change(args)
    with pytest.raises(exc, match=message) as raised:
        flash_mla_with_kvcache(**args)
    # The message is for the user: no source file or line of ours in front of it.
    assert ".cpp:" not in str(raised.value) and ".h:" not in str(raised.value), str(raised.value)


def test_every_case_id_is_unique():
    assert len({c[0] for c in CASES}) == len(CASES)


# ---------------------------------------------------------------------------------------------
# Inputs with an exact safe result
# ---------------------------------------------------------------------------------------------

def test_empty_batch_gives_empty_outputs(args):
    sl = args["cache_seqlens"][:0]
    meta, splits = get_mla_metadata(sl, S_Q * H_Q, 1)
    assert splits.tolist() == [0]
    for plan in [(meta, splits), (meta, None), (get_mla_metadata()[0], None)]:
        out, lse = flash_mla_with_kvcache(args["q"][:0], args["k_cache"], args["block_table"][:0], sl, 512, *plan)
        assert out.shape == (0, S_Q, H_Q, 512) and out.dtype == torch.bfloat16
        assert lse.shape == (0, H_Q, S_Q) and lse.dtype == torch.float32


@pytest.mark.parametrize("seqlen", [2147483600, 2 ** 31 - 1, -5])
def test_metadata_for_extreme_lengths(seqlen):
    # Planned without overflow; the decode then rejects the length on the host (see CASES).
    sl = torch.tensor([seqlen, 100, 0], dtype=torch.int32)
    meta, splits = get_mla_metadata(sl, 64, 1)
    s = splits.tolist()
    assert s[0] == 0 and all(s[i + 1] > s[i] for i in range(3)) and s[-1] <= 3 + meta.shape[0]
    rows = meta[:, :5].tolist()
    assert all(0 <= r[0] <= 3 and r[2] < 3 and min(r[1], r[3], r[4]) >= 0 for r in rows)


def test_get_mla_metadata_checks():
    seqlens = torch.full((3,), 10, dtype=torch.int32)
    cases = [
        (lambda: get_mla_metadata(seqlens.long(), 64, 1), RuntimeError, r"cache_seqlens must be torch\.int32, got torch\.int64"),
        (lambda: get_mla_metadata(seqlens.view(3, 1), 64, 1), RuntimeError, r"cache_seqlens must be a 1-D tensor \[batch\]"),
        (lambda: get_mla_metadata(seqlens, 0, 1), RuntimeError, r"num_q_tokens_per_head_k must be positive .*got 0"),
        (lambda: get_mla_metadata(seqlens, 64, 0), RuntimeError, r"num_heads_k must be positive, got 0"),
        (lambda: get_mla_metadata(seqlens), ValueError, r"num_q_tokens_per_head_k and num_heads_k are required"),
        (lambda: get_mla_metadata(seqlens, 64, 1, is_fp8_kvcache=True), NotImplementedError, r"FP8 KV cache"),
        (lambda: get_mla_metadata(seqlens, 64, 1, num_heads_q=64, topk=2048), NotImplementedError,
         r"sparse attention \(topk=2048\)"),
        (lambda: get_mla_metadata(torch.stack([seqlens] * 2, 1)[:, 0], 64, 1), RuntimeError,
         r"cache_seqlens must be contiguous"),
    ]
    for call, exc, message in cases:
        with pytest.raises(exc, match=message):
            call()


def test_sched_meta_consistency_between_calls(args):
    # FlashMLA's check: one FlashMLASchedMeta serves one configuration.
    sched, none = get_mla_metadata()
    assert isinstance(sched, FlashMLASchedMeta) and none is None and not sched.have_initialized
    a = dict(args, tile_scheduler_metadata=sched, num_splits=None)
    flash_mla_with_kvcache(**a)
    assert sched.have_initialized and sched.config.b == B and sched.config.h_q == H_Q
    with pytest.raises(ValueError, match=r"this FlashMLASchedMeta was planned for .*causal=False.*causal=True"):
        flash_mla_with_kvcache(**a, causal=True)
    with pytest.raises(ValueError, match=r"planned for .*h_q=4.* this call has .*h_q=2"):
        flash_mla_with_kvcache(**dict(a, q=args["q"][:, :, :2].contiguous()))
