#!/usr/bin/env bash
# One call on a lent H200 (or any GPU machine): the GPU checks of a kernel change, in order,
# each with its own time limit so a hang costs minutes, not the session. Logs go to $OUT (or
# ./h200_out). Stages (default: all but bench):
#   sass     register/spill report and the instructions of the Hopper kernel (HGMMA, UTMALDG)
#   quick    the quick C++ GPU cases on the Hopper kernel (stops everything if they fail)
#   ctest    the C++ GPU suites (decode + robustness) on each kernel: sm90 (the narrow Hopper
#            kernel where it applies, else the wide one), sm90-wide (FLASHMLA_SM90_NARROW=0: the
#            wide kernel everywhere), portable
#   sanitize compute-sanitizer memcheck/racecheck on the quick cases and memcheck on the
#            robustness cases, for the kernels in $SANITIZE_KERNELS (default: sm90 portable)
#   pytest   installs flash_mla (a wheel carried in .whl/ if there, else built for sm_90a here)
#            and runs $PYTEST_FILES (default tests/python)
# Kernels of the ctest stage: $CTEST_KERNELS (default: sm90 sm90-wide portable).
#   host     host time of one call: the C++ API alone (bench_host_overhead) and one eager Python
#            call against x.add_(1) (scripts/measure_overhead.py; needs the pytest stage's install)
#   bench    the benchmark (extra arguments after --, e.g. -- --grid upstream --quick)
#   ncu      Nsight Compute on one decode launch of each config in $NCU_CONFIGS (default
#            128:1:128:8192 128:1:16:8192): speed of light, warp stalls, tensor-pipe activity
#            (needs the pytest stage's install)
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
robust_tests=build/release/tests/cpp/flashmla_gpu_robustness_tests
sm90_objs=(build/release/CMakeFiles/flashmla_sm90.dir/src/kernels/sm90/*.cu.o)
log="$out/summary.txt"
note() { echo "== $*" | tee -a "$log"; }
# The environment that selects kernel $1 (sm90, sm90-wide or portable).
kernel_env() {
  case $1 in
    sm90-wide) echo "FLASHMLA_KERNEL=sm90 FLASHMLA_SM90_NARROW=0" ;;
    *) echo "FLASHMLA_KERNEL=$1" ;;
  esac
}

for stage in "${stages[@]}"; do
  case $stage in
    sass)
      note "sass: $(nvidia-smi --query-gpu=name,clocks.sm,power.draw --format=csv,noheader)"
      for obj in "${sm90_objs[@]}"; do
        cuobjdump -res-usage "$obj" 2>&1 | grep -E "Function|REG" | tee -a "$log"
      done
      for obj in "${sm90_objs[@]}"; do cuobjdump -sass "$obj"; done | grep -oE "\b(HGMMA|UTMALDG|USETMAXREG|LDL|STL)[.A-Z0-9_x]*" | sort | uniq -c | tee -a "$log"
      ;;
    quick)
      note "quick (sm90)"
      FLASHMLA_KERNEL=sm90 timeout 90 "$gpu_tests" --gtest_filter='GpuQuick.*:GpuDispatch.*' 2>&1 | tail -40 | tee -a "$log"
      [ "${PIPESTATUS[0]}" -eq 0 ] || { note "quick FAILED: stopping"; exit 1; }
      ;;
    ctest)
      for k in ${CTEST_KERNELS:-sm90 sm90-wide portable}; do
        note "C++ GPU suites, $(kernel_env "$k")"
        # shellcheck disable=SC2046  # kernel_env is a list of assignments
        { env $(kernel_env "$k") timeout 400 "$gpu_tests"; echo "rc=$?"; \
          env $(kernel_env "$k") timeout 100 "$robust_tests"; echo "rc=$?"; } > "$out/gtest_$k.txt" 2>&1
        grep -E "^rc=|^\[  (PASSED|FAILED|SKIPPED) " "$out/gtest_$k.txt" | head -30 | tee -a "$log"
      done
      ;;
    sanitize)
      for k in ${SANITIZE_KERNELS:-sm90 sm90-wide portable}; do
        for tool in memcheck racecheck; do
          note "compute-sanitizer $tool GpuQuick, $(kernel_env "$k")"
          # shellcheck disable=SC2046
          env $(kernel_env "$k") timeout 150 compute-sanitizer --tool "$tool" --error-exitcode 3 \
            "$gpu_tests" --gtest_filter='GpuQuick.*' > "$out/${tool}_$k.txt" 2>&1
          tail -4 "$out/${tool}_$k.txt" | tee -a "$log"
        done
        note "compute-sanitizer memcheck GpuRobustness, $(kernel_env "$k")"
        # shellcheck disable=SC2046
        env $(kernel_env "$k") timeout 150 compute-sanitizer --tool memcheck --error-exitcode 3 \
          "$robust_tests" 2>&1 | tail -4 | tee -a "$log"
      done
      ;;
    pytest)
      if ls .whl/flash_mla-*.whl > /dev/null 2>&1; then
        note "pip install the carried wheel"
        python3 -m pip install -q --no-deps --force-reinstall .whl/flash_mla-*.whl > "$out/pip.txt" 2>&1
      else
        note "pip install (sm_90a)"
        python3 -m pip install --no-build-isolation -q . -Ccmake.define.CMAKE_CUDA_ARCHITECTURES=90a-real \
          > "$out/pip.txt" 2>&1
      fi || { tail -30 "$out/pip.txt" | tee -a "$log"; exit 1; }
      note "pytest tests/python (GPU)"
      # shellcheck disable=SC2086  # PYTEST_FILES is a list
      timeout "${PYTEST_TIMEOUT:-420}" python3 -m pytest ${PYTEST_FILES:-tests/python} -q -x -rs 2>&1 | tail -40 | tee -a "$log"
      ;;
    host)
      note "host time per call"
      { timeout 120 build/release/bench_host_overhead; timeout 180 python3 scripts/measure_overhead.py; } 2>&1 \
        | tee -a "$log"
      ;;
    bench)
      note "bench ${bench_args[*]}"
      timeout "${BENCH_TIMEOUT:-540}" python3 bench/bench_decode.py --json "$out/bench.json" "${bench_args[@]}" 2>&1 \
        | grep -vE "it/s|case/s" | tail -100 | tee -a "$log"
      ;;
    ncu)
      for cfg in ${NCU_CONFIGS:-128:1:128:8192 128:1:16:8192}; do
        note "ncu $cfg"
        name=$(echo "$cfg" | tr ':' '_')
        timeout 300 ncu -k regex:mla_decode --launch-skip 2 --launch-count 1 \
          --section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
          --section WarpStateStats --section SchedulerStats --section Occupancy \
          --metrics sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active \
          python3 bench/profile_case.py "$cfg" > "$out/ncu_$name.txt" 2>&1
        grep -E "Duration|SM Frequency|Memory Throughput|DRAM Throughput|Compute \(SM\)|hmma|Issue Slots Busy|No Eligible|Stall" \
          "$out/ncu_$name.txt" | head -30 | tee -a "$log"
      done
      ;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
done
