#!/usr/bin/env bash
# GPU check: builds the extension with its CUDA kernels, runs the CUDA tests, then the RoIAlign and
# end-to-end benchmarks on the GPU, and prints their tables. Sized for one H200 with 16 CPU cores:
# about 6 minutes in all (budget per step below), inside an 8-minute limit.
#
#   bash benchmarks/gpu_check.sh            # logs and tables also go to $D2MX_GPU_CHECK_LOGS (default /tmp/d2mx_gpu_check)
#
# Uses <repo>/.venv when it exists, else creates it with tools/bootstrap.sh (that needs the package index).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOGS="${D2MX_GPU_CHECK_LOGS:-/tmp/d2mx_gpu_check}"
mkdir -p "$LOGS"
cd "$REPO"

log() { printf '\n[gpu_check] %s\n' "$*" >&2; }
declare -a SUMMARY=()
FAILED=0
# step NAME LOGFILE COMMAND...: runs COMMAND, output to the terminal and LOGFILE, and records its wall time
# and status; a failed step does not stop the later ones, but the script then exits with 1.
step() {
  local name="$1" logfile="$LOGS/$2" status=0
  shift 2
  log "$name"
  local start=$SECONDS
  "$@" 2>&1 | tee "$logfile" || status=$?
  [ "$status" -eq 0 ] || FAILED=1
  SUMMARY+=("$(printf '%-30s %4d s  exit %d' "$name" $((SECONDS - start)) "$status")")
}
# Markdown tables of a log, each with the line above it (its title).
tables() { awk '/^\|/ { if (!in_table) print prev; print; in_table = 1; next } { in_table = 0; prev = $0 }' "$1"; }

if [ ! -x "$REPO/.venv/bin/python" ]; then
  log "no .venv: creating it with tools/bootstrap.sh"
  FORCE_CUDA=1 bash "$REPO/tools/bootstrap.sh"
fi
PY="$REPO/.venv/bin/python"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible to torch')"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}" PYTHONUNBUFFERED=1

# 1. Build (~2 min): with the GPU visible, torch compiles for that GPU's architecture only.
step "build the CUDA extension" build.log \
  env FORCE_CUDA=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" "$PY" -m pip install --no-build-isolation --no-deps -q -e .
"$PY" -c "
from d2_maskext.layers._ext import ROI_ALIGN_DEVICE_TYPES
assert 'cuda' in ROI_ALIGN_DEVICE_TYPES, 'the build has no CUDA kernels: see $LOGS/build.log'
"

# 2. CUDA tests (~1 min, most of it the demo training steps and generating the tiny dataset).
step "tests/test_cuda.py" test_cuda.log "$PY" -m pytest tests/test_cuda.py -q -p no:cacheprovider

# 3. RoIAlign op and poolers, torchvision/Detectron2 vs ours (~1 min).
step "bench_roi_align.py (cuda)" bench_roi_align.log \
  "$PY" benchmarks/bench_roi_align.py --device cuda --skip-training --min-time 0.5

# 4. End-to-end Mask R-CNN, stock vs plugin configurations (~2 min).
if [ -f benchmarks/bench_e2e.py ]; then
  step "bench_e2e.py (cuda, quick)" bench_e2e.log "$PY" benchmarks/bench_e2e.py --device cuda --quick
fi

log "summary ($(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'))"
printf '%s\n' "${SUMMARY[@]}"
grep -E '(passed|failed|error)' "$LOGS/test_cuda.log" | tail -1 || true
for name in bench_roi_align bench_e2e; do
  [ -f "$LOGS/$name.log" ] || continue
  printf '\n== %s ==\n' "$name"
  tables "$LOGS/$name.log"
done
exit "$FAILED"
