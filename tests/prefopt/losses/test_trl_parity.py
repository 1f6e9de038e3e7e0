"""Parity of our offline losses with TRL 1.16.0's own loss code on identical log-probs (to 1e-6; relative
2e-7 where a loss exceeds 5, i.e. float32 resolution; gradients atol 1e-6 / rtol 1e-5).

TRL functions actually called (unbound, with a stub ``self`` namespace holding only the attributes the
method reads; the "model" is a stub returning pre-computed outputs, so only TRL's loss maths runs):

- ``trl.trainer.dpo_trainer.DPOTrainer._compute_loss`` (precompute_ref_logps=True, reverse_kl,
  use_weighting=False, ld_alpha=None): loss types ``sigmoid`` (our ``dpo``/``sigmoid``), ``hinge``,
  ``ipo``, ``robust`` (label_smoothing = our epsilon), ``sigmoid_norm``, ``sft`` and the multi-loss
  weighted sum. Values, gradients w.r.t. the policy token log-probs, and the logged
  rewards/logps metrics are compared. The stub model returns ``FusedCausalLMOutput``-like fields
  (``log_probs`` zero at ignored labels, exactly as TRL's fused head does).
- ``trl.experimental.cpo.cpo_trainer.CPOTrainer.cpo_loss`` with ``loss_type="sigmoid"`` and
  ``label_smoothing=epsilon`` fed with log-RATIOS: TRL 1.16 removed label smoothing from DPO's
  ``sigmoid``; this is TRL's remaining conservative (cDPO) formula, so it checks our ``cdpo``.
- ``CPOTrainer.get_batch_loss_metrics`` (-> ``concatenated_forward``, ``get_batch_logps``, ``cpo_loss``)
  from logits: ``loss_type="sigmoid"`` + ``cpo_alpha=1`` (our ``cpo``) and ``loss_type="simpo"`` +
  ``cpo_alpha=0`` (our ``simpo``).
- ``trl.experimental.orpo.orpo_trainer.ORPOTrainer.get_batch_loss_metrics`` (-> ``odds_ratio_loss``) from
  logits (our ``orpo``; TRL's ``beta`` = our ``lam``).
- ``trl.trainer.kto_trainer.KTOTrainer._compute_loss`` with ``calculate_KL=True`` and precomputed
  reference log-probs (our ``kto``).

Known, documented differences (the fixtures are built so the compared quantities coincide):
- TRL's NLL terms (``sft``, CPO's and ORPO's NLL) are ONE token mean over all chosen tokens of the batch;
  ours are per-example token means (averaged by the trainer). Equal when chosen completions have equal
  lengths (the fixtures below) or B = 1.
- TRL ORPO's NLL covers prompt + completion tokens ("computed over the full prompt and response"); the spec
  and we use completion tokens only. Equal when the prompt is a single (never predicted) token.
Not reachable in TRL 1.16 (no TRL code to compare against): ``lcpo``, ``sparsepo``, ``irpo`` (TRL has no
TDPO/SparsePO, LCPO or IRPO); those are covered by the acceptance checks in their own test files.
"""
from __future__ import annotations

import os
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
trl = pytest.importorskip("trl")
from trl.experimental.cpo.cpo_trainer import CPOTrainer  # noqa: E402
from trl.experimental.orpo.orpo_trainer import ORPOTrainer  # noqa: E402
from trl.trainer.dpo_trainer import DPOTrainer  # noqa: E402
from trl.trainer.kto_trainer import KTOTrainer  # noqa: E402

import prefopt.losses  # noqa: E402,F401
from prefopt.core.registry import LOSSES  # noqa: E402
from prefopt.losses.base import pair_inputs  # noqa: E402

ATOL = 1e-6
REL = 2e-7  # float32 resolution: for |loss| > 5 (IPO at beta 0.1 is ~20) 1e-6 is below one ulp


def close(a: float, b: float) -> bool:
    return a == pytest.approx(b, abs=ATOL, rel=REL)
V = 11


def test_trl_version():
    assert trl.__version__.startswith("1.16"), trl.__version__


class _Acc:
    device = torch.device("cpu")

    @staticmethod
    def gather_for_metrics(x):
        return x

    gather = gather_for_metrics

    @staticmethod
    def unwrap_model(m):
        return m


def _batch(prompt_lens, comp_lens, L=8, seed=0):
    """ids/attention/completion masks (rows right-padded), logits (rows, L, V) for policy and reference,
    and our token log-probs ``tl[:, t] = log p(ids[t] | ids[:t])`` (position 0 = 0)."""
    g = torch.Generator().manual_seed(seed)
    n = len(prompt_lens)
    ids = torch.randint(1, V, (n, L), generator=g)
    attn = torch.zeros(n, L, dtype=torch.long)
    cmask = torch.zeros(n, L, dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompt_lens, comp_lens, strict=False)):
        attn[i, : p + c] = 1
        cmask[i, p: p + c] = 1
    ids = ids * attn  # pad id 0
    pol_logits = torch.randn(n, L, V, generator=g) * 2
    ref_logits = torch.randn(n, L, V, generator=g) * 2

    def tok(logits):
        lp = F.log_softmax(logits[:, :-1].double(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1).float()
        return torch.cat([torch.zeros(n, 1), lp], dim=1)

    return SimpleNamespace(ids=ids, attn=attn, cmask=cmask, pol_logits=pol_logits, ref_logits=ref_logits,
                           pol_tl=tok(pol_logits), ref_tl=tok(ref_logits))


# 3 pairs: rows 0-2 chosen, 3-5 rejected; unequal lengths (IPO / sigmoid_norm normalisation matters)
UNEQUAL = dict(prompt_lens=[2, 1, 3, 2, 1, 3], comp_lens=[4, 6, 2, 3, 5, 5])
# chosen completions all 4 tokens (TRL's batch token mean == mean of per-example means)
EQUAL_CHOSEN = dict(prompt_lens=[1, 1, 1, 1, 1, 1], comp_lens=[4, 4, 4, 3, 6, 2])


def _trl_dpo(b, loss_types, weights=None, beta=0.1, label_smoothing=0.0):
    pol = b.pol_tl.clone().requires_grad_(True)
    mask_s = b.cmask[:, 1:].bool()
    log_probs = torch.where(mask_s, pol[:, 1:], torch.zeros(()))
    zeros = torch.zeros_like(log_probs)
    outputs = SimpleNamespace(log_probs=log_probs, entropy=zeros, mean_logits=zeros,
                              is_top1=torch.zeros_like(mask_s), aux_loss=None)
    ref = (b.ref_tl * b.cmask).sum(1)
    rc, rr = ref.chunk(2)
    stub = SimpleNamespace(
        model=SimpleNamespace(training=True), accelerator=_Acc(), aux_loss_enabled=False, ld_alpha=None,
        precompute_ref_logps=True, f_divergence_type="reverse_kl", loss_types=list(loss_types),
        loss_weights=list(weights or [1.0] * len(loss_types)), beta=beta, label_smoothing=label_smoothing,
        use_weighting=False, _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0,
        _tp_size=1, args=SimpleNamespace(gradient_checkpointing_kwargs=None, discopop_tau=0.05))
    inputs = {"input_ids": b.ids, "attention_mask": b.attn, "completion_mask": b.cmask,
              "ref_chosen_logps": rc, "ref_rejected_logps": rr}
    loss = DPOTrainer._compute_loss(stub, lambda **kw: outputs, inputs, False)
    loss.backward()
    return loss.detach(), pol.grad, stub._metrics["train"]


def _ours(b, name, **hp):
    pol = b.pol_tl.clone().requires_grad_(True)
    spec = LOSSES.get(name)
    out = spec(pair_inputs(pol, b.cmask, b.ref_tl), spec.hparams_cls(**hp))
    out.loss.mean().backward()
    return out.loss.mean().detach(), pol.grad, out.metrics


@pytest.mark.parametrize("ours,trl_name,hp", [
    ("dpo", "sigmoid", {"beta": 0.1}),
    ("sigmoid", "sigmoid", {"beta": 0.5}),
    ("hinge", "hinge", {"beta": 0.1}),
    ("ipo", "ipo", {"beta": 0.1}),
    ("ipo", "ipo", {"beta": 1.0}),
    ("robust", "robust", {"beta": 0.1, "epsilon": 0.2}),
    ("sigmoid_norm", "sigmoid_norm", {"beta": 0.3}),
])
def test_dpo_trainer_losses(ours, trl_name, hp):
    """Values, policy gradients and reward/logp metrics equal DPOTrainer._compute_loss."""
    b = _batch(**UNEQUAL)
    ls = hp.get("epsilon", 0.0)
    t_loss, t_grad, t_m = _trl_dpo(b, [trl_name], beta=hp["beta"], label_smoothing=ls)
    o_loss, o_grad, o_m = _ours(b, ours, **hp)
    assert close(o_loss.item(), t_loss.item())
    torch.testing.assert_close(o_grad, t_grad, atol=ATOL, rtol=1e-5)
    for k in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
              "logps/chosen", "logps/rejected"):
        assert o_m[k].item() == pytest.approx(t_m[k][-1], abs=1e-5), k


def test_dpo_trainer_sft_and_multi_loss():
    """``sft`` alone and ``[sigmoid, sft]`` with weights [1, 0.5] (RPO) equal TRL (equal chosen lengths)."""
    b = _batch(**EQUAL_CHOSEN)
    t_loss, t_grad, _ = _trl_dpo(b, ["sft"])
    o_loss, o_grad, _ = _ours(b, "sft")
    assert close(o_loss.item(), t_loss.item())
    torch.testing.assert_close(o_grad, t_grad, atol=ATOL, rtol=1e-5)
    t_loss, t_grad, _ = _trl_dpo(b, ["sigmoid", "sft"], weights=[1.0, 0.5])
    pol = b.pol_tl.clone().requires_grad_(True)
    inp = pair_inputs(pol, b.cmask, b.ref_tl)
    total = LOSSES.get("dpo")(inp).loss.mean() + 0.5 * LOSSES.get("sft")(inp).loss.mean()
    total.backward()
    assert close(total.item(), t_loss.item())
    torch.testing.assert_close(pol.grad, t_grad, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_cdpo_vs_trl_label_smoothing(eps):
    """CPOTrainer.cpo_loss(loss_type='sigmoid', label_smoothing=eps) on log-ratios == our cdpo."""
    b = _batch(**UNEQUAL)
    inp = pair_inputs(b.pol_tl, b.cmask, b.ref_tl)
    stub = SimpleNamespace(alpha=0.0, loss_type="sigmoid", beta=0.1, label_smoothing=eps, simpo_gamma=0.5,
                           accelerator=_Acc())
    t_losses, _, _ = CPOTrainer.cpo_loss(stub, inp["policy_chosen_logps"] - inp["ref_chosen_logps"],
                                         inp["policy_rejected_logps"] - inp["ref_rejected_logps"])
    ours = LOSSES.get("cdpo")(inp, LOSSES.get("cdpo").hparams_cls(beta=0.1, epsilon=eps)).loss
    torch.testing.assert_close(ours, t_losses, atol=ATOL, rtol=0)


def _pair_batch_dict(b):
    n = b.ids.shape[0] // 2
    labels = b.ids.masked_fill(b.cmask == 0, -100)
    d = {}
    for part, sl in (("chosen", slice(0, n)), ("rejected", slice(n, 2 * n))):
        d[f"{part}_input_ids"] = b.ids[sl]
        d[f"{part}_attention_mask"] = b.attn[sl]
        d[f"{part}_labels"] = labels[sl]
    return d


def _stub_trainer(cls, b, logits, **attrs):
    stub = SimpleNamespace(accelerator=_Acc(), aux_loss_enabled=False, is_encoder_decoder=False,
                           pad_token_id=0, padding_value=0, _peft_has_been_casted_to_bf16=False, **attrs)
    for meth in ("concatenated_forward", "cpo_loss", "odds_ratio_loss"):
        if hasattr(cls, meth):
            setattr(stub, meth, getattr(cls, meth).__get__(stub))
    stub.concatenated_inputs = cls.concatenated_inputs
    stub.get_batch_logps = cls.get_batch_logps
    model = lambda *a, **kw: SimpleNamespace(logits=logits)  # noqa: E731
    loss, metrics = cls.get_batch_loss_metrics(stub, model, _pair_batch_dict(b))
    return loss, metrics


def _ours_from_logits(b, name, **hp):
    logits = b.pol_logits.clone().requires_grad_(True)
    lp = F.log_softmax(logits[:, :-1], -1).gather(-1, b.ids[:, 1:, None]).squeeze(-1)
    tl = torch.cat([torch.zeros(lp.shape[0], 1), lp], 1)
    spec = LOSSES.get(name)
    loss = spec(pair_inputs(tl, b.cmask), spec.hparams_cls(**hp)).loss.mean()
    loss.backward()
    return loss.detach(), logits.grad


@pytest.mark.parametrize("name,attrs,hp", [
    ("cpo", {"loss_type": "sigmoid", "beta": 0.1, "cpo_alpha": 1.0, "label_smoothing": 0.0, "simpo_gamma": 0.5,
             "alpha": 0.0}, {"beta": 0.1, "alpha": 1.0}),
    ("cpo", {"loss_type": "sigmoid", "beta": 0.5, "cpo_alpha": 0.3, "label_smoothing": 0.0, "simpo_gamma": 0.5,
             "alpha": 0.0}, {"beta": 0.5, "alpha": 0.3}),
    ("simpo", {"loss_type": "simpo", "beta": 2.0, "cpo_alpha": 0.0, "label_smoothing": 0.0, "simpo_gamma": 0.5,
               "alpha": 0.0}, {"beta": 2.0, "gamma": 0.5}),
    ("simpo", {"loss_type": "simpo", "beta": 0.1, "cpo_alpha": 0.0, "label_smoothing": 0.0, "simpo_gamma": 1.2,
               "alpha": 0.0}, {"beta": 0.1, "gamma": 1.2}),
])
def test_cpo_trainer(name, attrs, hp):
    """CPOTrainer.get_batch_loss_metrics from logits == ours on the gathered token log-probs (value + grad)."""
    b = _batch(**EQUAL_CHOSEN)
    logits = b.pol_logits.clone().requires_grad_(True)
    t_loss, t_metrics = _stub_trainer(CPOTrainer, b, logits, **attrs)
    t_loss.backward()
    o_loss, o_grad = _ours_from_logits(b, name, **hp)
    assert close(o_loss.item(), t_loss.item())
    torch.testing.assert_close(o_grad, logits.grad, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("lam", [0.1, 0.5])
def test_orpo_trainer(lam):
    """ORPOTrainer.get_batch_loss_metrics from logits == ours (prompt = 1 token, equal chosen lengths)."""
    b = _batch(**EQUAL_CHOSEN)
    logits = b.pol_logits.clone().requires_grad_(True)
    t_loss, t_metrics = _stub_trainer(ORPOTrainer, b, logits, beta=lam)
    t_loss.backward()
    o_loss, o_grad = _ours_from_logits(b, "orpo", lam=lam)
    assert close(o_loss.item(), t_loss.item())
    torch.testing.assert_close(o_grad, logits.grad, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("beta,dw,uw", [(0.1, 1.0, 1.0), (0.5, 1.3, 0.7)])
def test_kto_trainer(beta, dw, uw):
    """KTOTrainer._compute_loss (calculate_KL, precomputed ref) == our kto on the same summed log-probs,
    including the detached, clamped KL baseline z from mismatched pairs."""
    b = _batch(prompt_lens=[1, 2, 1, 3], comp_lens=[4, 3, 5, 2], seed=3)
    kl = _batch(prompt_lens=[2, 1, 1, 2], comp_lens=[3, 4, 2, 5], seed=4)
    kl.ids = kl.ids + 100 * kl.attn  # distinct ids so the stub model can tell the KL forward apart
    labels = torch.tensor([True, False, True, False])
    pol = b.pol_tl.clone().requires_grad_(True)

    def fused(tl, mask):
        lp = torch.where(mask[:, 1:].bool(), tl[:, 1:], torch.zeros(()))
        z = torch.zeros_like(lp)
        return SimpleNamespace(log_probs=lp, entropy=z, mean_logits=z, is_top1=torch.zeros_like(lp, dtype=torch.bool))

    # make the KL completions' policy log-probs exceed the reference so z > 0 (clamp inactive)
    kl_pol = kl.pol_tl.clamp(max=-0.01) * 0.5
    kl_ref = kl.ref_tl.clamp(max=-0.01) * 2.0

    def model(input_ids, **kw):
        return fused(kl_pol, kl.cmask) if torch.equal(input_ids, kl.ids) else fused(pol, b.cmask)

    ref_logps = (b.ref_tl * b.cmask).sum(1)
    ref_kl = (kl_ref * kl.cmask).sum(1)
    batch = {"input_ids": b.ids, "attention_mask": b.attn, "completion_mask": b.cmask, "label": labels,
             "KL_input_ids": kl.ids, "KL_attention_mask": kl.attn, "KL_completion_mask": kl.cmask,
             "ref_logps": ref_logps, "ref_KL_logps": ref_kl}
    stub = SimpleNamespace(model=SimpleNamespace(training=True), accelerator=_Acc(), calculate_KL=True,
                           precompute_ref_logps=True, aux_loss_enabled=False, loss_type="kto", beta=beta,
                           desirable_weight=dw, undesirable_weight=uw,
                           _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1)
    stub._compute_kl_logps = KTOTrainer._compute_kl_logps.__get__(stub)
    t_loss = KTOTrainer._compute_loss(stub, model, batch, False)
    t_loss.backward()
    t_grad = pol.grad
    pol2 = b.pol_tl.clone().requires_grad_(True)
    out = LOSSES.get("kto")({"policy_logps": (torch.where(b.cmask.bool(), pol2, torch.zeros(()))).sum(1),
                             "ref_logps": ref_logps, "labels": labels,
                             "kl_policy_logps": (kl_pol * kl.cmask).sum(1), "kl_ref_logps": ref_kl},
                            LOSSES.get("kto").hparams_cls(beta=beta, desirable_weight=dw, undesirable_weight=uw))
    assert out.metrics["kl"].item() > 0
    assert out.metrics["kl"].item() == pytest.approx(stub._metrics["train"]["kl"][-1], abs=1e-6)
    out.loss.mean().backward()
    assert close(out.loss.mean().item(), t_loss.item())
    torch.testing.assert_close(pol2.grad, t_grad, atol=ATOL, rtol=1e-5)
