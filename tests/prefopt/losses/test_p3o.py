"""P3O joint/separate clipping (spec §4 A-P1..A-P5) with hand-derived golden values."""
from __future__ import annotations

import pytest
import torch

from prefopt.core.registry import GROUP_LOSSES
from prefopt.losses.p3o import P3OJointParams, P3OSeparateParams, p3o_loss


def _pair():
    """One pair, 2 tokens each. y1 ℓ = (−1, −2), ref (−1.5, −2) → s1 = 0.5;
    y2 ℓ = (−3, −1), ref (−3, −2) → s2 = 1.0; θ = θ_old; r = (2, 1)."""
    logps = torch.tensor([[-1.0, -2.0], [-3.0, -1.0]], requires_grad=True)
    ref = torch.tensor([[-1.5, -2.0], [-3.0, -2.0]])
    return logps, logps.detach().clone(), ref, torch.ones(2, 2), torch.tensor([2.0, 1.0])


def _inputs(logps, old, ref, mask, r):
    return {"policy_token_logps": logps, "old_token_logps": old, "ref_token_logps": ref,
            "completion_mask": mask, "rewards": r}


def test_golden_group_loss__p3o_joint():
    """q = (2 − 1) − 0.05·(0.5 − 1) = 1.025, w = 1, Δ = Δ_old = −0.5 (clip inactive):
    L = ½·(−q·Δ) = ½·1.025·0.5 = 0.25625; ∂L/∂ℓ1_t = −q/2 = −0.5125, ∂L/∂ℓ2_t = +0.5125."""
    logps, old, ref, mask, r = _pair()
    out = GROUP_LOSSES.get("p3o_joint")(_inputs(logps, old, ref, mask, r), P3OJointParams())
    assert out.loss.mean().item() == pytest.approx(0.25625, abs=1e-6)
    (grad,) = torch.autograd.grad(out.loss.mean(), logps)
    torch.testing.assert_close(grad, torch.tensor([[-0.5125, -0.5125], [0.5125, 0.5125]]))
    assert out.metrics["q_mean"].item() == pytest.approx(1.025)
    assert out.metrics["clip_frac"].item() == 0.0


def test_golden_group_loss__p3o_separate():
    """Same pair, n = 4 tokens, clip inactive: y1 term −q·(−1 − 2) = 3q, y2 term q·(−3 − 1) = −4q;
    L = (3q − 4q)/4 = −q/4 = −0.25625; ∂L/∂ℓ1_t = −q/4, ∂L/∂ℓ2_t = +q/4."""
    logps, old, ref, mask, r = _pair()
    out = GROUP_LOSSES.get("p3o_separate")(_inputs(logps, old, ref, mask, r), P3OSeparateParams())
    assert out.loss.mean().item() == pytest.approx(-0.25625, abs=1e-6)
    (grad,) = torch.autograd.grad(out.loss.mean(), logps)
    q4 = 1.025 / 4
    torch.testing.assert_close(grad, torch.tensor([[-q4, -q4], [q4, q4]]))


def _random_batch(seed, pairs=4, t=5):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(2 * pairs, t, generator=g) * 2
    logps = (old + 0.1 * torch.randn(2 * pairs, t, generator=g)).requires_grad_()
    ref = old + 0.05 * torch.randn(2 * pairs, t, generator=g)
    mask = (torch.rand(2 * pairs, t, generator=g) > 0.3).float()
    mask[:, 0] = 1
    return logps, old, ref, mask, torch.randn(2 * pairs, generator=g)


def _loss_grad(logps, *args, **kw):
    loss = p3o_loss(logps, *args, **kw).loss.mean()
    return loss, torch.autograd.grad(loss, logps)[0]


@pytest.mark.parametrize("mode", ["joint", "separate"])
@pytest.mark.parametrize("avg", [False, True])
def test_a_p1_prompt_shift_invariance(mode, avg):
    """r + δ(x) (same shift for both responses of a prompt) → same loss and gradients."""
    logps, old, ref, mask, r = _random_batch(0)
    delta = torch.tensor([3.0, -7.0, 0.5, 100.0]).repeat(2)
    a = _loss_grad(logps, old, ref, mask, r, clip_mode=mode, avg_over_tokens=avg)
    b = _loss_grad(logps, old, ref, mask, r + delta, clip_mode=mode, avg_over_tokens=avg)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_a_p1_scale_q_invariant_only_without_kl():
    """scale_q with β_KL = 0: c·r gives the same loss; at β_KL 0.05 it does not."""
    logps, old, ref, mask, r = _random_batch(1)
    a = _loss_grad(logps, old, ref, mask, r, scale_q=True, beta_kl=0.0)
    b = _loss_grad(logps, old, ref, mask, 3.0 * r, scale_q=True, beta_kl=0.0)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    c = _loss_grad(logps, old, ref, mask, 3.0 * r, scale_q=True, beta_kl=0.05)
    d = _loss_grad(logps, old, ref, mask, r, scale_q=True, beta_kl=0.05)
    assert not torch.allclose(c[0], d[0], atol=1e-6)


@pytest.mark.parametrize("mode", ["joint", "separate"])
def test_a_p2_swap_symmetry(mode):
    """Swapping (y1, r1) with (y2, r2) leaves loss and gradients unchanged."""
    logps, old, ref, mask, r = _random_batch(2)
    perm = torch.cat([torch.arange(4, 8), torch.arange(0, 4)])
    la, ga = _loss_grad(logps, old, ref, mask, r, clip_mode=mode)
    sw = logps.detach()[perm].clone().requires_grad_()
    lb, gb = _loss_grad(sw, old[perm], ref[perm], mask[perm], r[perm], clip_mode=mode)
    torch.testing.assert_close(la, lb, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ga, gb[perm], atol=1e-6, rtol=1e-6)


def test_a_p3_on_policy_gradient_is_pairwise_policy_gradient():
    """θ = θ_old, β_KL = 0: joint −∇L = ½ (r1 − r2) ∇(log π(y1) − log π(y2)) / P;
    separate: per-token coefficient (r1 − r2)/n."""
    logps, _, ref, mask, r = _random_batch(3)
    old = logps.detach()
    _, g = _loss_grad(logps, old, ref, mask, r, beta_kl=0.0)
    dr = (r[:4] - r[4:]).reshape(-1, 1)
    expected = torch.cat([-0.5 * dr * mask[:4], 0.5 * dr * mask[4:]]) / 4
    torch.testing.assert_close(g, expected)
    _, g = _loss_grad(logps, old, ref, mask, r, beta_kl=0.0, clip_mode="separate")
    n = mask.sum()
    expected = torch.cat([-dr * mask[:4], dr * mask[4:]]) / n
    torch.testing.assert_close(g, expected)


@pytest.mark.parametrize("mode", ["joint", "separate"])
def test_a_p4_clip_active_zero_gradient(mode):
    """q > 0 and Δ − Δ_old = 0.3 > ε (y1's first token raised by 0.3): the gradient vanishes."""
    logps, old, ref, mask, r = _pair()
    moved = (old + torch.tensor([[0.3, 0.0], [0.0, 0.0]])).requires_grad_()
    out = p3o_loss(moved, old, ref, mask, r, clip_mode=mode)
    (grad,) = torch.autograd.grad(out.loss.mean(), moved)
    if mode == "joint":
        assert torch.equal(grad, torch.zeros_like(grad))
        assert out.metrics["clip_frac"].item() == 1.0
    else:  # only the moved token is clipped; the others keep their (−q w / n) coefficient
        assert grad[0, 0].item() == 0.0 and grad[0, 1].item() != 0.0


def test_a_p5_toy_bt_bandit():
    """BT bandit u = (1, 0, −1) as rewards, β_KL 0, 16 pairs per step, SGD lr 0.5, 300 steps:
    π(best arm) > 0.9."""
    g = torch.Generator().manual_seed(0)
    u = torch.tensor([1.0, 0.0, -1.0])
    theta = torch.zeros(3, requires_grad=True)
    opt = torch.optim.SGD([theta], lr=0.5)
    for _ in range(300):
        with torch.no_grad():
            arms = torch.multinomial(torch.softmax(theta, -1), 32, replacement=True, generator=g)
        logps = torch.log_softmax(theta, -1)[arms].unsqueeze(-1)
        out = p3o_loss(logps, logps.detach(), torch.zeros_like(logps), torch.ones(32, 1), u[arms],
                       beta_kl=0.0)
        opt.zero_grad()
        out.loss.mean().backward()
        opt.step()
    assert torch.softmax(theta, -1)[0].item() > 0.9


def test_params_and_errors():
    assert P3OJointParams() == P3OJointParams(beta_kl=0.05, epsilon=0.2, ratio_clip=10.0, scale_q=False,
                                              avg_over_tokens=False)
    assert not hasattr(P3OSeparateParams(), "avg_over_tokens")
    logps, old, ref, mask, r = _pair()
    with pytest.raises(ValueError, match="unknown clip_mode 'both'"):
        p3o_loss(logps, old, ref, mask, r, clip_mode="both")
