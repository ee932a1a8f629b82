#!/usr/bin/env bash
# The prepared GPU check (scripts/gpu_check.py): run from anywhere on a machine set up as the README says
# (CUDA torch + pip install -e .); writes outputs/gpu_check.json. Exits 0 with "skipped: no CUDA" without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || PY="${PYTHON:-python3}"
exec timeout 590 "$PY" -m scripts.gpu_check "$@"
