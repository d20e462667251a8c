#!/usr/bin/env bash
# Compile-only check of the CUDA sources of vxlp_ops (no GPU needed; works with a CPU build of torch).
#
# Usage: bash scripts/check_cuda_compile.sh [python]      (default python: python3)
#
# Every csrc/cuda/*.cu is compiled with nvcc for sm_80 and sm_90a (the archs setup.py builds by default),
# against the torch headers of the given python, with the flags torch's CUDAExtension adds (setup.py's nvcc flags
# plus torch's COMMON_NVCC_FLAGS). Prints one line per file × arch: time, and ptxas registers / spills / shared
# memory per kernel (max over the kernels of the file). Every csrc/cuda/*.cpp is syntax-checked with the host
# compiler. Exits non-zero on any failure. Env: NVCC (default: nvcc on PATH, else /usr/local/cuda/bin/nvcc),
# CXX (default c++), VXLP_CHECK_ARCHS (default "80 90a"), VXLP_CHECK_JOBS (parallel nvcc runs, default nproc),
# VXLP_CHECK_VERBOSE=1 prints every ptxas line. Times are wall-clock per compilation (parallel runs share cores).
set -uo pipefail

PY="${1:-python3}"
cd "$(dirname "$0")/.."

NVCC="${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
CXX="${CXX:-c++}"
ARCHS="${VXLP_CHECK_ARCHS:-80 90a}"
if [ ! -x "$NVCC" ] && ! command -v "$NVCC" >/dev/null 2>&1; then
  echo "check_cuda_compile: nvcc not found (set NVCC=...)" >&2
  exit 2
fi

INFO="$("$PY" - <<'EOF'
import importlib.util, os
import torch
import torch.utils.cpp_extension as c
print(" ".join("-I" + p for p in c.include_paths()))
print(int(torch._C._GLIBCXX_USE_CXX11_ABI))
spec = importlib.util.find_spec("cutlass_library")
inc = os.path.join(os.path.dirname(spec.origin), "source", "include") if spec and spec.origin else ""
print("-I" + inc if inc and os.path.isdir(inc) else "")
print(" ".join(getattr(c, "COMMON_NVCC_FLAGS", [])))
EOF
)" || { echo "check_cuda_compile: cannot query torch with $PY" >&2; exit 2; }
TORCH_INC="$(sed -n 1p <<<"$INFO")"
ABI="$(sed -n 2p <<<"$INFO")"
CUTLASS_INC="$(sed -n 3p <<<"$INFO")"
COMMON_NVCC="$(sed -n 4p <<<"$INFO")"

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
# CPU builds of torch lack this generated header; its only content in CUDA builds is this macro.
mkdir -p "$TMP/shim/c10/cuda/impl"
echo "#define C10_CUDA_BUILD_SHARED_LIBS" >"$TMP/shim/c10/cuda/impl/cuda_cmake_macros.h"

DEFS="-DVXLP_WITH_CUDA -DNDEBUG -D_GLIBCXX_USE_CXX11_ABI=$ABI -DTORCH_API_INCLUDE_EXTENSION_H -DTORCH_EXTENSION_NAME=_C"
# torch's own generated header wins when it exists (CUDA builds of torch); the shim only fills the gap
INCS="$TORCH_INC -I$TMP/shim -Icsrc $CUTLASS_INC"
NVCC_FLAGS="-O3 -std=c++17 --expt-relaxed-constexpr -lineinfo $COMMON_NVCC -Xcompiler -fPIC -Xptxas -v"

status=0
shopt -s nullglob
cu_files=(csrc/cuda/*.cu)
cpp_files=(csrc/cuda/*.cpp)
if [ ${#cu_files[@]} -eq 0 ]; then
  echo "check_cuda_compile: no csrc/cuda/*.cu files" >&2
  exit 1
fi

summarize() {  # ptxas log on stdin -> "regs<=R spill_st=S spill_ld=L smem<=M kernels=K"
  awk '
    /Compiling entry function/ { k++ }
    /Used [0-9]+ registers/ { for (i = 1; i <= NF; i++) if ($(i+1) ~ /^registers/) { if ($i + 0 > r) r = $i + 0 }
                              for (i = 1; i <= NF; i++) if ($(i+1) == "bytes" && $(i+2) ~ /^smem/) { if ($i + 0 > m) m = $i + 0 } }
    /bytes spill stores/ { for (i = 1; i <= NF; i++) if ($(i+1) == "bytes" && $(i+2) == "spill" && $(i+3) ~ /^stores/) { ss += $i }
                           for (i = 1; i <= NF; i++) if ($(i+1) == "bytes" && $(i+2) == "spill" && $(i+3) ~ /^loads/) { sl += $i } }
    END { printf "kernels=%d max_regs=%d spill_stores=%dB spill_loads=%dB max_static_smem=%dB", k, r, ss, sl, m }'
}

compile_one() {  # file arch -> writes $TMP/<file>.<arch>.{log,rc,secs}
  local f="$1" arch="$2" base
  base="$TMP/$(basename "$f").$arch"
  local t0 t1
  t0=$(date +%s.%N)
  # shellcheck disable=SC2086
  "$NVCC" -c "$f" -o "$base.o" $NVCC_FLAGS -gencode=arch=compute_${arch},code=sm_${arch} $DEFS $INCS >"$base.log" 2>&1
  echo $? >"$base.rc"
  t1=$(date +%s.%N)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }' >"$base.secs"
}

# run up to JOBS compilations at once (each nvcc needs ~1-1.5 GB of RAM)
JOBS="${VXLP_CHECK_JOBS:-$(nproc 2>/dev/null || echo 2)}"
running=0
for f in "${cu_files[@]}"; do
  for arch in $ARCHS; do
    compile_one "$f" "$arch" &
    running=$((running + 1))
    if [ "$running" -ge "$JOBS" ]; then
      wait -n 2>/dev/null || wait
      running=$((running - 1))
    fi
  done
done
wait

for f in "${cu_files[@]}"; do
  for arch in $ARCHS; do
    base="$TMP/$(basename "$f").$arch"
    rc=$(cat "$base.rc" 2>/dev/null || echo 1)
    secs=$(cat "$base.secs" 2>/dev/null || echo "?")
    if [ "$rc" -ne 0 ]; then
      echo "FAIL  $f  sm_$arch  ${secs}s"
      grep -E -A3 "error|fatal" "$base.log" | head -40
      status=1
    else
      echo "ok    $f  sm_$arch  ${secs}s  $(summarize <"$base.log")"
      if [ "${VXLP_CHECK_VERBOSE:-0}" = "1" ]; then grep -E "Compiling entry|Used|spill" "$base.log" | sed 's/^/      /'; fi
      # warnings from our sources (torch's own headers warn under nvcc -std=c++17; those are not ours)
      grep -E "^csrc/.*warning" "$base.log" | sort -u | head -10 | sed 's/^/      warning: /' || true
    fi
  done
done

for f in "${cpp_files[@]}"; do
  t0=$(date +%s.%N)
  # shellcheck disable=SC2086
  "$CXX" -fsyntax-only -std=c++17 -O0 $DEFS $INCS "$f" >"$TMP/cpp.log" 2>&1
  rc=$?
  secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  if [ $rc -ne 0 ]; then
    echo "FAIL  $f  host  ${secs}s"
    head -40 "$TMP/cpp.log"
    status=1
  else
    echo "ok    $f  host  ${secs}s"
  fi
done

exit $status
