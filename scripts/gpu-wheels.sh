#!/usr/bin/env bash
# Here, before a GPU check: the wheels a GPU machine's Python 3.12 lacks (its image holds
# CUDA torch, numpy, scipy, scikit-image, safetensors, typer, pytest; not these), into
# .whl/ (git-ignored), for scripts/gpu-check.sh to install there. Each without its own
# dependencies: the list names what the project imports on the way.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
    manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platforms[@]}" -d .whl \
    monai nibabel opacus pydicom highdicom "flwr==1.42.*" iterators pycryptodome tomli-w \
    pyjpegls pylibjpeg pylibjpeg-openjpeg
du -sh .whl
