#!/usr/bin/env bash
# The test command: set up everything that is missing, lint, then run the whole test suite.
# Extra arguments go to pytest, e.g. `bash tools/run_tests.sh -k roi_align`.
# `--fast` (first argument) skips the set-up and every test marked `slow`, for a check in one to two minutes.
# Tests run in one pytest-xdist worker per core (D2MX_TEST_WORKERS overrides; 0 runs them in this process), each
# test module on one worker so that module fixtures are built once, in the order tests/conftest.py gives them.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
FAST=0
if [ "${1:-}" = "--fast" ]; then
  FAST=1
  shift
fi
BIN="${D2MX_VENV:-$REPO/.venv}/bin"
if [ "$FAST" = 0 ] || [ ! -x "$BIN/python" ]; then
  bash tools/bootstrap.sh
fi
"$BIN/ruff" check .
PARALLEL=(-n "${D2MX_TEST_WORKERS:-auto}" --dist loadscope --no-loadscope-reorder)
if [ "$FAST" = 1 ]; then
  exec "$BIN/python" -m pytest "${PARALLEL[@]}" -m "not slow" "$@"
fi
exec "$BIN/python" -m pytest "${PARALLEL[@]}" "$@"
