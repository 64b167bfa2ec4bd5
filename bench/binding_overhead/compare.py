#!/usr/bin/env python3
"""Binding overhead: the stable-ABI op (torch.ops.flash_mla.fwd_kvcache, what flash_mla ships)
against the same op built as a plain libtorch pybind11 extension (plain_extension.cpp).

Both call the same library with the same checks and allocations, so the difference is the
binding style alone. Runs on CPU tensors (host backend on a 1-key problem: the work is tiny)
and, where there is a GPU, on CUDA tensors too.

    python bench/binding_overhead/compare.py --lib build/release/libflashmla.a
"""
import argparse
import os
import sys

import torch
import torch.utils.cpp_extension as ext

import flash_mla

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from measure_overhead import time_calls  # noqa: E402  (one timing method for both tools)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", required=True, help="libflashmla.a built with -fPIC (any CMake build of this repo)")
    ap.add_argument("--iters", type=int, default=20000)
    args = ap.parse_args()
    plain = ext.load(name="flash_mla_plain_ext", sources=[os.path.join(HERE, "plain_extension.cpp")],
                     extra_include_paths=[os.path.join(ROOT, "include")],
                     extra_ldflags=[os.path.abspath(args.lib)], with_cuda=torch.cuda.is_available() or None,
                     verbose=False)
    stable = torch.ops.flash_mla.fwd_kvcache.default
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}; µs per call, best of 5 windows of {args.iters} calls")
    for dev in devices:
        sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
        h_q = 1 if dev == "cpu" else 16  # one query row keeps the host backend's own work small
        q = (torch.randn(1, 1, h_q, 576, device=dev) / 10).to(torch.bfloat16)
        k = (torch.randn(1, 64, 1, 576, device=dev) / 10).to(torch.bfloat16)
        bt = torch.zeros(1, 1, dtype=torch.int32, device=dev)
        sl = torch.full((1,), 1 if dev == "cpu" else 64, dtype=torch.int32, device=dev)
        meta, ns = flash_mla.get_mla_metadata(sl, h_q, 1)
        x = torch.zeros(4, device=dev)
        a = (q, k, bt, sl, 512, meta, ns, 576 ** -0.5, False)
        o1, l1 = stable(*a)
        o2, l2 = plain.fwd_kvcache(*a)
        assert torch.equal(o1, o2) and torch.equal(l1, l2), "the two bindings disagree"
        add = time_calls(lambda: x.add_(1), args.iters, 5, sync)
        s = time_calls(lambda: stable(*a), args.iters, 5, sync)
        p = time_calls(lambda: plain.fwd_kvcache(*a), args.iters, 5, sync)
        print(f"{dev:4s}  x.add_(1) {add:6.2f}   stable-ABI op {s:6.2f}   plain extension {p:6.2f}   "
              f"stable - plain {s - p:+.2f}")


if __name__ == "__main__":
    main()
