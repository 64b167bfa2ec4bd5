#!/usr/bin/env bash
# The project's test command (see README): run it from the repository root as
#     bash scripts/test.sh
#  1. C++: configure + build the library and its GoogleTest suite (CMake preset "release",
#     all default GPU architectures), then run it with ctest. GPU tests skip without a GPU.
#  2. Python: if torch is importable by the active Python, install the flash_mla package into
#     it (pip install --no-build-isolation .) and run pytest tests/python; otherwise say that
#     the Python suite was skipped.
# Exits non-zero on the first failure.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
jobs=$(nproc 2>/dev/null || echo 2)

if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi

echo "== [1/2] C++ library and tests (cmake --preset release)"
cmake --preset release
cmake --build --preset release --parallel "$jobs"
ctest --preset release --parallel "$jobs"

echo "== [2/2] Python package and tests"
py=${PYTHON:-python}
if ! command -v "$py" >/dev/null 2>&1; then
  py=python3
fi
if "$py" -c "import torch" >/dev/null 2>&1; then
  "$py" -m pip install --no-build-isolation .
  "$py" -m pytest tests/python -q
else
  echo "NOTE: torch is not importable by $(command -v "$py" || echo "$py"): the Python suite (tests/python) was SKIPPED."
  echo "      Install torch (and pytest, numpy, scikit-build-core, ninja) into the active Python to run it."
fi
echo "== all tests passed"
