"""Per-token KL(π_θ‖π_ref) estimators from samples y ~ π_θ (Schulman, "Approximating KL divergence").

With log r = log π_ref − log π_θ at each sampled token:
- ``k1 = −log r``                 unbiased, high variance, can be negative;
- ``k2 = ½ (log r)²``             biased, low variance, ≥ 0;
- ``k3 = exp(log r) − log r − 1`` unbiased, low variance, ≥ 0 (GRPO, DeepSeekMath eq. 4).
"""
from __future__ import annotations

import torch

__all__ = ["KL_ESTIMATORS", "kl_estimate"]

_ESTIMATORS = {
    "k1": lambda log_r: -log_r,
    "k2": lambda log_r: 0.5 * log_r.pow(2),
    "k3": lambda log_r: torch.exp(log_r) - log_r - 1.0,
}
KL_ESTIMATORS = tuple(_ESTIMATORS)


def kl_estimate(logps: torch.Tensor, ref_logps: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token KL estimate (same shape as the inputs, differentiable w.r.t. ``logps``).

    Example: log π_θ = 0, log π_ref = log ½ → k1 = log 2 ≈ 0.6931, k2 = ½ (log 2)² ≈ 0.2402,
    k3 = ½ + log 2 − 1 ≈ 0.1931.
    """
    if kind not in _ESTIMATORS:
        raise ValueError(f"unknown KL estimator '{kind}'; known: {', '.join(KL_ESTIMATORS)}")
    return _ESTIMATORS[kind](ref_logps.to(torch.float32) - logps.to(torch.float32))
