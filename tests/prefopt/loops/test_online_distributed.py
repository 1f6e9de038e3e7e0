"""GRPO through the online loop under DeepSpeed ZeRO-2 with 2 processes (gloo on CPU).

Launched exactly as users do: ``deepspeed --num_gpus 2 $(which prefopt) train cfg.yaml
backend.kind=deepspeed``. The first launch on a machine JIT-builds a DeepSpeed op (~2 min).
"""
from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from prefopt.core.logging import read_metrics


@pytest.mark.slow
@pytest.mark.distributed
def test_grpo_zero2_two_processes(eos_model_dir, tmp_path):
    """2 rounds, 2 prompts per round (one per process), KL on: finite losses on every step, the metrics
    of both processes merged into one row per step, a ZeRO checkpoint and the final policy written."""
    launcher, prefopt = shutil.which("deepspeed"), shutil.which("prefopt")
    assert launcher and prefopt, "deepspeed and prefopt must be on PATH (the venv's bin)"
    cfg = {"kind": "train", "algorithm": "grpo", "loss": {"beta": 0.04}, "model": {"name": str(eos_model_dir)},
           "optim": {"lr": 1e-3, "warmup_ratio": 0.0, "scheduler": "constant"}, "batch_size": 4,
           "online": {"prompts": {"kind": "arithmetic", "n": 8, "n_eval": 2},
                      "reward": {"functions": [{"name": "max_length", "kwargs": {"max_tokens": 4}}]},
                      "rounds": 2, "prompts_per_round": 2, "num_generations": 4, "max_new_tokens": 8},
           "run": {"output_dir": str(tmp_path / "run"), "save_every": 2, "report_to": []}}
    path = tmp_path / "grpo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    proc = subprocess.run([launcher, "--num_gpus", "2", prefopt, "train", str(path), "backend.kind=deepspeed"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in rows)
    assert (tmp_path / "run" / "checkpoints" / "step-000002" / "engine").is_dir()
    assert (tmp_path / "run" / "final").is_dir()
