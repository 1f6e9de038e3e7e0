"""Checkpoint/resume: a ``prefopt train`` process killed with SIGKILL mid-run resumes from its last
complete checkpoint and logs exactly the losses of an uninterrupted run (same seed); LCPO's eta is
part of the checkpoint, so it matches too. Also: gradient accumulation equivalence and bf16."""
from __future__ import annotations

import pytest
import torch
import yaml
from kill_helpers import train_then_sigkill
from offline_helpers import make_cfg, pair_records, train_rows, write_set

KEYS = ("loss", "rewards/margins", "lcpo/eta_0", "lcpo/w_mean", "optim/grad_norm")


def _yaml(cfg, path):
    from prefopt.core.config import to_dict

    data = {"kind": "train", **to_dict(cfg)}
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.slow
def test_sigkill_resume_matches_uninterrupted_run(tmp_path):
    from prefopt.loops.offline import run_offline

    data = write_set(tmp_path / "data", pair_records(8))
    over = {"algorithm": "lcpo", "epochs": 3.0, "loss": {"eta_0": 0.8, "ema_alpha": 0.3},
            "run": {"save_every": 3, "keep_last": 2}}
    run_offline(make_cfg(data, tmp_path / "full", **over))
    full = train_rows(tmp_path / "full")
    assert len(full) == 12

    cfg_path = _yaml(make_cfg(data, tmp_path / "killed", **over), tmp_path / "cfg.yaml")
    train_then_sigkill(cfg_path, tmp_path / "killed", at_step=7)
    done = sorted((tmp_path / "killed" / "checkpoints").glob("step-*"))
    assert done and done[-1].name in ("step-000006", "step-000009")
    resumed_from = int(done[-1].name.split("-")[1])
    assert not (tmp_path / "killed" / "summary.json").exists()

    summary = run_offline(make_cfg(data, tmp_path / "killed", **over))
    assert summary["steps"] == 12
    resumed = train_rows(tmp_path / "killed")
    assert [r["step"] for r in resumed] == list(range(1, 13))
    for a, b in zip(full[resumed_from:], resumed[resumed_from:], strict=False):
        for k in KEYS:
            assert b[k] == pytest.approx(a[k], abs=1e-6, rel=1e-6), (a["step"], k)
    assert summary["lcpo_eta"] == pytest.approx([full[-1]["lcpo/eta_0"]], abs=1e-7)


@pytest.mark.slow
def test_grad_accumulation_matches_bigger_batch(tmp_path):
    from prefopt.loops.offline import run_offline

    data = write_set(tmp_path / "data", pair_records(8))
    run_offline(make_cfg(data, tmp_path / "b4", batch_size=4, max_steps=2))
    run_offline(make_cfg(data, tmp_path / "b2a2", batch_size=2, optim={"grad_accum": 2}, max_steps=2))
    a, b = train_rows(tmp_path / "b4"), train_rows(tmp_path / "b2a2")
    assert len(a) == len(b) == 2
    for k in ("loss", "optim/grad_norm", "rewards/margins", "logps/chosen"):
        assert b[0][k] == pytest.approx(a[0][k], abs=1e-5, rel=1e-5), k
    assert b[1]["loss"] == pytest.approx(a[1]["loss"], abs=1e-4)


@pytest.mark.slow
def test_bf16_autocast_run(tmp_path):
    from prefopt.loops.offline import run_offline

    data = write_set(tmp_path / "data", pair_records(4))
    run_offline(make_cfg(data, tmp_path / "fp32", max_steps=2))
    run_offline(make_cfg(data, tmp_path / "bf16", precision="bf16", max_steps=2))
    a, b = train_rows(tmp_path / "fp32"), train_rows(tmp_path / "bf16")
    assert len(b) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in b)
    assert b[0]["loss"] == pytest.approx(0.693147, abs=1e-3)  # policy == reference at step 1
    assert b[0]["logps/chosen"] == pytest.approx(a[0]["logps/chosen"], rel=0.05)
    assert b[0]["logps/chosen"] != a[0]["logps/chosen"]  # autocast really ran in bf16
