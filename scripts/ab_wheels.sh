#!/usr/bin/env bash
# A/B of several builds of the flash_mla package in one call on a GPU machine. Each folder
# .whl_<name>/ holds one wheel (built elsewhere, e.g. from a patched worktree); "main" is the
# package installed in the environment. Every build is installed into its own folder and
# imported through PYTHONPATH, so all of them run in the same session on the same GPU, in
# alternating rounds (drift between rounds shows up as a difference within one build).
#
#   AB_CONFIGS  configs for bench_decode.py --only (b:s_q:h_q:seqlen[,...]); required
#   AB_ROUNDS   rounds over all builds (default 2)
#   AB_ARGS     extra benchmark arguments (default: --kernel-times --gemm-seconds 0.2)
#   AB_TRACE    one config: also record the Hopper pipeline trace of each build
#               (FLASHMLA_SM90_TRACE) and summarize it with bench/trace_report.py
# Logs and a summary go to $OUT (or ./ab_out).
# Usage: AB_CONFIGS=128:1:16:8192,1:1:16:8192 bash scripts/ab_wheels.sh [name ...]  (default: every .whl_*)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-ab_out}
mkdir -p "$out"
: "${AB_CONFIGS:?set AB_CONFIGS to a --only list}"
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  names=(main)
  for d in .whl_*; do [ -d "$d" ] && names+=("${d#.whl_}"); done
fi
for v in "${names[@]}"; do
  [ "$v" = main ] && continue
  python3 -m pip install -q --no-deps --target "/tmp/ab_$v" ".whl_$v"/*.whl > "$out/pip_$v.txt" 2>&1 \
    || { echo "install of .whl_$v failed (see $out/pip_$v.txt)"; exit 1; }
done
pythonpath() { [ "$1" = main ] || echo "/tmp/ab_$1"; }
# shellcheck disable=SC2086  # AB_ARGS is a list
for r in $(seq 1 "${AB_ROUNDS:-2}"); do
  for v in "${names[@]}"; do
    PYTHONPATH=$(pythonpath "$v") timeout 300 python3 bench/bench_decode.py --grid all --only "$AB_CONFIGS" \
      ${AB_ARGS:---kernel-times --gemm-seconds 0.2} --json "$out/bench_${v}_$r.json" > "$out/bench_${v}_$r.txt" 2>&1
    echo "== $v, round $r" | tee -a "$out/summary.txt"
    grep -E "^\| (upstream|serving|seqlen|batch)" "$out/bench_${v}_$r.txt" | cut -d'|' -f2-7,14-15 | tee -a "$out/summary.txt"
    grep -E "^  (upstream|serving|seqlen|batch)" "$out/bench_${v}_$r.txt" | sed 's/void flashmla:://g; s/(anonymous namespace):://g' \
      | cut -c1-190 | tee -a "$out/summary.txt"
  done
done
if [ -n "${AB_TRACE:-}" ]; then
  for v in "${names[@]}"; do
    rm -f "$out/trace_$v.jsonl"
    PYTHONPATH=$(pythonpath "$v") FLASHMLA_SM90_TRACE="$out/trace_$v.jsonl" timeout 300 python3 bench/bench_decode.py \
      --grid all --only "$AB_TRACE" --gemm-seconds 0.1 --json "$out/trace_bench_$v.json" > /dev/null 2>&1
    echo "== trace $v ($AB_TRACE)" | tee -a "$out/summary.txt"
    python3 bench/trace_report.py "$out/trace_$v.jsonl" 2>&1 | tail -15 | tee -a "$out/summary.txt"
  done
fi
