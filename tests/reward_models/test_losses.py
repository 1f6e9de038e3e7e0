"""Golden checks for reward-model losses (spec section 6: B1-B4, G1-G3 parts; numbers derived inline)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from prefopt.core.registry import RM_LOSSES
from reward_models import losses as L

LN2 = math.log(2.0)


def t(*xs):
    return torch.tensor(xs, dtype=torch.float32)


def test_registry_names():
    import reward_models  # noqa: F401

    for name in ("bt", "listwise_bt", "plackett_luce", "gpm", "polar"):
        assert name in RM_LOSSES
    assert RM_LOSSES.get("bt") is L.bt_loss


def test_golden_bt():
    """B1: equal rewards -> ln 2 = 0.693147; gap 2 -> softplus(-2) = ln(1 + e^-2) = 0.126928."""
    out = L.bt_loss(t(0.3, -1.0), t(0.3, -1.0))
    assert out.loss.shape == (2,)
    assert torch.allclose(out.loss, torch.full((2,), LN2), atol=1e-6)
    out = L.bt_loss(t(2.5), t(0.5))
    assert out.loss.item() == pytest.approx(0.126928, abs=1e-6)


def test_b2_shift_invariance_and_centering():
    """B2: adding c to all rewards leaves L_BT unchanged; rewards (1, 1), c_center 0.01 adds 0.01*(1+1)^2."""
    rc, rr = t(0.2, 1.5, -0.7), t(-0.4, 1.0, 0.1)
    base = L.bt_loss(rc, rr).loss
    assert torch.allclose(L.bt_loss(rc + 3.7, rr + 3.7).loss, base, atol=1e-6)
    out = L.bt_loss(t(1.0), t(1.0), center_coef=0.01)
    assert out.loss.item() == pytest.approx(LN2 + 0.04, abs=1e-6)
    assert out.metrics["loss_rank"].item() == pytest.approx(LN2, abs=1e-6)


def test_b3_margin():
    """B3: gap 1 with margin 1 -> z = 0 -> ln 2; per-row tensor margins work too."""
    assert L.bt_loss(t(1.0), t(0.0), margin=1.0).loss.item() == pytest.approx(LN2, abs=1e-6)
    out = L.bt_loss(t(1.0, 3.0), t(0.0, 0.0), margin=t(1.0, 1.0))
    assert out.loss[0].item() == pytest.approx(LN2, abs=1e-6)
    assert out.loss[1].item() == pytest.approx(F.softplus(torch.tensor(-2.0)).item(), abs=1e-6)


def test_tau_l2_barrier_focal():
    """tau: gap 1, tau 0.5 -> softplus(-2). L2: rewards (1, 3), c 0.1 -> 0.1*(1+9)/2 = 0.5.
    Barrier at r = 0 (b=5): -2 ln 5 per reward. Focal: z = 0 -> p = 0 -> weight 1; large z -> weight ~0."""
    assert L.bt_loss(t(1.0), t(0.0), tau=0.5).loss.item() == pytest.approx(0.126928, abs=1e-6)
    l2 = L.bt_loss(t(1.0), t(3.0), l2_coef=0.1).loss - L.bt_loss(t(1.0), t(3.0)).loss
    assert l2.item() == pytest.approx(0.5, abs=1e-6)
    bar = L.bt_loss(t(0.0), t(0.0), barrier_coef=1.0).loss.item()
    assert bar == pytest.approx(LN2 - 2 * math.log(5.0), abs=1e-5)
    assert torch.isfinite(L.bt_loss(t(50.0), t(-50.0), barrier_coef=1.0).loss).all()
    assert L.bt_loss(t(0.0), t(0.0), focal=True).loss.item() == pytest.approx(LN2, abs=1e-6)
    # z = 1: sigmoid(1) = 0.731059, p = 0.462117, weight (1-p)^2 = 0.289318; softplus(-1) = 0.313262
    assert L.bt_loss(t(1.0), t(0.0), focal=True).loss.item() == pytest.approx(0.289318 * 0.313262, abs=1e-5)


def test_metrics_detached_and_values():
    rc = torch.tensor([1.0, 0.0, 2.0], requires_grad=True)
    rr = torch.tensor([0.0, 0.0, 3.0], requires_grad=True)
    out = L.bt_loss(rc, rr)
    assert all(not m.requires_grad for m in out.metrics.values())
    assert out.metrics["accuracy"].item() == pytest.approx(1 / 3)  # strict: the tie is wrong
    assert out.metrics["margin"].item() == pytest.approx(0.0)
    assert out.metrics["reward_min"].item() == 0.0 and out.metrics["reward_max"].item() == 3.0
    out.loss.mean().backward()
    assert rc.grad is not None


def test_b4_transitive_free_parameter_bt():
    """B4: 5 items with latent utilities 0..4, all 10 pairs: free BT reaches 100% pairwise accuracy."""
    torch.manual_seed(0)
    r = torch.zeros(5, requires_grad=True)
    pairs = [(a, b) for a in range(5) for b in range(5) if a > b]  # higher utility wins
    win, lose = torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])
    opt = torch.optim.Adam([r], lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        L.bt_loss(r[win], r[lose]).loss.mean().backward()
        opt.step()
    assert L.bt_loss(r[win], r[lose]).metrics["accuracy"].item() == 1.0


def test_golden_plackett_luce():
    """PL on (2, 1, 0): [log(e^2 + e + 1) - 2] + [log(e + 1) - 1] = 0.407606 + 0.313262 = 0.720868."""
    assert L.plackett_luce_loss(t(2.0, 1.0, 0.0)[None]).loss.item() == pytest.approx(0.720868, abs=1e-5)


def test_golden_listwise_bt():
    """Listwise (2,1,0): (2 softplus(-1) + softplus(-2))/3 = 0.251151; PL: 0.407606 + 0.313262 = 0.720868.
    K = 2 reduces both to BT; masked entries are ignored."""
    r = t(2.0, 1.0, 0.0)[None]
    assert L.listwise_bt_loss(r).loss.item() == pytest.approx((2 * 0.3132617 + 0.1269280) / 3, abs=1e-6)
    assert L.plackett_luce_loss(r).loss.item() == pytest.approx(0.720868, abs=1e-5)
    two = torch.tensor([[0.7, -0.2], [0.1, 0.4]])
    bt = L.bt_loss(two[:, 0], two[:, 1]).loss
    assert torch.allclose(L.listwise_bt_loss(two).loss, bt, atol=1e-6)
    assert torch.allclose(L.plackett_luce_loss(two).loss, bt, atol=1e-6)
    padded = torch.tensor([[0.7, -0.2, 9.0]])
    mask = torch.tensor([[True, True, False]])
    assert L.listwise_bt_loss(padded, mask=mask).loss.item() == pytest.approx(bt[0].item(), abs=1e-6)
    assert L.plackett_luce_loss(padded, mask=mask).loss.item() == pytest.approx(bt[0].item(), abs=1e-6)


def test_g1_antisymmetry():
    """G1: s(a>b) = -s(b>a), s(a>a) = 0 for random v and lam >= 0."""
    g = torch.Generator().manual_seed(0)
    va, vb = torch.randn(16, 6, generator=g), torch.randn(16, 6, generator=g)
    lam = torch.rand(16, 3, generator=g)
    assert torch.allclose(L.skew_score(va, vb, lam), -L.skew_score(vb, va, lam), atol=1e-6)
    assert torch.allclose(L.skew_score(va, va, lam), torch.zeros(16), atol=1e-6)


def test_g2_bt_reduction():
    """G2: k = 1, v = [r, 1] -> s = r_a*1 - 1*r_b = r_a - r_b."""
    ra, rb = t(0.3, 2.0, -1.0), t(1.3, -0.5, -1.0)
    va = torch.stack([ra, torch.ones(3)], -1)
    vb = torch.stack([rb, torch.ones(3)], -1)
    assert torch.allclose(L.skew_score(va, vb), ra - rb, atol=1e-6)


def test_golden_gpm():
    """s = 0 -> ln 2; hard label with s = 0.866, beta 0.1 -> softplus(-8.66) = 1.73e-4; soft label q = 0.5
    at s/beta = 1 -> 0.5 softplus(-1) + 0.5 softplus(1) = 0.5 (0.313262 + 1.313262) = 0.813262;
    margin shifts s."""
    v0 = t(1.0, 0.0)[None]
    assert L.gpm_loss(v0, v0).loss.item() == pytest.approx(LN2, abs=1e-6)
    va, vb = t(1.0, 0.0)[None], t(-0.5, 0.866)[None]  # s = 1*0.866 - 0*(-0.5)
    assert L.gpm_loss(va, vb, beta=0.1).loss.item() == pytest.approx(1.73e-4, rel=0.02)
    va, vb = t(1.0, 0.0)[None], t(0.0, 0.1)[None]  # s = 0.1, s/beta = 1
    assert L.gpm_loss(va, vb, beta=0.1, label_prob=0.5).loss.item() == pytest.approx(0.813262, abs=1e-5)
    assert L.gpm_loss(va, vb, beta=0.1, margin=0.1).loss.item() == pytest.approx(LN2, abs=1e-6)
    lam = t(2.0)[None]  # gate doubles s -> s/beta = 2
    assert L.gpm_loss(va, vb, gate=lam, beta=0.1).loss.item() == pytest.approx(0.126928, abs=1e-6)
    with pytest.raises(ValueError, match="even"):
        L.skew_score(torch.ones(1, 3), torch.ones(1, 3))


def test_golden_polar():
    """Equal rewards -> ln 2; r(ref,pos) - r(ref,neg) = 2 -> softplus(-2) = 0.126928."""
    assert L.polar_loss(t(0.0), t(0.0)).loss.item() == pytest.approx(LN2, abs=1e-6)
    assert L.polar_loss(t(-1.0), t(-3.0)).loss.item() == pytest.approx(0.126928, abs=1e-6)
