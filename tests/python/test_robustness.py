"""Randomized corrupted plans, lengths and pages: never a crash, a hang or an out-of-bounds access.

CPU (the host backend sees everything): each corrupted input is rejected with a message naming
the entry, or accepted only when it is a valid input, and then gives exactly the result of a
fresh plan for it.

CUDA (skipped without a GPU): a plan cannot be checked against device lengths without a host
sync, so the contract is memory safety: a corrupted plan or length may give NaN rows or wrong
values, never a CUDA error; afterwards the context is intact and a valid call matches the
reference. The GPU suite also runs the C++ variant under compute-sanitizer memcheck.
"""

import random

import pytest
import torch

from flash_mla import flash_mla_with_kvcache, get_mla_metadata
from mla_testing import Case, check_outputs, make_inputs, reference

INT_MAX, INT_MIN = 2 ** 31 - 1, -2 ** 31
CASE = Case(b=4, s_q=2, s_k=150, h_q=8, h_kv=1, varlen=True, causal=True, seed=3)


def random_value(rng: random.Random, near: int) -> int:
    return rng.choice([
        INT_MAX - rng.randrange(64), INT_MIN + rng.randrange(64), -1 - rng.randrange(8),
        near + rng.randrange(-3, 4), rng.randrange(4096), rng.randrange(INT_MIN, INT_MAX),
    ])


def corrupt(rng, meta, splits, seqlens, table):
    """1-3 random entries of the plan, the lengths or the block table set to random values."""
    meta, splits, seqlens, table = meta.clone(), splits.clone(), seqlens.clone(), table.clone()
    for _ in range(rng.randint(1, 3)):
        t = rng.choice([meta, splits, seqlens, table]).view(-1)
        i = rng.randrange(t.numel())
        t[i] = random_value(rng, int(t[i]))
    return meta, splits, seqlens, table


def test_cpu_corrupted_inputs_are_rejected_or_exact():
    inp = make_inputs(CASE, torch.bfloat16, "cpu")
    meta, splits = get_mla_metadata(inp.cache_seqlens, CASE.s_q * CASE.h_q, 1)
    rng = random.Random(1)
    rejected = 0
    for it in range(300):
        m, s, sl, bt = corrupt(rng, meta, splits, inp.cache_seqlens, inp.block_table)
        try:
            out, lse = flash_mla_with_kvcache(inp.q, inp.blocked_k, bt, sl, 512, m, s, causal=True)
        except RuntimeError as e:
            rejected += 1
            assert str(e).startswith(("flash_mla: num_splits[", "flash_mla: tile_scheduler_metadata[",
                                      "flash_mla: cache_seqlens[", "flash_mla: block_table[")), f"iteration {it}: {e}"
            continue
        fresh = get_mla_metadata(sl, CASE.s_q * CASE.h_q, 1)
        out2, lse2 = flash_mla_with_kvcache(inp.q, inp.blocked_k, bt, sl, 512, *fresh, causal=True)
        # Bit-equal, NaN included (a longer valid length reaches the NaN-poisoned tokens).
        torch.testing.assert_close(out, out2, rtol=0, atol=0, equal_nan=True, msg=f"iteration {it}")
        torch.testing.assert_close(lse, lse2, rtol=0, atol=0, equal_nan=True, msg=f"iteration {it}")
    assert rejected > 200


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_corrupted_inputs_never_fault():
    inp = make_inputs(CASE, torch.bfloat16, "cuda")
    meta, splits = get_mla_metadata(inp.cache_seqlens, CASE.s_q * CASE.h_q, 1)
    rng = random.Random(2)
    for it in range(300):
        m, s, sl, bt = corrupt(rng, meta, splits, inp.cache_seqlens, inp.block_table)
        flash_mla_with_kvcache(inp.q, inp.blocked_k, bt, sl, 512, m, s, causal=True)
        torch.cuda.synchronize()  # a fault would raise here (and poison the context for good)
    # The cases, with their exact safe results.
    bad_splits = splits.clone()
    bad_splits[:3] = torch.tensor([0, 1000, -3])
    out, lse = flash_mla_with_kvcache(inp.q, inp.blocked_k, inp.block_table, inp.cache_seqlens, 512, meta,
                                      bad_splits, causal=True)
    assert torch.isnan(out[:2]).all() and torch.isnan(lse[:2]).all(), "requests 0 and 1 have no valid splits"
    long = inp.cache_seqlens.clone()
    long[1] = INT_MAX
    out, lse = flash_mla_with_kvcache(inp.q, inp.blocked_k, inp.block_table, long, 512,
                                      *get_mla_metadata(long, CASE.s_q * CASE.h_q, 1), causal=True)
    assert torch.isnan(out[1]).all() and torch.isnan(lse[1]).all(), "a length past the block table gives NaN rows"
    out_ref, lse_ref = reference(inp, causal=True)
    keep = [0, 2, 3]
    assert check_outputs(out[keep], lse[keep], out_ref[keep], lse_ref[keep]) is None
    # The context is intact: a valid call still matches the reference.
    out, lse = flash_mla_with_kvcache(inp.q, inp.blocked_k, inp.block_table, inp.cache_seqlens, 512, meta, splits,
                                      causal=True)
    assert check_outputs(out, lse, out_ref, lse_ref) is None
