"""A ``prefopt rm train`` process killed with SIGKILL resumes from its last complete checkpoint and then
logs exactly the losses of an uninterrupted run (same seed), ending with the same held-out metrics."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from prefopt.core.logging import read_metrics
from reward_models.train import run_rm_train
from tests.reward_models.conftest import make_config

STEPS = 10


def _train_rows(out) -> dict[int, dict]:
    """Last logged training row per step (a killed run may have logged steps past its checkpoint)."""
    rows = {}
    for r in read_metrics(out / "metrics.jsonl"):
        if "loss" in r:
            rows[r["step"]] = r
    return rows


@pytest.mark.slow
def test_sigkill_resume_matches_uninterrupted_run(rm_data, tmp_path):
    over = [f"max_steps={STEPS}", "run.save_every=3", "optim.lr=3e-3"]
    cfg, _ = make_config(rm_data["pairs"], tmp_path / "full", over)
    full_summary = run_rm_train(cfg)
    full = _train_rows(tmp_path / "full")
    assert sorted(full) == list(range(1, STEPS + 1))

    cfg_k, path = make_config(rm_data["pairs"], tmp_path / "killed", over)
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "prefopt.cli", "rm", "train", str(path), *over],
                            env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if (ckpts / "step-000003" / "MANIFEST.json").exists():
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "final").exists()
    done = sorted(p for p in ckpts.glob("step-*") if (p / "MANIFEST.json").exists())
    resumed_from = int(done[-1].name.split("-")[1])
    assert resumed_from in (3, 6, 9)

    summary = run_rm_train(cfg_k)
    assert summary["steps"] == STEPS
    resumed = _train_rows(tmp_path / "killed")
    assert sorted(resumed) == list(range(1, STEPS + 1))
    for step in range(resumed_from + 1, STEPS + 1):
        for k in ("loss", "accuracy", "margin", "optim/grad_norm"):
            assert resumed[step][k] == pytest.approx(full[step][k], abs=1e-6, rel=1e-6), (step, k)
    for k in ("eval/accuracy", "eval/margin"):
        assert summary["final_eval"][k] == pytest.approx(full_summary["final_eval"][k], abs=1e-6)
