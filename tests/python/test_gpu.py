"""GPU tests: FlashMLA's decoding correctness grid against a float64 reference computed on the
GPU, plus s_q up to 8, CUDA graphs, torch.compile, and GPU/CPU metadata agreement.

Skipped without a CUDA device. The grid runs many cases per pytest test (parametrized over
dtype and batch size only) and reports every failing case at the end.

Every decode test runs on each split-KV kernel of mla_testing.kernels_under_test(): on an
H100/H200 the Hopper kernel (FLASHMLA_KERNEL=sm90, forced, so a silent fallback cannot pass for
it) and the portable one (FLASHMLA_KERNEL=portable); elsewhere the device's default. The case
loops (grid, s_q, page sizes) make each case's inputs and float64 reference once and run every
kernel on them; the other tests are parametrized by the `kernel` fixture. The whole 2336-case
grid runs on both kernels. FLASHMLA_TEST_KERNELS=auto,portable (say) picks other values.
"""

import pytest
import torch

from flash_mla import flash_mla_with_kvcache, get_mla_metadata
import mla_testing
from mla_testing import (KERNEL_ENV, Case, Inputs, check_outputs, kernel_env, kernel_for, kernels_under_test,
                         make_inputs, reference)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device: GPU tests need torch.cuda.is_available()")

H_Q = [1, 3, 9, 63, 64, 126, 128]
H_KV = [1, 2, 3, 8]
HEADS = [(h_q, h_kv) for h_q in H_Q for h_kv in H_KV if h_q % h_kv == 0]

# FlashMLA's correctness cases and its zero-length corner cases, grouped by batch size.
GRID = {
    b: [Case(b, s_q, s_k, h_q, h_kv, varlen, causal)
        for s_q in [1, 2, 4]
        for s_k in [20, 140, 4096]
        for h_q, h_kv in HEADS
        for varlen in [False, True]
        for causal in [False, True]]
    for b in [1, 2, 6, 64]
}
GRID["128-zero-seqlens"] = [Case(128, 2, 4096, h_q, h_kv, varlen=True, causal=causal, zero_seqlens=True)
                            for h_q, h_kv in HEADS
                            for causal in [False, True]]
NUM_GRID_CASES = sum(len(v) for v in GRID.values())
assert len(HEADS) == 16
assert NUM_GRID_CASES == 2336, NUM_GRID_CASES  # per dtype, as in FlashMLA's test

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
KERNELS = kernels_under_test()


@pytest.fixture(params=KERNELS)
def kernel(request, monkeypatch):
    """Runs the test with FLASHMLA_KERNEL set to each kernel under test (64-token pages)."""
    monkeypatch.setenv(KERNEL_ENV, kernel_for(request.param, 64))
    return request.param


def poison_allocator(*nbytes):
    mla_testing.poison_allocator("cuda", *nbytes)


def decode(inp: Inputs, c: Case, dtype, softmax_scale=None):
    """One flash_mla_with_kvcache call on inp (metadata included), outputs NaN-poisoned first."""
    meta, splits = get_mla_metadata(inp.cache_seqlens, c.s_q * c.h_q // c.h_kv, c.h_kv)
    poison_allocator(c.b * c.s_q * c.h_q * 512 * dtype.itemsize, c.b * c.h_q * c.s_q * 4)
    return flash_mla_with_kvcache(inp.q, inp.blocked_k, inp.block_table, inp.cache_seqlens, 512,
                                  meta, splits, softmax_scale=softmax_scale, causal=c.causal)


def run_case(c: Case, dtype, softmax_scale=None):
    """Inputs and outputs of case c on the kernel FLASHMLA_KERNEL selects now."""
    inp = make_inputs(c, dtype, "cuda")
    out, lse = decode(inp, c, dtype, softmax_scale)
    return inp, out, lse


def check_case(c: Case, dtype, softmax_scale=None, kernels=None):
    """Case c on every kernel (one set of inputs, one reference): [(kernel, error message)] of
    the kernels whose output is off (empty if all pass)."""
    inp = make_inputs(c, dtype, "cuda")
    out_ref, lse_ref = reference(inp, c.causal, softmax_scale)
    errors = []
    for k in kernels or KERNELS:
        with kernel_env(k, c.page_size):
            out, lse = decode(inp, c, dtype, softmax_scale)
        err = check_outputs(out, lse, out_ref, lse_ref)
        if err is not None:
            errors.append((k, err))
    return errors


def run_cases(cases, dtype, softmax_scale=None):
    """check_case on each case: (failure lines, passed count per kernel)."""
    failures, passed = [], {k: 0 for k in KERNELS}
    for c in cases:
        errors = check_case(c, dtype, softmax_scale)
        failures += [f"[{k}] {c}: {err}" for k, err in errors]
        for k in KERNELS:
            passed[k] += all(k != kk for kk, _ in errors)
    return failures, passed


def passed_line(passed, n):
    return ", ".join(f"{k} {p}/{n}" for k, p in passed.items())


@pytest.mark.parametrize("group", list(GRID), ids=[f"b{k}" for k in GRID])
@pytest.mark.parametrize("dtype", list(DTYPES))
@torch.inference_mode()
def test_flashmla_grid(dtype, group):
    cases = GRID[group]
    failures, passed = run_cases(cases, DTYPES[dtype])
    print(f"\n[{dtype} b={group}] cases passed: {passed_line(passed, len(cases))} "
          f"(grid: {NUM_GRID_CASES} cases per dtype)")
    assert not failures, f"{len(failures)} (kernel, case) runs failed:\n" + "\n".join(failures[:50])


@pytest.mark.parametrize("dtype", list(DTYPES))
@torch.inference_mode()
def test_long_s_q(dtype):
    # s_q up to 8 (speculative decoding), causal and not, including lengths below s_q.
    cases = []
    for s_q in range(1, 9):
        for causal in [False, True]:
            for h_q, h_kv in [(16, 1), (128, 1), (64, 8)]:
                cases.append(Case(4, s_q, 300, h_q, h_kv, varlen=True, causal=causal, seed=s_q))
            cases.append(Case(4, s_q, 0, 32, 1, varlen=False, causal=causal, seqlens=[0, 1, s_q, 5000]))
    failures, passed = run_cases(cases, DTYPES[dtype])
    print(f"\n[{dtype}] s_q 1..8: cases passed: {passed_line(passed, len(cases))}")
    assert not failures, "\n".join(failures)


@torch.inference_mode()
def test_page_sizes_and_scale():
    cases = [Case(5, 2, 700, 64, 1, varlen=True, causal=True, page_size=page) for page in [64, 128, 100, 256]]
    failures, _ = run_cases(cases, torch.bfloat16, softmax_scale=0.05)
    assert not failures, "\n".join(failures)


def test_mismatched_devices():
    c = Case(2, 1, 100, 16, 1, varlen=False, causal=False)
    inp = make_inputs(c, torch.bfloat16, "cuda")
    meta, splits = get_mla_metadata(inp.cache_seqlens, 16, 1)
    with pytest.raises(RuntimeError, match=r"block_table must be on the same device as q \(cuda:0\), got cpu"):
        flash_mla_with_kvcache(inp.q, inp.blocked_k, inp.block_table.cpu(), inp.cache_seqlens, 512, meta, splits)
    with pytest.raises(RuntimeError, match=r"k_cache must be on the same device as q \(cpu\), got cuda:0"):
        flash_mla_with_kvcache(inp.q.cpu(), inp.blocked_k, inp.block_table, inp.cache_seqlens, 512, meta, splits)
    with pytest.raises(RuntimeError, match=r"tile_scheduler_metadata must be on the same device as q"):
        flash_mla_with_kvcache(inp.q, inp.blocked_k, inp.block_table, inp.cache_seqlens, 512, meta.cpu(), splits)


def test_matches_cpu_backend(kernel):
    # The GPU kernels and the C++ host backend agree (each checked against the reference too).
    c = Case(3, 2, 500, 32, 2, varlen=True, causal=True)
    inp, out, lse = run_case(c, torch.bfloat16)
    meta_h, splits_h = get_mla_metadata(inp.cache_seqlens.cpu(), c.s_q * c.h_q // c.h_kv, c.h_kv)
    out_h, lse_h = flash_mla_with_kvcache(inp.q.cpu(), inp.blocked_k.cpu(), inp.block_table.cpu(),
                                          inp.cache_seqlens.cpu(), 512, meta_h, splits_h, causal=True)
    out_ref, lse_ref = reference(inp, True)
    assert check_outputs(out.cpu(), lse.cpu(), out_ref.cpu(), lse_ref.cpu()) is None
    assert check_outputs(out_h, lse_h, out_ref.cpu(), lse_ref.cpu()) is None


def test_metadata_matches_cpu_on_h200():
    num_sms = torch.cuda.get_device_properties(0).multi_processor_count
    if num_sms != 132:
        pytest.skip(f"the CPU ops plan for 132 SMs (H200); this GPU has {num_sms}")
    gen = torch.Generator().manual_seed(0)
    for b in [1, 7, 64, 128]:
        for q_rows, h_kv in [(1, 1), (64, 1), (128, 1), (256, 1), (32, 2), (16, 8)]:
            seqlens = torch.randint(0, 9000, (b,), dtype=torch.int32, generator=gen)
            seqlens[::5] = 0
            meta_d, splits_d = get_mla_metadata(seqlens.cuda(), q_rows, h_kv)
            meta_h, splits_h = get_mla_metadata(seqlens, q_rows, h_kv)
            assert torch.equal(meta_d.cpu(), meta_h), (b, q_rows, h_kv)
            assert torch.equal(splits_d.cpu(), splits_h), (b, q_rows, h_kv)


def test_cuda_graph_replay(kernel):
    # Capture metadata + decode once; replay with new lengths and contents in the same buffers.
    b, s_q, h_q, cap = 8, 2, 128, 2048
    static = make_inputs(Case(b, s_q, cap, h_q, 1, varlen=False, causal=True), torch.bfloat16, "cuda")
    q, k, bt, sl = static.q, static.blocked_k, static.block_table, static.cache_seqlens
    assert not torch.isnan(k).any()  # every page is owned at full length: valid block table

    def step():
        meta, splits = get_mla_metadata(sl, s_q * h_q, 1)
        return flash_mla_with_kvcache(q, k, bt, sl, 512, meta, splits, causal=True)

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        g_out, g_lse = step()

    gen = torch.Generator(device="cuda").manual_seed(1)
    for lens in ([cap] * b, [0, 1, 2, 63, 64, 65, 1000, cap], [5, 4000 % cap, 17, 0, 0, 300, 2047, 9]):
        q.copy_((torch.randn(q.shape, generator=gen, device="cuda") / 10).clamp(-1, 1))
        k.copy_((torch.randn(k.shape, generator=gen, device="cuda") / 10).clamp(-1, 1))
        sl.copy_(torch.tensor(lens, dtype=torch.int32))
        poison_allocator(g_out.numel() * 2, g_lse.numel() * 4)
        graph.replay()
        e_out, e_lse = step()
        torch.cuda.synchronize()
        assert torch.equal(g_out, e_out), f"lens {lens}: graph replay out differs from eager"
        assert torch.equal(g_lse, e_lse), f"lens {lens}: graph replay lse differs from eager"
        ref = reference(Inputs(sl, q, bt, k, list(lens)), causal=True)
        err = check_outputs(g_out, g_lse, *ref)
        assert err is None, f"lens {lens}: {err}"


def test_torch_compile_cuda(kernel):
    torch._dynamo.reset()
    c = Case(4, 2, 600, 64, 1, varlen=True, causal=True)
    inp = make_inputs(c, torch.bfloat16, "cuda")

    def f(q, k, bt, sl):
        meta, splits = get_mla_metadata(sl, q.shape[1] * q.shape[2] // k.shape[2], k.shape[2])
        out, lse = flash_mla_with_kvcache(q, k, bt, sl, 512, meta, splits, causal=True)
        return out.float().sum(-1), lse * 2

    args = (inp.q, inp.blocked_k, inp.block_table, inp.cache_seqlens)
    compiled = torch.compile(f, fullgraph=True)
    a_c, b_c = compiled(*args)
    a_e, b_e = f(*args)
    torch.testing.assert_close(a_c, a_e)
    assert torch.equal(b_c, b_e)


def test_non_default_stream(kernel):
    c = Case(4, 1, 900, 64, 1, varlen=True, causal=False)
    inp = make_inputs(c, torch.bfloat16, "cuda")
    out_ref, lse_ref = reference(inp, False)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        meta, splits = get_mla_metadata(inp.cache_seqlens, 64, 1)
        out, lse = flash_mla_with_kvcache(inp.q, inp.blocked_k, inp.block_table, inp.cache_seqlens, 512,
                                          meta, splits)
    torch.cuda.current_stream().wait_stream(s)
    assert check_outputs(out, lse, out_ref, lse_ref) is None
