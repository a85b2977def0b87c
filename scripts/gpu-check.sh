#!/usr/bin/env bash
# On a machine with a CUDA GPU, within 8 minutes: the tests marked `cuda`, then
# `csfl gpu-check` (the demo's first stage, one wholebody143 training step and its
# prediction, each timed with its peak GPU memory). Figures go to ${1:-gpu-check.json},
# the tests' log beside it. Its python3 must hold a CUDA torch; the rest may come as wheels
# in .whl/ (scripts/gpu-wheels.sh, run where pip can download), installed to /tmp/site.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-check.json}
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0
timeout 180 python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py \
    >"${out%.json}-tests.log" 2>&1 || status=$?
tail -3 "${out%.json}-tests.log"
timeout 300 python3 -c "from csfl import app; app()" gpu-check --out "$out" || status=$?
exit "$status"
