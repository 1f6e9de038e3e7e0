#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): CUDA-vs-CPU equality at fp32 for the DPO, RM and GRPO steps,
# the shared-prompt block mask through CUDA sdpa, the chunked LM head under CUDA autocast, the tiled MLP, bf16
# throughput / MFU / peak memory on a ~0.58B random model. Writes one JSON (--out FILE.json).
#   scripts/gpu_check.sh --out "$OUT/gpu_check.json"     # on a CUDA machine (<= 8 min on one H200)
#   scripts/gpu_check.sh --dry-run --out /tmp/dry.json    # same code on CPU, tiny sizes (CI runs this)
# Needs only torch, transformers (+ the repo): no TRL, datasets, DeepSpeed or vLLM. Exit 1 if a check fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m benchmarks.gpu_check "$@"
