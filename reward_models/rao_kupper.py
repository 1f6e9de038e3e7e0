"""Bradley-Terry with ties (Rao & Kupper 1967): a reward-model kind that learns from tied answers.

Rao & Kupper (1967), "Ties in Paired-Comparison Experiments: A Generalization of the Bradley-Terry
Model", JASA 62(317), 194-204: with strengths ``π = e^r`` and a tie parameter ``θ = e^ν ≥ 1``::

    P(a ≻ b) = π_a / (π_a + θ π_b)                                  = σ(d − ν),   d = r_a − r_b
    P(a = b) = (θ² − 1) π_a π_b / ((π_a + θ π_b)(θ π_a + π_b))      = 1 − σ(d − ν) − σ(−d − ν)
    log P(a = b) = log(e^{2ν} − 1) − softplus(ν − d) − softplus(ν + d)

(the last line follows from dividing numerator and denominator by ``π_b²``; used for LLM preferences by
Chen et al. 2024, "On Extending Direct Preference Optimization to Accommodate Ties", arXiv 2409.17431).
``ν = 0`` is plain BT without ties. Listwise BT (:func:`reward_models.losses.listwise_bt_loss`) drops
the tied pairs of a ranked list; this kind trains on them (their rewards are pulled together). The model
is a scalar head like BT and is served like BT (one reward per response).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from prefopt.core.loss_output import LossOutput
from prefopt.core.registry import RM_LOSSES

__all__ = ["RaoKupperSection", "rao_kupper_loss", "rao_kupper_batch_loss"]


@dataclass(frozen=True)
class RaoKupperSection:
    """``rm.rao_kupper``: the tie parameter ``ν = log θ`` (> 0; P(tie | equal rewards) = tanh(ν/2))."""

    log_theta: float = 1.0

    def __post_init__(self) -> None:
        if not self.log_theta > 0:
            raise ValueError(f"rm.rao_kupper.log_theta must be > 0 (θ > 1 allows ties), got {self.log_theta}")


@RM_LOSSES.register("rao_kupper")
def rao_kupper_loss(rewards: Tensor, *, mask: Tensor | None = None, scores: Tensor | None = None,
                    log_theta: float = 1.0) -> LossOutput:
    """Rao-Kupper negative log-likelihood per list, averaged over its pairs.

    Every pair ``a`` above ``b`` of a best-first list (both valid) counts: ``−log P(a ≻ b)`` when
    ``score_a > score_b`` (or no scores: pairs are strict preferences), ``−log P(a = b)`` when the scores
    are equal. Example (ν = 1): a strict pair with d = 1 gives ``softplus(0) = ln 2 = 0.693147``; a tie
    with d = 0 gives ``−log tanh(½) = 0.771936``.

    Args:
        rewards: ``[B, K]`` rewards, best first (K = 2 for pairs: chosen, rejected).
        mask: optional ``[B, K]`` bool, False on padding entries.
        scores: optional ``[B, K]`` label scores (equal scores = a tie).
        log_theta: ``ν = log θ > 0``.

    Returns:
        ``LossOutput(loss=[B], metrics)``: ``accuracy`` and ``margin`` over strict pairs (``r_a > r_b``
        right), ``tie_prob`` = mean P(a = b) on tied pairs (0 without ties), ``reward_mean``.
    """
    r = rewards.float()
    valid = torch.ones_like(r, dtype=torch.bool) if mask is None else mask.bool()
    k = r.shape[-1]
    upper = torch.ones(k, k, dtype=torch.bool, device=r.device).triu(diagonal=1)
    pairs = upper & valid[:, :, None] & valid[:, None, :]
    tied = torch.zeros_like(pairs) if scores is None else pairs & (scores[:, :, None] == scores[:, None, :])
    strict = pairs & ~tied
    d = r[:, :, None] - r[:, None, :]
    nu = float(log_theta)
    log_tie = (2 * nu + math.log1p(-math.exp(-2 * nu))) - F.softplus(nu - d) - F.softplus(nu + d)
    per_pair = torch.where(strict, F.softplus(nu - d), torch.zeros_like(d))
    per_pair = torch.where(tied, -log_tie, per_pair)
    n_pairs = pairs.sum(dim=(1, 2)).clamp(min=1)
    loss = per_pair.sum(dim=(1, 2)) / n_pairs
    n_strict = strict.sum().clamp(min=1)
    metrics = {"accuracy": ((d > 0) & strict).sum().float().div(n_strict).detach(),
               "margin": torch.where(strict, d, torch.zeros_like(d)).sum().div(n_strict).detach(),
               "tie_prob": torch.where(tied, log_tie.exp(), torch.zeros_like(d)).sum().div(
                   tied.sum().clamp(min=1)).detach(),
               "reward_mean": r[valid].mean().detach()}
    return LossOutput(loss=loss, metrics=metrics)


def rao_kupper_batch_loss(cfg: Any, model: Any, batch: Any) -> tuple[LossOutput, Tensor]:
    """One collated batch (pairs or ranked lists, :class:`reward_models.data.RMBatch`): scalar rewards per
    row, gathered into ``[B, K]`` through ``batch.slot`` (−1 = padding), then :func:`rao_kupper_loss`."""
    kw = {} if batch.rows is None else {"rows": batch.rows}
    rewards = model(batch.input_ids, batch.attention_mask, **kw).rewards
    valid = batch.slot >= 0
    r = rewards[batch.slot.clamp(min=0)]
    scores = None if batch.scores is None else batch.scores.to(r.device)
    return rao_kupper_loss(r, mask=valid, scores=scores, log_theta=cfg.rm.rao_kupper.log_theta), rewards
