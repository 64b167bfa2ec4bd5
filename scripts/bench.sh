#!/usr/bin/env bash
# The main job: build and install flash_mla from this checkout, then run the decode benchmark.
#
#   scripts/bench.sh [bench_decode.py options]      e.g. scripts/bench.sh --grid upstream --quick
#   scripts/bench.sh --grid sweeps                  seqlen and batch sweeps + their plots (bench_plots/)
#   scripts/bench.sh --grid everything              both grids and both sweeps
#   FLASHMLA_KERNEL=portable scripts/bench.sh ...   the portable kernel (default: auto, the best one)
#
# Needs an NVIDIA GPU (sm_80+) and a Python with torch; prints a markdown table for
# docs/BENCHMARKS.md and writes all numbers to bench_results.json (see --help). Sweeps are also
# plotted (bench/plot.py, needs matplotlib) into --plot-dir, default bench_plots/; to draw two
# runs on the same axes: python bench/plot.py auto.json portable.json --out DIR.
#   PYTHON=...                  the Python to use (default: python)
#   FLASHMLA_SKIP_INSTALL=1     reuse the installed flash_mla instead of building this checkout
#   FLASHMLA_PIP_ARGS="..."     extra pip arguments, e.g. -Ccmake.define.CMAKE_CUDA_ARCHITECTURES=90a-real
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
if ! command -v "$PYTHON" >/dev/null 2>&1; then
  PYTHON=python3
fi

# Without a usable GPU, skip the build: the benchmark says why it cannot run and exits with 2.
if ! "$PYTHON" -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
  exec "$PYTHON" bench/bench_decode.py "$@"
fi

if [[ "${FLASHMLA_SKIP_INSTALL:-0}" == 1 ]] && "$PYTHON" -c "import flash_mla" 2>/dev/null; then
  echo "FLASHMLA_SKIP_INSTALL=1: using the installed flash_mla" >&2
else
  # shellcheck disable=SC2086  # FLASHMLA_PIP_ARGS is a list of arguments
  "$PYTHON" -m pip install --no-build-isolation ${FLASHMLA_PIP_ARGS:-} .
fi
exec "$PYTHON" bench/bench_decode.py "$@"
