"""GRPO / GSPO clipped surrogates and KL estimators (spec §1 A-G3, A-G5)."""
from __future__ import annotations

import math

import pytest
import torch

from prefopt.core.registry import ADVANTAGES, GROUP_LOSSES
from prefopt.losses.group import GRPOParams, GSPOParams, grpo_loss
from prefopt.losses.kl import kl_estimate

LOG = math.log


def _run(name, logps, old, adv, mask, hp=None, **extra):
    inputs = {"policy_token_logps": logps, "old_token_logps": old, "advantages": adv,
              "completion_mask": mask, **extra}
    return GROUP_LOSSES.get(name)(inputs, hp)


def test_golden_group_loss__grpo():
    """Two one-token sequences, A = (+1, +1), ε = 0.2, dapo over 2 tokens:
    row 0: ρ = 1.5 > 1.2 → min(1.5, 1.2)·1 = 1.2 (clipped, no gradient);
    row 1: ρ = 0.5 → min(0.5, 0.8) = 0.5 (unclipped, ∂/∂logp = −ρ·A/2 = −0.25).
    loss = −(1.2 + 0.5)/2 = −0.85; clip_ratio/high_mean = ½, low_mean = 0 (A > 0)."""
    old = torch.tensor([[LOG(0.4)], [LOG(0.4)]])
    logps = torch.tensor([[LOG(0.6)], [LOG(0.2)]], requires_grad=True)
    out = _run("grpo", logps, old, torch.tensor([1.0, 1.0]), torch.ones(2, 1))
    assert out.loss.mean().item() == pytest.approx(-0.85, abs=1e-6)
    (grad,) = torch.autograd.grad(out.loss.mean(), logps)
    torch.testing.assert_close(grad, torch.tensor([[0.0], [-0.25]]))
    assert out.metrics["clip_ratio/high_mean"].item() == pytest.approx(0.5)
    assert out.metrics["clip_ratio/low_mean"].item() == 0.0


def test_grpo_kl_term_hand_derived():
    """ρ ≡ 1, A = 0, β = 0.1, log π_θ = 0, log π_ref = log ½ → k3 = ½ + log 2 − 1 ≈ 0.193147;
    loss = β·k3 = 0.0193147; metrics kl = k3."""
    logps = torch.zeros(1, 2)
    out = _run("grpo", logps, logps, torch.zeros(1), torch.ones(1, 2), GRPOParams(beta=0.1),
               ref_token_logps=torch.full((1, 2), LOG(0.5)))
    k3 = 0.5 + LOG(2) - 1
    assert out.loss.mean().item() == pytest.approx(0.1 * k3, abs=1e-7)
    assert out.metrics["kl"].item() == pytest.approx(k3, abs=1e-6)
    with pytest.raises(ValueError, match="beta > 0 needs ref_token_logps"):
        grpo_loss(logps, logps, torch.zeros(1), torch.ones(1, 2), beta=0.1)


def test_golden_group_loss__gspo():
    """One sequence of 2 tokens, token log-ratios (0.1, 0.3): sequence ratio s = exp(0.2) ≈ 1.2214.
    A = 1, GSPO ε_high 4e-4 → clipped to 1.0004: loss = −1.0004 (per token, dapo mean) and zero
    gradient; with A = −1: min(−s, −1.0004) = −s → loss = (s + s)/2 = s and ∂s/∂logp_t = s·½."""
    old = torch.zeros(1, 2)
    logps = torch.tensor([[0.1, 0.3]], requires_grad=True)
    out = _run("gspo", logps, old, torch.tensor([1.0]), torch.ones(1, 2))
    assert out.loss.mean().item() == pytest.approx(-1.0004, abs=1e-6)
    (grad,) = torch.autograd.grad(out.loss.mean(), logps)
    assert torch.equal(grad, torch.zeros_like(grad))
    out = _run("gspo", logps, old, torch.tensor([-1.0]), torch.ones(1, 2))
    s = math.exp(0.2)
    assert out.loss.mean().item() == pytest.approx(s, abs=1e-6)
    (grad,) = torch.autograd.grad(out.loss.mean(), logps)
    torch.testing.assert_close(grad, torch.full((1, 2), s / 2))


def test_a_g3_first_minibatch_clipped_equals_unclipped():
    """ρ ≡ 1 (θ = θ_old): loss and gradient equal those with clipping disabled (ε = 1e9)."""
    g = torch.Generator().manual_seed(0)
    logps = -torch.rand(3, 4, generator=g)
    logps.requires_grad_()
    mask, adv = (torch.rand(3, 4, generator=g) > 0.2).float(), torch.tensor([1.0, -2.0, 0.5])
    a = grpo_loss(logps, logps.detach(), adv, mask).loss.mean()
    b = grpo_loss(logps, logps.detach(), adv, mask, epsilon_low=1e9, epsilon_high=1e9).loss.mean()
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(torch.autograd.grad(a, logps)[0], torch.autograd.grad(b, logps)[0])


def test_kl_estimators_golden():
    """log π_θ = 0, log π_ref = log ½: k1 = log 2, k2 = ½ (log 2)², k3 = ½ + log 2 − 1."""
    lp, ref = torch.zeros(1), torch.full((1,), LOG(0.5))
    assert kl_estimate(lp, ref, "k1").item() == pytest.approx(LOG(2))
    assert kl_estimate(lp, ref, "k2").item() == pytest.approx(0.5 * LOG(2) ** 2)
    assert kl_estimate(lp, ref, "k3").item() == pytest.approx(0.5 + LOG(2) - 1)
    with pytest.raises(ValueError, match="unknown KL estimator 'k4'"):
        kl_estimate(lp, ref, "k4")


def test_params_match_loss_keywords():
    """Hyper-parameter dataclasses splat into the losses (names = keyword arguments)."""
    logps = torch.zeros(2, 3)
    for name, params in (("grpo", GRPOParams()), ("gspo", GSPOParams())):
        out = _run(name, logps, logps, torch.ones(2), torch.ones(2, 3), params)
        assert out.loss.shape == (2,)
    assert GRPOParams().loss_type == "dapo" and GRPOParams().beta == 0.0


def test_a_g5_toy_verifiable_bandit():
    """4-arm bandit, arm 2 correct, G = 8 one-token samples, GRPO advantages + loss, SGD lr 0.1,
    300 steps → π(correct) > 0.9."""
    g = torch.Generator().manual_seed(0)
    theta = torch.zeros(4, requires_grad=True)
    opt = torch.optim.SGD([theta], lr=0.1)
    for _ in range(300):
        with torch.no_grad():
            arms = torch.multinomial(torch.softmax(theta, -1), 8, replacement=True, generator=g)
        adv = ADVANTAGES.get("grpo")((arms == 2).float(), torch.zeros(8, dtype=torch.long))
        logps = torch.log_softmax(theta, -1)[arms].unsqueeze(-1)
        loss = _run("grpo", logps, logps.detach(), adv, torch.ones(8, 1)).loss.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.softmax(theta, -1)[2].item() > 0.9
