#!/usr/bin/env bash
# README command (b): set up (idempotent) and run the whole test suite, slow tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
ruff check .  # lint gate (pyproject.toml [tool.ruff]); fails the run before any test
# Two pytest-xdist workers on 2 cores, one torch thread each (tests/conftest.py); the DeepSpeed tests
# share one worker (they launch 2 processes each). Pass -n 0 to run serially.
exec python -m pytest -q -p no:cacheprovider -n 2 --dist loadgroup "$@"
