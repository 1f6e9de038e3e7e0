"""Advantage estimators (spec §1 A-G1, A-G2, A-G6) with hand-derived golden values."""
from __future__ import annotations

import math

import pytest
import torch

from prefopt.core.registry import ADVANTAGES
from prefopt.losses.advantages import GRPOAdvantageParams, group_reward_stats
from prefopt.losses.group import grpo_loss


def test_golden_advantage__grpo():
    """Group r = (1, 0, 0, 1): mean ½, Bessel std √((4·¼)/3) = √(1/3) ≈ 0.577350;
    A = ±0.5/(0.577350 + 1e-4) = ±0.865875. Second group (3, 3) is constant → exactly 0."""
    adv = ADVANTAGES.get("grpo")(torch.tensor([1.0, 0, 0, 1, 3, 3]), torch.tensor([0, 0, 0, 0, 1, 1]))
    a = 0.5 / (math.sqrt(1 / 3) + 1e-4)
    torch.testing.assert_close(adv, torch.tensor([a, -a, -a, a, 0.0, 0.0]))
    assert adv[4].item() == 0.0 and adv[5].item() == 0.0


def test_golden_advantage__dr_grpo():
    """Dr. GRPO: r − mean only. r = (1, 0, 0, 1) → (½, −½, −½, ½); r = (4, 1) → (1.5, −1.5)."""
    adv = ADVANTAGES.get("dr_grpo")(torch.tensor([1.0, 0, 0, 1, 4, 1]), torch.tensor([7, 7, 7, 7, 2, 2]))
    torch.testing.assert_close(adv, torch.tensor([0.5, -0.5, -0.5, 0.5, 1.5, -1.5]))


def test_golden_advantage__rloo():
    """RLOO: r = (1, 0, 0) → baselines (0, ½, ½) → A = (1, −½, −½); a singleton group → 0."""
    adv = ADVANTAGES.get("rloo")(torch.tensor([1.0, 0, 0, 5]), torch.tensor([0, 0, 0, 1]))
    torch.testing.assert_close(adv, torch.tensor([1.0, -0.5, -0.5, 0.0]))


def test_batch_scale_hand_derived():
    """scale=batch: groups (1, 0) and (3, 3); centred (½, −½, 0, 0) ÷ (std(1,0,3,3) + 1e-4);
    std: mean 1.75, Σdev² = 0.5625 + 3.0625 + 1.5625·2 = 6.75, /3 = 2.25 → 1.5."""
    adv = ADVANTAGES.get("grpo")(torch.tensor([1.0, 0, 3, 3]), torch.tensor([0, 0, 1, 1]), scale="batch")
    s = 1.5 + 1e-4
    torch.testing.assert_close(adv, torch.tensor([0.5 / s, -0.5 / s, 0.0, 0.0]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_g1_zero_mean_unit_std_per_group(seed):
    """Random rewards, 5 groups of 8 in shuffled order: per-group mean |·| < 1e-6, std 1 ± 1e-3."""
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(40, generator=g) * 3 + 1
    ids = torch.arange(5).repeat_interleave(8)[torch.randperm(40, generator=g)] * 11
    adv = ADVANTAGES.get("grpo")(rewards, ids)
    for gid in ids.unique():
        a = adv[ids == gid].double()
        assert abs(a.mean().item()) < 1e-6
        assert a.std().item() == pytest.approx(1.0, abs=1e-3)


def test_a_g2_identical_rewards_zero_advantage_and_zero_gradient():
    """A constant group (0.1 ×4, where the float mean is inexact) → all-zero A and ∇ = 0."""
    adv = ADVANTAGES.get("grpo")(torch.full((4,), 0.1), torch.zeros(4, dtype=torch.long))
    assert torch.equal(adv, torch.zeros(4))
    logps = torch.randn(4, 3).requires_grad_()
    out = grpo_loss(logps, logps.detach() - 0.1, adv, torch.ones(4, 3))
    (grad,) = torch.autograd.grad(out.loss.mean(), logps)
    assert torch.equal(grad, torch.zeros_like(grad))


def test_a_g6_shift_and_scale_invariance():
    """r + c leaves A unchanged; c·r changes A only through the 1e-4 stabiliser (allclose 1e-3)."""
    g = torch.Generator().manual_seed(3)
    r, ids = torch.rand(16, generator=g), torch.arange(4).repeat_interleave(4)
    base = ADVANTAGES.get("grpo")(r, ids)
    torch.testing.assert_close(ADVANTAGES.get("grpo")(r + 7.0, ids), base, atol=1e-5, rtol=0)
    for c in (0.5, 2.0):
        torch.testing.assert_close(ADVANTAGES.get("grpo")(c * r, ids), base, atol=1e-3, rtol=1e-3)


def test_nan_rewards_are_excluded():
    """NaN (reward None) is left out: group (1, NaN, 0) → stats of (1, 0): mean ½, std √½;
    A = (½/(√½ + 1e-4), 0, −…)."""
    adv = ADVANTAGES.get("grpo")(torch.tensor([1.0, float("nan"), 0.0]), torch.zeros(3, dtype=torch.long))
    a = 0.5 / (math.sqrt(0.5) + 1e-4)
    torch.testing.assert_close(adv, torch.tensor([a, 0.0, -a]))
    adv = ADVANTAGES.get("rloo")(torch.tensor([1.0, float("nan"), 0.0]), torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(adv, torch.tensor([1.0, 0.0, -1.0]))


def test_reward_stats_and_params():
    """Groups (1, 0) and (2, 2): frac_reward_zero_std = ½, reward mean 1.25."""
    stats = group_reward_stats(torch.tensor([1.0, 0, 2, 2]), torch.tensor([0, 0, 1, 1]))
    assert stats["frac_reward_zero_std"].item() == pytest.approx(0.5)
    assert stats["reward"].item() == pytest.approx(1.25)
    assert GRPOAdvantageParams() == GRPOAdvantageParams(scale="group", eps=1e-4)
    with pytest.raises(ValueError, match="unknown advantage scale 'row'"):
        ADVANTAGES.get("grpo")(torch.ones(2), torch.zeros(2, dtype=torch.long), scale="row")


def test_advantage_options_come_from_the_online_config():
    """The loop passes ``advantage_options``: grpo reads ``online.scale_rewards`` as ``scale``; rloo and
    dr_grpo read nothing. scale=none on r = (1, 0) gives the centred (½, −½)."""
    from types import SimpleNamespace

    from prefopt.losses.advantages import advantage_options

    oc = SimpleNamespace(scale_rewards="none")
    assert advantage_options("grpo", oc) == {"scale": "none"}
    assert advantage_options("rloo", oc) == {} == advantage_options("dr_grpo", oc)
    adv = ADVANTAGES.get("grpo")(torch.tensor([1.0, 0.0]), torch.zeros(2, dtype=torch.long), **advantage_options("grpo", oc))
    torch.testing.assert_close(adv, torch.tensor([0.5, -0.5]))
