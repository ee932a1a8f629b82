#!/usr/bin/env bash
# Creates .venv (if missing) and installs the pinned CPU stack. Idempotent; used by the README commands and CI.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# DS_BUILD_OPS=0: deepspeed installs without compiling its CUDA ops (we use only its Ulysses layer)
DS_BUILD_OPS=0 .venv/bin/python -m pip install -q --disable-pip-version-check -r .ci/requirements-cpu.txt
# lpips (LPIPS in python -m magcache_dist.eval) without the torchvision it declares: PyPI's torchvision is built for
# CUDA torch and fails to import beside the CPU wheel (pip would also swap torch for a CUDA build to satisfy it);
# lpips runs without it (magcache_dist/eval/perceptual.py). scipy, which lpips imports, is in requirements-cpu.txt
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps lpips==0.1.4
# the project itself (editable): `import magcache_dist` from anywhere, `magcache-generate`, `torchrun launch/generate.py`
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
# deepspeed's CPU communication op (built by deepspeed.init_distributed on a CPU machine, ~1 min with ninja) is built
# here once, into torch's extension cache, instead of inside the first test that starts the deepspeed backend
.venv/bin/python - <<'PY'
import warnings

warnings.filterwarnings("ignore")
try:
    from deepspeed.comm.torch import build_shm_op
except ImportError:  # deepspeed is optional
    raise SystemExit(0)
build_shm_op()
PY
