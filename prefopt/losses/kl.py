"""Per-token KL divergences between the policy and the reference: exact, or estimated from samples.

* :func:`token_kl`: KL(π_ref ‖ π) over the full vocabulary from two logits tensors, chunked over T
  (SparsePO, Christopoulou et al. 2024, eq. 10; TDPO):
  ``KL_t = Σ_v π_ref(v|·) [log π_ref(v|·) − log π(v|·)]`` (≥ 0, = 0 iff the distributions match).
* :func:`kl_estimate`: KL(π_θ ‖ π_ref) estimators from sampled tokens y ~ π_θ (Schulman, "Approximating
  KL divergence"), with log r = log π_ref − log π_θ at each sampled token:
  ``k1 = −log r`` (unbiased, high variance, can be negative); ``k2 = ½ (log r)²`` (biased, low variance,
  ≥ 0); ``k3 = exp(log r) − log r − 1`` (unbiased, low variance, ≥ 0; GRPO, DeepSeekMath eq. 4).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

__all__ = ["KL_ESTIMATORS", "kl_estimate", "token_kl"]


def _kl_chunk(policy_logits: Tensor, ref_logits: Tensor) -> Tensor:
    ref_lp = F.log_softmax(ref_logits.float(), dim=-1)
    pol_lp = F.log_softmax(policy_logits.float(), dim=-1)
    return (ref_lp.exp() * (ref_lp - pol_lp)).sum(-1).clamp(min=0.0)


def token_kl(policy_logits: Tensor, ref_logits: Tensor, chunk_size: int = 256,
             recompute: bool = True) -> Tensor:
    """KL(pi_ref || pi) per position.

    Args:
        policy_logits: (B, T, V) policy logits (gradient flows through these).
        ref_logits: (B, T, V) reference logits (treated as constants).
        chunk_size: positions per chunk; peak extra memory is about B x chunk_size x V floats.
        recompute: when the policy needs gradients, recompute each chunk in backward
            (activation checkpointing) instead of keeping every chunk's softmax alive.

    Returns:
        (B, T) float32 tensor, >= 0 (clamped against rounding; exact 0 when logits are equal).
    """
    if policy_logits.shape != ref_logits.shape:
        raise ValueError(f"logits shapes differ: {tuple(policy_logits.shape)} vs {tuple(ref_logits.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    ref_logits = ref_logits.detach()
    use_ckpt = recompute and policy_logits.requires_grad and torch.is_grad_enabled()
    out = []
    for s in range(0, policy_logits.shape[1], chunk_size):
        p, r = policy_logits[:, s:s + chunk_size], ref_logits[:, s:s + chunk_size]
        out.append(checkpoint(_kl_chunk, p, r, use_reentrant=False) if use_ckpt else _kl_chunk(p, r))
    if not out:
        return policy_logits.new_zeros(policy_logits.shape[:2], dtype=torch.float32)
    return torch.cat(out, dim=1)


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
