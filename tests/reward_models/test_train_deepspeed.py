"""``prefopt rm train`` under DeepSpeed ZeRO-2/3 with 2 CPU processes, launched as users do:
``deepspeed --num_gpus 2 $(which prefopt) rm train cfg.yaml backend.kind=deepspeed``.

The same global batch of 4 pairs (single process: batch_size 4; 2 processes x batch_size 2, rank r takes
pairs [2r, 2r+2) of each global batch) gives the same first-step loss, accuracy, margin and gradient
norm (1e-5). The first launch on a fresh machine JIT-builds a DeepSpeed op (~2 min)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from prefopt.core.logging import read_metrics
from reward_models.train import run_rm_train
from tests.reward_models.conftest import make_config


def _rows(out: Path) -> list[dict]:
    return [r for r in read_metrics(out / "metrics.jsonl") if "loss" in r]


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("zero", [2, 3])
def test_two_process_zero_matches_single_process(rm_data, tmp_path, zero):
    from reward_models.models import RewardModel

    run_rm_train(make_config(rm_data["pairs"], tmp_path / "single", ["max_steps=2", "batch_size=4"])[0])
    _, path = make_config(rm_data["pairs"], tmp_path / "ds", ["max_steps=2", "batch_size=2"])
    prefopt = shutil.which("prefopt") or str(Path(sys.executable).parent / "prefopt")
    deepspeed = shutil.which("deepspeed") or str(Path(sys.executable).parent / "deepspeed")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [deepspeed, "--num_gpus", "2", "--master_port", str(29610 + zero), prefopt, "rm", "train", str(path),
           "backend.kind=deepspeed", f"backend.zero_stage={zero}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    single, dist = _rows(tmp_path / "single"), _rows(tmp_path / "ds")
    assert len(single) == len(dist) == 2
    for k in ("loss", "accuracy", "margin", "optim/grad_norm"):
        assert dist[0][k] == pytest.approx(single[0][k], abs=1e-5, rel=1e-5), k
    assert dist[1]["loss"] == pytest.approx(single[1]["loss"], abs=1e-4)
    model = RewardModel.load(tmp_path / "ds" / "final")  # ZeRO-3 shards were gathered before saving
    assert model.score.weight.abs().sum() > 0
