"""The ``rao_kupper`` reward-model kind (BT with ties, Rao & Kupper 1967): golden loss values derived by
hand, the kind's registration and config section, and a tiny end-to-end training run on ranked lists
with a tie."""
from __future__ import annotations

import json
import math

import pytest
import torch

from prefopt.core.errors import ConfigError
from tests.reward_models.conftest import make_config

LN2 = math.log(2.0)


def test_golden_rao_kupper_pairs_and_ties():
    """ν = 1. Strict pair d = 1: softplus(ν − d) = ln 2 = 0.693147; strict d = −1: softplus(2) = 2.126928.
    Tie d = 0: −log tanh(½) = 0.771936. Tie d = 2: P(a≻b) = σ(1) = 0.731059, P(b≻a) = σ(−3) = 0.047426,
    P(tie) = 0.221515 → 1.507262."""
    from reward_models.rao_kupper import rao_kupper_loss

    r = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [3.0, 1.0]])
    scores = torch.tensor([[2.0, 1.0], [2.0, 1.0], [1.0, 1.0], [4.0, 4.0]])
    out = rao_kupper_loss(r, scores=scores, log_theta=1.0)
    torch.testing.assert_close(out.loss, torch.tensor([0.693147, 2.126928, 0.771936, 1.507262]), atol=1e-6, rtol=0)
    assert out.metrics["accuracy"].item() == pytest.approx(0.5)   # strict pairs: d = 1 right, d = −1 wrong
    assert out.metrics["margin"].item() == pytest.approx(0.0)     # (1 + (−1)) / 2
    assert out.metrics["tie_prob"].item() == pytest.approx((math.tanh(0.5) + 0.221515) / 2, abs=1e-6)


def test_golden_rao_kupper_ranked_list_with_padding():
    """List (2, 1, 1) with scores (3, 1, 1), ν = 1: pairs (0,1), (0,2) strict with d = 1 → ln 2 each;
    (1,2) tied, d = 0 → 0.771936; mean (2 ln 2 + 0.771936)/3 = 0.719410. A padded list (5, 4, pad)
    counts its one pair: softplus(1 − 1) = ln 2."""
    from reward_models.rao_kupper import rao_kupper_loss

    r = torch.tensor([[2.0, 1.0, 1.0], [5.0, 4.0, 0.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    scores = torch.tensor([[3.0, 1.0, 1.0], [2.0, 1.0, float("nan")]])
    out = rao_kupper_loss(r, mask=mask, scores=scores, log_theta=1.0)
    torch.testing.assert_close(out.loss, torch.tensor([(2 * LN2 + 0.771936) / 3, LN2]), atol=1e-6, rtol=0)


def test_rao_kupper_probabilities_sum_to_one_and_bt_limit():
    """P(a≻b) + P(b≻a) + P(tie) = 1 for any d, ν; a strict pair is BT with margin ν (softplus(−(d − ν)))."""
    from reward_models.losses import bt_loss
    from reward_models.rao_kupper import rao_kupper_loss

    d = torch.linspace(-4, 4, 9)
    for nu in (0.1, 1.0, 3.0):
        r = torch.stack([d, torch.zeros_like(d)], -1)
        tie = rao_kupper_loss(r, scores=torch.ones_like(r), log_theta=nu).loss
        total = torch.sigmoid(d - nu) + torch.sigmoid(-d - nu) + torch.exp(-tie)
        torch.testing.assert_close(total, torch.ones_like(d))
        strict = rao_kupper_loss(r, log_theta=nu).loss
        torch.testing.assert_close(strict, bt_loss(d, torch.zeros_like(d), margin=nu).loss)


def test_rao_kupper_is_a_registered_kind_with_a_typed_section(rm_data, tmp_path):
    from prefopt.core.registry import RM_LOSSES
    from reward_models.kinds import get_kind, model_kinds
    from reward_models.rao_kupper import RaoKupperSection, rao_kupper_loss

    spec = get_kind("rao_kupper")
    assert (spec.pairwise, spec.needs_reference, spec.ranked_lists, spec.hf_seq_cls) == (False, False, True, True)
    assert "rao_kupper" in model_kinds() and RM_LOSSES.get("rao_kupper") is rao_kupper_loss
    cfg, _ = make_config(rm_data["ranked"], tmp_path / "x", ["rm.kind=rao_kupper", "rm.rao_kupper.log_theta=0.5"])
    assert cfg.rm.rao_kupper == RaoKupperSection(log_theta=0.5)
    with pytest.raises(ConfigError, match="rm.rao_kupper.log_theta must be > 0"):
        make_config(rm_data["ranked"], tmp_path / "y", ["rm.kind=rao_kupper", "rm.rao_kupper.log_theta=0"])


def test_rao_kupper_trains_on_ranked_lists_with_ties(rm_data, tmp_path):
    """6 steps on lists (3, 2, 1, 1): the loss goes down (observed 1.212 -> 0.642), held-out strict-pair accuracy
    goes from below 1 (0.9 observed) to 1, and the
    saved model reloads (kind ``rao_kupper``) and scores exactly as trained."""
    from prefopt.core.logging import read_metrics
    from reward_models.models import RewardModel
    from reward_models.train import load_items, run_rm_train
    from reward_models.train_step import evaluate

    out = tmp_path / "rk"
    cfg, _ = make_config(rm_data["ranked"], out, ["rm.kind=rao_kupper", "data.max_length=64"])
    summary = run_rm_train(cfg)
    losses = [r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert len(losses) == 6 and sum(losses[-2:]) / 2 < sum(losses[:2]) / 2, losses
    assert summary["first_eval"]["eval/accuracy"] < 1.0 and summary["final_eval"]["eval/accuracy"] == pytest.approx(1.0)
    assert json.loads((out / "final" / "reward_config.json").read_text())["kind"] == "rao_kupper"
    model = RewardModel.load(out / "final").eval()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out / "final"))
    _, held, _ = load_items(cfg, tok, cfg.run.seed)
    again = evaluate(cfg, model, held, tok.pad_token_id, torch.device("cpu"))[0]
    assert again["eval/accuracy"] == pytest.approx(summary["final_eval"]["eval/accuracy"], abs=1e-6)
    assert again["eval/margin"] == pytest.approx(summary["final_eval"]["eval/margin"], abs=1e-5)
