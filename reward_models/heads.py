"""Reward heads and pooling: scalar ``score``, GPM ``embed_head`` + ``gate_head``, last-real-token pooling.

Pooling uses the attention mask only (never a pad-id search, spec 0.2), so it is identical for left and
right padding and for batch size 1 vs N, and works when ``pad_token_id == eos_token_id``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reward_models.losses import skew_score

GATES = ("scaled_softmax", "softmax", "softplus")
HEAD_INITS = ("normal", "zeros")

__all__ = ["last_token_index", "first_token_index", "prompt_last_index", "gather_positions",
           "position_ids_from_mask", "make_linear_head", "init_head", "gate_values", "embed_values",
           "score_matrix", "skew_score", "GATES", "HEAD_INITS"]


def last_token_index(attention_mask: Tensor) -> Tensor:
    """Index of the last position with ``attention_mask == 1`` in each row (``[B]``, long)."""
    mask = attention_mask.bool()
    if not bool(mask.any(-1).all()):
        raise ValueError("every row needs at least one real token (attention_mask has an all-zero row)")
    pos = torch.arange(mask.shape[-1], device=mask.device).expand_as(mask)
    return torch.where(mask, pos, torch.full_like(pos, -1)).amax(-1)


def first_token_index(attention_mask: Tensor) -> Tensor:
    """Index of the first real token of each row (0 for right padding)."""
    mask = attention_mask.bool()
    t = mask.shape[-1]
    pos = torch.arange(t, device=mask.device).expand_as(mask)
    return torch.where(mask, pos, torch.full_like(pos, t)).amin(-1)


def prompt_last_index(attention_mask: Tensor, prompt_lengths: Tensor) -> Tensor:
    """Position of the final prompt token inside each prompt+response row (GPM gate input).

    ``prompt_lengths[b]`` counts the real prompt tokens at the start of the real part of row ``b``.
    """
    lengths = torch.as_tensor(prompt_lengths, device=attention_mask.device).long()
    if bool((lengths < 1).any()):
        raise ValueError("prompt_lengths must be >= 1 for the GPM gate")
    n_real = attention_mask.bool().sum(-1)
    if bool((lengths > n_real).any()):
        raise ValueError("a prompt length exceeds the number of real tokens in its row")
    return first_token_index(attention_mask) + lengths - 1


def gather_positions(hidden: Tensor, index: Tensor) -> Tensor:
    """``hidden[b, index[b]]`` for ``hidden [B, T, d]`` -> ``[B, d]``."""
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index.to(hidden.device)]


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions counted over real tokens only (left padding gets the same positions as right)."""
    mask = attention_mask.long()
    return (mask.cumsum(-1) - 1).clamp(min=0)


def init_head(linear: nn.Linear, head_init: str = "normal", seed: int | None = None) -> nn.Linear:
    """Initialise a head in place: zeros, or normal with std ``1/(d+1)`` (OpenRLHF / GPM repo)."""
    if head_init not in HEAD_INITS:
        raise ValueError(f"head_init must be one of {HEAD_INITS}, got {head_init!r}")
    with torch.no_grad():
        if head_init == "zeros":
            linear.weight.zero_()
        else:
            gen = None
            if seed is not None:
                gen = torch.Generator(device="cpu").manual_seed(int(seed))
            w = torch.randn(linear.weight.shape, generator=gen, dtype=torch.float32)
            linear.weight.copy_(w / (linear.in_features + 1))
    return linear


def make_linear_head(d: int, out: int, head_init: str = "normal", seed: int | None = None) -> nn.Linear:
    """``Linear(d, out, bias=False)`` initialised by :func:`init_head` (float32)."""
    return init_head(nn.Linear(d, out, bias=False), head_init, seed)


def gate_values(logits: Tensor, gate: str | None, hidden_size: int) -> Tensor | None:
    """GPM gate ``lam [.., k]`` from prompt-head logits ``g`` (Zhang et al. 2025, arXiv 2410.02197).

    ``scaled_softmax``: ``k * softmax(g / sqrt(d))`` (sums to k, mean 1); ``softmax``: ``softmax(g)``;
    ``softplus``: ``softplus(g)``. ``gate=None`` returns None (all blocks weight 1).
    """
    if gate is None:
        return None
    g = logits.float()
    if gate == "scaled_softmax":
        return g.shape[-1] * torch.softmax(g / math.sqrt(hidden_size), dim=-1)
    if gate == "softmax":
        return torch.softmax(g, dim=-1)
    if gate == "softplus":
        return F.softplus(g)
    raise ValueError(f"gate must be one of {GATES} or None, got {gate!r}")


def embed_values(u: Tensor, l2_normalize: bool = True) -> Tensor:
    """GPM response embedding ``v = u / ||u||_2`` (or ``u`` unchanged)."""
    u = u.float()
    return F.normalize(u, p=2, dim=-1, eps=1e-12) if l2_normalize else u


def score_matrix(embeddings: Tensor, lam: Tensor | None = None) -> Tensor:
    """``S[i, j] = s(i > j)`` for ``n`` embeddings of one prompt (``[n, 2k]`` -> ``[n, n]``, skew-symmetric).

    Uses n embeddings (n forward passes upstream), not n^2 pairwise calls (spec G5).
    """
    return skew_score(embeddings[:, None, :], embeddings[None, :, :], lam)
