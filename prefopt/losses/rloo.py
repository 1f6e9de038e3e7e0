"""RLOO: REINFORCE with the leave-one-out baseline, the whole completion as one action (``GROUP_LOSSES``).

Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human
Feedback in LLMs", arXiv 2402.14740 (the RLOO estimator): with k samples ``y_1..y_k`` of one prompt,
``∇J ≈ (1/k) Σ_i (r_i − 1/(k−1) Σ_{j≠i} r_j) ∇ log π_θ(y_i|x)``. The bracket is the advantage
``ADVANTAGES.get("rloo")`` (:func:`prefopt.losses.advantages.rloo_advantages`); this module is the
surrogate whose gradient is that estimator. Per sequence
``ℓ_i = −A_i · ρ_i + β Σ_t KL_{i,t}``, ``ρ_i = exp(Σ_t (log π_θ − log π_old))`` (the sequence likelihood
ratio, 1 with gradient ``∇ log π_θ(y_i|x)`` when the rollout policy is the current one), averaged over
sequences. No clipping (the paper's point: PPO's clip rarely binds in RLHF). The paper puts the KL
penalty into the reward; here it is a loss term with the same per-sequence weight (as GRPO does,
DeepSeekMath eq. 3), so ``beta: 0`` is exactly the paper's estimator without a KL term.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from prefopt.core.registry import GROUP_LOSSES
from prefopt.losses.aggregate import LossOutput, LossSpec, masked_mean, to_mean_contract
from prefopt.losses.kl import kl_estimate

__all__ = ["RLOOParams", "rloo_loss"]


@dataclass(frozen=True)
class RLOOParams:
    """Loss keyword defaults for ``rloo`` (β = 0: no reference model needed)."""

    beta: float = 0.0
    kl_estimator: str = "k3"


def rloo_loss(policy_token_logps: torch.Tensor, old_token_logps: torch.Tensor, advantages: torch.Tensor,
              completion_mask: torch.Tensor, *, ref_token_logps: torch.Tensor | None = None,
              beta: float = 0.0, kl_estimator: str = "k3",
              num_sequences: torch.Tensor | float | None = None) -> LossOutput:
    """Sequence-level REINFORCE surrogate with leave-one-out advantages.

    Args:
        policy_token_logps, old_token_logps, ref_token_logps: ``[B, T]`` per-token log-probs under
            π_θ, π_old (rollout policy), π_ref (needed only when ``beta > 0``).
        advantages: ``[B]`` leave-one-out advantages (detached here).
        completion_mask: ``[B, T]`` 1 on completion tokens.
        num_sequences: global number of sequences of the step (default: ``B``).

    Returns:
        ``LossOutput(loss=[B], metrics)``; ``loss.mean()`` = ``Σ_i ℓ_i / num_sequences``.
        Metrics: ``ratio_mean`` (mean ρ_i), ``kl`` (per-token mean, when ``beta > 0``).
        Example: ρ = 1, A = (1, −1), B = 2 → loss = (−1, 1), mean 0, and
        ``∂ mean / ∂ log π_θ(y_{i,t}) = −A_i / 2`` on completion tokens.
    """
    mask = completion_mask.to(torch.float32)
    adv = advantages.detach().to(torch.float32).reshape(-1)
    on = mask.bool()
    log_ratio = policy_token_logps.to(torch.float32) - old_token_logps.to(torch.float32)
    ratio = torch.exp(torch.where(on, log_ratio, torch.zeros_like(log_ratio)).sum(-1))
    per_seq = -adv * ratio
    metrics: dict[str, torch.Tensor] = {"ratio_mean": ratio.detach().mean()}
    if beta != 0.0:
        if ref_token_logps is None:
            raise ValueError("rloo_loss: beta > 0 needs ref_token_logps")
        kl = kl_estimate(policy_token_logps, ref_token_logps, kl_estimator)
        per_seq = per_seq + beta * torch.where(on, kl, torch.zeros_like(kl)).sum(-1)
        metrics["kl"] = masked_mean(kl, mask)
    n = torch.as_tensor(float(mask.shape[0]) if num_sequences is None else num_sequences,
                        dtype=torch.float32, device=mask.device).clamp(min=1.0)
    return LossOutput(loss=to_mean_contract(per_seq / n), metrics=metrics)


# needs_ref=False: a reference is only needed when beta > 0 (the online loop checks hparams.beta).
GROUP_LOSSES.register("rloo", LossSpec(rloo_loss, RLOOParams,
                                       ("policy_token_logps", "old_token_logps", "advantages", "completion_mask"),
                                       ("ref_token_logps", "num_sequences"), needs_ref=False, paired=False))
