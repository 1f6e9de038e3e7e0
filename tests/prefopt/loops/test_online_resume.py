"""Crash safety of the online loop: a ``prefopt train`` process running GRPO, killed with SIGKILL
mid-run, resumes from its last complete checkpoint and then logs exactly the losses and rewards of an
uninterrupted run with the same seed, ending with the same weights (rounds are seeded by index)."""
from __future__ import annotations

import pytest
import torch
import yaml
from kill_helpers import train_rows, train_then_sigkill
from online_helpers import make_cfg

ROUNDS = 8
KEYS = ("loss", "reward", "reward_std", "optim/grad_norm")


def _cfg(model_dir, out):
    from prefopt.configs import TrainConfig
    from prefopt.core.config import from_dict, to_dict

    c = to_dict(make_cfg(model_dir, out, "grpo", {"beta": 0.04}, rounds=ROUNDS))
    c["run"].update({"save_every": 1, "keep_last": 2})
    return from_dict(TrainConfig, c)


@pytest.mark.slow
def test_sigkill_resume_matches_uninterrupted_run(eos_model_dir, tmp_path):
    from safetensors.torch import load_file

    from prefopt.core.config import to_dict
    from prefopt.loops.online import run_online

    full = run_online(_cfg(eos_model_dir, tmp_path / "full"))
    full_rows = train_rows(tmp_path / "full")
    assert full["steps"] == len(full_rows) == ROUNDS

    killed = tmp_path / "killed"
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump({"kind": "train", **to_dict(_cfg(eos_model_dir, killed))}))
    train_then_sigkill(cfg_path, killed, at_step=3)
    assert not (killed / "summary.json").exists()
    done = sorted((killed / "checkpoints").glob("step-*"))
    assert done, "no complete checkpoint before the kill"
    resumed_from = int(done[-1].name.split("-")[1])
    assert 2 <= resumed_from < ROUNDS  # the checkpoint of round 3 may not be complete yet

    summary = run_online(_cfg(eos_model_dir, killed))
    assert summary["steps"] == ROUNDS
    rows = train_rows(killed)
    after = [r for r in rows if r["step"] > resumed_from]
    assert [r["step"] for r in after][-(ROUNDS - resumed_from):] == list(range(resumed_from + 1, ROUNDS + 1))
    by_step = {r["step"]: r for r in after}
    for a in full_rows[resumed_from:]:
        b = by_step[a["step"]]
        for k in KEYS:
            assert b[k] == pytest.approx(a[k], abs=1e-6, rel=1e-6), (a["step"], k)
    wa = load_file(str(tmp_path / "full" / "final" / "model.safetensors"))
    wb = load_file(str(killed / "final" / "model.safetensors"))
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-6), k
