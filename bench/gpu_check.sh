#!/usr/bin/env bash
# One prepared command for a fresh GPU machine (budget: 8 minutes):
#   1. a Python with CUDA torch: the one on PATH if it has CUDA, else a venv built offline from the
#      wheels carried along in $WHEELS (default shared/wheels: torch for CUDA, transformers,
#      hivemind and the rest of pyproject's dependencies, pytest);
#   2. the CUDA tests (`pytest -m cuda`: v1, v2 and v3 CPU/CUDA bit equality, in-forward estimate);
#   3. bench/gpu_check.py: CPU vs CUDA weight hashes after the same rounds (v1 and v2, float32 and
#      bfloat16) and GPU timings (a step, an apply of n = 1..4096, contributions/s with population
#      batching), all into one JSON: $OUT/gpu_check.json (default bench/results).
# Usage: bash bench/gpu_check.sh        Exit status: 0 if the tests passed and every hash agreed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/results}"
WHEELS="${WHEELS:-shared/wheels}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
start=$(date +%s)

if ! "$PY" -c "import torch, transformers, hivemind, pytest; assert torch.cuda.is_available()" 2>/dev/null; then
    if ! ls "$WHEELS"/torch-*.whl >/dev/null 2>&1; then
        echo "gpu_check: no Python with CUDA torch and no torch wheel in $WHEELS" >&2
        exit 2
    fi
    "$PY" -m venv /tmp/onebyte-gpu-venv && PY=/tmp/onebyte-gpu-venv/bin/python
    "$PY" -m pip install -q --no-index --find-links "$WHEELS" "$WHEELS"/*.whl || { echo "gpu_check: installing the wheels failed" >&2; exit 2; }
fi
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"

timeout 240 "$PY" -m pytest -q -m cuda -p no:cacheprovider tests/unit/test_cuda.py tests/unit/test_lowrank_cuda.py tests/unit/test_optim.py 2>&1 | tee "$OUT/gpu_pytest.txt"
tests=${PIPESTATUS[0]}

timeout $(( 460 - ($(date +%s) - start) )) "$PY" bench/gpu_check.py --out "$OUT/gpu_check.json" --pytest "$OUT/gpu_pytest.txt"
bench=$?
echo "gpu_check: tests exit $tests, bench exit $bench, $(( $(date +%s) - start )) s"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ] && "$PY" -c "import json,sys; sys.exit(0 if json.load(open('$OUT/gpu_check.json'))['all_hashes_equal'] else 1)"
