#!/usr/bin/env bash
# The test command: set up everything that is missing, lint, then run the whole test suite.
# Extra arguments go to pytest, e.g. `bash tools/run_tests.sh -k roi_align`.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
bash tools/bootstrap.sh
BIN="${D2MX_VENV:-$REPO/.venv}/bin"
"$BIN/ruff" check .
exec "$BIN/python" -m pytest "$@"
