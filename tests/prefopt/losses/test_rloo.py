"""RLOO (Ahmadian et al. 2024, Sec. 3.3): leave-one-out advantages + the sequence-level REINFORCE
surrogate of prefopt/losses/rloo.py, with hand-derived numbers."""
from __future__ import annotations

import math

import pytest
import torch

from prefopt.core.registry import ADVANTAGES, GROUP_LOSSES
from prefopt.losses.rloo import RLOOParams, rloo_loss


def test_rloo_advantage_is_scaled_centred_reward():
    """A_i = r_i − mean_{j≠i} r_j = G/(G−1) (r_i − mean r). G = 4, r = (3, 1, 0, 0): mean 1;
    baselines (1/3, 1, 4/3, 4/3) → A = (8/3, 0, −4/3, −4/3) = 4/3 · (2, 0, −1, −1)."""
    adv = ADVANTAGES.get("rloo")(torch.tensor([3.0, 1, 0, 0]), torch.zeros(4, dtype=torch.long))
    torch.testing.assert_close(adv, torch.tensor([8 / 3, 0.0, -4 / 3, -4 / 3]))
    g = torch.Generator().manual_seed(0)
    r, ids = torch.randn(15, generator=g), torch.arange(3).repeat_interleave(5)
    centred = r - r.reshape(3, 5).mean(-1).repeat_interleave(5)
    torch.testing.assert_close(ADVANTAGES.get("rloo")(r, ids), 5 / 4 * centred)


def test_golden_group_loss__rloo():
    """On-policy (π_old = π_θ, ρ = 1), A = (1, −1), lengths 2 and 1: per-sequence ℓ = −A_i → loss
    (−1, 1), mean 0; gradient of the mean w.r.t. log π_θ(y_{i,t}) = −A_i / 2 on completion tokens
    (REINFORCE: −(1/k) Σ_i A_i ∇ log π_θ(y_i)), 0 on padding."""
    logps = torch.tensor([[-1.0, -2.0], [-0.5, 0.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    out = GROUP_LOSSES.get("rloo")({"policy_token_logps": logps, "old_token_logps": logps.detach(),
                                    "advantages": torch.tensor([1.0, -1.0]), "completion_mask": mask})
    torch.testing.assert_close(out.loss, torch.tensor([-1.0, 1.0]))
    (grad,) = torch.autograd.grad(out.loss.mean(), logps)
    torch.testing.assert_close(grad, torch.tensor([[-0.5, -0.5], [0.5, 0.0]]))
    assert out.metrics["ratio_mean"].item() == pytest.approx(1.0)


def test_rloo_off_policy_ratio_and_kl_hand_derived():
    """Row 0: log ratio 0.5 → ρ0 = e^0.5 = 1.648721; row 1 (1 token, padding ignored): −0.2 → ρ1 = e^−0.2
    = 0.818731. A = (2, −1). k3 KL row 0: token 1 log r = −1 − (−2) = 1 → e − 2 = 0.718282, else 0.
    β = 0.1: ℓ0 = −2·1.648721 + 0.0718282 = −3.225614, ℓ1 = 0.818731; kl metric 0.718282/3 tokens."""
    pol = torch.tensor([[-1.0, -2.0], [-0.5, 0.0]])
    old = torch.tensor([[-1.5, -2.0], [-0.3, 9.0]])
    ref = torch.tensor([[-1.0, -1.0], [-0.5, -50.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    out = rloo_loss(pol, old, torch.tensor([2.0, -1.0]), mask, ref_token_logps=ref, beta=0.1)
    l0 = -2 * math.exp(0.5) + 0.1 * (math.e - 2)
    l1 = math.exp(-0.2)
    torch.testing.assert_close(out.loss, torch.tensor([l0, l1]))
    assert out.loss.mean().item() == pytest.approx((-3.225614 + 0.818731) / 2, abs=1e-5)
    assert out.metrics["kl"].item() == pytest.approx((math.e - 2) / 3)
    assert out.metrics["ratio_mean"].item() == pytest.approx((math.exp(0.5) + math.exp(-0.2)) / 2)
    # global count of 4 sequences (this shard holds 2): each share halves
    half = rloo_loss(pol, old, torch.tensor([2.0, -1.0]), mask, ref_token_logps=ref, beta=0.1, num_sequences=4)
    torch.testing.assert_close(half.loss, torch.tensor([l0, l1]) / 2)


def test_rloo_constant_group_gives_zero_gradient():
    """Equal rewards → A = 0 exactly → loss 0 and ∇ = 0 (no KL term)."""
    adv = ADVANTAGES.get("rloo")(torch.full((3,), 0.1), torch.zeros(3, dtype=torch.long))
    logps = torch.randn(3, 4).requires_grad_()
    out = rloo_loss(logps, logps.detach() - 0.1, adv, torch.ones(3, 4))
    (grad,) = torch.autograd.grad(out.loss.mean(), logps)
    assert torch.equal(grad, torch.zeros_like(grad))


def test_rloo_beta_needs_reference_and_defaults():
    assert RLOOParams() == RLOOParams(beta=0.0, kl_estimator="k3")
    with pytest.raises(ValueError, match="beta > 0 needs ref_token_logps"):
        rloo_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1), torch.ones(1, 2), beta=0.1)
