"""Baseline pairwise losses: spec offline_losses.md section 1 (acceptance checks 1-6) + golden values.

Golden setup (unless stated): beta = 0.1, policy logps (chosen, rejected) = (-10, -12), reference
(-11, -11) -> chosen ratio +1, rejected ratio -1, h = 2, beta h = 0.2,
-log s(0.2) = log(1 + e^-0.2) = 0.598139, -log s(-0.2) = 0.798139.
"""
from __future__ import annotations

import dataclasses
import inspect
import math

import pytest
import torch

import prefopt.losses  # noqa: F401  (registration)
from prefopt.core.config import from_dict
from prefopt.core.errors import ConfigError
from prefopt.core.registry import LOSSES
from prefopt.losses import pairwise as pw
from prefopt.losses.base import LossOutput, pair_inputs

T = torch.tensor
LN2 = math.log(2.0)


def seq(pc=-10.0, pr=-12.0, rc=-11.0, rr=-11.0, nc=4.0, nr=2.0, grad=False):
    d = {"policy_chosen_logps": T([pc], requires_grad=grad), "policy_rejected_logps": T([pr], requires_grad=grad),
         "ref_chosen_logps": T([rc]), "ref_rejected_logps": T([rr]),
         "chosen_lengths": T([nc]), "rejected_lengths": T([nr])}
    return d


def run(name, inputs, **hp):
    spec = LOSSES.get(name)
    return spec(inputs, spec.hparams_cls(**hp))


def val(name, inputs, **hp) -> float:
    return run(name, inputs, **hp).loss.item()


# ---------------------------------------------------------------- golden values (one per registry name)

def test_golden_loss__dpo():
    """h = 2, beta 0.1 -> -log s(0.2) = 0.598139; rewards 0.1 / -0.1, margin 0.2, accuracy 1."""
    out = run("dpo", seq())
    assert isinstance(out, LossOutput)
    assert out.loss.shape == (1,)
    assert out.loss.item() == pytest.approx(0.598139, abs=1e-6)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(0.1, abs=1e-6)
    assert out.metrics["rewards/rejected"].item() == pytest.approx(-0.1, abs=1e-6)
    assert out.metrics["rewards/margins"].item() == pytest.approx(0.2, abs=1e-6)
    assert out.metrics["rewards/accuracies"].item() == 1.0
    assert out.metrics["logps/chosen"].item() == -10.0
    assert all(not m.requires_grad for m in run("dpo", seq(grad=True)).metrics.values())


def test_golden_loss__sigmoid():
    """``sigmoid`` is TRL's name for DPO: the same registry entry, same value 0.598139."""
    assert LOSSES.get("sigmoid") is LOSSES.get("dpo")
    assert val("sigmoid", seq()) == pytest.approx(0.598139, abs=1e-6)


def test_golden_loss__cdpo():
    """epsilon 0.1: 0.9 * 0.598139 + 0.1 * 0.798139 = 0.618139."""
    assert val("cdpo", seq(), epsilon=0.1) == pytest.approx(0.618139, abs=1e-6)


def test_golden_loss__robust():
    """epsilon 0.1: (0.9 * 0.598139 - 0.1 * 0.798139) / 0.8 = 0.573139."""
    assert val("robust", seq(), epsilon=0.1) == pytest.approx(0.573139, abs=1e-6)


def test_golden_loss__hinge():
    """max(0, 1 - 0.2) = 0.8; beyond the margin (h = 20, beta h = 2) the loss is 0."""
    assert val("hinge", seq()) == pytest.approx(0.8, abs=1e-6)
    assert val("hinge", seq(pc=-1.0, pr=-21.0)) == 0.0


def test_golden_loss__ipo():
    """Token-averaged ratios: +1/4 and -1/2 -> h_bar 0.75; (0.75 - 1/(2*0.1))^2 = 4.25^2 = 18.0625."""
    assert val("ipo", seq()) == pytest.approx(18.0625, abs=1e-5)


def test_golden_loss__sigmoid_norm():
    """h_bar = 0.75, beta 0.1 -> -log s(0.075) = 0.656350."""
    assert val("sigmoid_norm", seq()) == pytest.approx(0.656350, abs=1e-6)


def test_golden_loss__simpo():
    """avg logps -4/4 = -1 and -6/2 = -3; beta 2, gamma 0.5: -log s(2*2 - 0.5) = -log s(3.5) = 0.029750."""
    inp = {k: v for k, v in seq(pc=-4.0, pr=-6.0).items() if not k.startswith("ref")}
    assert val("simpo", inp, beta=2.0, gamma=0.5) == pytest.approx(0.029750, abs=1e-6)


def test_golden_loss__cpo():
    """logps -4 / -6, beta 0.1: -log s(0.2) + 1.0 * (4/4) = 1.598139."""
    inp = {k: v for k, v in seq(pc=-4.0, pr=-6.0).items() if not k.startswith("ref")}
    assert val("cpo", inp) == pytest.approx(1.598139, abs=1e-6)


def test_golden_loss__orpo():
    """Token means -1 / -3: log odds = -1 - log(1 - e^-1) = -0.541325 and -3 - log(1 - e^-3) = -2.948931;
    NLL 1 - 0.1 * log s(2.407606) = 1 + 0.1 * 0.086206 = 1.008621."""
    inp = {k: v for k, v in seq(pc=-4.0, pr=-6.0).items() if not k.startswith("ref")}
    assert val("orpo", inp) == pytest.approx(1.008621, abs=1e-6)


def test_golden_loss__kto():
    """beta 0.1, r = (1 desirable, -1 undesirable), z = mean(KL inputs) = 0.5:
    1 - s(0.1*(1-0.5)) = 0.487503; 1 - s(0.1*(0.5+1)) = 0.462570. z < 0 is clamped to 0."""
    inp = {"policy_logps": T([-3.0, -5.0]), "ref_logps": T([-4.0, -4.0]), "labels": T([True, False]),
           "kl_policy_logps": T([-1.0, -2.0]), "kl_ref_logps": T([-2.0, -2.0])}
    out = run("kto", inp)
    assert out.loss.tolist() == pytest.approx([0.487503, 0.462570], abs=1e-6)
    assert out.metrics["kl"].item() == pytest.approx(0.5)
    inp["kl_policy_logps"] = T([-5.0, -5.0])
    assert run("kto", inp).loss[0].item() == pytest.approx(1 - 1 / (1 + math.exp(-0.1)), abs=1e-6)


def test_golden_loss__sft():
    """Token-mean NLL on chosen: -(-4)/4 = 1."""
    assert val("sft", {"policy_chosen_logps": T([-4.0]), "chosen_lengths": T([4.0])}) == pytest.approx(1.0)


# ---------------------------------------------------------------- acceptance checks section 1

def test_check1_zero_margin():
    """h = 0 -> sigmoid ln 2, hinge 1; robust and cdpo at epsilon 0 equal sigmoid (here and at h = 2)."""
    z = seq(pc=-5.0, pr=-5.0, rc=-5.0, rr=-5.0)
    assert val("sigmoid", z) == pytest.approx(LN2, abs=1e-6)
    assert val("hinge", z) == pytest.approx(1.0)
    for inp in (z, seq()):
        assert val("robust", inp, epsilon=0.0) == pytest.approx(val("sigmoid", inp), abs=1e-7)
        assert val("cdpo", inp, epsilon=0.0) == pytest.approx(val("sigmoid", inp), abs=1e-7)


def test_robust_cdpo_epsilon0_gradients_equal_sigmoid():
    """Equivalence includes gradients."""
    grads = []
    for name in ("sigmoid", "robust", "cdpo"):
        inp = seq(grad=True)
        run(name, inp).loss.sum().backward()
        grads.append(torch.stack([inp["policy_chosen_logps"].grad, inp["policy_rejected_logps"].grad]))
    torch.testing.assert_close(grads[1], grads[0])
    torch.testing.assert_close(grads[2], grads[0])


@pytest.mark.parametrize("eps,h", [(0.1, 0.7), (0.3, -1.3), (0.45, 4.0)])
def test_check2_robust_unbiased(eps, h):
    """(1-e) robust(h) + e robust(-h) == sigmoid(h) (beta 1, margins +-h)."""
    pos, neg = seq(pc=h, pr=0.0, rc=0.0, rr=0.0), seq(pc=-h, pr=0.0, rc=0.0, rr=0.0)
    lhs = (1 - eps) * val("robust", pos, beta=1.0, epsilon=eps) + eps * val("robust", neg, beta=1.0, epsilon=eps)
    assert lhs == pytest.approx(val("sigmoid", pos, beta=1.0), abs=1e-6)


def test_check3_ipo_zero_and_gradient_sign_change():
    """beta 0.1 -> target h_bar = 5 (lengths 1); loss 0 there; d loss / d h_bar = 2(h_bar - 5) flips sign."""
    assert val("ipo", seq(pc=5.0, pr=0.0, rc=0.0, rr=0.0, nc=1, nr=1)) == 0.0
    signs = []
    for pc in (4.9, 5.1):
        inp = seq(pc=pc, pr=0.0, rc=0.0, rr=0.0, nc=1, nr=1, grad=True)
        run("ipo", inp).loss.sum().backward()
        signs.append(inp["policy_chosen_logps"].grad.item())
    assert signs[0] < 0 < signs[1]
    assert signs[0] == pytest.approx(-0.2, abs=1e-4)


@pytest.mark.parametrize("pc", [-30.0, -10.0, 0.0, 25.0])
def test_check4_sigmoid_gradient_signs(pc):
    """d loss / d logp(y_w) = -beta s(-beta h) < 0; d loss / d logp(y_l) = +beta s(-beta h) > 0."""
    inp = seq(pc=pc, grad=True)
    run("sigmoid", inp).loss.sum().backward()
    assert inp["policy_chosen_logps"].grad.item() < 0 < inp["policy_rejected_logps"].grad.item()


@pytest.mark.parametrize("name", ["sigmoid", "cdpo", "robust", "hinge", "ipo", "sigmoid_norm",
                                  "simpo", "cpo", "orpo", "sft"])
def test_check5_padding_invariance(name):
    """Token tensors (2B, T) [chosen; rejected]; values at mask-0 positions (prompt/padding, incl. nan/inf)
    must not change the loss or its gradient."""
    g = torch.Generator().manual_seed(0)
    pol = -torch.rand(4, 6, generator=g) - 0.1
    ref = -torch.rand(4, 6, generator=g) - 0.1
    mask = T([[0, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1], [0, 1, 1, 0, 0, 0], [0, 1, 1, 1, 1, 0]])
    spec = LOSSES.get(name)
    hp = spec.hparams_cls()

    def go(p, r):
        p = p.clone().requires_grad_(True)
        out = spec(pair_inputs(p, mask, r), hp).loss
        out.sum().backward()
        return out.detach(), p.grad

    base_l, base_g = go(pol, ref)
    junk = torch.where(mask.bool(), pol, T(float("nan")))
    junk[0, 5] = float("inf")
    junk_ref = torch.where(mask.bool(), ref, T(-1e9))
    l2, g2 = go(junk, junk_ref)
    torch.testing.assert_close(l2, base_l)
    torch.testing.assert_close(g2, base_g)
    assert torch.all(g2[~mask.bool()] == 0)


@pytest.mark.parametrize("name", ["simpo", "cpo", "orpo", "sft"])
def test_check6_reference_free(name):
    """Reference-free losses neither require nor read reference log-probs."""
    spec = LOSSES.get(name)
    assert not spec.needs_ref
    assert not any(k.startswith("ref") for k in spec.inputs + spec.optional_inputs)
    inp = seq(pc=-4.0, pr=-6.0)
    with_ref = spec(inp, spec.hparams_cls()).loss
    inp.update(ref_chosen_logps=T([float("nan")]), ref_rejected_logps=T([float("nan")]))
    torch.testing.assert_close(spec(inp, spec.hparams_cls()).loss, with_ref)
    no_ref = {k: v for k, v in inp.items() if not k.startswith("ref")}
    torch.testing.assert_close(spec(no_ref, spec.hparams_cls()).loss, with_ref)


def test_missing_input_named():
    with pytest.raises(ValueError, match="ref_chosen_logps"):
        LOSSES.get("dpo")({"policy_chosen_logps": T([0.0]), "policy_rejected_logps": T([0.0])})


def test_hparams_from_yaml_dict():
    """Trainer path: hparams built by prefopt.core.config.from_dict with spec defaults."""
    spec = LOSSES.get("robust")
    hp = from_dict(spec.hparams_cls, {"beta": 0.2, "epsilon": "1e-1"})
    assert (hp.beta, hp.epsilon) == (0.2, 0.1)
    assert spec.hparams_cls() == pw.RobustHParams(beta=0.1, epsilon=0.0)
    with pytest.raises(ConfigError, match="0.5"):
        from_dict(spec.hparams_cls, {"epsilon": 0.5})
    with pytest.raises(ConfigError, match="unknown config key"):
        from_dict(LOSSES.get("dpo").hparams_cls, {"bta": 0.1})
    assert LOSSES.get("simpo").hparams_cls() == pw.SimPOHParams(beta=0.1, gamma=0.5)
    assert LOSSES.get("cpo").hparams_cls() == pw.CPOHParams(beta=0.1, alpha=1.0)
    assert LOSSES.get("orpo").hparams_cls() == pw.ORPOHParams(lam=0.1)


def test_fp16_inputs_computed_in_float32():
    """Half-precision inputs give a float32 loss equal to the float32 computation."""
    inp = {k: v.half() for k, v in seq().items()}
    out = run("dpo", inp)
    assert out.loss.dtype == torch.float32
    assert out.loss.item() == pytest.approx(0.598139, abs=1e-6)


def test_registry_contract_every_loss_spec():
    """Every LOSSES entry is a LossSpec whose hparams_cls fields and input names are keyword parameters of
    fn, whose hparams_cls() builds with defaults, and whose required inputs have no defaults in fn."""
    from prefopt.losses.base import LossSpec

    for name in LOSSES.names():
        spec = LOSSES.get(name)
        assert isinstance(spec, LossSpec), name
        params = inspect.signature(spec.fn).parameters
        fields = [f.name for f in dataclasses.fields(spec.hparams_cls)]
        assert dataclasses.is_dataclass(spec.hparams_cls) and spec.hparams_cls.__dataclass_params__.frozen
        spec.hparams_cls()
        for k in (*fields, *spec.inputs, *spec.optional_inputs):
            assert k in params and params[k].kind is inspect.Parameter.KEYWORD_ONLY, (name, k)
        for k in spec.inputs:
            assert params[k].default is inspect.Parameter.empty, (name, k)
        for k in fields:
            assert params[k].default == getattr(spec.hparams_cls(), k), (name, k)
