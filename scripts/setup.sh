#!/usr/bin/env bash
# Create the project's virtual environment (.venv) once and keep it in step with pyproject.toml.
# torch is installed first so that no resolver ever picks a multi-GB CUDA build by accident:
# a local CPU wheel where one is at hand, a CUDA build where a GPU driver is present,
# otherwise PyTorch's CPU index. Override the version with CSFL_TORCH=2.x.y. The rest is
# installed by uv (seconds instead of pip's minutes; pip where uv cannot be had), which
# keeps the torch already there because it satisfies the project's range. CSFL_EXTRAS adds
# optional extras (e.g. CSFL_EXTRAS=nnunet for nnU-Net v2, `csfl profile --scale`), with the
# installed torch pinned so that none of them brings another.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${CSFL_VENV:-.venv}

pick_python() {
  for candidate in ${PYTHON:-} python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"
      return
    fi
  done
  echo "setup: Python >= 3.11 is required (set PYTHON=/path/to/python3.11)" >&2
  exit 1
}

# The venv starts without pip (ensurepip costs seconds); uv goes in first, through the base
# interpreter's pip where that can target another environment (pip >= 22.3), else through
# the venv's own pip, bootstrapped; uv then adds pip itself, for whoever uses the venv later.
[ -x "$venv/bin/python" ] || "$(pick_python)" -m venv --without-pip "$venv"
pip=("$venv/bin/python" -m pip --quiet --disable-pip-version-check)
install=("${pip[@]}" install --no-compile)  # only what is imported is compiled, below
uv=("$venv/bin/uv" pip install --quiet --python "$venv/bin/python")
stamp="$venv/.csfl-installed"
extras="test,docs${CSFL_EXTRAS:+,$CSFL_EXTRAS}"
want=$( (cat pyproject.toml scripts/setup.sh; echo "$extras") | sha256sum | cut -c1-16)
[ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && exit 0

if [ ! -x "$venv/bin/uv" ]; then
  base=$("$venv/bin/python" -c 'import sys; print(sys._base_executable)')
  "$base" -m pip --python "$venv/bin/python" --quiet --disable-pip-version-check \
    install --no-compile uv 2>/dev/null ||
    { "$venv/bin/python" -m ensurepip --default-pip >/dev/null && "${install[@]}" uv 2>/dev/null; } ||
    true
fi
if ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
  { [ -x "$venv/bin/uv" ] && "${uv[@]}" pip 2>/dev/null; } ||
    "$venv/bin/python" -m ensurepip --default-pip >/dev/null
fi

if ! "$venv/bin/python" -c 'import torch' 2>/dev/null; then
  torch_version=${CSFL_TORCH:-2.13.0}
  echo "setup: installing torch into $venv ..."
  # the local wheel alone (its dependencies come with the project's below; uv unpacks it in
  # seconds where pip takes 15), else an index
  links=()
  for folder in ${PIP_FIND_LINKS:-}; do links+=(--find-links "$folder"); done
  if [ -x "$venv/bin/uv" ] && [ ${#links[@]} -gt 0 ] &&
    "${uv[@]}" --no-index "${links[@]}" --no-deps "torch==$torch_version" 2>/dev/null; then
    :
  elif ! "${install[@]}" --no-index --no-deps "torch==$torch_version" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1; then
      "${install[@]}" "torch>=2.4,<3"
    else
      "${install[@]}" "torch>=2.4,<3" --index-url https://download.pytorch.org/whl/cpu
    fi
  fi
fi
echo "setup: installing continual-segment-fl and its dependencies into $venv ..."
pins=()
if [ -n "${CSFL_EXTRAS:-}" ]; then
  pins=("torch==$("$venv/bin/python" -c 'import torch; print(torch.__version__)')")
fi
if [ -x "$venv/bin/uv" ]; then
  "${uv[@]}" -e ".[$extras]" "${pins[@]}"
else
  "${install[@]}" -e ".[$extras]" "${pins[@]}"
fi
# Bytecode, once, for what the project's processes import, where PYTHONDONTWRITEBYTECODE is
# set (as on our CI machines): nothing would be cached, and every Flower process (a ClientApp
# per message) would compile torch from source again. Importing compiles only the modules in
# use (about a quarter of site-packages), in two processes, one per core. The project's own
# modules are compiled without being run. Where the variable is unset (scripts/test.sh and
# scripts/demo.sh unset it) the processes cache what they import themselves, and importing
# here would only run the same modules once more.
if [ -n "${PYTHONDONTWRITEBYTECODE:-}" ]; then
  warm() { PYTHONDONTWRITEBYTECODE='' "$venv/bin/python" -c "$1" >/dev/null 2>&1 || true; }
  warm 'import torch._dynamo, monai.transforms, monai.losses, monai.networks.nets, scipy.ndimage, safetensors.torch' &
  warm 'import flwr.cli.app, flwr.simulation, flwr.supernode, ray, nibabel, pydicom, highdicom, skimage, matplotlib.pyplot' &
  "$venv/bin/python" -m compileall -q core server client simulations tests >/dev/null
  wait
fi
echo "$want" > "$stamp"
