"""GRPO clipped surrogate (token ratio) and its sequence-ratio variant GSPO (``GROUP_LOSSES``).

Per-token term (DeepSeekMath eq. 3, DAPO eq. 8 for ε_low/ε_high):
``ℓ_{i,t} = −min(ρ A_i, clip(ρ, 1−ε_low, 1+ε_high) A_i) + β · KL_{i,t}``,
``ρ_{i,t} = exp(log π_θ − log π_old)`` (``importance_sampling_level="token"``) or the sequence
geometric mean ``exp(mean_t(log π_θ − log π_old))`` broadcast to every token (``"sequence"``, GSPO,
Zheng et al. 2025 eq. 7). The per-token losses are aggregated by :func:`aggregate` with the global
counts; ``out.loss.mean()`` is this shard's share of the loss (see :mod:`.aggregate`).

Registered as :class:`~prefopt.losses.base.LossSpec` entries: ``GROUP_LOSSES.get("grpo")(inputs, GRPOParams())``
with ``inputs`` holding ``policy_token_logps``, ``old_token_logps``, ``advantages``,
``completion_mask`` and optionally ``ref_token_logps`` (β > 0), ``num_tokens``, ``num_sequences``,
``max_completion_length``, ``is_weights``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from prefopt.core.registry import GROUP_LOSSES
from prefopt.losses.aggregate import (
    LOSS_TYPE_TO_MODE,
    LossOutput,
    LossSpec,
    aggregate,
    masked_mean,
    to_mean_contract,
)
from prefopt.losses.kl import kl_estimate

__all__ = ["GRPOParams", "GSPOParams", "grpo_loss"]


@dataclass(frozen=True)
class GRPOParams:
    """Loss keyword defaults for ``grpo`` (TRL GRPOConfig parity). Rollout defaults live in the
    trainer config: G 8, max completion 512, temperature 1.0, lr 1e-6, μ 1, scale_rewards group."""

    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    beta: float = 0.0            # 0 → no reference model needed
    kl_estimator: str = "k3"
    loss_type: str = "dapo"      # grpo | dapo | bnpo | dr_grpo (bnpo = dapo with local counts)
    importance_sampling_level: str = "token"


@dataclass(frozen=True)
class GSPOParams:
    """Loss keyword defaults for ``gspo`` (GSPO paper: ε 3e-4 / 4e-4, sequence-level ratio)."""

    epsilon_low: float = 3e-4
    epsilon_high: float = 4e-4
    beta: float = 0.0
    kl_estimator: str = "k3"
    loss_type: str = "dapo"
    importance_sampling_level: str = "sequence"


def _ratio(logps, old_logps, mask, level):
    log_ratio = (logps.to(torch.float32) - old_logps.to(torch.float32)) * mask
    if level == "token":
        return torch.exp(log_ratio)
    if level == "sequence":
        seq = log_ratio.sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1.0)
        return torch.exp(seq).expand_as(log_ratio)
    raise ValueError(f"unknown importance_sampling_level '{level}'; known: token, sequence")


def grpo_loss(policy_token_logps: torch.Tensor, old_token_logps: torch.Tensor,
              advantages: torch.Tensor, completion_mask: torch.Tensor, *,
              ref_token_logps: torch.Tensor | None = None,
              epsilon_low: float = 0.2, epsilon_high: float = 0.2, beta: float = 0.0,
              kl_estimator: str = "k3", loss_type: str = "dapo",
              importance_sampling_level: str = "token",
              num_tokens: torch.Tensor | float | None = None,
              num_sequences: torch.Tensor | float | None = None,
              max_completion_length: int | None = None,
              is_weights: torch.Tensor | None = None) -> LossOutput:
    """Clipped GRPO surrogate.

    Args:
        policy_token_logps, old_token_logps, ref_token_logps: ``[B, T]`` per-token log-probs under
            π_θ, π_old, π_ref (CONTRIBUTING layout); the reference is needed only when ``beta > 0``.
        advantages: ``[B]`` sequence advantages (e.g. ``ADVANTAGES.get("grpo")``), detached here.
        completion_mask: ``[B, T]`` 1 on completion tokens.
        num_tokens / num_sequences: global counts for the aggregation (see ``aggregate``).
        max_completion_length: ``L_max`` for ``loss_type="dr_grpo"`` (default: T).
        is_weights: optional ``[B, T]`` or ``[B, 1]`` detached train/rollout correction weights
            (TIS/MIS, already truncated or masked by the caller) multiplying the policy term.

    Returns:
        ``LossOutput(loss=[B], metrics)``, ``loss.mean()`` = this shard's share; metrics (local):
        ``clip_ratio/low_mean``, ``clip_ratio/high_mean``, ``clip_ratio/region_mean``,
        ``ratio_mean``, ``kl`` (when beta > 0).
    """
    if loss_type not in LOSS_TYPE_TO_MODE:
        raise ValueError(f"unknown loss_type '{loss_type}'; known: {', '.join(LOSS_TYPE_TO_MODE)}")
    mask = completion_mask.to(torch.float32)
    adv = advantages.detach().to(torch.float32).reshape(-1, 1)
    logps = policy_token_logps
    ratio = _ratio(logps, old_token_logps, mask, importance_sampling_level)
    clipped = torch.clamp(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high)
    per_token = -torch.min(ratio * adv, clipped * adv)
    if is_weights is not None:
        per_token = per_token * is_weights.detach().to(torch.float32)
    metrics: dict[str, torch.Tensor] = {}
    if beta != 0.0:
        if ref_token_logps is None:
            raise ValueError("grpo_loss: beta > 0 needs ref_token_logps")
        kl = kl_estimate(logps, ref_token_logps, kl_estimator)
        per_token = per_token + beta * kl
        metrics["kl"] = masked_mean(kl, mask)
    if loss_type == "bnpo":
        num_tokens = None
    loss = to_mean_contract(aggregate(per_token, mask, loss_type, num_tokens=num_tokens,
                                      num_sequences=num_sequences, max_len=max_completion_length))
    r = ratio.detach()
    low = ((r < 1.0 - epsilon_low) & (adv < 0)).float()
    high = ((r > 1.0 + epsilon_high) & (adv > 0)).float()
    metrics.update({"clip_ratio/low_mean": masked_mean(low, mask),
                    "clip_ratio/high_mean": masked_mean(high, mask),
                    "clip_ratio/region_mean": masked_mean(low + high, mask),
                    "ratio_mean": masked_mean(r, mask)})
    return LossOutput(loss=loss, metrics=metrics)


_INPUTS = ("policy_token_logps", "old_token_logps", "advantages", "completion_mask")
_OPTIONAL = ("ref_token_logps", "num_tokens", "num_sequences", "max_completion_length", "is_weights")
# needs_ref=False: a reference is only needed when beta > 0 (the trainer checks hparams.beta).
GROUP_LOSSES.register("grpo", LossSpec(grpo_loss, GRPOParams, _INPUTS, _OPTIONAL, needs_ref=False,
                                       paired=False))
GROUP_LOSSES.register("gspo", LossSpec(grpo_loss, GSPOParams, _INPUTS, _OPTIONAL, needs_ref=False,
                                       paired=False))
