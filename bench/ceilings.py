"""Ceilings of this GPU, measured in the same run as the benchmark so fractions compare like with like.

- read:  read-only streaming bandwidth, a Triton kernel summing a 4 GiB buffer with 16-byte loads
         into one int per program (best of 10). A decode kernel mostly reads: this is its memory roof.
- copy:  device-to-device torch copy_ of 4 GiB, counting bytes read + written (best of 10).
- gemm:  8192^3 torch.matmul back to back for a few seconds, median per-GEMM rate, with the SM
         clock it ran at; a short burst (best of 10) is recorded too. Sustained tensor-core load
         hits the 700 W cap and lowers the clock, so the sustained figure is the fair compute roof.
- launch floor: a CUDA graph of back-to-back pairs of one-element kernels (x.add_(1), y.add_(1)),
         µs per pair: the least a call of two kernels (split-KV + combine) can cost in a graph,
         the fixed cost that small batches pay before any work.
"""
import statistics
import time

import torch

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None

GiB = 1 << 30


def _best_ms(fn, repeats=10):
    """Best of `repeats` individually timed calls (CUDA events), after one warm-up call."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return min(times)


if triton is not None:

    @triton.jit
    def _sum_kernel(x_ptr, out_ptr, iters, BLOCK: tl.constexpr):
        # Step i: the whole grid reads one contiguous stretch of num_programs * BLOCK ints; each
        # thread's part is contiguous and 16-byte aligned, so the loads are 128-bit.
        pid = tl.program_id(0)
        acc = tl.zeros([BLOCK], dtype=tl.int32)
        for i in range(iters):
            offs = (i * tl.num_programs(0) + pid) * BLOCK + tl.arange(0, BLOCK)
            acc += tl.load(x_ptr + offs)
        tl.store(out_ptr + pid, tl.sum(acc, axis=0))


def read_bandwidth(nbytes=4 * GiB, repeats=10):
    """Read-only streaming bandwidth in bytes/s, and how it was measured."""
    x = torch.ones(nbytes // 4, dtype=torch.int32, device="cuda")
    if triton is None:  # torch's reduction also streams at close to the read roof
        return x.numel() * 4 / (_best_ms(lambda: x.sum()) * 1e-3), "torch.sum (no triton)"
    block = 8192  # 8 warps: 32 ints (8 loads of 16 bytes) per thread per step; 8 programs per SM
    programs = torch.cuda.get_device_properties(x.device).multi_processor_count * 8
    iters = x.numel() // (programs * block)
    out = torch.empty(programs, dtype=torch.int32, device="cuda")
    ms = _best_ms(lambda: _sum_kernel[(programs,)](x, out, iters, BLOCK=block, num_warps=8), repeats)
    return iters * programs * block * 4 / (ms * 1e-3), "triton sum, 16-byte loads"


def copy_bandwidth(nbytes=4 * GiB, repeats=10):
    """Device-to-device copy bandwidth in bytes/s, counting bytes read + written."""
    src = torch.ones(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return 2 * nbytes / (_best_ms(lambda: dst.copy_(src), repeats) * 1e-3)


def gemm_rate(dtype, clock, seconds=2.0, n=8192):
    """GEMM rate in FLOP/s: {"burst": best of 10, "sustained": median over `seconds` of back-to-back
    GEMMs, "sm_mhz"/"sm_mhz_min": the SM clock during the sustained run, "watts": the median
    power over its second half (None without a reader)}."""
    a = torch.randn(n, n, dtype=dtype, device="cuda")
    b = torch.randn(n, n, dtype=dtype, device="cuda")
    c = torch.empty(n, n, dtype=dtype, device="cuda")
    flop = 2 * n**3

    def mm():
        return torch.matmul(a, b, out=c)

    burst = flop / (_best_ms(mm) * 1e-3)
    # One event between consecutive GEMMs times each without gaps; keep at most ~48 GEMMs queued
    # (waiting on an event releases the GIL, so the clock sampler keeps running).
    events = [torch.cuda.Event(enable_timing=True)]
    events[0].record()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(16):
            mm()
            events.append(torch.cuda.Event(enable_timing=True))
            events[-1].record()
        if len(events) > 48:
            events[-48].synchronize()
    events[-1].synchronize()
    t1 = time.perf_counter()
    mhz, mhz_min = clock.between(t0, t1)
    ms = statistics.median(s.elapsed_time(e) for s, e in zip(events, events[1:]))
    return {"burst": burst, "sustained": flop / (ms * 1e-3), "gemms": len(events) - 1,
            "sm_mhz": mhz, "sm_mhz_min": mhz_min, "watts": clock.watts_between(t0 + (t1 - t0) / 2, t1)}


def launch_floor_us(pairs=200, repeats=10):
    """µs per pair of back-to-back tiny kernels replayed from one CUDA graph (median)."""
    x = torch.zeros(1, device="cuda")
    y = torch.zeros(1, device="cuda")
    x.add_(1)  # lazy initialization outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(pairs):
            x.add_(1)
            y.add_(1)
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / pairs)
    return statistics.median(times)


def measure(dtype, clock, gemm_seconds=2.0):
    """All ceilings as a JSON-ready dict (TB/s and TFLOP/s)."""
    read, how = read_bandwidth()
    torch.cuda.empty_cache()
    copy = copy_bandwidth()
    torch.cuda.empty_cache()
    gemm = gemm_rate(dtype, clock, gemm_seconds)
    torch.cuda.empty_cache()
    time.sleep(1)  # let the clock recover from the power cap before the decode cases
    try:
        floor = launch_floor_us()
    except Exception as e:  # a ceiling that cannot be measured must not stop the benchmark
        print(f"launch floor not measured: {e}")
        floor = None
    return {
        "launch_floor_us": floor,
        "read_tbps": read / 1e12, "read_method": how,
        "copy_tbps": copy / 1e12,
        "gemm_tflops": gemm["sustained"] / 1e12, "gemm_tflops_burst": gemm["burst"] / 1e12,
        "gemm_seconds": gemm_seconds, "gemm_count": gemm["gemms"], "gemm_dtype": str(dtype).split(".")[-1],
        "gemm_sm_mhz": gemm["sm_mhz"], "gemm_sm_mhz_min": gemm["sm_mhz_min"], "gemm_watts": gemm["watts"],
    }
