"""LCPO / RE-PO: EM wrapper for noisy preference labels (arXiv 2509.24159).

``Delta_i = L_swap - L_orig`` of a base pairwise loss, ``p_i = s(Delta_i)``,
``w_i = stopgrad(s(Delta_i + logit(eta_k)))`` (E-step) and the M-step loss
``L_i = -w_i log s(Delta_i) - (1 - w_i) log s(-Delta_i)``. After each optimizer step the trainer calls
:meth:`LCPOState.update` with the returned ``aux["w"]`` and annotator ids (EMA of batch confidences).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from prefopt.core.registry import LOSSES
from prefopt.losses import pairwise as pw
from prefopt.losses.base import LossOutput, LossSpec, reward_metrics

Base = Literal["dpo", "ipo", "simpo", "cpo"]


@dataclass(frozen=True)
class LCPOHParams:
    """base: wrapped loss; beta (0.1); gamma (SimPO margin, 0.5); cpo_alpha (CPO NLL weight, 1.0);
    closed_form: use the closed-form Delta (True) or the generic L_swap - L_orig (False).
    eta_0 (0.9, in [0.5, 1]), ema_alpha (0.1, in (0, 1]) and num_annotators (1) configure
    :class:`LCPOState`; they are not used by the loss function itself."""

    base: Base = "dpo"
    beta: float = 0.1
    gamma: float = 0.5
    cpo_alpha: float = 1.0
    closed_form: bool = True
    eta_0: float = 0.9
    ema_alpha: float = 0.1
    num_annotators: int = 1

    def __post_init__(self) -> None:
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if not 0.5 <= self.eta_0 <= 1.0:
            raise ValueError(f"eta_0 must be in [0.5, 1], got {self.eta_0}")
        if not 0.0 < self.ema_alpha <= 1.0:
            raise ValueError(f"ema_alpha must be in (0, 1], got {self.ema_alpha}")
        if self.num_annotators < 1:
            raise ValueError(f"num_annotators must be >= 1, got {self.num_annotators}")


def _base_loss(base: str, pc, pr, rc, rr, nc, nr, beta, gamma, cpo_alpha) -> Tensor:
    if base == "dpo":
        return pw.dpo(policy_chosen_logps=pc, policy_rejected_logps=pr, ref_chosen_logps=rc,
                      ref_rejected_logps=rr, beta=beta).loss
    if base == "ipo":
        return pw.ipo(policy_chosen_logps=pc, policy_rejected_logps=pr, ref_chosen_logps=rc,
                      ref_rejected_logps=rr, chosen_lengths=nc, rejected_lengths=nr, beta=beta).loss
    if base == "simpo":
        return pw.simpo(policy_chosen_logps=pc, policy_rejected_logps=pr, chosen_lengths=nc,
                        rejected_lengths=nr, beta=beta, gamma=gamma).loss
    if base == "cpo":
        return pw.cpo(policy_chosen_logps=pc, policy_rejected_logps=pr, chosen_lengths=nc,
                      beta=beta, alpha=cpo_alpha).loss
    raise ValueError(f"unsupported LCPO base loss '{base}' (dpo, ipo, simpo, cpo)")


def lcpo_delta(*, base: str, policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
               ref_chosen_logps: Tensor | None = None, ref_rejected_logps: Tensor | None = None,
               chosen_lengths: Tensor | None = None, rejected_lengths: Tensor | None = None,
               beta: float = 0.1, gamma: float = 0.5, cpo_alpha: float = 1.0,
               closed_form: bool = True) -> Tensor:
    """``Delta = L_swap - L_orig`` of the base loss, by closed form (derived) or generically."""
    pc, pr = policy_chosen_logps.float(), policy_rejected_logps.float()
    rc = torch.zeros_like(pc) if ref_chosen_logps is None else ref_chosen_logps.float()
    rr = torch.zeros_like(pr) if ref_rejected_logps is None else ref_rejected_logps.float()
    nc = torch.ones_like(pc) if chosen_lengths is None else chosen_lengths.float().clamp(min=1.0)
    nr = torch.ones_like(pr) if rejected_lengths is None else rejected_lengths.float().clamp(min=1.0)
    if not closed_form:
        orig = _base_loss(base, pc, pr, rc, rr, nc, nr, beta, gamma, cpo_alpha)
        swap = _base_loss(base, pr, pc, rr, rc, nr, nc, beta, gamma, cpo_alpha)
        return swap - orig
    if base == "dpo":
        return beta * ((pc - rc) - (pr - rr))
    if base == "ipo":
        return 2.0 * ((pc - rc) / nc - (pr - rr) / nr) / beta
    if base == "simpo":
        m = beta * (pc / nc - pr / nr)
        return F.logsigmoid(m - gamma) - F.logsigmoid(-m - gamma)
    if base == "cpo":
        return beta * (pc - pr) + cpo_alpha * (pc / nc - pr / nr)
    raise ValueError(f"unsupported LCPO base loss '{base}' (dpo, ipo, simpo, cpo)")


def lcpo_weights(delta: Tensor, eta: Tensor) -> Tensor:
    """E-step posterior ``w = s(Delta + log(eta/(1-eta)))``, detached; eta = 1 gives w = 1 exactly."""
    eta = eta.float()
    logit = torch.log(eta) - torch.log1p(-eta)  # +inf at eta = 1 -> sigmoid = 1
    return torch.sigmoid(delta.detach() + logit).detach()


def lcpo(*, policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, eta: Tensor,
         ref_chosen_logps: Tensor | None = None, ref_rejected_logps: Tensor | None = None,
         chosen_lengths: Tensor | None = None, rejected_lengths: Tensor | None = None,
         annotator_id: Tensor | None = None, base: str = "dpo", beta: float = 0.1, gamma: float = 0.5,
         cpo_alpha: float = 1.0, closed_form: bool = True, eta_0: float = 0.9, ema_alpha: float = 0.1,
         num_annotators: int = 1) -> LossOutput:
    """LCPO soft-label loss; ``eta`` (K,) is :attr:`LCPOState.eta`; ``aux["w"]`` feeds the EMA.

    ``eta_0``, ``ema_alpha``, ``num_annotators`` are accepted for the generic call and ignored here.
    """
    delta = lcpo_delta(base=base, policy_chosen_logps=policy_chosen_logps,
                       policy_rejected_logps=policy_rejected_logps, ref_chosen_logps=ref_chosen_logps,
                       ref_rejected_logps=ref_rejected_logps, chosen_lengths=chosen_lengths,
                       rejected_lengths=rejected_lengths, beta=beta, gamma=gamma, cpo_alpha=cpo_alpha,
                       closed_form=closed_form)
    ids = torch.zeros_like(delta, dtype=torch.long) if annotator_id is None else annotator_id.long()
    eta_i = eta.to(delta.device).float()[ids]
    w = lcpo_weights(delta, eta_i)
    loss = -w * F.logsigmoid(delta) - (1 - w) * F.logsigmoid(-delta)
    rc = 0.0 if ref_chosen_logps is None else ref_chosen_logps.float()
    rr = 0.0 if ref_rejected_logps is None else ref_rejected_logps.float()
    m = reward_metrics(beta * (policy_chosen_logps.float() - rc), beta * (policy_rejected_logps.float() - rr))
    m.update({"lcpo/w_mean": w.mean(), "lcpo/suspected_flips": (w < 0.5).float().mean(),
              "lcpo/p_mean": torch.sigmoid(delta).detach().mean()})
    m.update({f"lcpo/eta_{k}": eta[k].detach().float() for k in range(eta.numel())})
    return LossOutput(loss, m, aux={"w": w, "annotator_id": ids})


class LCPOState:
    """Per-annotator reliability ``eta`` (float32, shape K) with EMA update and checkpoint state."""

    def __init__(self, num_annotators: int = 1, eta_0: float = 0.9, ema_alpha: float = 0.1):
        if not 0.5 <= eta_0 <= 1.0:
            raise ValueError(f"eta_0 must be in [0.5, 1], got {eta_0}")
        if not 0.0 <= ema_alpha <= 1.0:
            raise ValueError(f"ema_alpha must be in [0, 1], got {ema_alpha}")
        self.eta = torch.full((num_annotators,), float(eta_0), dtype=torch.float32)
        self.ema_alpha = float(ema_alpha)

    @classmethod
    def from_hparams(cls, hp: LCPOHParams) -> "LCPOState":
        return cls(hp.num_annotators, hp.eta_0, hp.ema_alpha)

    @staticmethod
    def batch_stats(w: Tensor, annotator_id: Tensor, num_annotators: int) -> tuple[Tensor, Tensor]:
        """Per-annotator (sum of w, count): all-reduce these across ranks before :meth:`update`."""
        ids = annotator_id.long().reshape(-1).cpu()
        sums = torch.zeros(num_annotators, dtype=torch.float64).index_add_(0, ids, w.detach().double().reshape(-1).cpu())
        counts = torch.zeros(num_annotators, dtype=torch.float64).index_add_(0, ids, torch.ones_like(sums[ids]))
        return sums, counts

    @torch.no_grad()
    def update(self, w: Tensor | None = None, annotator_id: Tensor | None = None, *,
               sums: Tensor | None = None, counts: Tensor | None = None) -> Tensor:
        """``eta_k <- (1 - a) eta_k + a * mean(w_i : k_i = k)`` for annotators present in the batch."""
        if sums is None or counts is None:
            if w is None:
                raise ValueError("update needs w (and annotator_id) or reduced sums/counts")
            ids = torch.zeros_like(w, dtype=torch.long) if annotator_id is None else annotator_id
            sums, counts = self.batch_stats(w, ids, self.eta.numel())
        present = counts > 0
        mean = torch.where(present, sums / counts.clamp(min=1), torch.zeros_like(sums)).float()
        new = (1 - self.ema_alpha) * self.eta + self.ema_alpha * mean
        self.eta = torch.where(present, new, self.eta)
        return self.eta

    def state_dict(self) -> dict:
        return {"eta": self.eta.clone(), "ema_alpha": self.ema_alpha}

    def load_state_dict(self, state: dict) -> None:
        eta = torch.as_tensor(state["eta"], dtype=torch.float32)
        if eta.shape != self.eta.shape:
            raise ValueError(f"LCPO eta shape {tuple(eta.shape)} != expected {tuple(self.eta.shape)}")
        self.eta = eta.clone()
        self.ema_alpha = float(state.get("ema_alpha", self.ema_alpha))


# needs_ref: True for the dpo/ipo bases; with simpo/cpo the reference inputs are optional and unused.
LOSSES.register("lcpo", LossSpec(
    lcpo, LCPOHParams, ("policy_chosen_logps", "policy_rejected_logps", "eta"),
    optional_inputs=("ref_chosen_logps", "ref_rejected_logps", "chosen_lengths", "rejected_lengths",
                     "annotator_id"),
    needs_ref=True))
