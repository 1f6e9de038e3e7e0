"""Reward-model losses: Bradley-Terry (+ centering/L2/barrier/focal), listwise BT, Plackett-Luce, GPM, POLAR.

Every loss is a pure function on float tensors with explicit keyword hyper-parameters. It returns a
frozen :class:`LossOutput` holding the **per-example** loss (reduce with ``.mean()``) and detached
metrics. Maths runs in float32. Usage: docs/reward_models.md.

Registered in :data:`prefopt.core.registry.RM_LOSSES` as ``bt``, ``listwise_bt``, ``plackett_luce``,
``gpm`` and ``polar``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from prefopt.core.loss_output import LossOutput
from prefopt.core.registry import RM_LOSSES

__all__ = ["LossOutput", "bt_loss", "listwise_bt_loss", "plackett_luce_loss", "gpm_loss", "polar_loss",
           "skew_score"]


def _f32(x: Tensor | float | None, like: Tensor) -> Tensor | None:
    if x is None:
        return None
    return torch.as_tensor(x, device=like.device).to(torch.float32).expand_as(like)


def _reward_metrics(chosen: Tensor, rejected: Tensor) -> dict[str, Tensor]:
    both = torch.cat([chosen, rejected]).detach()
    return {"accuracy": (chosen > rejected).float().mean().detach(),
            "margin": (chosen - rejected).mean().detach(),
            "reward_mean": both.mean(), "reward_min": both.min(), "reward_max": both.max()}


def _barrier(r: Tensor, bound: float) -> Tensor:
    r = r.clamp(-bound + 1e-3, bound - 1e-3)
    return -torch.log(bound - r) - torch.log(r + bound)


@RM_LOSSES.register("bt")
def bt_loss(chosen_rewards: Tensor, rejected_rewards: Tensor, *, margin: Tensor | float | None = None,
            tau: float = 1.0, center_coef: float = 0.0, l2_coef: float = 0.0, barrier_coef: float = 0.0,
            barrier_bound: float = 5.0, focal: bool = False) -> LossOutput:
    """Bradley-Terry pairwise loss (Bradley & Terry 1952; Ouyang et al. 2022 eq. 1).

    ``z_i = (r_i^+ - r_i^- - m_i) / tau`` and the per-pair loss is::

        softplus(-z_i) [* (1 - p_i)^2 if focal]  + center_coef * (r_i^+ + r_i^-)^2
          + l2_coef * ((r_i^+)^2 + (r_i^-)^2) / 2 + barrier_coef * (B(r_i^+) + B(r_i^-)) / 2

    whose batch mean is exactly the spec's ``L_BT + c_center mean_i (r^+ + r^-)^2 + c_l2 mean(r^2)
    + c_barrier B(r)`` (the L2 and barrier means run over all 2N rewards). ``softplus(-z) =
    -log sigmoid(z)`` (Bradley & Terry 1952; Ouyang et al. 2022 Eq. 1). Centering term: Eisenstein et
    al. 2023 ("Helping or Herding", Eq. 2), as TRL's ``center_rewards_coefficient``. Barrier
    ``B(r) = -log(b - r) - log(r + b)`` with ``r`` clamped to ``[-b + 1e-3, b - 1e-3]`` and focal weight
    ``(1 - p)^2``, ``p = 2 max(sigmoid(z) - 0.5, 0)`` follow xtuner's InternLM2 reward model.

    Worked values (spec B1-B3): equal rewards give ``ln 2 = 0.693147``; a gap of 2 gives
    ``softplus(-2) = ln(1 + e^-2) = 0.126928``; rewards (1, 1) with ``center_coef=0.01`` add
    ``0.01 * (1 + 1)^2 = 0.04``; a gap of 1 with margin 1 gives ``z = 0`` hence ``ln 2``.

    Args:
        chosen_rewards, rejected_rewards: ``[B]`` scalar rewards.
        margin: optional per-pair margin ``m_i`` (``[B]`` or scalar); ``None`` means 0.
        tau: temperature dividing the reward gap.
        center_coef, l2_coef, barrier_coef: auxiliary-term weights (0 = off).
        barrier_bound: ``b`` of the log barrier.
        focal: multiply the ranking term by the focal weight.
    """
    rc, rr = chosen_rewards.float(), rejected_rewards.float()
    gap = rc - rr
    if margin is not None:
        gap = gap - _f32(margin, gap)
    z = gap / tau
    rank = F.softplus(-z)
    if focal:
        p = 2.0 * (torch.sigmoid(z) - 0.5).clamp(min=0.0)
        rank = (1.0 - p) ** 2 * rank
    loss = rank
    if center_coef:
        loss = loss + center_coef * (rc + rr) ** 2
    if l2_coef:
        loss = loss + l2_coef * (rc ** 2 + rr ** 2) / 2
    if barrier_coef:
        loss = loss + barrier_coef * (_barrier(rc, barrier_bound) + _barrier(rr, barrier_bound)) / 2
    metrics = _reward_metrics(rc, rr)
    metrics["loss_rank"] = rank.mean().detach()
    return LossOutput(loss=loss, metrics=metrics)


def _pair_mask(mask: Tensor) -> Tensor:
    """``[B, K, K]`` mask of ordered pairs (a above b): a < b and both valid."""
    k = mask.shape[-1]
    upper = torch.ones(k, k, dtype=torch.bool, device=mask.device).triu(diagonal=1)
    return upper & mask[:, :, None] & mask[:, None, :]


@RM_LOSSES.register("listwise_bt")
def listwise_bt_loss(rewards: Tensor, *, mask: Tensor | None = None, scores: Tensor | None = None) -> LossOutput:
    """Listwise BT over a ranked list (best first): mean over ordered pairs of ``softplus(-(r_a - r_b))``.

    The Open-Assistant ``RMLoss`` without its L2 term. With
    ``K = 2`` it equals :func:`bt_loss`. Example: rewards ``(2, 1, 0)`` have pairs with gaps 1, 2, 1, so
    the loss is ``(2 softplus(-1) + softplus(-2)) / 3 = (2 * 0.313262 + 0.126928) / 3 = 0.251151``.

    Args:
        rewards: ``[B, K]`` rewards of each list, ordered best first.
        mask: optional ``[B, K]`` bool, False for padding entries of shorter lists.
        scores: optional ``[B, K]`` label scores; when given, only pairs with ``score_a > score_b``
            count (ties in a ranked list are not preferences).
    """
    r = rewards.float()
    valid = torch.ones_like(r, dtype=torch.bool) if mask is None else mask.bool()
    pairs = _pair_mask(valid)
    if scores is not None:
        pairs = pairs & (scores[:, :, None] > scores[:, None, :])
    gaps = r[:, :, None] - r[:, None, :]
    per_pair = F.softplus(-gaps) * pairs
    n_pairs = pairs.sum(dim=(1, 2)).clamp(min=1)
    loss = per_pair.sum(dim=(1, 2)) / n_pairs
    correct = ((gaps > 0) & pairs).sum(dim=(1, 2)) / n_pairs
    metrics = {"accuracy": correct.mean().detach(), "reward_mean": r[valid].mean().detach()}
    return LossOutput(loss=loss, metrics=metrics)


@RM_LOSSES.register("plackett_luce")
def plackett_luce_loss(rewards: Tensor, *, mask: Tensor | None = None) -> LossOutput:
    """Plackett-Luce negative log-likelihood of the observed ranking (best first).

    ``L = sum_{i=0}^{K-1} [ logsumexp(r_i, ..., r_{K-1}) - r_i ]`` (Plackett 1975; Luce 1959), with
    padding entries (``mask`` False, placed anywhere) removed from every choice set. For ``K = 2`` it is
    ``log(e^{r0} + e^{r1}) - r0 = softplus(-(r0 - r1))``, i.e. BT. Example: rewards ``(2, 1, 0)``:
    ``[log(e^2 + e + 1) - 2] + [log(e + 1) - 1] = 0.407606 + 0.313262 = 0.720868``.

    Args:
        rewards: ``[B, K]`` rewards ordered best first.
        mask: optional ``[B, K]`` bool validity mask.
    """
    r = rewards.float()
    valid = torch.ones_like(r, dtype=torch.bool) if mask is None else mask.bool()
    masked = r.masked_fill(~valid, float("-inf"))
    # logsumexp over the suffix j >= i: reverse cumulative logsumexp.
    suffix = torch.logcumsumexp(masked.flip(-1), dim=-1).flip(-1)
    terms = torch.where(valid, suffix - r, torch.zeros_like(r))
    loss = terms.sum(-1)
    pairs = _pair_mask(valid)
    gaps = r[:, :, None] - r[:, None, :]
    acc = ((gaps > 0) & pairs).sum(dim=(1, 2)) / pairs.sum(dim=(1, 2)).clamp(min=1)
    return LossOutput(loss=loss, metrics={"accuracy": acc.mean().detach()})


def skew_score(v_a: Tensor, v_b: Tensor, lam: Tensor | None = None) -> Tensor:
    """GPM skew-symmetric block score ``s(a > b) = sum_l lam_l (v_a[2l] v_b[2l+1] - v_a[2l+1] v_b[2l])``.

    Zhang et al. 2025 ("Beyond Bradley-Terry", arXiv 2410.02197, Eq. for ``<R v_a, v_b>`` with the
    gate entering linearly as in the reference code). Antisymmetric: ``s(a>b) = -s(b>a)``, ``s(a>a)=0``.
    With ``k = 1`` and ``v = [r, 1]``: ``s = r_a - r_b`` (BT reduction, spec G2).

    Args:
        v_a, v_b: ``[..., 2k]`` embeddings (broadcastable).
        lam: optional ``[..., k]`` non-negative gate values; ``None`` means all ones.
    """
    if v_a.shape[-1] % 2 or v_b.shape[-1] % 2:
        raise ValueError(f"GPM embeddings need an even size, got {v_a.shape[-1]} and {v_b.shape[-1]}")
    a, b = v_a.float(), v_b.float()
    blocks = a[..., 0::2] * b[..., 1::2] - a[..., 1::2] * b[..., 0::2]
    if lam is not None:
        blocks = blocks * lam.float()
    return blocks.sum(-1)


@RM_LOSSES.register("gpm")
def gpm_loss(chosen_embeddings: Tensor, rejected_embeddings: Tensor, *, gate: Tensor | None = None,
             beta: float = 0.1, margin: Tensor | float | None = None,
             label_prob: Tensor | float | None = None) -> LossOutput:
    """General-preference loss on skew-symmetric scores (Zhang et al. 2025, arXiv 2410.02197).

    ``s = skew_score(v^+, v^-, lam)`` and, with soft label ``q`` (1 for hard labels) and margin ``m``::

        L = -q log sigmoid((s - m)/beta) - (1 - q) log sigmoid(-(s - m)/beta)
          =  q softplus(-(s - m)/beta) + (1 - q) softplus((s - m)/beta)

    (arXiv 2410.02197 App. A.2). Example: ``s = 0`` gives ``ln 2``; ``s = 0.866, beta = 0.1`` gives
    ``softplus(-8.66) = 1.73e-4`` (the 120-degree cyclic optimum of spec G4).

    Args:
        chosen_embeddings, rejected_embeddings: ``[B, 2k]`` (already normalised if configured).
        gate: optional ``[B, k]`` gate values ``lam`` (from the prompt); ``None`` means no gate.
        beta: temperature.
        margin: optional per-pair margin on the ``s`` scale.
        label_prob: optional probability that chosen beats rejected (soft label).
    """
    s = skew_score(chosen_embeddings, rejected_embeddings, gate)
    x = s if margin is None else s - _f32(margin, s)
    x = x / beta
    if label_prob is None:
        loss = F.softplus(-x)
    else:
        q = _f32(label_prob, x)
        loss = q * F.softplus(-x) + (1 - q) * F.softplus(x)
    metrics = {"accuracy": (s > 0).float().mean().detach(), "score_mean": s.mean().detach(),
               "score_abs_max": s.abs().max().detach()}
    return LossOutput(loss=loss, metrics=metrics)


@RM_LOSSES.register("polar")
def polar_loss(chosen_rewards: Tensor, rejected_rewards: Tensor) -> LossOutput:
    """POLAR ranking loss ``softplus(-(r(p, ref, pos) - r(p, ref, neg)))`` (Dou et al. 2025, arXiv 2507.05197).

    Dou et al. 2025 (arXiv 2507.05197) Eq. 7 (pre-training) and Eq. 8 (fine-tuning): the same BT
    ranking loss over two sequences sharing one reference. Equal rewards give ``ln 2``.
    """
    rc, rr = chosen_rewards.float(), rejected_rewards.float()
    loss = F.softplus(-(rc - rr))
    return LossOutput(loss=loss, metrics=_reward_metrics(rc, rr))


LN2 = math.log(2.0)
