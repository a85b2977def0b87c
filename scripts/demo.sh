#!/usr/bin/env bash
# The main job: set up, write a small synthetic site dataset, and check it as a hospital would.
# Usage: bash scripts/demo.sh [OUT_DIR]   (default: demo/)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out=${1:-demo}
.venv/bin/csfl phantoms --out "$out/data" --cases 4 --size 48 --seed 0
.venv/bin/csfl site check "$out/data" --json "$out/site-check.json"
