"""RLOO end to end through the registered seams (no loop code of its own): the shipped
``configs/rloo/tiny.yaml`` moves the weights, and on the EOS-biased tiny Llama a "short answer"
reward raises the policy's chance of the rewarded behaviour."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from online_helpers import raises_expected_reward

from prefopt.configs import TrainConfig
from prefopt.core.config import from_dict, load_config
from prefopt.core.errors import ConfigError
from prefopt.core.logging import read_metrics

REPO = Path(__file__).resolve().parents[3]


def test_rloo_is_a_registered_online_algorithm():
    from prefopt.algorithms import get_algorithm
    from prefopt.losses.rloo import RLOOParams

    spec = get_algorithm("rloo")
    assert (spec.loop, spec.driver, spec.loss, spec.advantage) == ("online", "group", "rloo", "rloo")
    cfg = load_config(REPO / "configs/rloo/tiny.yaml")
    assert cfg.loss == RLOOParams(beta=0.04) and cfg.online.advantage == "rloo"


def test_rloo_with_another_advantage_is_refused():
    with pytest.raises(ConfigError, match="rloo is defined by the 'rloo' advantage estimator: set "
                                          "online.advantage: rloo \\(got 'grpo'\\)"):
        from_dict(TrainConfig, {"algorithm": "rloo", "model": {"name": "tiny-llama"}})


@pytest.mark.slow
def test_rloo_tiny_recipe_updates_the_policy(tmp_path):
    from safetensors.torch import load_file

    from prefopt.core.models import make_tiny_model
    from prefopt.train import run_train

    cfg = load_config(REPO / "configs/rloo/tiny.yaml", [f"run.output_dir={tmp_path}", "online.rounds=2"])
    run_train(cfg)
    rows = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "optim/grad_norm" in r]
    assert len(rows) == 2 and all(r["optim/grad_norm"] > 0 for r in rows)
    assert all(r["ratio_mean"] == pytest.approx(1.0) and r["kl"] >= 0.0 for r in rows)
    trained = load_file(str(tmp_path / "final" / "model.safetensors"))
    initial = make_tiny_model("tiny-llama", seed=cfg.run.seed).state_dict()
    moved = [k for k, v in trained.items() if k in initial and not torch.equal(v, initial[k])]
    assert len(moved) > len(trained) // 2


@pytest.mark.slow
def test_rloo_raises_expected_reward(eos_model_dir, tmp_path):
    """Reward "at most 2 tokens" (earned when EOS comes first or second); the number that must move is
    P(EOS as the first completion token) averaged over the training prompts. The same setting as
    GRPO's test (tests/prefopt/loops/test_online_algos.py): 6 rounds at lr 1e-3 must raise it by > 20%."""
    raises_expected_reward(eos_model_dir, tmp_path, "rloo", advantage="rloo")


def test_scale_rewards_is_refused_by_an_estimator_that_ignores_it():
    """online.scale_rewards is read by the grpo estimator only (advantages.CONFIG_OPTIONS): set away from
    its default with rloo it fails at config time; with grpo it is passed on as ``scale``."""
    base = {"algorithm": "rloo", "model": {"name": "tiny-llama"}}
    with pytest.raises(ConfigError, match="online.scale_rewards='batch' is read only by the grpo advantage "
                                          "estimator; online.advantage=rloo would ignore it"):
        from_dict(TrainConfig, {**base, "online": {"advantage": "rloo", "scale_rewards": "batch"}})
    assert from_dict(TrainConfig, {**base, "online": {"advantage": "rloo"}}).online.scale_rewards == "group"
    cfg = from_dict(TrainConfig, {**base, "algorithm": "grpo", "online": {"scale_rewards": "batch"}})
    assert cfg.online.scale_rewards == "batch"
    with pytest.raises(ConfigError, match="online.scale_rewards='none'.*online.advantage=dr_grpo"):
        from_dict(TrainConfig, {**base, "algorithm": "grpo",
                                "online": {"advantage": "dr_grpo", "scale_rewards": "none"}})
