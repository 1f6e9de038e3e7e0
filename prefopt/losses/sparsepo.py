"""SparsePO: token-masked TDPO1 (Christopoulou et al. 2024, arXiv 2410.05102).

``U(y) = sum_t c_t m_u,t rho_t``, ``D(y) = sum_t c_t m_d,t KL_t``, and
``L = -log s(beta[(U_w - U_l) - (D_l - D_w)]) + lambda_u ||m_u||_1 + lambda_d ||m_d||_1``
(L1 over valid tokens of chosen and rejected; with a shared mask each lambda is halved, as in the
official trainer). Mask providers live in :data:`MASK_PROVIDERS` (``activation``, ``ones``, ``zeros``,
``random``) and :class:`LearnedMaskHead` (``learned``, variant B "simple_all").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prefopt.core.registry import LOSSES, registry
from prefopt.losses.base import LossOutput, LossSpec, reward_metrics, split_pairs

MASK_PROVIDERS = registry("sparsepo_mask")


@dataclass(frozen=True)
class SparsePOHParams:
    """beta 0.1 (paper: 0.8 IMDB/TL;DR, 0.1 HH); lambda_u/lambda_d L1 weights (0; HH runs 0.001);
    shared_mask: one mask feeds both terms (then each lambda is halved)."""

    beta: float = 0.1
    lambda_u: float = 0.0
    lambda_d: float = 0.0
    shared_mask: bool = True

    def __post_init__(self) -> None:
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if self.lambda_u < 0 or self.lambda_d < 0:
            raise ValueError("lambda_u and lambda_d must be >= 0")


@dataclass(frozen=True)
class SparsePOMaskConfig:
    """Trainer-side mask settings (not loss hyper-parameters).

    provider: activation | learned | ones | zeros | random; dropout (learned head) 0.01;
    weight_decay of the mask head's optimizer group 0.01; separate_heads: independent m_u / m_d heads.
    """

    provider: str = "learned"
    dropout: float = 0.01
    weight_decay: float = 0.01
    separate_heads: bool = False


def sparsepo(*, policy_token_logps: Tensor, ref_token_logps: Tensor, completion_mask: Tensor,
             token_kl: Tensor, mask_u: Tensor, mask_d: Tensor | None = None, beta: float = 0.1,
             lambda_u: float = 0.0, lambda_d: float = 0.0, shared_mask: bool = True) -> LossOutput:
    """SparsePO loss on ``[chosen; rejected]`` token tensors of shape (2B, T).

    Args:
        policy_token_logps, ref_token_logps: gathered token log-probs.
        completion_mask: 1 on valid completion tokens.
        token_kl: KL(pi_ref || pi) per token (:func:`prefopt.losses.kl.token_kl`).
        mask_u: reward mask (>= 0); mask_d: KL mask, defaults to ``mask_u`` (shared mask).
        beta, lambda_u, lambda_d, shared_mask: see :class:`SparsePOHParams`.
    """
    valid = completion_mask.bool()
    zero = torch.zeros((), device=policy_token_logps.device)
    m_u = torch.where(valid, mask_u.float(), zero)
    m_d = m_u if mask_d is None else torch.where(valid, mask_d.float(), zero)
    rho = torch.where(valid, policy_token_logps.float() - ref_token_logps.float(), zero)
    kl = torch.where(valid, token_kl.float(), zero)
    u_w, u_l = split_pairs((m_u * rho).sum(-1))
    d_w, d_l = split_pairs((m_d * kl).sum(-1))
    arg = beta * ((u_w - u_l) - (d_l - d_w))
    l1_u_w, l1_u_l = split_pairs(m_u.sum(-1))
    l1_d_w, l1_d_l = split_pairs(m_d.sum(-1))
    scale = 0.5 if shared_mask else 1.0
    loss = -F.logsigmoid(arg) + scale * (lambda_u * (l1_u_w + l1_u_l) + lambda_d * (l1_d_w + l1_d_l))
    n_valid = valid.float().sum().clamp(min=1.0)
    m = reward_metrics(beta * (u_w - d_w), beta * (u_l - d_l))
    m.update({
        "sparsepo/mask_sparsity_u": ((m_u == 0) & valid).float().sum().detach() / n_valid,
        "sparsepo/mask_sparsity_d": ((m_d == 0) & valid).float().sum().detach() / n_valid,
        "sparsepo/mask_l1_u": m_u.sum(-1).mean().detach(),
        "sparsepo/mask_l1_d": m_d.sum(-1).mean().detach(),
    })
    return LossOutput(loss, m)


LOSSES.register("sparsepo", LossSpec(
    sparsepo, SparsePOHParams,
    ("policy_token_logps", "ref_token_logps", "completion_mask", "token_kl", "mask_u"),
    optional_inputs=("mask_d",), needs_ref=True, needs_token_level=True))


# ----------------------------------------------------------------------------- mask providers

def _rescale(x: Tensor, valid: Tensor) -> Tensor:
    """z-normalise over valid tokens per row, then min-max to [0,1]; degenerate rows -> 1.0."""
    x = x.float()
    n = valid.float().sum(-1, keepdim=True).clamp(min=1.0)
    xv = torch.where(valid, x, torch.zeros_like(x))
    mean = xv.sum(-1, keepdim=True) / n
    var = torch.where(valid, (x - mean) ** 2, torch.zeros_like(x)).sum(-1, keepdim=True) / n
    z = (x - mean) / var.sqrt().clamp(min=1e-12)
    big = torch.finfo(z.dtype).max
    lo = torch.where(valid, z, torch.full_like(z, big)).amin(-1, keepdim=True)
    hi = torch.where(valid, z, torch.full_like(z, -big)).amax(-1, keepdim=True)
    span = hi - lo
    degenerate = ~(span > 0) | (var <= 0)
    out = torch.where(degenerate, torch.ones_like(z), (z - lo) / torch.where(degenerate, 1.0, span))
    return torch.where(valid, out.clamp(0.0, 1.0), torch.zeros_like(out))


@torch.no_grad()
def activation_mask(activations: Mapping[str, Sequence[Tensor]], completion_mask: Tensor) -> Tensor:
    """Variant A ("MaPO") mask from reference activations; detached, 0 outside valid tokens.

    Args:
        activations: ``{hook_type: [per-layer tensor (B, T, H) or (B, T)]}`` (mlp, attn, resid, logits).
        completion_mask: (B, T).
    """
    valid = completion_mask.bool()
    per_type = []
    for name, layers in activations.items():
        if len(layers) == 0:
            raise ValueError(f"activation hook type '{name}' has no tensors")
        maps = [_rescale(a.float().mean(-1) if a.dim() == 3 else a.float(), valid) for a in layers]
        per_type.append(torch.stack(maps).mean(0))
    if not per_type:
        raise ValueError("activation_mask needs at least one hook type")
    return torch.stack(per_type).mean(0).detach()


def ones_mask(completion_mask: Tensor) -> Tensor:
    return completion_mask.float()


def zeros_mask(completion_mask: Tensor) -> Tensor:
    return torch.zeros_like(completion_mask, dtype=torch.float32)


def random_mask(completion_mask: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Uniform [0,1) mask on valid tokens (ablation)."""
    r = torch.rand(completion_mask.shape, generator=generator, device=completion_mask.device)
    return r * completion_mask.float()


class LearnedMaskHead(nn.Module):
    """Variant B "simple_all": shared LayerNorm(h) -> per layer Linear(h,1) -> ReLU -> dropout;
    stack L scalars -> Linear(L,1,no bias) -> ReLU -> dropout. Output (B, T) >= 0 with exact zeros.

    Reads the reference model's per-layer hidden states (embedding output excluded), already aligned
    with the labels. Its parameters belong in their own optimizer group (weight decay 0.01).
    """

    def __init__(self, hidden_size: int, num_layers: int, dropout: float = 0.01):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size)
        self.layer_heads = nn.ModuleList(nn.Linear(hidden_size, 1) for _ in range(num_layers))
        self.mixer = nn.Linear(num_layers, 1, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden_states: Sequence[Tensor], completion_mask: Tensor | None = None) -> Tensor:
        if len(hidden_states) != len(self.layer_heads):
            raise ValueError(f"expected {len(self.layer_heads)} hidden states, got {len(hidden_states)}")
        per_layer = [self.dropout(F.relu(head(self.norm(h.float().detach())))).squeeze(-1)
                     for head, h in zip(self.layer_heads, hidden_states, strict=False)]
        m = self.dropout(F.relu(self.mixer(torch.stack(per_layer, dim=-1)))).squeeze(-1)
        return m if completion_mask is None else m * completion_mask.float()


MASK_PROVIDERS.register("activation", activation_mask)
MASK_PROVIDERS.register("learned", LearnedMaskHead)
MASK_PROVIDERS.register("ones", ones_mask)
MASK_PROVIDERS.register("zeros", zeros_mask)
MASK_PROVIDERS.register("random", random_mask)
