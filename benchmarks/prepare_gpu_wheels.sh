#!/usr/bin/env bash
# Fills benchmarks/gpu_wheels/ with the pure-Python packages (and pycocotools) that benchmarks/gpu_check.sh
# installs on a GPU machine that has torch, torchvision, numpy, OpenCV, pytest and hypothesis but no
# Detectron2 and no package index. Run it once here, where the package index is reachable:
#
#   bash benchmarks/prepare_gpu_wheels.sh          # the folder is git-ignored; its size is printed at the end
#
# The wheels target CPython 3.12 on x86-64 Linux (D2MX_WHEELS_PYTHON to change). Versions are the ones
# the CPU virtualenv (.venv) is tested with. Detectron2 comes from the sal-detectron2 0.7.2 wheel, which is
# tagged cp310 and carries a compiled detectron2/_C for that Python only: the plugin never uses it, so it
# is repacked as a py3-none-any wheel of the detectron2 package alone (no _C, no top-level `tools`). fvcore, iopath and antlr4 publish source archives only;
# they are pure Python, so the wheels built from them here install anywhere.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${D2MX_GPU_WHEELS:-$REPO/benchmarks/gpu_wheels}"
PYVER="${D2MX_WHEELS_PYTHON:-3.12}"
PY="${PYTHON:-$REPO/.venv/bin/python}"
[ -x "$PY" ] || PY=python3

BINARY=(yacs==0.1.8 omegaconf==2.3.1 termcolor==3.3.0 pycocotools==2.0.11)
SOURCE_ONLY=(fvcore==0.1.5.post20221221 iopath==0.1.10 antlr4-python3-runtime==4.9.3)
DETECTRON2=sal-detectron2==0.7.2

log() { printf '[prepare_gpu_wheels] %s\n' "$*" >&2; }
PIP=("$PY" -m pip --disable-pip-version-check -q)
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
rm -rf "$DEST"
mkdir -p "$DEST"

log "downloading ${BINARY[*]} for CPython $PYVER"
"${PIP[@]}" download --no-deps --only-binary=:all: --implementation cp --python-version "$PYVER" \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  -d "$DEST" "${BINARY[@]}"

log "building pure-Python wheels of ${SOURCE_ONLY[*]}"
"${PIP[@]}" wheel --no-deps --no-build-isolation -w "$DEST" "${SOURCE_ONLY[@]}"

log "repacking $DETECTRON2 without its compiled detectron2/_C and its tools/"
"${PIP[@]}" download --no-deps --only-binary=:all: --python-version 3.10 -d "$WORK" "$DETECTRON2"
"$PY" -m wheel unpack -d "$WORK/unpacked" "$WORK"/sal_detectron2-*.whl
UNPACKED="$(echo "$WORK"/unpacked/sal_detectron2-*)"
find "$UNPACKED/detectron2" -name '_C*.so' -delete
rm -rf "$UNPACKED/tools"  # Detectron2's scripts as a top-level `tools` package, which would shadow ours
sed -i 's/^Tag: .*/Tag: py3-none-any/' "$UNPACKED"/*.dist-info/WHEEL
"$PY" -m wheel pack -d "$DEST" "$UNPACKED" >/dev/null

for wheel in "$DEST"/*.whl; do
  case "$(basename "$wheel")" in
    *-none-any.whl | *-cp"${PYVER/./}"-*.whl) ;;
    *) log "unexpected wheel for another Python: $wheel"; exit 1 ;;
  esac
done
log "$(find "$DEST" -name '*.whl' | wc -l) wheels, $(du -sh "$DEST" | cut -f1) in $DEST"
