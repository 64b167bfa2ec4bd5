#!/usr/bin/env python3
"""Plots of the decode benchmark's sweeps: achieved GB/s and TFLOP/s against mean seqlen and
against batch size, with the ceilings measured in the same run as horizontal lines and
DeepSeek FlashMLA's figures (bench/anchors.py) as points where they exist.

    python bench/plot.py RESULTS.json [MORE.json ...] [--out DIR] [--label NAME ...]

Reads what bench_decode.py --grid sweeps (or seqlen-sweep, batch-sweep, everything) wrote;
several files (e.g. a run per FLASHMLA_KERNEL value) are drawn on the same axes, one line style
each, labelled with --label or else with the file's kernel setting and commit. Writes
DIR/seqlen_sweep.png and DIR/batch_sweep.png (default DIR: the first file's folder), each with a
GB/s panel (read and copy ceilings) and a TFLOP/s panel (sustained and burst GEMM ceilings).
Needs matplotlib only (no GPU, no torch).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from anchors import FLASHMLA_US  # noqa: E402

D_QK, D_V = 576, 512
LINE_STYLES = ["-", "--", ":", "-."]
MARKERS = ["o", "s", "^", "D"]
COLORS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]


def counts(b, s_q, h_q, mean_seqlen, h_kv=1, elem_bytes=2):
    """(FLOP, bytes) of one call, as FlashMLA counts them (bench_decode.flashmla_counts)."""
    flop = 2 * b * h_q * s_q * mean_seqlen * (D_QK + D_V)
    nbytes = b * (s_q * h_q * D_QK + mean_seqlen * h_kv * D_QK + s_q * h_q * D_V) * elem_bytes
    return flop, nbytes


def anchor_point(b, s_q, h_q, seqlen):
    """FlashMLA's (GB/s, TFLOP/s) for a config in any of its grids, or None."""
    for grid in ("upstream", "serving"):
        row = FLASHMLA_US.get((grid, b, s_q, h_q, seqlen))
        if row:
            mean, _, _, best_us = row
            flop, nbytes = counts(b, s_q, h_q, mean)
            return nbytes / best_us / 1e3, flop / best_us / 1e6
    return None


def run_label(data, path):
    commit = (data.get("git_commit") or "?")[:7]
    return f"{data.get('kernel_env', 'auto')} kernel, {commit}"


SWEEPS = {
    # name: (grid, x key, x label, series key, series label, log base of x)
    "seqlen_sweep": ("seqlen-sweep", "mean_seqlen", "mean seqlen (keys per request)", "b", "b", 2),
    "batch_sweep": ("batch-sweep", "b", "batch size b", "seqlen", "seqlen", 2),
}


def plot_sweep(name, runs, out_dir):
    """One PNG with two panels (GB/s, TFLOP/s) for sweep `name`; None if no run has its cases."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid, xkey, xlabel, skey, slabel, base = SWEEPS[name]
    runs = [(label, data, [r for r in data["cases"] if r.get("grid") == grid and r.get("us")])
            for label, data in runs]
    runs = [r for r in runs if r[2]]
    if not runs:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(15, 6))
    series = sorted({(r[skey], r["h_q"]) for _, _, cases in runs for r in cases}, key=lambda t: (-t[0], t[1]))
    color = {s: COLORS[i % len(COLORS)] for i, s in enumerate(series)}
    for panel, (ax, ykey, yunit) in enumerate(zip(axes, ("gbps", "tflops"), ("GB/s", "TFLOP/s"))):
        for ri, (label, data, cases) in enumerate(runs):
            for s in series:
                pts = sorted((r[xkey], r[ykey]) for r in cases if (r[skey], r["h_q"]) == s)
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], LINE_STYLES[ri % len(LINE_STYLES)],
                            marker=MARKERS[ri % len(MARKERS)], markersize=4, color=color[s],
                            label=f"{slabel}={s[0]}, h_q={s[1]} ({label})")
        # FlashMLA's figures at the configs it was measured on (once, from the first run's data).
        shown = set()
        for _, _, cases in runs:
            for r in cases:
                key = (r["b"], r["s_q"], r["h_q"], r["seqlen"])
                pt = anchor_point(*key)
                if pt and key not in shown:
                    shown.add(key)
                    mean = FLASHMLA_US.get(("upstream",) + key, FLASHMLA_US.get(("serving",) + key))[0]
                    x = mean if xkey == "mean_seqlen" else r["b"]
                    ax.plot([x], [pt[panel]], "*", markersize=12, color=color[(r[skey], r["h_q"])],
                            markeredgecolor="black", linestyle="none")
        ax.plot([], [], "*", markersize=12, color="white", markeredgecolor="black", linestyle="none",
                label="FlashMLA's best (H200, anchors.py)")
        # Ceilings measured in each run (one line per distinct value).
        top = 0.0
        what = ([("read_tbps", 1e3, "read ceiling"), ("copy_tbps", 1e3, "copy ceiling")] if ykey == "gbps"
                else [("gemm_tflops", 1, "GEMM ceiling, sustained"), ("gemm_tflops_burst", 1, "GEMM, burst")])
        for li, (k, mult, text) in enumerate(what):
            values = {}
            for label, data, _ in runs:
                v = data.get("ceilings", {}).get(k)
                if v:
                    values.setdefault(round(v * mult), []).append(label)
            for vi, (v, who) in enumerate(sorted(values.items())):
                top = max(top, v)
                ax.axhline(v, color="black" if li == 0 else "gray", linewidth=1.2 if li == 0 else 0.8,
                           linestyle="-" if li == 0 else "--")
                note = f"{text} {v:,} {yunit}" + (f" ({', '.join(who)})" if len(values) > 1 else "")
                ax.annotate(note, xy=(0.01 + 0.5 * (vi % 2), v), xycoords=("axes fraction", "data"), fontsize=8,
                            va="bottom", color="black" if li == 0 else "gray")
        data_top = max((float(max(ln.get_ydata())) for ln in ax.lines if len(ln.get_ydata())), default=1.0)
        ax.set_ylim(0, 1.08 * max(top, data_top))
        ax.set_xscale("log", base=base)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"achieved {yunit} (FlashMLA's byte / FLOP counts)")
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title({"gbps": "memory: GB/s", "tflops": "compute: TFLOP/s"}[ykey])
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    d = runs[0][1]
    what = "s_q=1, h_kv=1, varlen, causal, " + d.get("dtype", "bf16")
    fig.suptitle(f"{name.replace('_', ' ')} ({what}): {d.get('gpu', '?')}, {d.get('date', '?')[:10]}, "
                 "whole call (CUDA-graph replay, cold L2, median)", fontsize=11)
    fig.tight_layout(rect=(0, 0.06 + 0.025 * ((len(labels) + 2) // 3), 1, 0.95))
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_files(paths, out_dir=None, labels=None):
    """Writes the plots of the sweeps found in the JSON files; returns the PNG paths written."""
    runs = []
    for i, path in enumerate(paths):
        with open(path) as f:
            data = json.load(f)
        runs.append((labels[i] if labels and i < len(labels) else run_label(data, path), data))
    out_dir = out_dir or os.path.dirname(os.path.abspath(paths[0]))
    return [p for p in (plot_sweep(name, runs, out_dir) for name in SWEEPS) if p]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("json", nargs="+", help="bench_decode.py results")
    p.add_argument("--out", help="folder for the PNGs (default: the first file's folder)")
    p.add_argument("--label", action="append", help="legend name of each file, in order")
    args = p.parse_args()
    written = plot_files(args.json, args.out, args.label)
    if not written:
        print("no sweep results in these files (run bench_decode.py --grid sweeps)", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
