#!/usr/bin/env bash
# The GPU check (see benchmarks/gpu_check.py): install devise with the demo and test extras, then run it.
#
#   benchmarks/gpu_check.sh                  # pip install -e ".[demo,test]" first (a fresh machine)
#   benchmarks/gpu_check.sh --skip-install   # devise already installed in this Python
#   PYTHON=.venv/bin/python benchmarks/gpu_check.sh --skip-install --images 500
#
# Whole script under 8 minutes on a fresh machine (the check itself is stopped at 7); exit code 0 when every
# check passes. Without a GPU it says "no GPU found" and runs the CPU path.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [[ "${1:-}" == "--skip-install" ]]; then
  shift
else
  start=$(date +%s)
  "$PYTHON" -m pip install --quiet --disable-pip-version-check -e ".[demo,test]"
  echo "installed in $(( $(date +%s) - start )) s"
fi
exec timeout 420 "$PYTHON" benchmarks/gpu_check.py "$@"
