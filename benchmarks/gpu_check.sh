#!/usr/bin/env bash
# GPU check: installs the carried wheels, builds the extension's CUDA kernels, runs tests/test_cuda.py and
# the RoIAlign and end-to-end benchmarks on the GPU, and ends with a summary table of its steps, always
# within a shared deadline. Made for a machine with python3, torch (CUDA), torchvision, numpy, OpenCV,
# pytest, nvcc and ninja but no Detectron2 and no package index; docs/gpu.md tells how to run it.
#
#   bash benchmarks/prepare_gpu_wheels.sh    # once, where the package index is reachable
#   bash benchmarks/gpu_check.sh             # on the GPU machine
#
# Environment (defaults in brackets):
#   OUT / D2MX_GPU_CHECK_OUT   folder for summary.md, the step logs, junit_cuda.xml [$OUT, else output/gpu_check]
#   D2MX_GPU_CHECK_DEADLINE    seconds for all steps together, summary included [540]
#   D2MX_GPU_CHECK_DRY_RUN=1   run only the environment step; list every other step as skipped with its command
#   D2MX_GPU_WHEELS            wheels to install [benchmarks/gpu_wheels]
#   D2MX_PYTHON                the Python with torch [python3]
#   TORCH_CUDA_ARCH_LIST [9.0], MAX_JOBS [nproc], CUDA_HOME [/usr/local/cuda, else from nvcc on PATH]
#
# Exit status: 0 when every required step passed (in a dry run: when no step failed); 1 when a required
# step failed or was skipped (no GPU, deadline reached, an earlier step failed); 2 for a bad setting.
# The benchmarks are not required: a failed one shows in the table but does not change the exit status.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_DIR="${OUT:-${D2MX_GPU_CHECK_OUT:-$REPO/output/gpu_check}}"
DEADLINE="${D2MX_GPU_CHECK_DEADLINE:-540}"
DRY_RUN="${D2MX_GPU_CHECK_DRY_RUN:-0}"
WHEELS="${D2MX_GPU_WHEELS:-$REPO/benchmarks/gpu_wheels}"
PY="${D2MX_PYTHON:-python3}"
SITE="${TMPDIR:-/tmp}/d2mx_gpu_site"
SUMMARY_RESERVE=10  # seconds kept back for a killed step's grace period and the summary
MIN_STEP=5         # a step with less time left than this is skipped

if ! [[ "$DEADLINE" =~ ^[0-9]+$ ]]; then
  echo "gpu_check: D2MX_GPU_CHECK_DEADLINE must be whole seconds, got '$DEADLINE'" >&2
  exit 2
fi
mkdir -p "$OUT_DIR"
cd "$REPO" || exit 2
export PYTHONUNBUFFERED=1 PYTHONPATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}"
if [ -z "${CUDA_HOME:-}" ]; then  # an `nvcc` on PATH may be a wrapper script outside the toolkit
  CUDA_HOME=/usr/local/cuda
  if [ ! -x "$CUDA_HOME/bin/nvcc" ] && NVCC="$(command -v nvcc)"; then
    CUDA_HOME="$(dirname "$(dirname "$(readlink -f "$NVCC")")")"
  fi
fi
export CUDA_HOME

declare -a ROWS=()
FAILED_REQUIRED=0
BLOCKED=""  # the failed step that the later steps depend on
STATUS=""
HAVE_GPU=0

log() { printf '\n[gpu_check %3ds] %s\n' "$SECONDS" "$*" >&2; }
record() {  # record NAME REQUIRED STATUS SECONDS NOTE
  ROWS+=("| $1 | $([ "$2" = 1 ] && echo yes || echo no) | $3 | $4 | $5 |")
  if [ "$2" = 1 ] && [ "$3" != ok ]; then
    case "$5" in "dry run"*) ;; *) FAILED_REQUIRED=1 ;; esac
  fi
}

# step NAME REQUIRED WHEN BUDGET LOGFILE COMMAND...: runs COMMAND under `timeout`, given at most BUDGET
# seconds and never past the deadline; output to the terminal and OUT_DIR/LOGFILE; STATUS is set to its
# status. WHEN is "always" (dry runs too), "install" (not in a dry run) or "gpu" (also needs a GPU).
step() {
  local name="$1" required="$2" when="$3" budget="$4" logfile="$OUT_DIR/$5"
  shift 5
  STATUS=skipped
  local left=$((DEADLINE - SUMMARY_RESERVE - SECONDS))
  local limit=$((budget < left ? budget : left))
  if [ -n "$BLOCKED" ]; then
    record "$name" "$required" skipped 0 "after failed step: $BLOCKED"
  elif [ "$limit" -lt "$MIN_STEP" ]; then
    record "$name" "$required" skipped 0 "deadline: ${left}s left of ${DEADLINE}s"
  elif [ "$DRY_RUN" = 1 ] && [ "$when" != always ]; then
    record "$name" "$required" skipped 0 "dry run; would run: ${SHOWN[$1]:-$*}"
  elif [ "$when" = gpu ] && [ "$HAVE_GPU" != 1 ]; then
    record "$name" "$required" skipped 0 "no CUDA GPU visible to torch"
  else
    log "$name (at most ${limit}s)"
    local start=$SECONDS status
    timeout --kill-after=5 "$limit" bash -c '"$@"' "$name" "$@" 2>&1 | tee "$logfile"
    status=${PIPESTATUS[0]}
    local took=$((SECONDS - start))
    if [ "$status" -eq 0 ]; then
      STATUS=ok
      record "$name" "$required" ok "$took" "$(basename "$logfile")"
    else
      STATUS=failed
      local why="exit $status"
      if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then why="timed out after ${limit}s"; fi
      record "$name" "$required" failed "$took" "$why; see $(basename "$logfile")"
    fi
  fi
}

environment() {
  "$PY" - <<'PY'
import platform, torch
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
print(f"cuda_available={int(torch.cuda.is_available())}")
if torch.cuda.is_available():
    print(f"device: {torch.cuda.get_device_name(0)}, capability {torch.cuda.get_device_capability(0)}")
PY
  "$CUDA_HOME/bin/nvcc" --version 2>/dev/null | tail -1
  echo "CUDA_HOME=$CUDA_HOME"
  git -C "$REPO" rev-parse --short HEAD 2>/dev/null | sed 's/^/commit /'
}

install_wheels() {
  rm -rf "$SITE"
  if compgen -G "$WHEELS/*.whl" >/dev/null; then
    "$PY" -m pip install --no-index --no-deps --no-compile --disable-pip-version-check -q \
      --find-links "$WHEELS" --target "$SITE" "$WHEELS"/*.whl && ls "$SITE"
  elif "$PY" -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in ('detectron2', 'fvcore', 'pycocotools')))"; then
    echo "no wheels in $WHEELS; detectron2, fvcore and pycocotools are already importable"
  else
    echo "no wheels in $WHEELS and no detectron2: run 'bash benchmarks/prepare_gpu_wheels.sh' where pip reaches the index"
    return 1
  fi
}

build_extension() {
  env FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
    "$PY" setup.py -q build_ext --inplace || return
  "$PY" -c "
from d2_maskext.layers._ext import ROI_ALIGN_DEVICE_TYPES
assert 'cuda' in ROI_ALIGN_DEVICE_TYPES, f'the build has no CUDA kernels, only {sorted(ROI_ALIGN_DEVICE_TYPES)}'
print('d2_maskext::roi_align kernels:', sorted(ROI_ALIGN_DEVICE_TYPES))"
}

export -f environment install_wheels build_extension
export PY WHEELS SITE REPO CUDA_HOME
# What a dry run shows for the steps that are shell functions.
declare -A SHOWN=(
  [install_wheels]="$PY -m pip install --no-index --no-deps --target $SITE $WHEELS/*.whl"
  [build_extension]="FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-$(nproc)} $PY setup.py build_ext --inplace, then a check for CUDA kernels"
)

# Markdown tables of a log, each with the line above it (its title).
tables() { awk '/^\|/ { if (!in_table) print prev; print; in_table = 1; next } { in_table = 0; prev = $0 }' "$1"; }

# Budgets sum to more than the deadline: a quick step leaves its time to the later ones.
step "environment" 1 always 60 environment.log environment
[ "$STATUS" = failed ] && BLOCKED="environment"
grep -q '^cuda_available=1' "$OUT_DIR/environment.log" 2>/dev/null && HAVE_GPU=1
step "install wheels" 1 install 90 install.log install_wheels
[ "$STATUS" = failed ] && BLOCKED="install wheels"
step "build CUDA extension" 1 gpu 330 build.log build_extension
[ "$STATUS" = failed ] && BLOCKED="build CUDA extension"
# Failed tests do not stop the benchmarks.
step "tests/test_cuda.py" 1 gpu 240 test_cuda.log \
  "$PY" -m pytest tests/test_cuda.py -q -p no:cacheprovider --junitxml="$OUT_DIR/junit_cuda.xml"
step "bench_roi_align.py (cuda)" 0 gpu 120 bench_roi_align.log \
  "$PY" benchmarks/bench_roi_align.py --device cuda --skip-training --min-time 0.5
step "bench_e2e.py (cuda, quick)" 0 gpu 150 bench_e2e.log \
  "$PY" benchmarks/bench_e2e.py --device cuda --quick

{
  echo "# gpu_check summary"
  echo
  echo "Deadline ${DEADLINE}s, ${SECONDS}s used; dry run: $([ "$DRY_RUN" = 1 ] && echo yes || echo no)."
  [ -s "$OUT_DIR/environment.log" ] && sed 's/^/    /' "$OUT_DIR/environment.log"
  echo
  echo "| step | required | status | seconds | note |"
  echo "| --- | --- | --- | --- | --- |"
  printf '%s\n' "${ROWS[@]}"
  if [ -s "$OUT_DIR/junit_cuda.xml" ]; then
    echo
    grep -o '<testsuite [^>]*>' "$OUT_DIR/junit_cuda.xml" | grep -oE '(tests|failures|errors|skipped)="[0-9]+"' \
      | tr '\n' ' ' | sed 's/^/tests\/test_cuda.py: /'
    echo
  fi
  for name in bench_roi_align bench_e2e; do
    [ -s "$OUT_DIR/$name.log" ] || continue
    printf '\n## %s\n\n' "$name"
    tables "$OUT_DIR/$name.log"
  done
  echo
  echo "exit status: $FAILED_REQUIRED"
} > "$OUT_DIR/summary.md"
cat "$OUT_DIR/summary.md"
exit "$FAILED_REQUIRED"
