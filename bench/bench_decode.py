#!/usr/bin/env python3
"""Decode benchmark of flash_mla: the whole call, timed with CUDA graphs over a cold L2.

    python bench/bench_decode.py [--grid GRID] [--dtype bf16|fp16] [--quick] [--repeats 10]
                                 [--json bench_results.json] [--kernel-times] [--plot-dir DIR]

Grids (h_kv = 1, varlen, causal, 64-token pages):
  upstream      FlashMLA's own grid: b = 128, s_q 1|2, h_q 16|32|64|128, mean seqlen 4096..32768
  serving       b 1|4|16|64, s_q 1|2, h_q 16|128, mean seqlen 512|2048|8192
  all           upstream + serving
  seqlen-sweep  s_q 1, h_q 16|128, b 128|8, mean seqlen 1K, 2K, 4K, ..., 128K
  batch-sweep   s_q 1, h_q 16|128, mean seqlen 8K, b 1, 2, 4, ..., 256
  sweeps        seqlen-sweep + batch-sweep (plots: bench/plot.py, or --plot-dir)
  everything    all + sweeps
Sweep configs that coincide with a grid's (same b, s_q, h_q, nominal seqlen: the same seqlens
are drawn) carry FlashMLA's figure too.

The kernel: FLASHMLA_KERNEL=portable forces the portable sm_80 kernel (default auto: the Hopper
kernel on H100/H200 where it can run); the value is recorded in the JSON ("kernel_env").
--kernel-times adds, per config, the GPU time of each kernel one call launches (torch.profiler
over eager calls, µs per call), which also names the kernels that ran.

Method (the one behind FlashMLA's figures in anchors.py, so the two compare):
- Data: q, k ~ randn/10 clamped to [-1, 1]; seqlens max(N(mean, mean/2), s_q), drawn from seed 0
  for every case (this reproduces FlashMLA's mean seqlens); pages randomly permuted; tokens past
  each seqlen are NaN and block-table entries past a request's last page are 2147480000, so a
  kernel that reads what it should not poisons its output or faults.
- get_mla_metadata once per case, untimed. A CUDA graph captures N >= 20 back-to-back calls of
  flash_mla_with_kvcache (every kernel it launches) rotating over input sets (q, k_cache,
  block_table) that together exceed 2x L2, so no call finds its inputs in L2. Two warm replays,
  then the median of `--repeats` replays (CUDA events) divided by N.
- Memory: at least 2 input sets (more when small), together at most min(48 GB, half the free GPU
  memory). The largest config, b = 128 x 128K keys, is 19 GB per set: 2 sets, 39 GB. Where two
  sets do not fit that budget, 1 set (far larger than L2: a call's first pages are long gone
  from L2 when the next call starts, so it still reads cold); "n_sets" in the JSON says which.
- Output of one eager call on the first set checked against a float64 reference on a few requests
  (FlashMLA's tolerances); the SM clock is sampled during the timed replays.
- Counts as FlashMLA: FLOP = 2 b h_q s_q mean_seqlen (576 + 512);
  bytes = b (s_q h_q 576 + mean_seqlen h_kv 576 + s_q h_q 512) * 2.
- Ceilings measured in the same run (ceilings.py): read bandwidth, copy bandwidth, GEMM rate.

Exit status: 0 all cases ran and passed the check, 1 some case failed or errored, 2 cannot run here.
"""
import argparse
import dataclasses
import datetime
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time

from anchors import flashmla_best_us

D_QK, D_V, PAGE = 576, 512, 64
PAST_END = 2147480000  # block-table entry past a request's last page: faults if a kernel uses it
MIN_CALLS = 20         # calls captured per graph
WARM_REPLAYS = 2
SET_BUDGET = 48e9      # at most this many bytes of input sets per case (and half the free memory)
NO_GPU = ("no CUDA GPU found: the benchmark needs an NVIDIA GPU "
          "(sm_80+; figures in docs/BENCHMARKS.md are from an H200)")


@dataclasses.dataclass(frozen=True)
class Config:
    grid: str
    b: int
    s_q: int
    h_q: int
    seqlen: int  # nominal mean seqlen
    h_kv: int = 1


SEQLEN_SWEEP = (1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
BATCH_SWEEP = (1, 2, 4, 8, 16, 32, 64, 128, 256)
GRIDS = ("upstream", "serving", "all", "seqlen-sweep", "batch-sweep", "sweeps", "everything")

QUICK = {("upstream", 128, 1, 16, 4096), ("upstream", 128, 1, 128, 8192), ("upstream", 128, 2, 128, 32768),
         ("serving", 1, 1, 16, 512), ("serving", 16, 1, 128, 2048), ("serving", 64, 2, 128, 8192),
         ("seqlen-sweep", 128, 1, 16, 1024), ("seqlen-sweep", 8, 1, 128, 131072), ("seqlen-sweep", 128, 1, 16, 131072),
         ("batch-sweep", 1, 1, 16, 8192), ("batch-sweep", 256, 1, 128, 8192)}


def configs(grid, quick, only=None):
    cases = []
    if grid in ("upstream", "all", "everything"):
        cases += [Config("upstream", 128, s_q, h_q, n)
                  for s_q in (1, 2) for h_q in (16, 32, 64, 128) for n in (4096, 8192, 16384, 32768)]
    if grid in ("serving", "all", "everything"):
        cases += [Config("serving", b, s_q, h_q, n)
                  for b in (1, 4, 16, 64) for s_q in (1, 2) for h_q in (16, 128) for n in (512, 2048, 8192)]
    if grid in ("seqlen-sweep", "sweeps", "everything"):
        cases += [Config("seqlen-sweep", b, 1, h_q, n) for b in (128, 8) for h_q in (16, 128) for n in SEQLEN_SWEEP]
    if grid in ("batch-sweep", "sweeps", "everything"):
        cases += [Config("batch-sweep", b, 1, h_q, 8192) for h_q in (16, 128) for b in BATCH_SWEEP]
    cases = [c for c in cases if not quick or (c.grid, c.b, c.s_q, c.h_q, c.seqlen) in QUICK]
    return [c for c in cases if only is None or (c.b, c.s_q, c.h_q, c.seqlen) in only]


def parse_only(text):
    """--only b:s_q:h_q:seqlen[,...] -> a set of (b, s_q, h_q, nominal seqlen) tuples."""
    try:
        return {tuple(int(x) for x in item.split(":")) for item in text.split(",")}
    except ValueError:
        raise SystemExit(f"--only: expected b:s_q:h_q:seqlen[,...], got {text!r}")


def anchor_us(c):
    """FlashMLA's best µs for this config's (b, s_q, h_q, nominal seqlen) in any grid: the seqlens
    drawn depend on b and the nominal mean only, so a sweep config can match a grid config."""
    for grid in ("upstream", "serving"):
        us = flashmla_best_us(grid, c.b, c.s_q, c.h_q, c.seqlen)
        if us:
            return us
    return None


def draw_seqlens(c):
    """FlashMLA's varlen draw, from random.seed(0) for every case."""
    rng = random.Random(0)
    return [int(max(rng.normalvariate(c.seqlen, c.seqlen / 2), c.s_q)) for _ in range(c.b)]


def flashmla_counts(c, mean_seqlen, elem_bytes=2):
    """(FLOP, bytes) of one call, counted as FlashMLA counts them."""
    flop = 2 * c.b * c.h_q * c.s_q * mean_seqlen * (D_QK + D_V)
    nbytes = c.b * (c.s_q * c.h_q * D_QK + mean_seqlen * c.h_kv * D_QK + c.s_q * c.h_q * D_V) * elem_bytes
    return flop, nbytes


# ----------------------------------------------------------------------------------------- data

def make_sets(c, seqlens, n_sets, dtype):
    """n_sets input sets (q, k_cache, block_table) sharing one cache_seqlens. Each set's k_cache is
    its own slice of one pool, holding exactly the pages its requests use, in random order."""
    import torch
    dev = "cuda"
    torch.manual_seed(0)
    lens = torch.tensor(seqlens, dtype=torch.int32, device=dev)
    pages = (lens + PAGE - 1) // PAGE                                      # pages per request
    n_pages = int(pages.sum())
    width = -(-max(seqlens) // 256) * (256 // PAGE)                        # padded as FlashMLA pads
    req = torch.repeat_interleave(torch.arange(c.b, device=dev), pages)    # request of each page
    col = torch.arange(n_pages, device=dev) - (torch.cumsum(pages, 0) - pages)[req]  # its index in the request
    valid = (lens[req] - col * PAGE).clamp(max=PAGE)                       # tokens it holds

    def randn(*shape):
        return torch.randn(shape, dtype=dtype, device=dev).div_(10).clamp_(-1, 1)

    q = randn(n_sets, c.b, c.s_q, c.h_q, D_QK)
    k = randn(n_sets * n_pages, PAGE, c.h_kv, D_QK)
    tables = torch.full((n_sets, c.b, width), PAST_END, dtype=torch.int32, device=dev)
    valid_in_pool = torch.empty(n_sets * n_pages, dtype=torch.long, device=dev)
    for j in range(n_sets):
        perm = torch.randperm(n_pages, device=dev)
        tables[j, req, col] = perm.int()
        valid_in_pool[j * n_pages + perm] = valid
    past_end = torch.arange(PAGE, device=dev)[None, :] >= valid_in_pool[:, None]
    k.masked_fill_(past_end[:, :, None, None], float("nan"))
    return lens, [(q[j], k[j * n_pages:(j + 1) * n_pages], tables[j]) for j in range(n_sets)]


def set_bytes(c, seqlens, elem_bytes):
    n_pages = sum(-(-n // PAGE) for n in seqlens)
    return (n_pages * PAGE * c.h_kv * D_QK + c.b * c.s_q * c.h_q * (D_QK + D_V)) * elem_bytes


def sets_needed(one_set, target, budget):
    """At least 2 sets (no call re-reads the previous call's inputs), enough to exceed `target`
    bytes in all, but no more than `budget` bytes (and at least 1 set)."""
    return max(1, min(max(2, math.ceil(target / one_set)), int(budget // one_set)))


# ---------------------------------------------------------------------------------- correctness

def reference(q, k_cache, table, seqlen, scale, h_kv):
    """Float64 causal attention of one request: q (s_q, h_q, 576) -> out (s_q, h_q, 512), lse (h_q, s_q)."""
    import torch
    s_q, h_q, _ = q.shape
    kv = k_cache[table[:-(-seqlen // PAGE)].long()].reshape(-1, h_kv, D_QK)[:seqlen].double()  # (s_k, h_kv, 576)
    qg = q.double().view(s_q, h_kv, h_q // h_kv, D_QK)          # query head h reads kv head h // (h_q / h_kv)
    s = torch.einsum("qgrd,kgd->gqrk", qg, kv) * scale           # (h_kv, s_q, h_q / h_kv, s_k)
    pos = torch.arange(seqlen, device=q.device)
    last = seqlen - s_q + torch.arange(s_q, device=q.device)    # query i sees keys 0 .. seqlen - s_q + i
    s = s.masked_fill((pos[None, :] > last[:, None])[None, :, None, :], float("-inf"))
    out = torch.einsum("gqrk,kgd->qgrd", torch.softmax(s, -1), kv[..., :D_V]).reshape(s_q, h_q, D_V)
    return out, torch.logsumexp(s, -1).permute(0, 2, 1).reshape(h_q, s_q)


def close(name, got, ref, abs_tol, rel_tol, cos_tol=None):
    """FlashMLA's check: same inf/NaN positions; every finite |err| <= abs_tol or <= rel_tol |ref|;
    cosine difference <= cos_tol. Returns an error message, or None."""
    got = got.double()
    if not (got.isnan().equal(ref.isnan()) and got.isinf().equal(ref.isinf())):
        return f"{name}: inf/NaN positions differ"
    fin = ref.isfinite()
    g, r = got[fin], ref[fin]
    err = (g - r).abs()
    if not bool(((err <= abs_tol) | (err <= rel_tol * r.abs())).all()):
        return f"{name}: max abs err {err.max().item():.3g}"
    if cos_tol is not None:
        cos_diff = 1 - 2 * (g * r).sum().item() / max((g * g + r * r).sum().item(), 1e-300)
        if cos_diff > cos_tol:
            return f"{name}: cosine diff {cos_diff:.3g}"
    return None


def check(c, out, lse, first_set, seqlens, scale):
    """'ok' or 'FAIL: ...' for the first, longest and last requests of the first set."""
    q, k_cache, table = first_set
    for i in sorted({0, seqlens.index(max(seqlens)), c.b - 1}):
        ref_out, ref_lse = reference(q[i], k_cache, table[i], seqlens[i], scale, c.h_kv)
        err = (close("out", out[i], ref_out, 8e-4, 2.01 / 128, 5e-6)
               or close("lse", lse[i], ref_lse, 1e-6, 8.01 / 65536))
        if err:
            return f"FAIL: request {i}: {err}"
    return "ok"


# ----------------------------------------------------------------------------------------- timing

def run_case(c, args, flash_mla, dtype, ceil, clock, target, budget):
    import torch
    seqlens = draw_seqlens(c)
    mean = sum(seqlens) / c.b
    elem = dtype.itemsize
    n_sets = sets_needed(set_bytes(c, seqlens, elem), target, budget)
    n_calls = max(MIN_CALLS, n_sets)
    lens, sets = make_sets(c, seqlens, n_sets, dtype)
    scale = D_QK ** -0.5
    metadata, splits = flash_mla.get_mla_metadata(lens, c.s_q * c.h_q // c.h_kv, c.h_kv)

    def call(j):
        q, k_cache, table = sets[j]
        return flash_mla.flash_mla_with_kvcache(q, k_cache, table, lens, D_V, metadata, splits,
                                                softmax_scale=scale, causal=True)

    out, lse = call(0)  # also warms up whatever the first call initializes
    verdict = check(c, out, lse, sets[0], seqlens, scale)
    del out, lse

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(n_calls):
            call(i % n_sets)
    for _ in range(WARM_REPLAYS):
        graph.replay()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(args.repeats)]
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for start, end in events:
        start.record()
        graph.replay()
        end.record()
    torch.cuda.synchronize()
    mhz, _ = clock.between(t0, time.perf_counter())
    replay_us = [s.elapsed_time(e) * 1e3 / n_calls for s, e in events]
    sustained = sustain(graph, n_calls, args.sustain, clock) if args.sustain > 0 else {}
    del graph
    kernels = kernel_times(call, n_sets) if args.kernel_times else None
    del sets

    us = statistics.median(replay_us)
    flop, nbytes = flashmla_counts(c, mean, elem)
    gbps, tflops = nbytes / us / 1e3, flop / us / 1e6
    ref_us = anchor_us(c)
    return {
        **dataclasses.asdict(c), "mean_seqlen": mean, "max_seqlen": max(seqlens),
        "n_sets": n_sets, "n_calls": n_calls, "set_mb": set_bytes(c, seqlens, elem) / 1e6,
        "us": us, "replay_us_per_call": replay_us, "gbps": gbps, "tflops": tflops,
        "frac_read": gbps / 1e3 / ceil["read_tbps"], "frac_copy": gbps / 1e3 / ceil["copy_tbps"],
        "frac_gemm": tflops / ceil["gemm_tflops"], "sm_mhz": mhz,
        "flashmla_us": ref_us, "speedup": ref_us / us if ref_us else None, "check": verdict,
        **({"kernel_us": kernels} if kernels is not None else {}),
        **({"sustained_us": sustained["us"], "sustained_tflops": flop / sustained["us"] / 1e6,
            "sustained_frac_gemm": flop / sustained["us"] / 1e6 / ceil["gemm_tflops"],
            "sustained_sm_mhz": sustained["sm_mhz"], "sustained_sm_mhz_min": sustained["sm_mhz_min"],
            "sustained_watts": sustained["watts"], "sustained_replays": sustained["replays"]}
           if sustained else {}),
    }


def sustain(graph, n_calls, seconds, clock):
    """Replays `graph` back to back for `seconds`, as an engine's steady state does, and reports the
    second half (after the clock has settled under the power cap): µs per call (median over its
    replays), the SM clock (median, min) and the power (median W) sampled meanwhile."""
    import torch
    pairs, t0 = [], time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        pairs.append((time.perf_counter(), start, end))
        if len(pairs) > 8:
            pairs[-8][2].synchronize()  # keep a few replays queued, no more
    torch.cuda.synchronize()
    t1 = time.perf_counter()
    half = t0 + (t1 - t0) / 2
    late = [(s, e) for t, s, e in pairs if t >= half] or [(s, e) for _, s, e in pairs]
    mhz, mhz_min = clock.between(half, t1)
    return {"us": statistics.median(s.elapsed_time(e) * 1e3 / n_calls for s, e in late),
            "sm_mhz": mhz, "sm_mhz_min": mhz_min, "watts": clock.watts_between(half, t1), "replays": len(pairs)}


def kernel_times(call, n_sets, calls=20):
    """GPU µs per call of each kernel one call launches: torch.profiler over `calls` eager calls
    rotating over the input sets (after one warm-up call). {kernel name: µs per call}."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    call(0)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for i in range(calls):
            call(i % n_sets)
        torch.cuda.synchronize()
    times = {}
    for evt in prof.key_averages():
        total = getattr(evt, "device_time_total", None)
        if total is None:
            total = getattr(evt, "cuda_time_total", 0)
        if total > 0 and getattr(evt, "device_type", None) is not None and "CUDA" in str(evt.device_type):
            times[evt.key] = total / calls
    return dict(sorted(times.items(), key=lambda kv: -kv[1]))


# ----------------------------------------------------------------------------------------- report

COLUMNS = ["grid", "b", "s_q", "h_q", "mean seqlen", "µs", "GB/s", "TFLOP/s", "% read BW",
           "% copy BW", "% GEMM", "SM MHz", "FlashMLA µs", "speedup", "check"]


def row(r):
    def f(x, fmt):
        return "–" if x is None else format(x, fmt)
    return [r["grid"], str(r["b"]), str(r["s_q"]), str(r["h_q"]), f(r.get("mean_seqlen"), ".0f"),
            f(r.get("us"), ".1f"), f(r.get("gbps"), ".0f"), f(r.get("tflops"), ".0f"),
            f(r.get("frac_read") and 100 * r["frac_read"], ".0f"),
            f(r.get("frac_copy") and 100 * r["frac_copy"], ".0f"),
            f(r.get("frac_gemm") and 100 * r["frac_gemm"], ".0f"),
            f(r.get("sm_mhz"), ".0f"), f(r.get("flashmla_us"), ".1f"),
            f(r.get("speedup"), ".2f"), r["check"]]


def case_line(r):
    v = row(r)
    return (f"{v[0]:<8} b={v[1]:<3} s_q={v[2]} h_q={v[3]:<3} seqlen={v[4]:>5} {v[5]:>7} µs "
            f"{v[6]:>5} GB/s {v[7]:>4} TFLOP/s | {v[8]:>3}% read {v[9]:>3}% copy {v[10]:>3}% GEMM "
            f"{v[11]:>4} MHz | FlashMLA {v[12]:>6} µs x{v[13]:<5} {v[14]}")


def markdown(results, ceil, meta):
    lines = [f"GPU: {meta['gpu']}, torch {meta['torch']}, {meta['dtype']}, commit {meta['git_commit'] or '?'}, "
             f"{meta['date']}", "",
             "| ceiling | measured |", "|---|---|",
             f"| read-only streaming bandwidth | {ceil['read_tbps']:.2f} TB/s |",
             f"| device-to-device copy (read + write) | {ceil['copy_tbps']:.2f} TB/s |",
             f"| {ceil['gemm_dtype']} GEMM 8192³, {ceil['gemm_seconds']:g} s sustained (median) | "
             f"{ceil['gemm_tflops']:.0f} TFLOP/s at {_mhz(ceil['gemm_sm_mhz'])} MHz "
             f"(min {_mhz(ceil['gemm_sm_mhz_min'])}) |",
             f"| {ceil['gemm_dtype']} GEMM 8192³, short burst (best of 10) | {ceil['gemm_tflops_burst']:.0f} TFLOP/s |",
             f"| launch floor: two tiny kernels replayed from a CUDA graph | {_us(ceil.get('launch_floor_us'))} µs |",
             "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row(r)) + " |" for r in results]
    lines += sustained_table(results, ceil)
    lines += ["", f"µs: one whole call (get_mla_metadata excluded): CUDA graph of >= {MIN_CALLS} calls over input "
              f"sets > 2x L2, median of {meta['repeats']} replays. % of the ceilings above. FlashMLA µs: DeepSeek "
              "FlashMLA's best on an H200, bf16, same method (bench/anchors.py); speedup = FlashMLA µs / µs."]
    return "\n".join(lines)


def sustained_table(results, ceil):
    """The --sustain figures, one row per case that has them (none: no lines)."""
    rows = [r for r in results if r.get("sustained_us")]
    if not rows:
        return []
    watts = ceil.get("gemm_watts")
    gemm_watts = "?" if watts is None else f"{watts:.0f}"
    lines = ["", f"Sustained (each case replayed back to back, second half; the GEMM ceiling: "
             f"{ceil['gemm_tflops']:.0f} TFLOP/s at {_mhz(ceil['gemm_sm_mhz'])} MHz, {gemm_watts} W):", "",
             "| grid | b | s_q | h_q | mean seqlen | µs | TFLOP/s | % sustained GEMM | SM MHz (min) | W | "
             "FlashMLA µs | speedup |", "|" + "---|" * 12]
    for r in rows:
        w, ref, us = r.get("sustained_watts"), r.get("flashmla_us"), r["sustained_us"]
        watts_text = "?" if w is None else f"{w:.0f}"
        ref_text, speedup_text = ("–", "–") if ref is None else (f"{ref:.1f}", f"{ref / us:.2f}")
        lines.append(f"| {r['grid']} | {r['b']} | {r['s_q']} | {r['h_q']} | {r['mean_seqlen']:.0f} | {us:.1f} | "
                     f"{r['sustained_tflops']:.0f} | {100 * r['sustained_frac_gemm']:.0f} | "
                     f"{_mhz(r['sustained_sm_mhz'])} ({_mhz(r['sustained_sm_mhz_min'])}) | {watts_text} | "
                     f"{ref_text} | {speedup_text} |")
    return lines


def _mhz(x):
    return "?" if x is None else f"{x:.0f}"


def _us(x):
    return "?" if x is None else f"{x:.2f}"


def git_commit():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


# ------------------------------------------------------------------------------------------- main

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", choices=GRIDS, default="all")
    p.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    p.add_argument("--quick", action="store_true", help="a few configs of each grid")
    p.add_argument("--only", help="only these configs of the grid: b:s_q:h_q:seqlen[,...] "
                   "(nominal seqlen, e.g. 128:1:16:8192)")
    p.add_argument("--repeats", type=int, default=10, help="timed graph replays per case (median)")
    p.add_argument("--gemm-seconds", type=float, default=2.0, help="duration of the sustained GEMM ceiling")
    p.add_argument("--sustain", type=float, default=0.0, metavar="SECONDS",
                   help="also replay each case back to back for this long and report its second half: "
                        "µs, TFLOP/s against the sustained GEMM, SM clock and power (compute-bound cases "
                        "clock down under the power cap; 0: off)")
    p.add_argument("--json", default="bench_results.json", help="where to write all results")
    p.add_argument("--kernel-times", action="store_true",
                   help="also time each kernel of a call (torch.profiler, eager calls)")
    p.add_argument("--plot-dir", help="where to write the sweep plots (bench/plot.py) at the end "
                   "(default: bench_plots when the grid has sweeps; 'none': no plots)")
    args = p.parse_args()

    try:
        import torch
    except ImportError:
        print("torch not found: the benchmark needs PyTorch with CUDA and an NVIDIA GPU", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print(NO_GPU, file=sys.stderr)
        return 2
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    if (props.major, props.minor) < (8, 0):
        print(f"{props.name} is sm_{props.major}{props.minor}: " + NO_GPU.split(": ", 1)[1], file=sys.stderr)
        return 2
    try:
        import flash_mla
    except ImportError as e:
        print(f"cannot import flash_mla ({e}): install it first, e.g. scripts/bench.sh", file=sys.stderr)
        return 2
    import ceilings
    from gpu_clock import SmClock
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    cases = configs(args.grid, args.quick, parse_only(args.only) if args.only else None)
    l2 = getattr(props, "L2_cache_size", 0) or 60e6
    target = max(2 * l2, 120e6)                                   # bytes of input sets per graph
    budget = min(SET_BUDGET, 0.5 * torch.cuda.mem_get_info()[0])  # bytes of input sets at most
    meta = {"gpu": props.name, "sm_count": props.multi_processor_count, "l2_bytes": l2,
            "memory_bytes": props.total_memory, "torch": torch.__version__, "cuda": torch.version.cuda,
            "flash_mla": getattr(flash_mla, "__version__", None), "git_commit": git_commit(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "dtype": args.dtype, "repeats": args.repeats, "min_calls": MIN_CALLS,
            "kernel_env": os.environ.get("FLASHMLA_KERNEL", "auto") or "auto",
            "set_target_bytes": target, "set_budget_bytes": budget,
            "flashmla_reference": "FlashMLA best whole-call µs on an H200, bf16 (bench/anchors.py)"}

    clock = SmClock(torch.cuda.current_device())
    t_start = time.time()
    print(f"{props.name}: measuring ceilings (read, copy, {args.gemm_seconds:g} s of GEMMs) ...", file=sys.stderr)
    ceil = ceilings.measure(dtype, clock, args.gemm_seconds)
    print(f"ceilings: read {ceil['read_tbps']:.2f} TB/s, copy {ceil['copy_tbps']:.2f} TB/s, "
          f"GEMM {ceil['gemm_tflops']:.0f} TFLOP/s sustained at {_mhz(ceil['gemm_sm_mhz'])} MHz "
          f"({ceil['gemm_tflops_burst']:.0f} burst)")

    results, failed = [], False
    bar = tqdm(cases, file=sys.stderr, unit="case") if tqdm else cases
    for i, c in enumerate(bar):
        if not tqdm:
            print(f"[{i + 1}/{len(cases)}] {c.grid} b={c.b} s_q={c.s_q} h_q={c.h_q} seqlen~{c.seqlen}",
                  file=sys.stderr, flush=True)
        try:
            r = run_case(c, args, flash_mla, dtype, ceil, clock, target, budget)
        except Exception as e:  # report the case, go on unless the CUDA context is gone
            msg = (str(e).splitlines() or [""])[0][:200].replace("|", "/")
            r = {**dataclasses.asdict(c), "flashmla_us": anchor_us(c),
                 "check": f"ERROR: {type(e).__name__}: {msg}"}
        failed |= r["check"] != "ok"
        results.append(r)
        (tqdm.write if tqdm else print)(case_line(r))
        meta["seconds"] = time.time() - t_start
        with open(args.json, "w") as f:
            json.dump({**meta, "ceilings": ceil, "cases": results}, f, indent=1)
        try:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        except Exception:  # e.g. an illegal memory access: every later CUDA call would fail too
            print("the CUDA context is lost: stopping", file=sys.stderr)
            break
    clock.stop()

    print("\n" + markdown(results, ceil, meta))
    print(f"\n{len(results)} cases in {time.time() - t_start:.0f} s; results in {args.json}", file=sys.stderr)
    if args.kernel_times:
        print("\nGPU µs per call of each kernel (torch.profiler, eager calls):")
        for r in results:
            if r.get("kernel_us"):
                parts = ", ".join(f"{name[:60]} {t:.1f}" for name, t in r["kernel_us"].items())
                print(f"  {r['grid']} b={r['b']} s_q={r['s_q']} h_q={r['h_q']} seqlen~{r['seqlen']}: {parts}")
    plot_dir = args.plot_dir or ("bench_plots" if args.grid in ("seqlen-sweep", "batch-sweep", "sweeps",
                                                                 "everything") else None)
    if plot_dir and plot_dir != "none":
        try:
            import plot
            for path in plot.plot_files([args.json], plot_dir):
                print(f"plot: {path}", file=sys.stderr)
        except ImportError as e:
            print(f"no plots ({e}): pip install matplotlib, then python bench/plot.py {args.json}", file=sys.stderr)
        except Exception as e:  # the results are saved: a plotting problem must not fail the run
            print(f"plotting failed ({type(e).__name__}: {e}); try python bench/plot.py {args.json}", file=sys.stderr)
    return 1 if failed or len(results) < len(cases) else 0


if __name__ == "__main__":
    sys.exit(main())
