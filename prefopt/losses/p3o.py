"""P3O: pairwise proximal policy optimisation (Wu et al. 2023, arXiv 2310.00212).

Batch layout (CONTRIBUTING pairwise rule): ``[y1 block; y2 block]`` along B, so rows i and i+P are
the two responses to prompt i (P pairs, B = 2P). With s_i = Σ_t (log π_θ − log π_ref):
``q = sg[(r1 − r2) − β_KL (s1 − s2)]`` (optionally ÷ std over the batch),
``w = sg[clip(exp((s1 − s1_old) + (s2 − s2_old)), 1/c, c)]``.
``joint`` (pair-level clip, ≈ P3O-V2): ``½ max(−q w Δ, −q w clip(Δ, Δ_old ± ε))``, Δ = s1 − s2.
``separate`` (per-token clip, ≈ P3O-V1): ``(1/n) Σ_t [max(−q w ℓ1_t, −q w clip(ℓ1_t, ℓ1_t^old ± ε))
+ max(q w ℓ2_t, q w clip(ℓ2_t, ℓ2_t^old ± ε))]``, n = all response tokens of the batch.
Only reward *differences* enter, so any prompt-dependent shift δ(x) leaves loss and gradients
unchanged. ``out.loss`` is ``[P]``; ``out.loss.mean()`` is this shard's share (see :mod:`.aggregate`).
Registered as ``LossSpec`` entries ``p3o_joint`` (hparams :class:`P3OJointParams`) and
``p3o_separate`` (:class:`P3OSeparateParams`); inputs ``policy_token_logps``, ``old_token_logps``,
``ref_token_logps``, ``completion_mask``, ``rewards``; optional ``num_pairs``, ``num_tokens``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from prefopt.core.registry import GROUP_LOSSES
from prefopt.losses.aggregate import LossOutput, LossSpec

__all__ = ["P3OJointParams", "P3OSeparateParams", "p3o_loss", "p3o_joint_loss", "p3o_separate_loss"]


@dataclass(frozen=True)
class P3OSeparateParams:
    """Loss keyword defaults (author's HH config). Trainer-side defaults: 2 samples per prompt,
    rewards clipped to ±10, 4 inner epochs, 64 rollouts, lr 8e-6, AdamW (0.9, 0.95), cosine."""

    beta_kl: float = 0.05
    epsilon: float = 0.2
    ratio_clip: float = 10.0      # c: importance weight clipped to [1/c, c]
    scale_q: bool = False


@dataclass(frozen=True)
class P3OJointParams(P3OSeparateParams):
    """As :class:`P3OSeparateParams` plus the joint-only ``avg_over_tokens``."""

    avg_over_tokens: bool = False  # divide by total response tokens instead of pairs


def _halves(x: torch.Tensor):
    p = x.shape[0] // 2
    return x[:p], x[p:]


def p3o_loss(policy_token_logps: torch.Tensor, old_token_logps: torch.Tensor,
             ref_token_logps: torch.Tensor, completion_mask: torch.Tensor, rewards: torch.Tensor, *,
             clip_mode: str = "joint",
             beta_kl: float = 0.05, epsilon: float = 0.2, ratio_clip: float = 10.0,
             avg_over_tokens: bool = False, scale_q: bool = False,
             num_pairs: torch.Tensor | float | None = None,
             num_tokens: torch.Tensor | float | None = None) -> LossOutput:
    """P3O loss for ``[y1; y2]`` batches.

    Args:
        policy_token_logps, old_token_logps, ref_token_logps: ``[2P, T]`` per-token log-probs under
            π_θ, π_old, π_ref.
        completion_mask: ``[2P, T]``.
        rewards: ``[2P]`` scalar rewards (already clipped/scaled by the caller).
        num_pairs / num_tokens: global counts for sharded batches (default: local).

    Returns:
        ``LossOutput(loss=[P], metrics)``; metrics: ``clip_frac`` (fraction of pairs
        (joint) or tokens (separate) where the clipped branch is active), ``weight_mean``, ``q_mean``,
        ``kl`` (mean per-sequence Σ(log π_θ − log π_ref)).
    """
    if clip_mode not in ("joint", "separate"):
        raise ValueError(f"unknown clip_mode '{clip_mode}'; known: joint, separate")
    if policy_token_logps.shape[0] % 2:
        raise ValueError("p3o_loss expects a [y1 block; y2 block] batch with an even size")
    m = completion_mask.to(torch.float32)
    lp, olp, rlp = (t.to(torch.float32) for t in (policy_token_logps, old_token_logps, ref_token_logps))
    s = ((lp - rlp) * m).sum(-1)
    s_old = ((olp - rlp) * m).sum(-1)
    (s1, s2), (s1o, s2o) = _halves(s), _halves(s_old)
    r1, r2 = _halves(rewards.to(torch.float32))
    q = ((r1 - r2) - beta_kl * (s1 - s2)).detach()
    if scale_q and q.numel() > 1:
        q = q / q.std().clamp(min=1e-8)
    w = torch.exp((s1 - s1o) + (s2 - s2o)).clamp(1.0 / ratio_clip, ratio_clip).detach()
    qw = q * w
    n_pairs = torch.as_tensor(num_pairs if num_pairs is not None else float(q.shape[0]),
                              dtype=torch.float32)
    n_tok = torch.as_tensor(num_tokens if num_tokens is not None else m.sum(), dtype=torch.float32)
    if clip_mode == "joint":
        delta, delta_old = s1 - s2, (s1o - s2o).detach()
        clipped = torch.clamp(delta, delta_old - epsilon, delta_old + epsilon)
        a, b = -qw * delta, -qw * clipped
        per_pair = 0.5 * torch.max(a, b)
        denom = n_tok if avg_over_tokens else n_pairs
        loss = per_pair * q.shape[0] / denom.clamp(min=1.0)
        clip_frac = (b.detach() > a.detach()).float().mean()
    else:
        (l1, l2), (o1, o2), (m1, m2) = _halves(lp), _halves(olp.detach()), _halves(m)
        c = qw.reshape(-1, 1)
        a1, b1 = -c * l1, -c * torch.clamp(l1, o1 - epsilon, o1 + epsilon)
        a2, b2 = c * l2, c * torch.clamp(l2, o2 - epsilon, o2 + epsilon)
        per_tok = torch.max(a1, b1) * m1 + torch.max(a2, b2) * m2
        loss = per_tok.sum(-1) * q.shape[0] / n_tok.clamp(min=1.0)
        active = ((b1.detach() > a1.detach()).float() * m1 + (b2.detach() > a2.detach()).float() * m2)
        clip_frac = active.sum() / m.sum().clamp(min=1.0)
    metrics = {"clip_frac": clip_frac, "weight_mean": w.mean(), "q_mean": q.mean(),
               "kl": s.detach().mean()}
    return LossOutput(loss=loss, metrics=metrics)


def p3o_joint_loss(policy_token_logps, old_token_logps, ref_token_logps, completion_mask, rewards,
                   **kwargs) -> LossOutput:
    """P3O with pair-level (joint) clipping of Δ = s1 − s2 (``clip_mode="joint"``)."""
    return p3o_loss(policy_token_logps, old_token_logps, ref_token_logps, completion_mask, rewards,
                    clip_mode="joint", **kwargs)


def p3o_separate_loss(policy_token_logps, old_token_logps, ref_token_logps, completion_mask,
                      rewards, **kwargs) -> LossOutput:
    """P3O with per-token (separate) clipping of each response (``clip_mode="separate"``)."""
    return p3o_loss(policy_token_logps, old_token_logps, ref_token_logps, completion_mask, rewards,
                    clip_mode="separate", **kwargs)


_INPUTS = ("policy_token_logps", "old_token_logps", "ref_token_logps", "completion_mask", "rewards")
GROUP_LOSSES.register("p3o_joint", LossSpec(p3o_joint_loss, P3OJointParams, _INPUTS,
                                            ("num_pairs", "num_tokens")))
GROUP_LOSSES.register("p3o_separate", LossSpec(p3o_separate_loss, P3OSeparateParams, _INPUTS,
                                               ("num_pairs", "num_tokens")))
