#!/usr/bin/env python3
"""Host overhead of one eager flash_mla_with_kvcache call on the GPU.

Times windows of back-to-back calls with tiny inputs (b=1, s_q=1, h_q=16, seqlen 64), two ways:
"host" is the time to enqueue a window short enough that the launch queue never fills, i.e.
what the host spends per call (Python wrapper, torch dispatcher, argument checks, allocations,
kernel launches); "with GPU" includes the synchronize that closes the window, so it is the
larger of host and GPU time per call. The same for a plain `x.add_(1)`, the baseline of one
minimal torch op. The ratios use the host figures (medians over the windows).

    python scripts/measure_overhead.py [--iters 100] [--repeats 21]
"""

import argparse
import statistics
import sys
import time


def time_calls(fn, iters: int, repeats: int, sync) -> tuple[float, float]:
    """Microseconds per call (host, with GPU), medians over `repeats` windows of `iters` calls,
    each window starting on an idle GPU."""
    for _ in range(50):  # warm-up: allocator caches, lazy init
        fn()
    sync()
    host, with_gpu = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        t1 = time.perf_counter()
        sync()
        t2 = time.perf_counter()
        host.append((t1 - t0) / iters * 1e6)
        with_gpu.append((t2 - t0) / iters * 1e6)
    return statistics.median(host), statistics.median(with_gpu)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=100,
                    help="calls per timed window, few enough that the launch queue never fills (default 100)")
    ap.add_argument("--repeats", type=int, default=21, help="timed windows; medians are reported (default 21)")
    args = ap.parse_args()

    import torch
    if not torch.cuda.is_available():
        print("measure_overhead: no CUDA device (torch.cuda.is_available() is False); "
              "the host overhead of the GPU path can only be measured on a GPU machine.")
        return 0
    import flash_mla

    dev = "cuda"
    b, s_q, h_q, h_kv, seqlen, page = 1, 1, 16, 1, 64, 64
    q = torch.randn(b, s_q, h_q, 576, dtype=torch.bfloat16, device=dev) / 10
    k_cache = torch.randn(1, page, h_kv, 576, dtype=torch.bfloat16, device=dev) / 10
    block_table = torch.zeros(b, 1, dtype=torch.int32, device=dev)
    cache_seqlens = torch.full((b,), seqlen, dtype=torch.int32, device=dev)
    meta, splits = flash_mla.get_mla_metadata(cache_seqlens, s_q * h_q // h_kv, h_kv)

    def decode():
        flash_mla.flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, 512, meta, splits, causal=True)

    def metadata():
        flash_mla.get_mla_metadata(cache_seqlens, s_q * h_q // h_kv, h_kv)

    op = torch.ops.flash_mla.fwd_kvcache.default
    scale = 576 ** -0.5

    def decode_op():  # the torch op without the Python wrapper
        op(q, k_cache, block_table, cache_seqlens, 512, meta, splits, scale, True)

    x = torch.zeros(16, device=dev)

    def add():
        x.add_(1)

    sync = torch.cuda.synchronize
    t_decode = time_calls(decode, args.iters, args.repeats, sync)
    t_op = time_calls(decode_op, args.iters, args.repeats, sync)
    t_meta = time_calls(metadata, args.iters, args.repeats, sync)
    t_add = time_calls(add, args.iters, args.repeats, sync)

    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"windows of {args.iters} calls, median of {args.repeats}; us per call: host, with GPU")
    rows = [("flash_mla_with_kvcache (b=1, s_q=1, h_q=16, seqlen 64)", t_decode),
            ("  torch.ops.flash_mla.fwd_kvcache directly (no wrapper)", t_op),
            ("get_mla_metadata (same shapes)", t_meta),
            ("baseline x.add_(1)", t_add)]
    for name, (host, with_gpu) in rows:
        print(f"{name:56s} {host:8.2f} {with_gpu:8.2f}")
    print(f"host-time ratios to add_: flash_mla_with_kvcache {t_decode[0] / t_add[0]:.2f}x (target <= 1.5), "
          f"get_mla_metadata {t_meta[0] / t_add[0]:.2f}x (target <= 2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
