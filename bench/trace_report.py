"""Summarize the Hopper kernel's pipeline trace (FLASHMLA_SM90_TRACE=file, see docs/PERF.md).

    FLASHMLA_SM90_TRACE=trace.jsonl python bench/bench_decode.py --grid upstream --only 128:1:16:8192
    python bench/trace_report.py trace.jsonl [--mhz MHZ]

Each line of the file is one traced launch: for the first CTAs, the SM clock at each pipeline
event of the first key blocks. Per launch this prints the medians over blocks, in µs:
  load     issue -> last box landed   (the producer's TMA issue to the stage being full)
  first    issue -> first box landed
  scores   last box landed -> S done  (warpgroup 0's Q K^T)
  rest     S done -> stage released by warpgroup 0 (softmax, P, its half of P V)
  wg1      warpgroup 0's release -> warpgroup 1's release of the same stage
  period   issue of block n -> issue of block n + 1 (the pipeline's rate; the HBM share of
           one SM needs <= 2.1 µs per 72 KB block at 4.5 TB/s over 132 SMs)
  stall    release of block n -> last box of block n + 1 landed (consumers waiting for data)
and, from every CTA's start and end (%globaltimer), how unevenly the CTAs finish: the spread of
start times, and the end times after the first start (min / median / max, µs); the call lasts
as long as its slowest CTA.

Cycles become µs at the SM clock measured during the traced launch itself (clock64 against
%globaltimer over each CTA's span; traces older than that carry no clock: give --mhz). The
clock of an eager traced call can differ from the benchmark's graph replays (after the GEMM
ceiling it was ~1780 MHz, not 1980), so never convert with the replays' figure.
"""

import argparse
import json
import statistics


def median_us(values, mhz):
    values = [v for v in values if v is not None]
    return statistics.median(values) / mhz if values else float("nan")


def report(launch, mhz):
    rows = []
    for c, cta in enumerate(launch["ctas"]):
        n_blocks = sum(1 for t in cta["issue"] if t)
        ev = {k: cta[k][:n_blocks] for k in cta}

        def diff(a, b, shift=0):
            out = []
            for n in range(n_blocks - shift):
                x, y = ev[a][n], ev[b][n + shift]
                out.append(y - x if x and y else None)
            return out

        if n_blocks < 3:
            continue
        rows.append((c, n_blocks, median_us(diff("issue", "last_box"), mhz),
                     median_us(diff("issue", "first_box"), mhz), median_us(diff("last_box", "scores_done"), mhz),
                     median_us(diff("scores_done", "release0"), mhz), median_us(diff("release0", "release1"), mhz),
                     median_us(diff("issue", "issue", 1), mhz), median_us(diff("release0", "last_box", 1), mhz)))
    return rows


def launch_mhz(launch):
    """The SM clock during the launch: median over CTAs of clock64 cycles per %globaltimer µs."""
    rates = [(s[4] - s[3]) / ((s[2] - s[1]) / 1e3) for s in launch.get("spans", [])
             if len(s) >= 5 and s[3] and s[4] and s[2] > s[1] + 1000]
    return statistics.median(rates) if rates else None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trace")
    ap.add_argument("--mhz", type=float, help="SM clock to convert cycles (default: measured in the launch)")
    args = ap.parse_args()
    print("| launch | grid | L2 prefetch | MHz | CTA | blocks | load | first | scores | rest | wg1 | period | stall |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    with open(args.trace) as f:
        launches = [json.loads(line) for line in f]
    for i, launch in enumerate(launches):
        mhz = args.mhz or launch_mhz(launch)
        if mhz is None:
            raise SystemExit(f"launch {i}: no clock in the trace (an older format): give --mhz")
        for c, n, *t in report(launch, mhz):
            cells = " | ".join(f"{x:.2f}" for x in t)
            print(f"| {i} | {launch['grid']} | {launch['l2_prefetch']} | {mhz:.0f} | {c} | {n} | {cells} |")
    print()
    print("| launch | CTAs | start spread µs | end min | end median | end max (µs after the first start) |")
    print("|---|---|---|---|---|---|")
    for i, launch in enumerate(launches):
        spans = [s for s in launch.get("spans", []) if s[1] and s[2]]
        if not spans:
            continue
        t0 = min(s[1] for s in spans)
        ends = sorted((s[2] - t0) / 1e3 for s in spans)
        spread = (max(s[1] for s in spans) - t0) / 1e3
        print(f"| {i} | {len(spans)} | {spread:.2f} | {ends[0]:.2f} | {statistics.median(ends):.2f} | {ends[-1]:.2f} |")


if __name__ == "__main__":
    main()
