#!/usr/bin/env bash
# README command (a): set up (idempotent) and run the main job on the embedded SmolLM2-135M.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec prefopt run configs/quickstart.yaml "$@"
