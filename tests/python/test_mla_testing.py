"""CPU checks of the test helpers themselves (mla_testing.py): the batched float64 reference
equals the one-request-at-a-time statement of the math, the split pieces read from a plan cover
every key once, and the dominant-key construction sees a single dropped or doubled key while
the right answer passes. No flash_mla build needed except where noted.
"""

import pytest
import torch

from mla_testing import (Case, Inputs, check_outputs, make_dominant, make_inputs, reference,
                         reference_loop, split_pieces)

REF_CASES = [
    Case(3, 1, 300, 16, 1, varlen=True, causal=False),
    Case(4, 2, 200, 32, 2, varlen=True, causal=True, seed=1),
    Case(5, 4, 100, 6, 3, varlen=True, causal=True, zero_seqlens=True, seed=2),
    Case(3, 3, 0, 8, 1, varlen=False, causal=True, seqlens=[0, 2, 70]),
    Case(2, 2, 150, 16, 1, varlen=True, causal=False, page_size=16, seed=3),
]


@pytest.mark.parametrize("c", REF_CASES, ids=str)
@pytest.mark.parametrize("max_elements", [1 << 28, 1], ids=["one-chunk", "chunk-per-request"])
def test_batched_reference_matches_loop(c, max_elements):
    inp = make_inputs(c, torch.bfloat16, "cpu")
    out, lse = reference(inp, c.causal, 0.07, max_elements=max_elements)
    out_l, lse_l = reference_loop(inp, c.causal, 0.07)
    assert torch.equal(torch.isinf(lse), torch.isinf(lse_l))
    torch.testing.assert_close(out, out_l, rtol=1e-12, atol=1e-14)
    fin = torch.isfinite(lse_l)
    torch.testing.assert_close(lse[fin], lse_l[fin], rtol=1e-12, atol=1e-14)


def fake_plan(rows):
    """Plan rows (begin_req, begin_block, end_req, end_block, begin_split) padded to 8 ints."""
    return torch.tensor([list(r) + [0] * (8 - len(r)) for r in rows], dtype=torch.int32)


def test_split_pieces_from_plan_rows():
    seqlens = [300, 200, 0, 64]  # 5, 4, 0, 1 blocks of 64 keys
    plan = fake_plan([(0, 0, 0, 2, 0), (0, 2, 1, 1, 1), (1, 1, 3, 1, 1)])
    assert split_pieces(plan, seqlens) == [[(0, 128), (128, 300)], [(0, 64), (64, 200)], [], [(0, 64)]]


def test_split_pieces_cover_every_key_once_with_the_real_plan():
    flash_mla = pytest.importorskip("flash_mla", reason="needs the flash_mla package (CPU ops)")
    gen = torch.Generator().manual_seed(0)
    for b in [1, 3, 40, 300]:
        seqlens = torch.randint(0, 5000, (b,), dtype=torch.int32, generator=gen)
        seqlens[::7] = 0
        meta, splits = flash_mla.get_mla_metadata(seqlens, 16, 1)
        pieces = split_pieces(meta, seqlens.tolist())
        for i, L in enumerate(seqlens.tolist()):
            covered = [k for k0, k1 in pieces[i] for k in range(k0, k1)]
            assert covered == list(range(L)), (b, i)
            assert len(pieces[i]) == int(splits[i + 1] - splits[i]) or L == 0, (b, i)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("s_q,h_q,h_kv,causal,page", [(1, 16, 1, False, 64), (2, 32, 2, True, 16)])
def test_dominant_key_sees_a_dropped_or_doubled_key(dtype, s_q, h_q, h_kv, causal, page):
    seqlens = [300, 3000, 2]
    c = Case(3, s_q, 0, h_q, h_kv, varlen=False, causal=causal, page_size=page, seqlens=seqlens, seed=4)
    plan = fake_plan([(0, 0, 1, 20, 0), (1, 20, 2, 1, 1)])
    dom = make_dominant(c, dtype, "cpu", plan)
    assert {0, 1279, 1280, 2999} <= set(dom.keys[1])  # ends, and the split at block 20
    inp = dom.inp
    for subcase in [0, 5, dom.num_subcases() - 1]:
        saved = dom.place(subcase)
        out_ref, lse_ref = reference(inp, causal)
        shares = dom.shares(out_ref, subcase, causal)
        assert shares and 0.3 < min(shares) and max(shares) < 0.75, (min(shares), max(shares))
        # The right answer, rounded as a kernel's output is, passes.
        assert check_outputs(out_ref.to(dtype), lse_ref.float(), out_ref, lse_ref) is None
        for i in range(2):  # the long requests: emulate a kernel that drops / doubles key j
            j = dom.key_of(i, subcase)
            nb = j + 1 if j + 1 < seqlens[i] else j - 1
            pg = int(inp.block_table[i, nb // page])
            k = inp.blocked_k.clone()
            dropped = k.clone()
            dropped[int(inp.block_table[i, j // page]), j % page] = k[pg, nb % page]
            doubled = k.clone()
            doubled[pg, nb % page] = k[int(inp.block_table[i, j // page]), j % page]
            for name, kk in [("dropped", dropped), ("doubled", doubled)]:
                bad = Inputs(inp.cache_seqlens, inp.q, inp.block_table, kk, inp.seqlens)
                out_bad, lse_bad = reference(bad, causal)
                err = check_outputs(out_bad.to(dtype), lse_bad.float(), out_ref, lse_ref)
                if causal and nb > seqlens[i] - s_q:
                    continue  # the neighbour is hidden from some rows: not a clean emulation
                assert err is not None, f"request {i} key {j} {name}: not detected"
        dom.restore(saved)
    assert torch.equal(inp.blocked_k.isnan(), make_inputs(c, dtype, "cpu").blocked_k.isnan())
