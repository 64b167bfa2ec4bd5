#!/usr/bin/env python3
"""Host overhead of one eager flash_mla_with_kvcache call on the GPU.

Times N back-to-back calls with tiny inputs (b=1, s_q=1, h_q=16, seqlen 64), so the GPU work is
negligible and the wall clock measures what the host spends per call (Python wrapper, torch
dispatcher, argument checks, allocations, kernel launches); a final synchronize closes the
window. The same is done for a plain `x.add_(1)` as a baseline of one minimal torch op.

    python scripts/measure_overhead.py [--iters 2000] [--repeats 5]
"""

import argparse
import sys
import time


def time_calls(fn, iters: int, repeats: int, sync) -> float:
    """Best (lowest) microseconds per call over `repeats` windows of `iters` calls."""
    for _ in range(max(50, iters // 10)):  # warm-up: allocator caches, lazy init
        fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        sync()
        best = min(best, (time.perf_counter() - t0) / iters * 1e6)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=2000, help="calls per timed window (default 2000)")
    ap.add_argument("--repeats", type=int, default=5, help="timed windows; the best is reported (default 5)")
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
          f"{args.iters} calls x {args.repeats} windows (best window)")
    print(f"flash_mla_with_kvcache (b=1, s_q=1, h_q=16, seqlen 64): {t_decode:8.2f} us/call")
    print(f"  torch.ops.flash_mla.fwd_kvcache directly (no wrapper): {t_op:8.2f} us/call")
    print(f"get_mla_metadata (same shapes):                        {t_meta:8.2f} us/call")
    print(f"baseline x.add_(1):                                    {t_add:8.2f} us/call")
    print(f"flash_mla_with_kvcache / add_ ratio:                   {t_decode / t_add:8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
