"""IRPO: in-context ranking preference optimisation (arXiv 2504.15477).

``g_i = (2^psi_i - 1)/log2(1 + tau_i)``, ``Lambda_i = log(1/(N-1) sum_{j != i} exp(beta(h_j - h_i)))``,
``L = -(1/N) sum_i g_i log s(-Lambda_i)``; item score = mean token log-prob over the item's tokens.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from prefopt.core.registry import LOSSES
from prefopt.losses.base import LossOutput, LossSpec


@dataclass(frozen=True)
class IRPOHParams:
    """beta 1.0; weight: dcg | position_only | harmonic; lse_norm: mean (subtract log(N-1)) | sum;
    batch_reduction: mean (ours) | sum (official code; per-example losses are scaled by B so the
    trainer's mean equals the batch sum)."""

    beta: float = 1.0
    weight: Literal["dcg", "position_only", "harmonic"] = "dcg"
    lse_norm: Literal["mean", "sum"] = "mean"
    batch_reduction: Literal["mean", "sum"] = "mean"

    def __post_init__(self) -> None:
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")


def item_scores(token_logps: Tensor, item_index: Tensor, num_items: int) -> tuple[Tensor, Tensor]:
    """Mean token log-prob per item.

    Args:
        token_logps: (B, T); item_index: (B, T) long, item id in [0, N) or -1 (prompt/separator/pad).
        num_items: N.

    Returns:
        scores (B, N) (0 for items without tokens) and token counts (B, N).
    """
    idx = item_index.long()
    inside = (idx >= 0) & (idx < num_items)
    safe = torch.where(inside, idx, torch.zeros_like(idx))
    vals = torch.where(inside, token_logps.float(), torch.zeros_like(token_logps, dtype=torch.float32))
    B = token_logps.shape[0]
    sums = vals.new_zeros(B, num_items).scatter_add(1, safe, vals)
    counts = vals.new_zeros(B, num_items).scatter_add(1, safe, inside.float())
    return sums / counts.clamp(min=1.0), counts


def gains(relevance: Tensor, rank: Tensor, weight: str = "dcg") -> Tensor:
    """Per-item weights g_i (rank 1 = best)."""
    psi, tau = relevance.float(), rank.float()
    if weight == "dcg":
        return (2.0 ** psi - 1) / torch.log2(1 + tau)
    if weight == "position_only":
        return 1.0 / torch.log2(1 + tau)
    if weight == "harmonic":
        return (2.0 ** psi - 1) / tau
    raise ValueError(f"unknown IRPO weight '{weight}' (dcg, position_only, harmonic)")


def irpo_from_margins(h: Tensor, relevance: Tensor, rank: Tensor, item_mask: Tensor | None = None, *,
                      beta: float = 1.0, weight: str = "dcg", lse_norm: str = "mean") -> Tensor:
    """Per-list IRPO loss (B,) from item log-ratios ``h`` (B, N); ``item_mask`` marks real items."""
    h = h.float()
    B, N = h.shape
    valid = torch.ones_like(h, dtype=torch.bool) if item_mask is None else item_mask.bool()
    n = valid.float().sum(-1)  # (B,)
    diff = beta * (h.unsqueeze(1) - h.unsqueeze(2))  # [b, i, j] = beta (h_j - h_i)
    eye = torch.eye(N, dtype=torch.bool, device=h.device)
    pair_ok = valid.unsqueeze(1) & valid.unsqueeze(2) & ~eye
    # rows with no competitor keep their (zero) diagonal so logsumexp stays finite (no NaN gradient)
    pair_ok = pair_ok | (eye & ~pair_ok.any(-1, keepdim=True))
    lse = torch.logsumexp(diff.masked_fill(~pair_ok, float("-inf")), dim=-1)  # (B, N)
    if lse_norm == "mean":
        lse = lse - torch.log((n - 1).clamp(min=1.0)).unsqueeze(-1)
    elif lse_norm != "sum":
        raise ValueError(f"unknown IRPO lse_norm '{lse_norm}' (mean, sum)")
    has_comp = valid & (n > 1).unsqueeze(-1)
    g = torch.where(has_comp, gains(relevance, rank, weight), torch.zeros_like(h))
    term = torch.where(has_comp, g * F.logsigmoid(-torch.where(has_comp, lse, torch.zeros_like(lse))),
                       torch.zeros_like(h))
    return -term.sum(-1) / n.clamp(min=1.0)


def irpo(*, policy_token_logps: Tensor, ref_token_logps: Tensor, item_index: Tensor, relevance: Tensor,
         rank: Tensor, item_mask: Tensor | None = None, beta: float = 1.0, weight: str = "dcg",
         lse_norm: str = "mean", batch_reduction: str = "mean") -> LossOutput:
    """IRPO listwise loss; one list per row. Inputs (B, T) token tensors, (B, N) item tensors."""
    N = relevance.shape[1]
    s_pol, counts = item_scores(policy_token_logps, item_index, N)
    s_ref, _ = item_scores(ref_token_logps, item_index, N)
    present = counts > 0
    mask = present if item_mask is None else present & item_mask.bool()
    h = s_pol - s_ref
    loss = irpo_from_margins(h, relevance, rank, mask, beta=beta, weight=weight, lse_norm=lse_norm)
    if batch_reduction == "sum":
        loss = loss * loss.shape[0]
    elif batch_reduction != "mean":
        raise ValueError(f"unknown IRPO batch_reduction '{batch_reduction}' (mean, sum)")
    hd = h.detach()
    rel = relevance.float()
    m = {"irpo/h_relevant": (hd * (rel > 0) * mask).sum() / ((rel > 0) & mask).float().sum().clamp(min=1),
         "irpo/h_irrelevant": (hd * (rel == 0) * mask).sum() / ((rel == 0) & mask).float().sum().clamp(min=1)}
    m["rewards/margins"] = beta * (m["irpo/h_relevant"] - m["irpo/h_irrelevant"])
    return LossOutput(loss, m)


LOSSES.register("irpo", LossSpec(
    irpo, IRPOHParams, ("policy_token_logps", "ref_token_logps", "item_index", "relevance", "rank"),
    optional_inputs=("item_mask",), needs_ref=True, paired=False))
