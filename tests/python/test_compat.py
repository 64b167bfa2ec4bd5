"""Engines' code runs unchanged: each call pattern below is copied from how an engine (or code
written for one of DeepSeek FlashMLA's two API generations) calls FlashMLA, and is checked
against the float64 reference over two layers of one decode step.

  old_positional  FlashMLA < 2026-01, all positional (tensor plan + num_splits).
  new_generation  FlashMLA >= 2026-01: get_mla_metadata() -> (FlashMLASchedMeta(), None), the
                  plan made by the first call, num_splits None.
  vllm_2026       get_mla_metadata(seq_lens, s_q*h_q, 1, is_fp8_kvcache=False)[0] passed on by
                  keyword without num_splits; k_cache.unsqueeze(-2).
  vllm_2025       tensor plan copied into preallocated (num_sms, 8) / (max_batch + 1) buffers (tail
                  filled with the last value), batch padded with length-0 requests.
  sglang          tensor plan by keyword, k_buffer.view(-1, 64, 1, 576), descale keywords; under
                  graphs a block-table view narrower than later lengths need (read up to its pitch).
  lmdeploy        get_mla_metadata(..., num_heads_k=1, num_heads_q=None, is_fp8_kvcache=False,
                  topk=None), flash_mla_with_kvcache(..., is_fp8_kvcache=False, indices=None).

Eager on CPU (and on CUDA when present); CUDA-graph capture + replay with changed lengths on CUDA
only (skipped without a GPU).
"""

import dataclasses
from typing import Callable, List

import pytest
import torch

import flash_mla
from flash_mla.flash_mla_interface import FlashMLASchedMeta, flash_mla_with_kvcache, get_mla_metadata
from mla_testing import Case, check_outputs, make_inputs, reference

HAS_CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device"))]
S_Q, H_Q, PAGE, LAYERS = 2, 16, 64, 2
SCALE = 0.07  # engines pass their own scale


@dataclasses.dataclass
class Step:
    """Static buffers of one decode step (the same tensors across graph replays)."""
    inp: object                # mla_testing.Inputs at the longest lengths (tokens past them are NaN)
    qs: List[torch.Tensor]     # one q per layer
    seqlens: torch.Tensor      # [b] int32, rewritten in place between steps
    block_table: torch.Tensor  # [b, pages]

    def set_lengths(self, lens):
        self.seqlens.copy_(torch.tensor(lens, dtype=torch.int32))

    def check(self, outs, lens):
        for layer, (out, lse) in enumerate(outs):
            inp = dataclasses.replace(self.inp, q=self.qs[layer], seqlens=list(lens))
            out_ref, lse_ref = reference(inp, causal=True, softmax_scale=SCALE)
            err = check_outputs(out, lse, out_ref, lse_ref)
            assert err is None, f"layer {layer}, lengths {lens}: {err}"


def make_step(device, max_lens) -> Step:
    c = Case(b=len(max_lens), s_q=S_Q, s_k=0, h_q=H_Q, h_kv=1, varlen=False, causal=True,
             page_size=PAGE, seqlens=list(max_lens), seed=11)
    inp = make_inputs(c, torch.bfloat16, device)
    gen = torch.Generator(device=device).manual_seed(5)
    qs = [inp.q] + [(torch.randn(inp.q.shape, generator=gen, device=device) / 10).to(torch.bfloat16)
                    for _ in range(LAYERS - 1)]
    return Step(inp, qs, inp.cache_seqlens.clone(), inp.block_table)


# -------------------------------------------------------------------------------------------------
# The engines. prepare(step) runs before each step, outside any graph (the engine's metadata
# builder); run(step, prepared) is the model's attention over the layers (captured in graph mode).
# -------------------------------------------------------------------------------------------------

class OldPositional:
    def prepare(self, step):
        return None

    def run(self, step, _):
        meta, splits = get_mla_metadata(step.seqlens, S_Q * H_Q, 1)
        return [flash_mla_with_kvcache(q, step.inp.blocked_k, step.block_table, step.seqlens, 512, meta, splits,
                                       SCALE, True) for q in step.qs]


class NewGeneration:
    def prepare(self, step):
        sched, none = get_mla_metadata()
        assert isinstance(sched, FlashMLASchedMeta) and none is None
        return sched

    def run(self, step, sched):
        outs = [flash_mla_with_kvcache(q, step.inp.blocked_k, step.block_table, step.seqlens, 512, sched,
                                       softmax_scale=SCALE, causal=True) for q in step.qs]
        assert sched.have_initialized and sched.num_splits is not None
        return outs


class Vllm2026:
    def prepare(self, step):
        return get_mla_metadata(step.seqlens, S_Q * H_Q, 1, is_fp8_kvcache=False)[0]

    def run(self, step, metadata):
        cache = step.inp.blocked_k.squeeze(-2)  # vLLM keeps [num_blocks, page, 576]
        return [flash_mla_with_kvcache(q=q, k_cache=cache.unsqueeze(-2), block_table=step.block_table,
                                       cache_seqlens=step.seqlens, head_dim_v=512,
                                       tile_scheduler_metadata=metadata, softmax_scale=SCALE, causal=True,
                                       is_fp8_kvcache=False) for q in step.qs]


class Vllm2025:
    """Copies each step's plan into buffers sized for the largest plan and batch."""

    def __init__(self):
        self.md_buf = self.ns_buf = None

    def prepare(self, step):
        metadata, num_splits = get_mla_metadata(step.seqlens, S_Q * H_Q, 1)
        if self.md_buf is None:
            sms = flash_mla._num_sm_parts(step.seqlens.device, 1, 1)  # as many rows as SMs
            self.md_buf = torch.empty((sms, 8), dtype=torch.int32, device=step.seqlens.device)
            self.ns_buf = torch.empty(step.seqlens.shape[0] + 9, dtype=torch.int32, device=step.seqlens.device)
        parts = metadata.size(0)
        assert parts <= self.md_buf.size(0)
        md_view = self.md_buf[:parts]
        md_view.copy_(metadata)
        n = num_splits.size(0)
        ns_view = self.ns_buf[:n]
        ns_view.copy_(num_splits)
        self.ns_buf[n:].fill_(num_splits[-1])
        return md_view, ns_view

    def run(self, step, plan):
        md, ns = plan
        return [flash_mla_with_kvcache(q, step.inp.blocked_k, step.block_table, step.seqlens, 512, md, ns,
                                       softmax_scale=SCALE, causal=True) for q in step.qs]


class Sglang:
    """Plan copied into graph buffers; the block table passed is a view `narrow` columns wide."""

    def __init__(self, narrow=None):
        self.narrow = narrow
        self.md_buf = self.ns_buf = None

    def prepare(self, step):
        metadata, num_splits = get_mla_metadata(step.seqlens, S_Q * H_Q, 1, is_fp8_kvcache=False)
        if self.md_buf is None:
            self.md_buf, self.ns_buf = metadata.clone(), num_splits.clone()
        self.md_buf.copy_(metadata)
        self.ns_buf[:step.seqlens.shape[0] + 1].copy_(num_splits)
        return self.md_buf, self.ns_buf

    def run(self, step, plan):
        md, ns = plan
        k_buffer = step.inp.blocked_k.view(-1, 576)  # SGLang's token-major buffer
        table = step.block_table if self.narrow is None else step.block_table[:, :self.narrow]
        return [flash_mla_with_kvcache(q=q, k_cache=k_buffer.view(-1, PAGE, 1, 576), block_table=table,
                                       cache_seqlens=step.seqlens, head_dim_v=512, tile_scheduler_metadata=md,
                                       num_splits=ns, softmax_scale=SCALE, causal=True, descale_q=None,
                                       descale_k=None) for q in step.qs]


class Lmdeploy:
    def prepare(self, step):
        return None

    def run(self, step, _):
        meta, splits = get_mla_metadata(step.seqlens, H_Q * S_Q, num_heads_k=1, num_heads_q=None,
                                        is_fp8_kvcache=False, topk=None)
        return [flash_mla_with_kvcache(q, k_cache=step.inp.blocked_k, block_table=step.block_table,
                                       cache_seqlens=step.seqlens, head_dim_v=512, tile_scheduler_metadata=meta,
                                       num_splits=splits, softmax_scale=SCALE, causal=True, is_fp8_kvcache=False,
                                       indices=None) for q in step.qs]


ENGINES: List[Callable] = [OldPositional, NewGeneration, Vllm2026, Vllm2025, Sglang, Lmdeploy]
IDS = ["old_positional", "new_generation", "vllm_2026", "vllm_2025", "sglang", "lmdeploy"]
MAX_LENS = [700, 64, 130, 400, 333]  # the cache holds these; every step's lengths are shorter
LENGTHS = [[700, 0, 130, 1, 333], [65, 0, 7, 300, 2]]  # length-0 (padding) requests among them


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("engine", ENGINES, ids=IDS)
def test_eager(engine, device):
    step = make_step(device, MAX_LENS)
    e = engine()
    for lens in LENGTHS:  # two decode steps with different lengths
        step.set_lengths(lens)
        step.check(e.run(step, e.prepare(step)), lens)


@pytest.mark.parametrize("device", DEVICES)
def test_sglang_block_table_view_narrower_than_lengths(device):
    # Lengths need 11 pages, the view is 2 wide: read up to the row pitch, as FlashMLA does.
    step = make_step(device, MAX_LENS)
    e = Sglang(narrow=2)
    step.set_lengths(MAX_LENS)
    step.check(e.run(step, e.prepare(step)), MAX_LENS)


def test_plan_is_made_once_per_step():
    # The lazily made plan is computed by the first layer and reused by the next ones, and made
    # anew when the lengths tensor changes in place (eager reuse across steps).
    step = make_step("cpu", MAX_LENS)
    sched, _ = get_mla_metadata()
    flash_mla_with_kvcache(step.qs[0], step.inp.blocked_k, step.block_table, step.seqlens, 512, sched, causal=True)
    first = sched.tile_scheduler_metadata
    flash_mla_with_kvcache(step.qs[1], step.inp.blocked_k, step.block_table, step.seqlens, 512, sched, causal=True)
    assert sched.tile_scheduler_metadata is first
    step.set_lengths(LENGTHS[1])
    out, lse = flash_mla_with_kvcache(step.qs[0], step.inp.blocked_k, step.block_table, step.seqlens, 512, sched,
                                      softmax_scale=SCALE, causal=True)
    assert sched.tile_scheduler_metadata is not first
    step.check([(out, lse)], LENGTHS[1])


def test_tensor_plan_without_num_splits_matches_with():
    step = make_step("cpu", MAX_LENS)
    meta, splits = get_mla_metadata(step.seqlens, S_Q * H_Q, 1)
    a = (step.qs[0], step.inp.blocked_k, step.block_table, step.seqlens, 512)
    out1, lse1 = flash_mla_with_kvcache(*a, meta, splits, causal=True)
    out2, lse2 = flash_mla_with_kvcache(*a, meta, causal=True)
    assert torch.equal(out1, out2) and torch.equal(lse1, lse2)


def test_module_path():
    import flash_mla.flash_mla_interface as fi
    assert fi.get_mla_metadata is flash_mla.get_mla_metadata
    assert fi.flash_mla_with_kvcache is flash_mla.flash_mla_with_kvcache
    assert fi.FlashMLASchedMeta is flash_mla.FlashMLASchedMeta


@pytest.mark.parametrize("device", DEVICES)
def test_attn_sink(device):
    # out scaled by exp(lse) / (exp(lse) + exp(sink)), lse unchanged; split and unsplit requests.
    step = make_step(device, MAX_LENS)
    sink = torch.linspace(-3, 3, H_Q, device=device)
    sink[0] = float("-inf")
    meta, splits = get_mla_metadata(step.seqlens, S_Q * H_Q, 1)
    assert (splits[1:] - splits[:-1]).max() > 1 and (splits[1:] - splits[:-1]).min() == 1
    out, lse = flash_mla_with_kvcache(step.qs[0], step.inp.blocked_k, step.block_table, step.seqlens, 512, meta,
                                      splits, softmax_scale=SCALE, causal=True, attn_sink=sink)
    out_ref, lse_ref = reference(step.inp, causal=True, softmax_scale=SCALE)
    factor = torch.where(torch.isinf(lse_ref), torch.ones_like(lse_ref),
                         1 / (1 + torch.exp(sink.double()[None, :, None] - lse_ref)))  # [b, h_q, s_q]
    err = check_outputs(out, lse, out_ref * factor.transpose(1, 2)[..., None], lse_ref)
    assert err is None, err


# -------------------------------------------------------------------------------------------------
# CUDA graphs: capture one step, replay it with other lengths written into the same buffers
# -------------------------------------------------------------------------------------------------

@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
@pytest.mark.parametrize("engine", ENGINES + [lambda: Sglang(narrow=2)], ids=IDS + ["sglang_narrow_view"])
def test_cuda_graph_replay_with_new_lengths(engine):
    step = make_step("cuda", MAX_LENS)
    e = engine()
    captured_lens, replay_lens = [130, 0, 65, 1, 64], LENGTHS[1]
    step.set_lengths(captured_lens)
    prepared = e.prepare(step)
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up outside the graph, as engines do
        e.run(step, prepared)
    torch.cuda.current_stream().wait_stream(stream)
    # The capture reuses the schedule the warm-up planned: the planning must still be captured
    # (a plan made outside a graph is never replayed as a constant).
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = e.run(step, prepared)
    for lens in (replay_lens, captured_lens, LENGTHS[0]):
        step.set_lengths(lens)
        if isinstance(e, (Vllm2025, Sglang)):
            e.prepare(step)  # these engines recompute the plan eagerly and copy it into their buffers
        graph.replay()
        torch.cuda.synchronize()
        step.check(outs, lens)
