"""EGPO (Zhou, Fazel, Du 2025, arXiv 2503.08942): the online IPO loss.

Online IPO loss with opponent π_s (Calandriello et al. 2024; EGPO code ``loss_funcs.py``):
``L = E[(h(y) − h(y') − target/β)²]``, h = log π_θ − log π_ref (length-normalised for LMs) and
``target = P(y ≻ y'') − P(y' ≻ y'')`` with y'' ~ π_s (or ``P(y ≻ y') − ½`` when y, y', y'' share one
untruncated distribution). EGPO = this loss inside the extragradient update
(:mod:`prefopt.loops.extragradient`; its sampler: :mod:`prefopt.generation.mixture`); online IPO-1 /
naive self-play = the same loss with plain steps. Batch layout ``[y block; y' block]`` along B;
``out.loss`` is ``[P]``; ``out.loss.mean()`` is this shard's share (see :mod:`.aggregate`).
Registered as one ``LossSpec`` under ``online_ipo`` and ``egpo`` (hparams :class:`EGPOParams`); inputs
``policy_token_logps``, ``ref_token_logps``, ``completion_mask``, ``target``; optional ``num_pairs``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from prefopt.core.registry import GROUP_LOSSES
from prefopt.losses.aggregate import LossOutput, LossSpec

__all__ = ["EGPOParams", "online_ipo_loss"]


@dataclass(frozen=True)
class EGPOParams:
    """Loss defaults (official LM run). Trainer-side: lr 5e-7, batch 64, AdamW, warmup 1000,
    weight decay 0.01, grad-clip 1.0, contrast pair from π_θ at temperature 2.0 / top-k 10
    (mixture c = 0), y'' from π_θ at T = 1 untruncated; Nash-MD baseline mixture c = 0.125."""

    beta: float = 0.1
    normalize: bool = True   # length-normalised sequence log-probs


def _seq(logps, mask, normalize):
    s = (logps.to(torch.float32) * mask).sum(-1)
    return s / mask.sum(-1).clamp(min=1.0) if normalize else s


def online_ipo_loss(policy_token_logps: torch.Tensor, ref_token_logps: torch.Tensor,
                    completion_mask: torch.Tensor, target: torch.Tensor, *, beta: float = 0.1, normalize: bool = True,
                    num_pairs: torch.Tensor | float | None = None) -> LossOutput:
    """Online IPO regression loss (Zhou, Fazel, Du 2025, the online-IPO objective L_OIPO).

    Args:
        policy_token_logps, ref_token_logps: ``[2P, T]`` per-token log-probs under π_θ and π_ref (``[y; y']``).
        completion_mask: ``[2P, T]``.
        target: ``[P]`` preference difference P(y≻y'') − P(y'≻y'') (or P(y≻y') − ½), no grad.
        beta: KL regularisation β of the game (target is divided by it).
        normalize: divide sequence log-probs by the number of response tokens.
        num_pairs: global pair count for sharded batches (default: local P).

    Returns:
        ``LossOutput(loss=[P], metrics)``; metrics: ``log_ratio_margin`` (mean
        h(y) − h(y')), ``target_mean``, ``kl`` (mean h over both blocks, a KL proxy).
    """
    m = completion_mask.to(torch.float32)
    h = _seq(policy_token_logps, m, normalize) - _seq(ref_token_logps, m, normalize).detach()
    p = h.shape[0] // 2
    if h.shape[0] != 2 * p:
        raise ValueError("online_ipo_loss expects a [y block; y' block] batch with an even size")
    margin = h[:p] - h[p:]
    tgt = target.detach().to(torch.float32).reshape(-1)
    per_pair = (margin - tgt / beta).pow(2)
    n = torch.as_tensor(num_pairs if num_pairs is not None else float(p), dtype=torch.float32)
    metrics = {"log_ratio_margin": margin.detach().mean(), "target_mean": tgt.mean(),
               "kl": h.detach().mean()}
    return LossOutput(loss=per_pair * p / n.clamp(min=1.0), metrics=metrics)


_OIPO_SPEC = LossSpec(online_ipo_loss, EGPOParams,
                      ("policy_token_logps", "ref_token_logps", "completion_mask", "target"),
                      ("num_pairs",))
GROUP_LOSSES.register("online_ipo", _OIPO_SPEC)
GROUP_LOSSES.register("egpo", _OIPO_SPEC)  # same loss; EGPO differs by its extragradient step
