#!/usr/bin/env bash
# The main job: set up, write the tiny scenario's synthetic hospitals, and check a site's
# data as a hospital would before joining. Usage: bash scripts/demo.sh [OUT_DIR] (default demo/)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out=${1:-demo}
.venv/bin/csfl phantoms --scenario tiny --out "$out/sites"
.venv/bin/csfl site check "$out/sites/hospA" --json "$out/site-check.json"
