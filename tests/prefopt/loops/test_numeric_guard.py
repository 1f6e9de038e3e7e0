"""A NaN/inf loss or gradient stops training with a message naming the step and keeps the last good
checkpoint; `run.on_nonfinite=skip` skips and counts instead."""
from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from prefopt.core.backend import OptimConfig, SingleBackend
from prefopt.core.checkpoint import latest_checkpoint
from prefopt.core.config import load_config
from prefopt.core.errors import NumericError
from prefopt.loops.common import NonFiniteGuard
from prefopt.train import run_train


def test_guard_unit():
    g = NonFiniteGuard("stop")
    assert g.ok(torch.tensor(0.5), 3)
    with pytest.raises(NumericError, match="loss is nan at optimizer step 3"):
        g.ok(torch.tensor(float("nan")), 3)
    with pytest.raises(NumericError, match="gradient norm is inf at optimizer step 4"):
        g.grad_ok({"optim/grad_norm": math.inf}, 4)
    s = NonFiniteGuard("skip")
    assert not s.ok(torch.tensor(float("inf")), 1) and not s.grad_ok({"optim/grad_norm": math.nan}, 1)
    assert s.skipped == 2


def test_backend_never_applies_nonfinite_gradient():
    model = torch.nn.Linear(2, 1)
    before = model.weight.detach().clone()
    b = SingleBackend(torch.device("cpu"), OptimConfig(lr=0.1, warmup_ratio=0.0))
    b.prepare(model, 10)
    (model(torch.tensor([[1.0, float("inf")]])).sum()).backward()
    stats = b.step()
    assert not math.isfinite(stats["optim/grad_norm"])
    assert torch.equal(model.weight.detach(), before)


def _cfg(tmp_path, pairs_dir, **run):
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump({
        "kind": "train", "algorithm": "dpo", "model": {"name": "tiny-llama"},
        "data": {"path": str(pairs_dir), "max_length": 64, "max_prompt_length": 32, "overlong": "truncate_left"},
        "optim": {"lr": 1e20, "warmup_ratio": 0.0, "max_grad_norm": 0.0}, "batch_size": 2, "max_steps": 4,
        "run": {"output_dir": str(tmp_path / "run"), "save_every": 1, "report_to": [], **run}}))
    return load_config(path)


@pytest.fixture
def pairs_dir(tmp_path, shared_data):
    from prefopt.cli import main

    out = tmp_path / "data"
    cfg = tmp_path / "d.yaml"
    cfg.write_text(yaml.safe_dump({"kind": "data", "output_dir": str(out), "sources": [
        {"path": str(shared_data / "hh-rlhf/helpful-base.train.sample.jsonl.gz"), "adapter": "hh_rlhf",
         "on_error": "skip", "max_records": 12}]}))
    assert main(["data", "build", str(cfg)]) == 0
    return out


def test_training_stops_and_keeps_last_good_checkpoint(tmp_path, pairs_dir):
    with pytest.raises(NumericError, match=r"at optimizer step \d+; training stopped"):
        run_train(_cfg(tmp_path, pairs_dir))
    ckpt = latest_checkpoint(tmp_path / "run")
    assert ckpt is not None  # verified (manifest + checksums) by latest_checkpoint


def test_skip_mode_counts(tmp_path, pairs_dir):
    summary = run_train(_cfg(tmp_path, pairs_dir, on_nonfinite="skip"))
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train/skipped_nonfinite"] > 0 and summary["steps"] >= 1
