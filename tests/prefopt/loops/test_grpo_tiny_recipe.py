"""The shipped ``configs/grpo/tiny.yaml`` must learn (issue 17 item 7): its reward varies within groups,
so the advantages and the gradient are non-zero and the policy's weights move."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prefopt.core.config import load_config
from prefopt.core.logging import read_metrics
from prefopt.rewards.functions import char_fraction

REPO = Path(__file__).resolve().parents[3]


def test_char_fraction_is_graded():
    # "7 apples": 7 visible characters, one digit -> 1/7; "" -> 0; "12" -> 1
    assert char_fraction([], ["7 apples", "", "12", "ab"]) == [pytest.approx(1 / 7), 0.0, 1.0, 0.0]


@pytest.mark.slow
def test_grpo_tiny_recipe_updates_the_policy(tmp_path):
    from prefopt.core.models import make_tiny_model
    from prefopt.train import run_train

    cfg = load_config(REPO / "configs/grpo/tiny.yaml", [f"run.output_dir={tmp_path}", "online.rounds=2"])
    run_train(cfg)
    rows = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "optim/grad_norm" in r]
    assert rows and all(r["optim/grad_norm"] > 0 for r in rows)  # a reward with variance gives a gradient
    from safetensors.torch import load_file

    trained = load_file(str(tmp_path / "final" / "model.safetensors"))
    initial = make_tiny_model("tiny-llama", seed=cfg.run.seed).state_dict()
    moved = [k for k, v in trained.items() if k in initial and not torch.equal(v, initial[k])]
    assert len(moved) > len(trained) // 2
