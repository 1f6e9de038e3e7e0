"""Baseline pairwise losses (spec offline_losses.md section 1; parity targets TRL 1.16).

Registered names: ``dpo`` (alias ``sigmoid``, TRL's name), ``cdpo``, ``robust``, ``hinge``, ``ipo``,
``sigmoid_norm``, ``simpo``, ``cpo``, ``orpo``, ``kto``, ``sft``. All maths in float32; every function
returns a per-example :class:`LossOutput`. ``h = (logp_w - ref_w) - (logp_l - ref_l)`` (summed log-probs).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from prefopt.core.registry import LOSSES
from prefopt.losses.base import LossOutput, LossSpec, logp_metrics, reward_metrics

_SEQ = ("policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps")
_LEN = ("chosen_lengths", "rejected_lengths")


def _f(x: Tensor) -> Tensor:
    return x.float()


def _check_beta(beta: float) -> None:
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")


@dataclass(frozen=True)
class BetaHParams:
    """DPO-style temperature only. beta: KL strength (spec default 0.1)."""

    beta: float = 0.1

    def __post_init__(self) -> None:
        _check_beta(self.beta)


@dataclass(frozen=True)
class SmoothingHParams:
    """beta: temperature; epsilon: assumed label-flip rate (cdpo: [0, 1]; robust: [0, 0.5))."""

    beta: float = 0.1
    epsilon: float = 0.0

    def __post_init__(self) -> None:
        _check_beta(self.beta)
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {self.epsilon}")


@dataclass(frozen=True)
class RobustHParams(SmoothingHParams):
    """rDPO: epsilon must be in [0, 0.5) (the 1/(1-2 epsilon) factor)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.epsilon < 0.5:
            raise ValueError(f"robust epsilon must be in [0, 0.5), got {self.epsilon}")


@dataclass(frozen=True)
class SimPOHParams:
    """beta: reward scale (TRL default 0.1; SimPO recipes 2-2.5); gamma: target margin (0.5)."""

    beta: float = 0.1
    gamma: float = 0.5

    def __post_init__(self) -> None:
        _check_beta(self.beta)


@dataclass(frozen=True)
class CPOHParams:
    """beta: temperature (0.1); alpha: weight of the token-mean NLL on chosen (1.0)."""

    beta: float = 0.1
    alpha: float = 1.0

    def __post_init__(self) -> None:
        _check_beta(self.beta)


@dataclass(frozen=True)
class ORPOHParams:
    """lam: weight lambda of the odds-ratio term (TRL's ``ORPOConfig.beta``), default 0.1."""

    lam: float = 0.1


@dataclass(frozen=True)
class KTOHParams:
    """beta 0.1; desirable_weight = lambda_D; undesirable_weight = lambda_U (both 1.0)."""

    beta: float = 0.1
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0

    def __post_init__(self) -> None:
        _check_beta(self.beta)


@dataclass(frozen=True)
class NoHParams:
    """No hyper-parameters (``sft``; its weight is the multi-loss weight, i.e. RPO's rpo_alpha)."""


def _margin(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    cr, rj = _f(pc) - _f(rc), _f(pr) - _f(rr)
    return cr, rj, cr - rj


def _dpo_output(loss: Tensor, beta: float, cr: Tensor, rj: Tensor, pc: Tensor, pr: Tensor) -> LossOutput:
    return LossOutput(loss, {**reward_metrics(beta * cr, beta * rj), **logp_metrics(pc, pr)})


def dpo(*, policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
        ref_rejected_logps: Tensor, beta: float = 0.1) -> LossOutput:
    """DPO sigmoid loss ``-log sigma(beta h)`` (Rafailov et al. 2023, Eq. 7)."""
    cr, rj, h = _margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return _dpo_output(-F.logsigmoid(beta * h), beta, cr, rj, policy_chosen_logps, policy_rejected_logps)


def cdpo(*, policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
         ref_rejected_logps: Tensor, beta: float = 0.1, epsilon: float = 0.0) -> LossOutput:
    """Conservative DPO / label smoothing: ``-(1-e) log s(bh) - e log s(-bh)`` (Mitchell 2023 note)."""
    cr, rj, h = _margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    loss = -(1 - epsilon) * F.logsigmoid(beta * h) - epsilon * F.logsigmoid(-beta * h)
    return _dpo_output(loss, beta, cr, rj, policy_chosen_logps, policy_rejected_logps)


def robust(*, policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
           ref_rejected_logps: Tensor, beta: float = 0.1, epsilon: float = 0.0) -> LossOutput:
    """rDPO (Chowdhury et al. 2024, Eq. 8): ``[-(1-e) log s(bh) + e log s(-bh)] / (1 - 2e)``."""
    if not 0.0 <= epsilon < 0.5:
        raise ValueError(f"robust epsilon must be in [0, 0.5), got {epsilon}")
    cr, rj, h = _margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    loss = (-(1 - epsilon) * F.logsigmoid(beta * h) + epsilon * F.logsigmoid(-beta * h)) / (1 - 2 * epsilon)
    return _dpo_output(loss, beta, cr, rj, policy_chosen_logps, policy_rejected_logps)


def hinge(*, policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
          ref_rejected_logps: Tensor, beta: float = 0.1) -> LossOutput:
    """Hinge loss ``max(0, 1 - beta h)`` (SLiC, Zhao et al. 2023, Eq. 3 with ref log-ratios)."""
    cr, rj, h = _margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return _dpo_output(torch.relu(1 - beta * h), beta, cr, rj, policy_chosen_logps, policy_rejected_logps)


def _avg_margin(pc, pr, rc, rr, nc, nr) -> tuple[Tensor, Tensor, Tensor]:
    cr = (_f(pc) - _f(rc)) / _f(nc).clamp(min=1.0)
    rj = (_f(pr) - _f(rr)) / _f(nr).clamp(min=1.0)
    return cr, rj, cr - rj


def ipo(*, policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
        ref_rejected_logps: Tensor, chosen_lengths: Tensor, rejected_lengths: Tensor,
        beta: float = 0.1) -> LossOutput:
    """IPO (Azar et al. 2023, Eq. 17) ``(h_bar - 1/(2 beta))^2``, h_bar from token-averaged log-ratios.

    Rewards are logged as ``beta * summed log-ratio`` like TRL.
    """
    _, _, hb = _avg_margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                           ref_rejected_logps, chosen_lengths, rejected_lengths)
    cr, rj, _ = _margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    loss = (hb - 1 / (2 * beta)) ** 2
    return _dpo_output(loss, beta, cr, rj, policy_chosen_logps, policy_rejected_logps)


def sigmoid_norm(*, policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
                 ref_rejected_logps: Tensor, chosen_lengths: Tensor, rejected_lengths: Tensor,
                 beta: float = 0.1) -> LossOutput:
    """Length-normalised DPO ``-log sigma(beta h_bar)`` (TRL ``sigmoid_norm``)."""
    _, _, hb = _avg_margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                           ref_rejected_logps, chosen_lengths, rejected_lengths)
    cr, rj, _ = _margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return _dpo_output(-F.logsigmoid(beta * hb), beta, cr, rj, policy_chosen_logps, policy_rejected_logps)


def simpo(*, policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, chosen_lengths: Tensor,
          rejected_lengths: Tensor, beta: float = 0.1, gamma: float = 0.5) -> LossOutput:
    """SimPO (Meng et al. 2024, Eq. 6): ``-log s(beta/n_w logp_w - beta/n_l logp_l - gamma)``; no reference."""
    aw = _f(policy_chosen_logps) / _f(chosen_lengths).clamp(min=1.0)
    al = _f(policy_rejected_logps) / _f(rejected_lengths).clamp(min=1.0)
    loss = -F.logsigmoid(beta * (aw - al) - gamma)
    return LossOutput(loss, {**reward_metrics(beta * aw, beta * al),
                             **logp_metrics(policy_chosen_logps, policy_rejected_logps)})


def cpo(*, policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, chosen_lengths: Tensor,
        beta: float = 0.1, alpha: float = 1.0) -> LossOutput:
    """CPO (Xu et al. 2024, Eq. 3 + NLL): ``-log s(beta(logp_w - logp_l)) + alpha * NLL(y_w)``.

    NLL is the per-example token mean ``-logp_w / n_w`` (TRL uses one token mean over the whole batch;
    the two agree when chosen lengths are equal).
    """
    pc, pr = _f(policy_chosen_logps), _f(policy_rejected_logps)
    nll = -pc / _f(chosen_lengths).clamp(min=1.0)
    loss = -F.logsigmoid(beta * (pc - pr)) + alpha * nll
    return LossOutput(loss, {**reward_metrics(beta * pc, beta * pr), **logp_metrics(pc, pr),
                             "nll_loss": nll.detach().mean()})


def _log1mexp(x: Tensor) -> Tensor:
    """Stable ``log(1 - exp(x))`` for x < 0 (Maechler 2012)."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo(*, policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, chosen_lengths: Tensor,
         rejected_lengths: Tensor, lam: float = 0.1) -> LossOutput:
    """ORPO (Hong et al. 2024, Eqs. 4-7): ``NLL(y_w) - lam log s(log odds_w - log odds_l)``.

    ``P = exp(token-mean logp)``, ``log odds = mean_logp - log(1 - exp(mean_logp))``.
    """
    mw = _f(policy_chosen_logps) / _f(chosen_lengths).clamp(min=1.0)
    ml = _f(policy_rejected_logps) / _f(rejected_lengths).clamp(min=1.0)
    log_odds = (mw - ml) - (_log1mexp(mw) - _log1mexp(ml))
    ratio = F.logsigmoid(log_odds)
    loss = -mw - lam * ratio
    return LossOutput(loss, {**reward_metrics(lam * mw, lam * ml),
                             **logp_metrics(policy_chosen_logps, policy_rejected_logps),
                             "nll_loss": (-mw).detach().mean(), "log_odds_ratio": ratio.detach().mean(),
                             "log_odds_chosen": log_odds.detach().mean()})


def kto(*, policy_logps: Tensor, ref_logps: Tensor, labels: Tensor, kl_policy_logps: Tensor | None = None,
        kl_ref_logps: Tensor | None = None, beta: float = 0.1, desirable_weight: float = 1.0,
        undesirable_weight: float = 1.0) -> LossOutput:
    """KTO (Ethayarajh et al. 2024, Eq. 7), unpaired; ``labels`` True = desirable.

    ``z = max(0, mean(kl_policy_logps - kl_ref_logps))`` (mismatched prompt/completion pairs), detached;
    z = 0 when the KL inputs are absent. Across ranks the trainer should pass globally-gathered KL inputs.
    """
    r = _f(policy_logps) - _f(ref_logps)
    if kl_policy_logps is not None and kl_ref_logps is not None:
        z = (_f(kl_policy_logps) - _f(kl_ref_logps)).mean().detach().clamp(min=0)
    else:
        z = torch.zeros((), device=r.device)
    lab = labels.bool()
    loss = torch.where(lab, desirable_weight * (1 - torch.sigmoid(beta * (r - z))),
                       undesirable_weight * (1 - torch.sigmoid(beta * (z - r))))
    rew = (beta * r).detach()
    nan = torch.full((), float("nan"), device=r.device)
    m = {"kl": z.detach(),
         "rewards/chosen": rew[lab].mean() if lab.any() else nan,
         "rewards/rejected": rew[~lab].mean() if (~lab).any() else nan}
    m["rewards/margins"] = m["rewards/chosen"] - m["rewards/rejected"]
    return LossOutput(loss, m)


def sft(*, policy_chosen_logps: Tensor, chosen_lengths: Tensor) -> LossOutput:
    """Token-mean NLL on chosen per example (RPO term, Pang et al. 2024); weight = rpo_alpha.

    TRL's ``sft`` loss is a single token mean over all chosen tokens of the batch; equal for equal lengths.
    """
    nll = -_f(policy_chosen_logps) / _f(chosen_lengths).clamp(min=1.0)
    return LossOutput(nll, {"nll_loss": nll.detach().mean()})


_DPO_SPEC = LossSpec(dpo, BetaHParams, _SEQ)
LOSSES.register("dpo", _DPO_SPEC)
LOSSES.register("sigmoid", _DPO_SPEC)  # TRL's name for the same loss
LOSSES.register("cdpo", LossSpec(cdpo, SmoothingHParams, _SEQ))
LOSSES.register("robust", LossSpec(robust, RobustHParams, _SEQ))
LOSSES.register("hinge", LossSpec(hinge, BetaHParams, _SEQ))
LOSSES.register("ipo", LossSpec(ipo, BetaHParams, _SEQ + _LEN))
LOSSES.register("sigmoid_norm", LossSpec(sigmoid_norm, BetaHParams, _SEQ + _LEN))
LOSSES.register("simpo", LossSpec(simpo, SimPOHParams, _SEQ[:2] + _LEN, needs_ref=False))
LOSSES.register("cpo", LossSpec(cpo, CPOHParams, _SEQ[:2] + _LEN[:1], needs_ref=False))
LOSSES.register("orpo", LossSpec(orpo, ORPOHParams, _SEQ[:2] + _LEN, needs_ref=False))
LOSSES.register("kto", LossSpec(kto, KTOHParams, ("policy_logps", "ref_logps", "labels"),
                                optional_inputs=("kl_policy_logps", "kl_ref_logps"), paired=False))
LOSSES.register("sft", LossSpec(sft, NoHParams, ("policy_chosen_logps", "chosen_lengths"), needs_ref=False))
