"""DNO / DNO-Prct (Rosset et al. 2024, arXiv 2404.03715): pair builder + loss.

Loss (Algorithm 1, line 5 / Algorithm 2): with Δ = η[(log π(y1) − log π_t(y1)) − (log π(y2) − log π_t(y2))]
``L = −[z log σ(Δ) + (1 − z) log σ(−Δ)]``; z = 1 (DNO-Prct hard label, y1 = y+) or the soft target
z = σ(r_t(y1) − r_t(y2)) (conceptual DNO). The reference π_t is the *previous iterate*. Regularised
option (Appendix A): log π_t ← (1 − τ/η) log π_t + (τ/η) log π_ref. Batch layout ``[y1 block; y2
block]`` along B; ``out.loss`` is ``[P]``; ``out.loss.mean()`` is this shard's share (see
:mod:`.aggregate`). Registered as the ``LossSpec`` ``dno`` (hparams :class:`DNOParams`); inputs
``policy_token_logps``, ``prev_token_logps``, ``completion_mask``; optional ``target``,
``ref_token_logps`` (τ > 0), ``num_pairs``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Iterable, Mapping

import torch
import torch.nn.functional as F

from prefopt.core.registry import GROUP_LOSSES
from prefopt.losses.aggregate import LossOutput, LossSpec

__all__ = ["DNOParams", "DNOPairParams", "dno_loss", "dno_pairs", "replay_fractions"]


@dataclass(frozen=True)
class DNOParams:
    """Loss defaults (paper: η "beta" 0.1 or 0.05; lr 5e-5; batch 64; K 5; T 3)."""

    eta: float = 0.1
    tau: float = 0.0   # > 0: regularised variant (needs ref_logps)


@dataclass(frozen=True)
class DNOPairParams:
    """Large-margin pair rule of DNO-Prct (Rosset et al. 2024, §3.2). The one place its defaults are written:
    :func:`dno_pairs` and the online ``dno:`` config section take them from here."""

    min_positive: int = 5     # positive must score ≥ 5 (i.e. 5 or 6 on the 6-point rubric)
    teacher_margin: int = 2   # negative ≥ 2 points below a teacher (gold) positive
    student_margin: int = 1   # negative ≥ 1 point below a policy-sample positive


def dno_pairs(scores: Mapping[Hashable, int], teacher_ids: Iterable[Hashable] = ("gold",), *,
              min_positive: int = DNOPairParams.min_positive, teacher_margin: int = DNOPairParams.teacher_margin,
              student_margin: int = DNOPairParams.student_margin,
              bad_ids: Iterable[Hashable] = ()) -> list[tuple[Hashable, Hashable]]:
    """Every qualifying ``(positive, negative)`` pair from one prompt's judge scores.

    A candidate is a positive when its score ≥ ``min_positive`` and it is not in ``bad_ids``
    (e.g. heavy n-gram repetition); a negative must be ≥ ``teacher_margin`` points lower when the
    positive is a teacher answer, ≥ ``student_margin`` when it is a policy sample. ``bad_ids`` are
    never positives and qualify as negatives of any positive (automatic negatives).
    Order: positives by descending score then insertion order; negatives in insertion order.
    Example (A-D4): {gold: 6, s1: 5, s2: 3, s3: 4} → (gold, s2), (gold, s3), (s1, s2), (s1, s3).
    """
    teachers, bad = set(teacher_ids), set(bad_ids)
    ids = list(scores)
    order = sorted(range(len(ids)), key=lambda k: (-scores[ids[k]], k))
    pairs = []
    for k in order:
        pos = ids[k]
        if pos in bad or scores[pos] < min_positive:
            continue
        margin = teacher_margin if pos in teachers else student_margin
        for neg in ids:
            if neg != pos and (neg in bad or scores[pos] - scores[neg] >= margin):
                pairs.append((pos, neg))
    return pairs


def replay_fractions(iteration: int, first: float = 0.3) -> list[float]:
    """Replay shares of pairs from iterations t−1, t−2, … (30%, 15%, halving).

    ``iteration`` is 1-based; iteration 1 has no history. Example: t = 4 → [0.3, 0.15, 0.075].
    """
    return [first / 2 ** j for j in range(max(iteration - 1, 0))]


def _seq(logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (logps.to(torch.float32) * mask).sum(-1)


def dno_loss(policy_token_logps: torch.Tensor, prev_token_logps: torch.Tensor,
             completion_mask: torch.Tensor, *, eta: float = 0.1, target: torch.Tensor | None = None,
             ref_token_logps: torch.Tensor | None = None, tau: float = 0.0,
             num_pairs: torch.Tensor | float | None = None) -> LossOutput:
    """DNO contrastive loss against the previous iterate π_t.

    Args:
        policy_token_logps, prev_token_logps: ``[2P, T]`` per-token log-probs under π_θ and π_t
            (``[y1; y2]``).
        completion_mask: ``[2P, T]``.
        eta: η (the paper's "beta").
        target: ``[P]`` soft label z ∈ [0, 1] that y1 ≻ y2 (default 1: hard DNO-Prct label).
        ref_token_logps, tau: regularised variant (τ > 0) mixing π_t with π_ref geometrically.
        num_pairs: global pair count for sharded batches (default: local P).

    Returns:
        ``LossOutput(loss=[P], metrics)``; metrics: ``margin`` (mean Δ),
        ``accuracy`` (Δ > 0), ``chosen_reward``/``rejected_reward`` (η log-ratios).
    """
    m = completion_mask.to(torch.float32)
    anchor = _seq(prev_token_logps, m).detach()
    if tau:
        if ref_token_logps is None:
            raise ValueError("dno_loss: tau > 0 needs ref_token_logps")
        a = tau / eta
        anchor = (1.0 - a) * anchor + a * _seq(ref_token_logps, m).detach()
    ratio = eta * (_seq(policy_token_logps, m) - anchor)
    p = ratio.shape[0] // 2
    if ratio.shape[0] != 2 * p:
        raise ValueError("dno_loss expects a [y1 block; y2 block] batch with an even size")
    delta = ratio[:p] - ratio[p:]
    z = torch.ones_like(delta) if target is None else target.to(torch.float32).detach()
    per_pair = -(z * F.logsigmoid(delta) + (1.0 - z) * F.logsigmoid(-delta))
    n = torch.as_tensor(num_pairs if num_pairs is not None else float(p), dtype=torch.float32)
    d = delta.detach()
    metrics = {"margin": d.mean(), "accuracy": (d > 0).float().mean(),
               "chosen_reward": ratio[:p].detach().mean(), "rejected_reward": ratio[p:].detach().mean()}
    return LossOutput(loss=per_pair * p / n.clamp(min=1.0), metrics=metrics)


GROUP_LOSSES.register("dno", LossSpec(dno_loss, DNOParams,
                                      ("policy_token_logps", "prev_token_logps", "completion_mask"),
                                      ("target", "ref_token_logps", "num_pairs")))
