#!/usr/bin/env bash
# One command on a GPU machine: build vxlp_ops in place, print the backend table, run the benchmark suite,
# leave results in $OUT (or benchmarks/results), print a summary table last.
#
#   bash benchmarks/run_gpu.sh [extra pytest args, e.g. -k "not compile"]
#
# Made for the lent device (one call of at most 10 minutes, no network, python3 with torch 2.11+cu130, nvcc 13):
# every step goes on after a failure (a failed build still leaves the eager / compile / SDPA / cuDNN rows), and
# the suite gets a time budget so that it ends inside the call; results are written after every row, so a
# killed run still leaves its rows. Files in $OUT: build.log, info.txt, pytest.log, <gpu-slug>.{json,md,png},
# released_checkpoint_<gpu>.json (a real-width synthetic released checkpoint converted and run in bf16),
# train_step_<gpu>.json (one FSDP2 finetune step of the real-width shallow model in bf16),
# compressors_prefill_<gpu>.json (VST / LP-Comp / QC-Comp / selector prefill at 1K and 4K frames, bf16).
# The pipeline benchmark is a separate step: VXLP_PIPELINE=only bash benchmarks/run_gpu.sh (see that step).
#
# Env: PYTHON (default python3), OUT (results folder; default benchmarks/results), VXLP_GPU_BUDGET_S (whole
# script, default 570 s), VXLP_BUILD_TIMEOUT_S (default 300 s), VXLP_SKIP_BUILD=1, TORCH_CUDA_ARCH_LIST
# (default 9.0a), MAX_JOBS, VXLP_PIPELINE / VXLP_PIPELINE_TIMEOUT_S (the pipeline step), and the suite's own
# VXLP_BENCH_* knobs (benchmarks/_bench.py).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
START=$(date +%s)
BUDGET="${VXLP_GPU_BUDGET_S:-570}"
PY=""
for cand in "${PYTHON:-}" python3 python; do  # the first python that has torch
  if [ -n "$cand" ] && "$cand" -c "import torch" >/dev/null 2>&1; then PY="$cand"; break; fi
done
[ -z "$PY" ] && { echo "run_gpu.sh: no python with torch found (set PYTHON=...)"; PY=python3; }
RESULTS="${OUT:-$ROOT/benchmarks/results}"
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0a}"
export MAX_JOBS="${MAX_JOBS:-$(nproc 2>/dev/null || echo 8)}"
elapsed() { echo $(( $(date +%s) - START )); }

echo "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv 2>&1 | head -3
"$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available() and torch.cuda.get_device_name(0))" 2>&1
command -v nvcc >/dev/null 2>&1 && nvcc --version | tail -2

echo "== build (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST, MAX_JOBS=$MAX_JOBS)"
BUILD_STATUS="skipped"
if [ "${VXLP_SKIP_BUILD:-0}" != "1" ]; then
  b0=$(date +%s)
  timeout "${VXLP_BUILD_TIMEOUT_S:-300}" "$PY" setup.py build_ext --inplace >"$RESULTS/build.log" 2>&1
  rc=$?
  b1=$(date +%s)
  BUILD_STATUS="rc=$rc in $((b1 - b0)) s"
  [ "$rc" = 124 ] && BUILD_STATUS="$BUILD_STATUS (timed out)"
  echo "build: $BUILD_STATUS (log: build.log)"
  if [ "$rc" != 0 ]; then
    echo "-- last lines of build.log:"
    tail -25 "$RESULTS/build.log"
  fi
fi

echo "== python -m vxlp_ops.info"
"$PY" -m vxlp_ops.info 2>&1 | tee "$RESULTS/info.txt"

# ---------------------------------------------------------------------------------------------------------------
# Pipeline benchmark (benchmarks/test_bench_pipeline.py): VideoChat at the real config, 1K … 100K frames, the
# released-style baseline at 4K, vxlp plan checked against the measured peaks. Minutes of GPU time, so it is its own
# device call: VXLP_PIPELINE=only runs this step alone (after the build and the info table) and exits;
# VXLP_PIPELINE=1 runs it here and then the other steps; unset/0 skips it. Its own timeout:
# VXLP_PIPELINE_TIMEOUT_S (default: the script's budget left, less 20 s). Files: pipeline_<gpu>.{json,png},
# pipeline_pytest.log. VXLP_SKIP_BUILD=1 saves the build's minutes (the DTS then runs on the Triton kernels).
if [ "${VXLP_PIPELINE:-0}" != "0" ]; then
  echo "== pipeline benchmark ($(elapsed) s used of $BUDGET)"
  PTIME="${VXLP_PIPELINE_TIMEOUT_S:-$(( BUDGET - 20 - $(elapsed) ))}"
  [ "$PTIME" -lt 60 ] && PTIME=60
  VXLP_BENCH_PIPELINE=1 VXLP_BENCH_OUT="$RESULTS" VXLP_BENCH_DEADLINE=$(( $(date +%s) + PTIME - 30 )) \
    timeout --signal=INT --kill-after=10 "$PTIME" "$PY" -m pytest benchmarks/test_bench_pipeline.py --benchmark-only -q \
    -p no:cacheprovider -rfEs --benchmark-columns=min,rounds 2>&1 | tee "$RESULTS/pipeline_pytest.log" | tail -25
  PIPE_RC=${PIPESTATUS[0]}
  PJSON=$(ls -t "$RESULTS"/pipeline_*.json 2>/dev/null | head -1)
  [ -n "$PJSON" ] && "$PY" -c "import json,sys; d=json.load(open(sys.argv[1])); print(json.dumps(d.get('summary'), indent=1)); print('skipped:', d.get('skipped'))" "$PJSON"
  echo "pipeline: pytest rc=$PIPE_RC; $(elapsed) s in all"
  if [ "$VXLP_PIPELINE" = "only" ]; then ls "$RESULTS"; exit 0; fi
fi
# ---------------------------------------------------------------------------------------------------------------

echo "== released checkpoint at real widths, bf16 (convert + run; benchmarks/released_checkpoint.py)"
timeout "${VXLP_RELEASED_TIMEOUT_S:-120}" "$PY" benchmarks/released_checkpoint.py --device cuda --out "$RESULTS" 2>&1 | tail -30

echo "== one FSDP2 finetune step of the real-width shallow model, bf16 (benchmarks/train_step_gpu.py)"
timeout "${VXLP_TRAIN_STEP_TIMEOUT_S:-120}" "$PY" benchmarks/train_step_gpu.py --device cuda \
  --out "$RESULTS/train_step_$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr ' ' '_' | tr -cd 'A-Za-z0-9_-' || echo cuda).json" 2>&1 | tail -20

echo "== in-LLM compressors: prefill time and visual K/V per frame, real-width shallow LLM, bf16 (benchmarks/compressors_prefill.py)"
timeout "${VXLP_COMPRESSORS_TIMEOUT_S:-90}" "$PY" benchmarks/compressors_prefill.py --device cuda \
  --out "$RESULTS/compressors_prefill_$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr ' ' '_' | tr -cd 'A-Za-z0-9_-' || echo cuda).json" 2>&1 | tail -20

echo "== benchmarks ($(elapsed) s used of $BUDGET)"
# the suite stops starting providers at its deadline (compiles earlier); the hard timeout is a last resort
export VXLP_BENCH_OUT="$RESULTS"
export VXLP_BENCH_DEADLINE=$(( START + BUDGET - 45 ))
HARD=$(( START + BUDGET - 15 - $(date +%s) ))
[ "$HARD" -lt 30 ] && HARD=30
timeout --signal=INT --kill-after=10 "$HARD" "$PY" -m pytest benchmarks --benchmark-only -q -p no:cacheprovider \
  -rfE --benchmark-columns=min,median,max,rounds --benchmark-sort=name "$@" 2>&1 | tee "$RESULTS/pytest.log" \
  | grep -v -E "^(test_|Name \(time|-{20,}|Legend:|  Outliers|  OPS)" 
PYTEST_RC=${PIPESTATUS[0]}

echo "== results ($(elapsed) s)"
JSON=$(ls -t "$RESULTS"/*.json 2>/dev/null | head -1)
if [ -n "$JSON" ]; then
  "$PY" benchmarks/report.py "$JSON" --png "${JSON%.json}.png" --brief
else
  echo "no results file in $RESULTS (see pytest.log)"
fi
echo
echo "summary: build $BUILD_STATUS; pytest rc=$PYTEST_RC; $(elapsed) s in all; files in $RESULTS:"
ls "$RESULTS"
exit 0
