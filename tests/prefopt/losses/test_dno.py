"""DNO pair rule (spec §2 A-D4), contrastive loss vs the previous iterate, A-D1 minimiser."""
from __future__ import annotations

import math

import pytest
import torch

from prefopt.core.registry import GROUP_LOSSES
from prefopt.losses.dno import DNOPairParams, DNOParams, dno_loss, dno_pairs, replay_fractions


def _pair_batch():
    """y+ tokens sum −2 (π_t: −3) → log-ratio +1; y− sum −4 (π_t: −3) → −1."""
    logps = torch.tensor([[-1.0, -1.0], [-2.0, -2.0]], requires_grad=True)
    prev = torch.tensor([[-1.5, -1.5], [-1.5, -1.5]])
    return logps, prev, torch.ones(2, 2)


def test_golden_group_loss__dno():
    """η = 0.1: Δ = 0.1·(1 − (−1)) = 0.2; hard label L = −log σ(0.2) = log(1 + e^{−0.2}) ≈ 0.598139;
    ∂L/∂ℓ+_t = −η σ(−0.2) ≈ −0.045017, ∂L/∂ℓ−_t = +0.045017.
    Soft target z = 0.3: L = 0.3·0.598139 + 0.7·log(1 + e^{0.2}) = 0.179442 + 0.558697 = 0.738139."""
    logps, prev, mask = _pair_batch()
    inputs = {"policy_token_logps": logps, "prev_token_logps": prev, "completion_mask": mask}
    out = GROUP_LOSSES.get("dno")(inputs, DNOParams(eta=0.1))
    assert out.loss.mean().item() == pytest.approx(math.log1p(math.exp(-0.2)), abs=1e-6)
    (grad,) = torch.autograd.grad(out.loss.mean(), logps)
    g = 0.1 / (1 + math.exp(0.2))
    torch.testing.assert_close(grad, torch.tensor([[-g, -g], [g, g]]))
    assert out.metrics["accuracy"].item() == 1.0
    out = dno_loss(logps, prev, mask, eta=0.1, target=torch.tensor([0.3]))
    assert out.loss.mean().item() == pytest.approx(0.738139, abs=1e-5)


def test_dno_regularised_anchor():
    """τ/η = ½: anchor = ½ log π_t + ½ log π_ref. π_ref sums: y+ −2, y− −4 → anchors −2.5, −3.5;
    log-ratios +0.5, −0.5 → Δ = 0.1·1 = 0.1; L = log(1 + e^{−0.1}) ≈ 0.644397."""
    logps, prev, mask = _pair_batch()
    ref = torch.tensor([[-1.0, -1.0], [-2.0, -2.0]])
    out = dno_loss(logps, prev, mask, eta=0.1, tau=0.05, ref_token_logps=ref)
    assert out.loss.mean().item() == pytest.approx(math.log1p(math.exp(-0.1)), abs=1e-6)
    with pytest.raises(ValueError, match="tau > 0 needs ref_token_logps"):
        dno_loss(logps, prev, mask, tau=0.05)


def test_a_d4_margin_rule():
    """{gold 6, s1 5, s2 3, s3 4} → (gold, s2), (gold, s3) [teacher, margin ≥ 2], (s1, s2), (s1, s3)
    [student, margin ≥ 1]; (gold, s1) excluded (teacher margin 1). {s1 6, gold 5} → (s1, gold)."""
    assert dno_pairs({"gold": 6, "s1": 5, "s2": 3, "s3": 4}) == [
        ("gold", "s2"), ("gold", "s3"), ("s1", "s2"), ("s1", "s3")]
    assert dno_pairs({"s1": 6, "gold": 5}) == [("s1", "gold")]


def test_pair_rule_edge_cases():
    """No positive (all ≤ 4) → no pairs; equal scores never pair; a 'bad' (repetitive) sample is
    never a positive and is a negative of any positive; custom teacher ids."""
    assert dno_pairs({"gold": 4, "s1": 1}) == []
    assert dno_pairs({"s1": 5, "s2": 5}) == []
    assert dno_pairs({"s1": 6, "s2": 6, "s3": 5}, bad_ids={"s2"}) == [
        ("s1", "s2"), ("s1", "s3"), ("s3", "s2")]
    assert dno_pairs({"t": 6, "s1": 5}, teacher_ids={"t"}) == []
    p = DNOPairParams()
    assert (p.min_positive, p.teacher_margin, p.student_margin) == (5, 2, 1)
    assert DNOParams().eta == 0.1


def test_replay_fractions():
    """30% from t−1, 15% from t−2, halving further back; none at t = 1."""
    assert replay_fractions(1) == []
    assert replay_fractions(4) == pytest.approx([0.3, 0.15, 0.075])


def test_a_d1_minimiser_is_soft_policy_iteration():
    """4 arms, fixed r_t and π_t, all ordered pairs with soft targets σ(r_i − r_j), Adam to
    convergence → π within TV 1e-3 of normalise(π_t exp(r_t/η))."""
    eta = 0.5
    pi_t = torch.tensor([0.4, 0.3, 0.2, 0.1])
    r = torch.tensor([0.2, 0.9, 0.5, 0.1])
    i, j = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    i, j = i[i != j], j[i != j]
    arms = torch.cat([i, j])
    prev = torch.log(pi_t)[arms].unsqueeze(-1)
    target = torch.sigmoid(r[i] - r[j])
    theta = torch.log(pi_t).clone().requires_grad_()
    opt = torch.optim.Adam([theta], lr=0.05)
    for _ in range(1500):
        logps = torch.log_softmax(theta, -1)[arms].unsqueeze(-1)
        loss = dno_loss(logps, prev, torch.ones_like(prev), eta=eta, target=target).loss.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    want = torch.softmax(torch.log(pi_t) + r / eta, -1)
    tv = 0.5 * (torch.softmax(theta.detach(), -1) - want).abs().sum().item()
    assert tv < 1e-3


def test_pair_rule_defaults_are_written_once():
    """dno_pairs' keyword defaults and the online ``dno:`` section come from DNOPairParams (5 / 2 / 1)."""
    import dataclasses
    import inspect

    from prefopt.loops.online_config import DNOConfig

    rule = DNOPairParams()
    assert (rule.min_positive, rule.teacher_margin, rule.student_margin) == (5, 2, 1)
    params = inspect.signature(dno_pairs).parameters
    for f in dataclasses.fields(DNOPairParams):
        assert params[f.name].default == getattr(rule, f.name)
        assert getattr(DNOConfig(), f.name) == getattr(rule, f.name)
    assert issubclass(DNOConfig, DNOPairParams)
