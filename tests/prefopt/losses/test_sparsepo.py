"""SparsePO (spec offline_losses.md section 2, checks 1-11) and token KL from logits (prefopt.losses.kl).

Per-token fixture (beta = 1, two valid tokens per sequence, plus one padding column holding junk):
rho_w = [0.1, 0.2], rho_l = [-0.1, 0.3], KL_w = [0.01, 0.02], KL_l = [0.05, 0.0].
Policy token log-probs are rho (reference log-probs 0), so U = sum m_u rho, D = sum m_d KL.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import prefopt.losses  # noqa: F401
from prefopt.core.registry import LOSSES
from prefopt.losses.base import pair_inputs
from prefopt.losses.kl import token_kl
from prefopt.losses.sparsepo import (
    MASK_PROVIDERS,
    LearnedMaskHead,
    SparsePOHParams,
    _rescale,
    activation_mask,
    sparsepo,
)

T = torch.tensor
LN2 = math.log(2.0)
MASK = T([[1, 1, 0], [1, 1, 0]])


def fixture(grad: bool = True):
    rho = T([[0.1, 0.2, 7.0], [-0.1, 0.3, -9.0]], requires_grad=grad)
    kl = T([[0.01, 0.02, 5.0], [0.05, 0.0, 5.0]])
    return rho, torch.zeros(2, 3), kl


def loss_of(m_u, m_d=None, beta=1.0, shared=None, **hp):
    rho, ref, kl = fixture()
    mu = T(m_u, dtype=torch.float32).expand(2, 3) if not torch.is_tensor(m_u) else m_u
    md = None if m_d is None else (T(m_d, dtype=torch.float32).expand(2, 3) if not torch.is_tensor(m_d) else m_d)
    out = sparsepo(policy_token_logps=rho, ref_token_logps=ref, completion_mask=MASK, token_kl=kl, mask_u=mu,
                   mask_d=md, beta=beta, shared_mask=(md is None) if shared is None else shared, **hp)
    return out, rho


def test_check1_equals_dpo_values_and_gradients():
    """m_u = 1, m_d = 0 -> argument 0.3 - 0.2 = 0.1 -> loss -log s(0.1) = 0.644397 = DPO with h = 0.1;
    gradients on token log-probs identical to DPO's."""
    out, rho = loss_of([1.0, 1.0, 1.0], [0.0, 0.0, 0.0])
    assert out.loss.item() == pytest.approx(0.644397, abs=1e-6)
    out.loss.sum().backward()
    rho2 = rho.detach().clone().requires_grad_(True)
    d = LOSSES.get("dpo")(pair_inputs(rho2, MASK, torch.zeros(2, 3)), LOSSES.get("dpo").hparams_cls(beta=1.0))
    assert d.loss.item() == pytest.approx(out.loss.item(), abs=1e-7)
    d.loss.sum().backward()
    torch.testing.assert_close(rho.grad, rho2.grad)


def test_golden_loss__sparsepo():
    """Check 2: m_u = m_d = 1 -> 0.1 - (0.05 - 0.03) = 0.08 -> loss 0.653947 (TDPO1, not DPO);
    implicit rewards beta(U - D): chosen 0.3 - 0.03 = 0.27, rejected 0.2 - 0.05 = 0.15."""
    out, _ = loss_of([1.0, 1.0, 1.0])
    assert out.loss.item() == pytest.approx(0.653947, abs=1e-6)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(0.27, abs=1e-6)
    assert out.metrics["rewards/rejected"].item() == pytest.approx(0.15, abs=1e-6)
    assert out.metrics["sparsepo/mask_sparsity_u"].item() == 0.0
    assert out.metrics["sparsepo/mask_l1_u"].item() == pytest.approx(2.0)


def test_check3_partial_masks():
    """m = [1, 0] on both -> U: 0.1 - (-0.1) = 0.2; D_l - D_w = 0.05 - 0.01 = 0.04 -> 0.16 -> 0.616344;
    sparsity 50 % of valid tokens."""
    out, _ = loss_of([1.0, 0.0, 1.0])
    assert out.loss.item() == pytest.approx(0.616344, abs=1e-6)
    assert out.metrics["sparsepo/mask_sparsity_u"].item() == pytest.approx(0.5)


def _from_logits(seed=0, same=False, V=5):
    """Policy/ref logits (2, 3, V); labels fixed; returns (policy logits leaf, token logps, ref logps, KL)."""
    g = torch.Generator().manual_seed(seed)
    ref_logits = torch.randn(2, 3, V, generator=g)
    pol = (ref_logits.clone() if same else torch.randn(2, 3, V, generator=g)).requires_grad_(True)
    labels = T([[1, 2, 3], [0, 4, 2]])
    lp = F.log_softmax(pol, -1).gather(-1, labels[..., None]).squeeze(-1)
    rlp = F.log_softmax(ref_logits, -1).gather(-1, labels[..., None]).squeeze(-1)
    return pol, lp, rlp, token_kl(pol, ref_logits, chunk_size=2)


def test_check4_zero_masks_ln2_and_zero_gradient():
    """m_u = m_d = 0 -> argument 0 -> ln 2, and d loss / d policy logits == 0 everywhere."""
    pol, lp, rlp, kl = _from_logits()
    z = torch.zeros(2, 3)
    out = sparsepo(policy_token_logps=lp, ref_token_logps=rlp, completion_mask=MASK, token_kl=kl, mask_u=z, beta=1.0)
    assert out.loss.item() == pytest.approx(LN2, abs=1e-7)
    out.loss.sum().backward()
    assert torch.count_nonzero(pol.grad) == 0


def test_check5_masked_and_padding_tokens_get_zero_gradient():
    """Token 0 of chosen has m_u = m_d = 0 and column 2 is padding: their policy logits get zero gradient;
    the other valid tokens do get gradient."""
    pol, lp, rlp, kl = _from_logits(seed=1)
    m = T([[0.0, 1.0, 1.0], [1.0, 0.5, 1.0]])
    out = sparsepo(policy_token_logps=lp, ref_token_logps=rlp, completion_mask=MASK, token_kl=kl, mask_u=m, beta=1.0)
    out.loss.sum().backward()
    gn = pol.grad.abs().sum(-1)
    assert gn[0, 0] == 0 and gn[0, 2] == 0 and gn[1, 2] == 0
    assert gn[0, 1] > 0 and gn[1, 0] > 0 and gn[1, 1] > 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_check6_policy_equals_reference_gives_ln2(seed):
    """pi == pi_ref -> rho = KL = 0 -> ln 2 for any (random, non-negative) masks."""
    pol, lp, rlp, kl = _from_logits(same=True)
    assert torch.all(kl == 0)
    g = torch.Generator().manual_seed(seed)
    mu, md = torch.rand(2, 3, generator=g) * 3, torch.rand(2, 3, generator=g)
    out = sparsepo(policy_token_logps=lp, ref_token_logps=rlp, completion_mask=MASK, token_kl=kl, mask_u=mu,
                   mask_d=md, beta=1.0, shared_mask=False)
    assert out.loss.item() == pytest.approx(LN2, abs=1e-6)


def test_check7_token_kl_nonnegative_zero_iff_equal_and_chunking():
    """KL >= 0; = 0 exactly at equal positions, > 0 elsewhere; equals torch's kl_div; chunk size and
    activation recomputation change neither values nor gradients."""
    g = torch.Generator().manual_seed(3)
    ref = torch.randn(2, 5, 7, generator=g)
    pol = torch.randn(2, 5, 7, generator=g)
    pol[:, 1] = ref[:, 1]
    pol[0, 3] = ref[0, 3] + 2.5  # a shift of all logits leaves the distribution unchanged
    kl = token_kl(pol, ref)
    assert torch.all(kl >= 0)
    assert torch.all(kl[:, 1] == 0) and kl[0, 3].item() == pytest.approx(0.0, abs=1e-6)
    assert torch.all(kl[:, [0, 2, 4]] > 0)
    expect = F.kl_div(F.log_softmax(pol, -1), F.log_softmax(ref, -1), log_target=True, reduction="none").sum(-1)
    torch.testing.assert_close(kl, expect.clamp(min=0))
    grads = []
    for cs, rc in ((1, True), (2, False), (100, True)):
        p = pol.clone().requires_grad_(True)
        k = token_kl(p, ref, chunk_size=cs, recompute=rc)
        torch.testing.assert_close(k, kl)
        (k * torch.arange(5.0)).sum().backward()
        grads.append(p.grad)
    torch.testing.assert_close(grads[0], grads[1])
    torch.testing.assert_close(grads[0], grads[2])
    with pytest.raises(ValueError, match="shapes differ"):
        token_kl(pol, ref[:, :4])


@pytest.mark.parametrize("c", [0.5, 2.0, 3.0])
def test_check8_scaling_mask_equals_dpo_with_scaled_beta(c):
    """m_u = c, m_d = 0 -> -log s(beta c h): equals DPO at beta * c (h = 0.1 here)."""
    out, _ = loss_of([c] * 3, [0.0] * 3, beta=1.0)
    rho, ref, _ = fixture(grad=False)
    d = LOSSES.get("dpo")(pair_inputs(rho, MASK, ref), LOSSES.get("dpo").hparams_cls(beta=c))
    assert out.loss.item() == pytest.approx(d.loss.item(), abs=1e-7)


def test_check9_activation_mask():
    """Each rescaled map spans exactly [0, 1] over valid tokens; the average over layers / hook types lies in
    [0, 1]; degenerate sequences (one valid token, constant activations) get 1.0, never NaN; no gradient."""
    g = torch.Generator().manual_seed(4)
    mask = T([[0, 1, 1, 1, 1], [0, 0, 1, 0, 0], [1, 1, 1, 0, 0]])
    acts = {"mlp": [torch.randn(3, 5, 8, generator=g, requires_grad=True) for _ in range(2)],
            "resid": [torch.randn(3, 5, 8, generator=g)], "logits": [torch.randn(3, 5, 11, generator=g)]}
    acts["mlp"][0].data[2] = 4.0  # constant activations on row 2 for this tensor
    for a in acts["resid"] + acts["mlp"][1:]:
        r = _rescale(a.mean(-1), mask.bool())
        assert r[0, 1:].min().item() == 0.0 and r[0, 1:].max().item() == 1.0
    r0 = _rescale(acts["mlp"][0].mean(-1), mask.bool())
    assert torch.all(r0[2, :3] == 1.0) and torch.all(r0[1, 2] == 1.0)
    m = activation_mask(acts, mask)
    assert not m.requires_grad and not torch.isnan(m).any()
    assert torch.all((m >= 0) & (m <= 1))
    assert m[1, 2].item() == 1.0  # single valid token -> 1.0 for every tensor
    assert torch.all(m[~mask.bool()] == 0)
    assert MASK_PROVIDERS.get("activation") is activation_mask
    # layers averaged within a type, then types averaged
    per = lambda xs: torch.stack([_rescale(x.mean(-1), mask.bool()) for x in xs]).mean(0)  # noqa: E731
    expect = (per(acts["mlp"]) + per(acts["resid"]) + per(acts["logits"])) / 3
    torch.testing.assert_close(m, expect.detach())


@pytest.mark.parametrize("shared", [True, False])
def test_check10_l1_term(shared):
    """With mask m (valid sum over chosen + rejected = 0.3+0.7+0.5+0.2 = 1.7, padding excluded) and
    lambda = 0.01: separate masks add lambda_u*1.7 + lambda_d*1.7; a shared mask halves each coefficient,
    so lambda_u = lambda_d = lambda adds lambda * 1.7 in total."""
    m = T([[0.3, 0.7, 9.0], [0.5, 0.2, 9.0]])
    lam = 0.01
    base, _ = loss_of(m, None if shared else m, shared=shared)
    pen, _ = loss_of(m, None if shared else m, shared=shared, lambda_u=lam, lambda_d=lam)
    expect = lam * 1.7 if shared else 2 * lam * 1.7
    assert pen.loss.item() - base.loss.item() == pytest.approx(expect, abs=1e-6)
    only_u, _ = loss_of(m, None if shared else m, shared=shared, lambda_u=lam)
    assert only_u.loss.item() - base.loss.item() == pytest.approx(lam * 1.7 * (0.5 if shared else 1), abs=1e-6)


def test_check11_gradient_sign_on_chosen_rho():
    """d loss / d rho_t(y_w) = -beta s(-arg) m_u,t <= 0 wherever m_u,t > 0; rejected is >= 0."""
    m = T([[0.0, 2.0, 1.0], [1.0, 0.3, 1.0]])
    out, rho = loss_of(m, m * 0.5, shared=False)
    out.loss.sum().backward()
    assert rho.grad[0, 1] < 0 and rho.grad[0, 0] == 0 and rho.grad[0, 2] == 0
    assert torch.all(rho.grad[1, :2] > 0)


def test_learned_mask_head_simple_all():
    """LayerNorm -> Linear(h,1) -> ReLU -> dropout per layer; Linear(L,1,no bias) -> ReLU -> dropout.
    Output (B, T) >= 0 with exact zeros possible; gradients reach the head through the loss."""
    torch.manual_seed(0)
    head = LearnedMaskHead(hidden_size=8, num_layers=3, dropout=0.01).eval()
    assert head.mixer.bias is None and len(head.layer_heads) == 3
    hs = [torch.randn(2, 3, 8) for _ in range(3)]
    m = head(hs, MASK)
    assert m.shape == (2, 3) and torch.all(m >= 0) and torch.all(m[:, 2] == 0)
    with torch.no_grad():
        head.mixer.weight.fill_(-1.0)
    assert torch.all(head(hs) == 0)  # ReLU gives exact zeros (sparsity)
    with torch.no_grad():
        head.mixer.weight.fill_(1.0)
        for lh in head.layer_heads:
            lh.bias.fill_(1.0)
    rho, ref, kl = fixture(grad=False)
    out = sparsepo(policy_token_logps=rho, ref_token_logps=ref, completion_mask=MASK, token_kl=kl,
                   mask_u=head(hs, MASK), beta=1.0, lambda_u=0.01, lambda_d=0.01)
    out.loss.sum().backward()
    assert head.mixer.weight.grad is not None and head.mixer.weight.grad.abs().sum() > 0
    assert MASK_PROVIDERS.get("learned") is LearnedMaskHead


def test_simple_providers_and_registry_entry():
    z = MASK_PROVIDERS.get("zeros")(MASK)
    o = MASK_PROVIDERS.get("ones")(MASK)
    r = MASK_PROVIDERS.get("random")(MASK, generator=torch.Generator().manual_seed(0))
    assert torch.all(z == 0) and torch.equal(o, MASK.float())
    assert torch.all((r >= 0) & (r < 1)) and torch.all(r[:, 2] == 0)
    spec = LOSSES.get("sparsepo")
    assert spec.needs_ref and spec.needs_token_level and spec.hparams_cls() == SparsePOHParams()
    rho, ref, kl = fixture(grad=False)
    out = spec({"policy_token_logps": rho, "ref_token_logps": ref, "completion_mask": MASK, "token_kl": kl,
                "mask_u": o}, SparsePOHParams(beta=1.0))
    assert out.loss.item() == pytest.approx(0.653947, abs=1e-6)
