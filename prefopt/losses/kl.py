"""Per-token KL(pi_ref || pi) over the full vocabulary from two logits tensors, chunked over T.

Used by SparsePO/TDPO (spec offline_losses.md section 2):
``KL_t = sum_v pi_ref(v|.) [log pi_ref(v|.) - log pi(v|.)]`` (>= 0, = 0 iff the distributions match).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint


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
