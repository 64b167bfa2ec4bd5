#!/usr/bin/env bash
# One call on a lent H200 (or any GPU machine): the GPU checks of a kernel change, in order,
# each with its own time limit so a hang costs minutes, not the session. Logs go to $OUT (or
# ./h200_out). Stages (default: all but bench):
#   sass     register/spill report and the instructions of the Hopper kernel (HGMMA, UTMALDG)
#   quick    the quick C++ GPU cases on the Hopper kernel (stops everything if they fail)
#   ctest    the C++ GPU suite on each kernel (FLASHMLA_KERNEL=sm90, then portable)
#   sanitize compute-sanitizer memcheck/racecheck/synccheck on the quick cases, both kernels
#   pytest   builds + installs flash_mla (sm_90a only) and runs tests/python on the GPU
#   bench    the benchmark (extra arguments after --, e.g. -- --grid upstream --quick)
# Usage: bash scripts/h200_check.sh [stage ...] [-- bench args]
# Expects build/release built here or there (cmake --preset release && cmake --build --preset release).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-h200_out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
stages=()
bench_args=()
while [ $# -gt 0 ]; do
  if [ "$1" = "--" ]; then shift; bench_args=("$@"); break; fi
  stages+=("$1"); shift
done
[ ${#stages[@]} -eq 0 ] && stages=(sass quick ctest sanitize pytest)
gpu_tests=build/release/tests/cpp/flashmla_gpu_tests
sm90_obj=build/release/CMakeFiles/flashmla_sm90.dir/src/kernels/sm90/decode_sm90.cu.o
log="$out/summary.txt"
note() { echo "== $*" | tee -a "$log"; }

for stage in "${stages[@]}"; do
  case $stage in
    sass)
      note "sass: $(nvidia-smi --query-gpu=name,clocks.sm,power.draw --format=csv,noheader)"
      cuobjdump -res-usage "$sm90_obj" 2>&1 | grep -E "Function|REG" | tee -a "$log"
      cuobjdump -sass "$sm90_obj" | grep -oE "\b(HGMMA|UTMALDG|USETMAXREG|LDL|STL)[.A-Z0-9_x]*" | sort | uniq -c | tee -a "$log"
      ;;
    quick)
      note "quick (sm90)"
      FLASHMLA_KERNEL=sm90 timeout 90 "$gpu_tests" --gtest_filter='GpuQuick.*:GpuDispatch.*' 2>&1 | tail -40 | tee -a "$log"
      [ "${PIPESTATUS[0]}" -eq 0 ] || { note "quick FAILED: stopping"; exit 1; }
      ;;
    ctest)
      for k in sm90 portable; do
        note "C++ GPU suite, FLASHMLA_KERNEL=$k"
        FLASHMLA_KERNEL=$k timeout 300 "$gpu_tests" 2>&1 > "$out/gtest_$k.txt"
        echo "rc=$?" | tee -a "$log"
        grep -E "^\[  (PASSED|FAILED|SKIPPED) " "$out/gtest_$k.txt" | head -30 | tee -a "$log"
      done
      ;;
    sanitize)
      for k in sm90 portable; do
        for tool in memcheck racecheck synccheck; do
          note "compute-sanitizer $tool, FLASHMLA_KERNEL=$k"
          FLASHMLA_KERNEL=$k timeout 300 compute-sanitizer --tool "$tool" --error-exitcode 3 \
            "$gpu_tests" --gtest_filter='GpuQuick.*' 2>&1 | tail -4 | tee -a "$log"
        done
      done
      ;;
    pytest)
      note "pip install (sm_90a)"
      python3 -m pip install --no-build-isolation -q . -Ccmake.define.CMAKE_CUDA_ARCHITECTURES=90a-real \
        > "$out/pip.txt" 2>&1 || { tail -30 "$out/pip.txt" | tee -a "$log"; exit 1; }
      note "pytest tests/python (GPU)"
      timeout 420 python3 -m pytest tests/python -q -x 2>&1 | tail -40 | tee -a "$log"
      ;;
    bench)
      note "bench ${bench_args[*]}"
      timeout 540 python3 bench/bench_decode.py --json "$out/bench.json" "${bench_args[@]}" 2>&1 | tail -60 | tee -a "$log"
      ;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
done
