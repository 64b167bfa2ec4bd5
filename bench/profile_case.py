#!/usr/bin/env python3
"""A few eager calls of one benchmark configuration, for a profiler to attach to (ncu, nsys).

Same inputs as bench_decode.py (seqlens drawn as there, one input set); no timing of its own.

    python3 bench/profile_case.py 128:1:128:8192 [--calls 5] [--dtype bf16]
    ncu -k regex:mla_decode --launch-skip 2 --launch-count 1 --section SpeedOfLight \\
        python3 bench/profile_case.py 128:1:128:8192
"""
import argparse
import sys

import bench_decode


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="b:s_q:h_q:seqlen (nominal mean seqlen, as in bench_decode.py --only)")
    p.add_argument("--calls", type=int, default=5)
    p.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    args = p.parse_args()
    (b, s_q, h_q, seqlen), = bench_decode.parse_only(args.config)

    import torch
    if not torch.cuda.is_available():
        print(bench_decode.NO_GPU, file=sys.stderr)
        return 2
    import flash_mla
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    c = bench_decode.Config("profile", b, s_q, h_q, seqlen)
    seqlens = bench_decode.draw_seqlens(c)
    lens, sets = bench_decode.make_sets(c, seqlens, 1, dtype)
    q, k_cache, table = sets[0]
    metadata, splits = flash_mla.get_mla_metadata(lens, s_q * h_q // c.h_kv, c.h_kv)
    for _ in range(args.calls):
        flash_mla.flash_mla_with_kvcache(q, k_cache, table, lens, bench_decode.D_V, metadata, splits,
                                         softmax_scale=bench_decode.D_QK ** -0.5, causal=True)
    torch.cuda.synchronize()
    print(f"{args.calls} calls of b={b} s_q={s_q} h_q={h_q} mean seqlen {sum(seqlens) / b:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
