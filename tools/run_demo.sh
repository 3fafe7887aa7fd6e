#!/usr/bin/env bash
# The main job: set up everything that is missing, train the demo Mask R-CNN from scratch on the
# built-in synthetic dataset (CPU), evaluate COCO box and mask AP on its val split and print them.
# Extra arguments go to train_net.py as config overrides, e.g. `bash tools/run_demo.sh SOLVER.MAX_ITER 100`.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
bash tools/bootstrap.sh
VPY="${D2MX_VENV:-$REPO/.venv}/bin/python"
exec "$VPY" tools/demo.py "$@"
