#!/usr/bin/env bash
# The main job: set up, then simulate the default scenario's six hospitals joining in four
# stages through Flower's Simulation Engine, list the catalog, and segment one held-out CT
# with the unified model. Usage: bash scripts/demo.sh [OUT_DIR] (default demo/)
set -euo pipefail
cd "$(dirname "$0")/.."
unset PYTHONDONTWRITEBYTECODE  # every process caches the bytecode of what it imports
bash scripts/setup.sh
out=${1:-demo}
.venv/bin/csfl simulate --scenario default --out "$out"
.venv/bin/csfl catalog ls "$out/catalog"
ct=$(ls "$out"/sites/test/Dataset001_wholebody/imagesTr/*_0000.nii.gz | head -n 1)
.venv/bin/csfl predict "$out/catalog/bundle" "$ct" -o "$out/prediction/wholebody_test.nii.gz"
