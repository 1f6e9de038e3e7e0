"""IRPO listwise loss (spec offline_losses.md section 4, checks 1-8) and its options.

Notation: softplus(x) = -log s(-x). With beta = 1:
- check 2: g = (3/log2 2, 1/log2 3, 0) = (3, 0.630930, 0);
  Lambda_1 = log((e^-0.3 + e^-0.2)/2) = -0.248751 -> softplus 0.576487;
  Lambda_2 = log((e^0.3 + e^0.1)/2) = 0.204992 -> softplus 0.800887;
  loss = (3 * 0.576487 + 0.630930 * 0.800887) / 3 = 0.744921.
- with lse_norm = sum (no log(N-1) = log 2 shift): Lambda_1 = 0.444397, Lambda_2 = 0.898139 -> 1.200580.
"""
from __future__ import annotations

import math

import pytest
import torch

import prefopt.losses  # noqa: F401
from prefopt.core.registry import LOSSES
from prefopt.losses.base import pair_inputs
from prefopt.losses.irpo import IRPOHParams, irpo, irpo_from_margins, item_scores

T = torch.tensor
LN2 = math.log(2.0)


def margins(h, psi, tau, grad=False, **hp):
    hh = T([h], requires_grad=grad)
    hp.setdefault("beta", 1.0)
    return irpo_from_margins(hh, T([psi]), T([tau]), **hp), hh


def test_check1_two_items_is_half_dpo():
    """N = 2, psi (1, 0), tau (1, 2), h (0.3, -0.2): g = (1, 0), Lambda_1 = -0.5 ->
    0.5 * -log s(0.5) = 0.5 * 0.474077 = 0.237038."""
    loss, _ = margins([0.3, -0.2], [1, 0], [1, 2])
    assert loss.item() == pytest.approx(0.237038, abs=1e-6)


def test_two_items_equal_half_dpo_on_mean_logps_token_level():
    """Equivalence through the token path: one list with two items vs. DPO on token-mean log-probs of the
    same tokens (``sigmoid_norm`` with beta 1), values and gradients (factor 1/2)."""
    g = torch.Generator().manual_seed(0)
    pol = -torch.rand(1, 9, generator=g)
    ref = -torch.rand(1, 9, generator=g)
    idx = T([[-1, -1, 0, 0, 0, -1, 1, 1, -1]])  # prompt, item 0 (3 tokens), separator, item 1 (2 tokens)
    p1 = pol.clone().requires_grad_(True)
    out = irpo(policy_token_logps=p1, ref_token_logps=ref, item_index=idx, relevance=T([[1, 0]]),
               rank=T([[1, 2]]), beta=1.0)
    out.loss.sum().backward()
    # DPO batch [chosen; rejected] = item 0 tokens; item 1 tokens
    mask = torch.cat([(idx == 0), (idx == 1)]).long()
    p2 = pol.clone().requires_grad_(True)
    tok = torch.cat([p2, p2])
    d = LOSSES.get("sigmoid_norm")(pair_inputs(tok, mask, torch.cat([ref, ref])),
                                   LOSSES.get("sigmoid_norm").hparams_cls(beta=1.0))
    assert out.loss.item() == pytest.approx(0.5 * d.loss.item(), abs=1e-6)
    (0.5 * d.loss.sum()).backward()
    torch.testing.assert_close(p1.grad, p2.grad)


def test_golden_loss__irpo():
    """Check 2: N = 3, h (0.2, -0.1, 0.0), psi (2, 1, 0), tau (1, 2, 3) -> 0.744921 (mean normalisation);
    the same through the registry/token path with one token per item."""
    loss, _ = margins([0.2, -0.1, 0.0], [2, 1, 0], [1, 2, 3])
    assert loss.item() == pytest.approx(0.744921, abs=1e-6)
    inp = {"policy_token_logps": T([[0.0, 0.2, -0.1, 0.0]]), "ref_token_logps": torch.zeros(1, 4),
           "item_index": T([[-1, 0, 1, 2]]), "relevance": T([[2, 1, 0]]), "rank": T([[1, 2, 3]])}
    out = LOSSES.get("irpo")(inp, IRPOHParams())
    assert out.loss.item() == pytest.approx(0.744921, abs=1e-6)
    s, _ = margins([0.2, -0.1, 0.0], [2, 1, 0], [1, 2, 3], lse_norm="sum")
    assert s.item() == pytest.approx(1.200580, abs=1e-6)


def test_check3_equal_margins():
    """All h equal -> Lambda = 0 -> ln 2 * mean(g) = 0.693147 * (3 + 0.630930)/3 = 0.838923."""
    loss, _ = margins([0.4, 0.4, 0.4], [2, 1, 0], [1, 2, 3])
    assert loss.item() == pytest.approx(0.838923, abs=1e-6)


def test_check4_all_irrelevant():
    """All psi = 0 -> g = 0 -> loss 0 and zero gradient."""
    loss, h = margins([0.3, -2.0, 1.0], [0, 0, 0], [1, 2, 3], grad=True)
    assert loss.item() == 0.0
    loss.sum().backward()
    assert torch.all(h.grad == 0)


def test_check5_permutation_invariance():
    """Permuting items together with (psi, tau) leaves the loss unchanged."""
    h, psi, tau = [0.5, -0.3, 0.1, 0.9], [2, 0, 1, 0], [2, 1, 4, 3]
    base, _ = margins(h, psi, tau)
    for perm in ([3, 2, 1, 0], [1, 3, 0, 2]):
        p, _ = margins([h[i] for i in perm], [psi[i] for i in perm], [tau[i] for i in perm])
        assert p.item() == pytest.approx(base.item(), abs=1e-6)


def test_check6_gradient_signs():
    """Items with psi = 0 get d loss / d h >= 0 (pushed down); a single relevant item gets < 0."""
    loss, h = margins([0.1, 0.5, -0.4, 0.0], [0, 2, 0, 0], [1, 2, 3, 4], grad=True)
    loss.sum().backward()
    assert h.grad[0, 1] < 0
    assert torch.all(h.grad[0, [0, 2, 3]] >= 0)
    loss, h = margins([0.1, 0.5, -0.4, 0.0], [1, 2, 0, 0], [1, 2, 3, 4], grad=True)
    loss.sum().backward()
    assert torch.all(h.grad[0, [2, 3]] >= 0)


def test_check7_competitor_weights_are_softmax():
    """One relevant item i: d loss / d h_j = (g_i / N) s(Lambda_i) beta softmax_j(beta(h_j - h_i)) for j != i
    (autograd vs. closed form), so the competitors' gradients are proportional to the softmax."""
    beta, hv = 2.0, [0.3, -0.1, 0.7, 0.2]
    loss, h = margins(hv, [0, 1, 0, 0], [2, 1, 3, 4], grad=True, beta=beta)
    loss.sum().backward()
    i, others = 1, [0, 2, 3]
    logits = T([beta * (hv[j] - hv[i]) for j in others])
    sm = torch.softmax(logits, 0)
    lam = torch.logsumexp(logits, 0) - math.log(3)
    expect = (1.0 / 4) * torch.sigmoid(lam) * beta * sm  # g_i = 1/log2(2) = 1
    torch.testing.assert_close(h.grad[0, others], expect)
    torch.testing.assert_close(h.grad[0, others] / h.grad[0, others].sum(), sm)


def test_check8_item_score_uses_only_its_tokens():
    """Perturbing item 1's tokens (and prompt/separators) leaves item 0's score unchanged; scores are
    token means over each item's tokens."""
    lp = T([[-9.0, -1.0, -3.0, -7.0, -2.0, -4.0, -6.0]])
    idx = T([[-1, 0, 0, -1, 1, 1, 1]])
    s, n = item_scores(lp, idx, 2)
    assert s.tolist()[0] == pytest.approx([-2.0, -4.0]) and n.tolist()[0] == [2.0, 3.0]
    lp2 = lp.clone()
    lp2[0, [0, 3, 4, 5]] = T([5.0, float("nan"), 1.0, 2.0])
    s2, _ = item_scores(lp2, idx, 2)
    assert s2[0, 0].item() == -2.0


def test_options_weights_and_batch_reduction():
    """weight: position_only 1/log2(1+tau), harmonic (2^psi - 1)/tau; batch_reduction sum scales the
    per-example losses by B (trainer mean = batch sum); equal margins make each term ln 2 * g."""
    h, psi, tau = [0.0, 0.0, 0.0], [2, 1, 0], [1, 2, 3]
    po, _ = margins(h, psi, tau, weight="position_only")
    assert po.item() == pytest.approx(LN2 * (1 + 1 / math.log2(3) + 0.5) / 3, abs=1e-6)
    hm, _ = margins(h, psi, tau, weight="harmonic")
    assert hm.item() == pytest.approx(LN2 * (3 + 0.5) / 3, abs=1e-6)
    inp = {"policy_token_logps": T([[0.2, -0.1, 0.0], [0.2, -0.1, 0.0]]), "ref_token_logps": torch.zeros(2, 3),
           "item_index": T([[0, 1, 2], [0, 1, 2]]), "relevance": T([[2, 1, 0]] * 2), "rank": T([[1, 2, 3]] * 2)}
    mean = LOSSES.get("irpo")(inp, IRPOHParams()).loss
    summ = LOSSES.get("irpo")(inp, IRPOHParams(batch_reduction="sum")).loss
    torch.testing.assert_close(summ.mean(), mean.sum())


def test_variable_list_length_and_extreme_margins():
    """Padding items (no tokens / item_mask 0) are excluded: a 3-item list padded to 5 equals the 3-item
    value; huge margins stay finite (diagonal excluded by a mask, not a large negative constant); a list
    with a single item gives loss 0 and finite (zero) gradients."""
    loss, _ = margins([0.2, -0.1, 0.0, 50.0, -50.0], [2, 1, 0, 2, 2], [1, 2, 3, 4, 5],
                      item_mask=T([[1, 1, 1, 0, 0]]))
    assert loss.item() == pytest.approx(0.744921, abs=1e-6)
    big, h = margins([1e4, -1e4, 0.0], [2, 1, 0], [1, 2, 3], grad=True)
    big.sum().backward()
    assert torch.isfinite(big).all() and torch.isfinite(h.grad).all()
    one, h1 = margins([0.3, 0.0], [2, 0], [1, 2], grad=True, item_mask=T([[1, 0]]))
    one.sum().backward()
    assert one.item() == 0.0 and torch.all(h1.grad == 0)
