#!/usr/bin/env bash
# Compiles the Hopper kernels (every .cu under src/kernels/sm90) for sm_90a with ptxas' report and fails on what would cost speed
# silently: register spills or local memory, and wgmma serialized by ptxas (C7520: a branch
# between wgmma instructions, e.g. a wait loop, makes ptxas serialize them all).
# Usage: bash scripts/check_ptxas.sh [nvcc]   (run from anywhere; prints the report)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
nvcc=${1:-nvcc}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
: > "$tmp/log"
for src in "$root"/src/kernels/sm90/*.cu; do
  "$nvcc" -O3 -DNDEBUG -std=c++17 --expt-relaxed-constexpr -gencode=arch=compute_90a,code=sm_90a \
    -Xptxas=-v -I"$root/include" -I"$root/src" -c "$src" -o "$tmp/k.o" \
    >> "$tmp/log" 2>&1 || { cat "$tmp/log"; exit 1; }
done
grep -E "Compiling entry|Used [0-9]+ registers|spill|C75[0-9][0-9]" "$tmp/log" | sed 's/^ptxas info *: //'
status=0
if grep -qE "[1-9][0-9]* bytes (spill|stack)" "$tmp/log"; then echo "FAIL: register spills or stack use"; status=1; fi
if grep -q "C7520" "$tmp/log"; then echo "FAIL: ptxas serialized wgmma instructions (C7520)"; status=1; fi
[ $status -eq 0 ] && echo "ptxas report OK: no spills, no serialized wgmma"
exit $status
