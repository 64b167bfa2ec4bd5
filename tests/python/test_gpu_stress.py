"""GPU tests that the FlashMLA grid does not cover, on every kernel under test (see test_gpu.py:
on an H100/H200 the Hopper kernel, forced with FLASHMLA_KERNEL=sm90, and the portable one):

- dominant keys: one key per request holds ~half of the softmax mass, placed at the first and
  last key of every split (read from the plan), of every page and of every 64-key block, one
  sub-case after another, so a single dropped, doubled or misplaced key fails (the arithmetic
  is in mla_testing.py, above make_dominant; test_mla_testing.py checks on the CPU that such a
  kernel would fail); also on a 256K-token request and on b = 1024 short requests;
- large logits (softmax_scale 30: scores in the hundreds, exp overflows without the max shift);
- a cache of more than 2^31 elements with the used pages at its far end (64-bit offsets);
- b = 1024 short requests (zeros included), bitwise-identical repeated calls, strided q /
  k_cache / block_table, page sizes that are not a multiple of 64 (1, 16, 32, 100: the portable
  kernel under FLASHMLA_KERNEL=auto), rows that see no key;
- the dispatch itself: FLASHMLA_KERNEL=sm90 refuses what the Hopper kernel cannot run, auto
  gives the chosen kernel's bits, a bad value is an error naming the variable.

Every output is compared with the float64 reference (FlashMLA's tolerances), on outputs
poisoned with NaN first; caches hold NaN past each request's length and block tables hold
2147480000 past each request's last page (mla_testing.make_inputs).

Skipped without a CUDA device. FLASHMLA_TEST_DEVICE=cpu runs them on the host backend instead
(smaller long cases; a dry run of the tests themselves, e.g. on a machine without a GPU).
"""

import os

import pytest
import torch

from flash_mla import flash_mla_with_kvcache, get_mla_metadata
from mla_testing import (BAD_PAGE, KERNEL_ENV, Case, Inputs, check_outputs, kernel_env, kernels_under_test,
                         make_dominant, make_inputs, make_seqlens, poison_allocator, reference)

DEVICE = os.environ.get("FLASHMLA_TEST_DEVICE", "cuda")
ON_GPU = DEVICE == "cuda"
pytestmark = pytest.mark.skipif(ON_GPU and not torch.cuda.is_available(),
                                reason="no CUDA device: GPU tests need torch.cuda.is_available() "
                                       "(FLASHMLA_TEST_DEVICE=cpu dry-runs them on the host backend)")
KERNELS = kernels_under_test() if ON_GPU else ["auto"]
BF16, FP16 = torch.bfloat16, torch.float16
LONG = 256 * 1024 if ON_GPU else 9000  # the long request: 256K tokens (shorter on the host backend)


def plan(c: Case, seqlens):
    lens = torch.tensor(seqlens, dtype=torch.int32, device=DEVICE)
    return get_mla_metadata(lens, c.s_q * c.h_q // c.h_kv, c.h_kv)


def decode(inp: Inputs, c: Case, dtype, softmax_scale=None, q=None, k=None, bt=None):
    """One call on inp (or the given views of its tensors), outputs NaN-poisoned first."""
    meta, splits = get_mla_metadata(inp.cache_seqlens, c.s_q * c.h_q // c.h_kv, c.h_kv)
    poison_allocator(DEVICE, c.b * c.s_q * c.h_q * 512 * dtype.itemsize, c.b * c.h_q * c.s_q * 4)
    return flash_mla_with_kvcache(inp.q if q is None else q, inp.blocked_k if k is None else k,
                                  inp.block_table if bt is None else bt, inp.cache_seqlens, 512,
                                  meta, splits, softmax_scale=softmax_scale, causal=c.causal)


def on_kernels(inp: Inputs, c: Case, dtype, softmax_scale=None, ref=None, **views):
    """Runs inp on every kernel under test; returns ["[kernel] error"] for those that are off."""
    out_ref, lse_ref = ref if ref is not None else reference(inp, c.causal, softmax_scale)
    errors = []
    for k in KERNELS:
        with kernel_env(k, c.page_size):
            out, lse = decode(inp, c, dtype, softmax_scale, **views)
        err = check_outputs(out, lse, out_ref, lse_ref)
        if err is not None:
            errors.append(f"[{k}] {c}: {err}")
    return errors


# ---------------------------------------------------------------------------------------------
# Dominant keys
# ---------------------------------------------------------------------------------------------

def run_dominant(c: Case, dtype, max_subcases=None, softmax_scale=None):
    """Every sub-case of the dominant-key construction on every kernel; asserts they all pass."""
    meta, _ = plan(c, make_seqlens(c))
    dom = make_dominant(c, dtype, DEVICE, meta, softmax_scale, max_subcases)
    n = dom.num_subcases()
    assert n > 0
    failures, share_range = [], [1.0, 0.0]
    for sub in range(n):
        saved = dom.place(sub)
        ref = reference(dom.inp, c.causal, softmax_scale)
        shares = dom.shares(ref[0], sub, c.causal)
        if shares:  # the construction works: the key holds about half of its rows' mass
            share_range = [min(share_range[0], min(shares)), max(share_range[1], max(shares))]
        where = ", ".join(f"req {i} key {dom.key_of(i, sub)}" for i in range(min(c.b, 4)))
        failures += [f"sub-case {sub} ({where}{', ...' if c.b > 4 else ''}): {e}"
                     for e in on_kernels(dom.inp, c, dtype, softmax_scale, ref=ref)]
        dom.restore(saved)
    covered = sum(min(len(k), n) for k in dom.keys)
    print(f"\n{c} {str(dtype)[6:]}: {n} sub-cases, {covered} dominant-key positions, dominant share "
          f"{share_range[0]:.2f}..{share_range[1]:.2f}, kernels {KERNELS}: {len(failures)} failures")
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures[:30])
    assert 0.25 < share_range[0] and share_range[1] < 0.8, f"dominant share {share_range}: construction broken"


DOMINANT = {
    "page64-h16": (Case(3, 1, 0, 16, 1, False, False, seqlens=[2047, 1000, 130]), BF16),
    "page128-s_q2-h64-causal": (Case(2, 2, 0, 64, 1, False, True, page_size=128, seqlens=[2100, 1281], seed=1),
                                FP16),
    "page256-h128": (Case(2, 1, 0, 128, 1, False, False, page_size=256, seqlens=[1800, 777], seed=2), BF16),
    "page64-h_kv2": (Case(2, 1, 0, 32, 2, False, False, seqlens=[1500, 700], seed=3), BF16),
    "page64-b40-varlen-causal": (Case(40, 1, 700, 16, 1, True, True, seed=7), BF16),
    "page64-s_q8-causal": (Case(4, 8, 0, 16, 1, False, True, seqlens=[900, 300, 8, 1], seed=8), FP16),
    "page16": (Case(2, 1, 0, 16, 1, False, False, page_size=16, seqlens=[500, 333], seed=4), BF16),
    "page1-s_q4-causal": (Case(2, 4, 0, 16, 1, False, True, page_size=1, seqlens=[64, 40], seed=5), BF16),
    "page100": (Case(2, 1, 0, 32, 1, False, False, page_size=100, seqlens=[1000, 450], seed=6), FP16),
}


@pytest.mark.parametrize("name", list(DOMINANT))
@torch.inference_mode()
def test_dominant_key_at_every_split_page_and_block_boundary(name):
    c, dtype = DOMINANT[name]
    run_dominant(c, dtype)


@pytest.mark.parametrize("h_q", [16, 128])
@torch.inference_mode()
def test_long_request_256k(h_q):
    # 256K keys next to a short request: split over many parts; dominant key at 16 positions
    # (ends, and an even sample of the split / page / block boundaries).
    c = Case(2, 2, 0, h_q, 1, False, True, seqlens=[LONG, 3000], seed=9)
    run_dominant(c, BF16, max_subcases=16)


@pytest.mark.parametrize("s_q,h_q,dtype", [(1, 16, BF16), (2, 64, FP16)], ids=["s_q1-h16-bf16", "s_q2-h64-fp16"])
@torch.inference_mode()
def test_batch_1024_short_requests(s_q, h_q, dtype):
    c = Case(1024, s_q, 150, h_q, 1, varlen=True, causal=True, zero_seqlens=s_q == 2, seed=10)
    errors = on_kernels(make_inputs(c, dtype, DEVICE), c, dtype)
    assert not errors, "\n".join(errors)
    run_dominant(c, dtype, max_subcases=4)


# ---------------------------------------------------------------------------------------------
# Large logits, 64-bit offsets
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [BF16, FP16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("scale", [1.0, 30.0])
@torch.inference_mode()
def test_large_logits(dtype, scale):
    # q ~ randn clamped to [-10, 10] (10x the usual), k ~ randn/10: q.k has std ~2.4, so with
    # softmax_scale 30 the scores reach a few hundred (exp overflows float32 past ~88 without
    # the running-max shift) and the softmax is nearly one-hot; with 1.0 it is peaky but not
    # one-hot. Long and short requests (splits combined through their lse), s_q 2, causal.
    failures = []
    for h_q in [16, 128]:
        c = Case(3, 2, 0, h_q, 1, False, True, seqlens=[5000, 777, 1], seed=11)
        inp = make_inputs(c, dtype, DEVICE)
        inp.q = (inp.q.float() * 10).to(dtype)
        out_ref, lse_ref = reference(inp, True, scale)
        assert float(lse_ref[0].max()) > (100 if scale > 1 else 5), "not the large-logit regime"
        failures += on_kernels(inp, c, dtype, scale, ref=(out_ref, lse_ref))
    assert not failures, "\n".join(failures)


def far_end_cache(inp: Inputs, min_elements: int):
    """inp's cache moved to the far end of a NaN-filled cache whose used pages all start past
    min_elements elements (pages in reverse order, the last page of the big cache first);
    returns the new Inputs."""
    k = inp.blocked_k
    per_page = k[0].numel()
    num_blocks = min_elements // per_page + 1 + k.shape[0]
    big = torch.full((num_blocks, *k.shape[1:]), float("nan"), dtype=k.dtype, device=k.device)
    new_id = num_blocks - 1 - torch.arange(k.shape[0], device=k.device)   # page p -> new_id[p]
    big[new_id] = k
    bt = inp.block_table
    used = bt != BAD_PAGE
    bt = torch.where(used, new_id[torch.where(used, bt, 0).long()].int(), bt)
    return Inputs(inp.cache_seqlens, inp.q, bt, big, inp.seqlens)


@pytest.mark.parametrize("page,h_kv", [(64, 1), (128, 2), (16, 1)])
@torch.inference_mode()
def test_cache_beyond_2g_elements(page, h_kv):
    # k_cache of > 2^31 elements (4.3 GB in bf16) whose used pages sit at its far end: element
    # offsets past 2^31 must be computed in 64 bits. Everything else in the cache is NaN.
    min_elements = 2**31 if ON_GPU else 2**22
    if ON_GPU:
        free = torch.cuda.mem_get_info()[0]
        if free < 2 * min_elements + (2 << 30):
            pytest.skip(f"needs ~{(2 * min_elements + (2 << 30)) / 2**30:.1f} GiB free GPU memory, "
                        f"{free / 2**30:.1f} GiB free")
    c = Case(3, 2, 0, 32, h_kv, False, True, page_size=page, seqlens=[3000, 1000, 65], seed=12)
    inp = far_end_cache(make_inputs(c, BF16, DEVICE), min_elements)
    assert inp.blocked_k.numel() > min_elements
    used = inp.block_table[inp.block_table != BAD_PAGE]
    assert int(used.min()) * inp.blocked_k.stride(0) > min_elements
    errors = on_kernels(inp, c, BF16)
    del inp
    if ON_GPU:
        torch.cuda.empty_cache()
    assert not errors, "\n".join(errors)


# ---------------------------------------------------------------------------------------------
# Determinism, strides, page sizes, rows that see no key
# ---------------------------------------------------------------------------------------------

@torch.inference_mode()
def test_repeated_calls_are_bitwise_identical():
    # Same inputs, same plan: the same bits every time (no atomics in the reduction order).
    failures = []
    for c in [Case(64, 2, 4096, 128, 1, True, True, seed=13), Case(128, 1, 2000, 16, 1, True, False, seed=14),
              Case(2, 1, 0, 64, 2, False, False, seqlens=[20000, 5], seed=15)]:
        inp = make_inputs(c, BF16, DEVICE)
        for k in KERNELS:
            with kernel_env(k, c.page_size):
                first = decode(inp, c, BF16)
                for rep in range(2):
                    again = decode(inp, c, BF16)
                    if not (torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])):
                        failures.append(f"[{k}] {c}: call {rep + 2} differs from call 1")
    assert not failures, "\n".join(failures)


@torch.inference_mode()
def test_strided_q_k_cache_block_table():
    failures = []
    # (a) q, k_cache and block_table rows padded: every stride larger than the shape implies.
    c = Case(3, 2, 0, 16, 1, False, True, seqlens=[700, 64, 129], seed=16)
    inp = make_inputs(c, BF16, DEVICE)
    q_big = torch.full((c.b, c.s_q, c.h_q, 640), float("nan"), dtype=BF16, device=DEVICE)
    q_big[..., :576] = inp.q
    k_big = torch.full((*inp.blocked_k.shape[:3], 584), float("nan"), dtype=BF16, device=DEVICE)
    k_big[..., :576] = inp.blocked_k
    bt_big = torch.full((c.b, inp.block_table.shape[1] + 3), -1, dtype=torch.int32, device=DEVICE)
    bt_big[:, :inp.block_table.shape[1]] = inp.block_table
    q, k, bt = q_big[..., :576], k_big[..., :576], bt_big[:, :inp.block_table.shape[1]]
    assert not (q.is_contiguous() or k.is_contiguous() or bt.is_contiguous())
    failures += on_kernels(inp, c, BF16, q=q, k=k, bt=bt)
    # (b) q as a view of [b, h_q, s_q, 576] (head stride > token stride); k_cache two of three
    #     KV heads of a larger cache (token stride 3 * 576).
    c = Case(3, 4, 0, 32, 2, False, True, seqlens=[900, 3, 200], seed=17)
    inp = make_inputs(c, BF16, DEVICE)
    q = inp.q.transpose(1, 2).contiguous().transpose(1, 2)
    k3 = torch.full((*inp.blocked_k.shape[:2], 3, 576), float("nan"), dtype=BF16, device=DEVICE)
    k3[:, :, :2] = inp.blocked_k
    assert q.stride(2) > q.stride(1) and k3[:, :, :2].stride(1) == 3 * 576
    failures += on_kernels(inp, c, BF16, q=q, k=k3[:, :, :2])
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("page", [1, 16, 32, 100, 192])
@torch.inference_mode()
def test_page_sizes(page):
    # Not a multiple of 64 (the Hopper kernel's TMA box): the portable kernel under "auto";
    # 192: the Hopper kernel, a page of three boxes.
    failures = []
    for c in [Case(4, 2, 500, 32, 1, True, True, page_size=page, seed=18),
              Case(3, 1, 0, 64, 2, False, False, page_size=page, seqlens=[1000, page + 1, 0], seed=19)]:
        for dtype in [BF16, FP16]:
            failures += on_kernels(make_inputs(c, dtype, DEVICE), c, dtype)
    assert not failures, "\n".join(failures)


@torch.inference_mode()
def test_rows_that_see_no_key():
    # All lengths 0, and causal lengths below s_q: out 0 and lse +inf for those rows.
    failures = []
    for c in [Case(8, 2, 0, 16, 1, False, True, seqlens=[0] * 8),
              Case(4, 4, 0, 128, 1, False, True, seqlens=[0, 1, 2, 3], seed=20)]:
        failures += on_kernels(make_inputs(c, BF16, DEVICE), c, BF16)
    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------------------------------------
# Dispatch
# ---------------------------------------------------------------------------------------------

@pytest.mark.skipif(not ON_GPU, reason="the kernel switch applies to the CUDA backend")
@torch.inference_mode()
def test_kernel_switch(monkeypatch):
    hopper = torch.cuda.get_device_capability() == (9, 0)
    results = {}
    for page in [64, 16]:
        c = Case(3, 2, 0, 64, 1, False, True, page_size=page, seqlens=[3000, 100, 0], seed=21)
        inp = make_inputs(c, BF16, DEVICE)
        ref = reference(inp, True)
        for k in ["auto", "portable", "sm90"]:
            monkeypatch.setenv(KERNEL_ENV, k)
            if k == "sm90" and not (hopper and page % 64 == 0):
                why = (f"page_size {page} is not a multiple of 64" if hopper
                       else "compute capability 9.0|built without sm_90a")
                with pytest.raises(RuntimeError, match=why):
                    decode(inp, c, BF16)
                continue
            out, lse = decode(inp, c, BF16)
            assert check_outputs(out, lse, *ref) is None, (page, k)
            results[page, k] = (out, lse)
        # "auto" runs the kernel the dispatch chose: its bits are that kernel's bits.
        chosen = "sm90" if hopper and page % 64 == 0 else "portable"
        assert all(torch.equal(a, b) for a, b in zip(results[page, "auto"], results[page, chosen])), (page, chosen)
    c = Case(1, 1, 0, 16, 1, False, False, seqlens=[10])
    inp = make_inputs(c, BF16, DEVICE)
    monkeypatch.setenv(KERNEL_ENV, "fastest")
    with pytest.raises(RuntimeError, match="FLASHMLA_KERNEL: expected auto, sm90 or portable"):
        decode(inp, c, BF16)
