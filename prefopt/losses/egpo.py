"""EGPO (Zhou, Fazel, Du 2025, arXiv 2503.08942): online IPO loss + extragradient helpers.

Online IPO loss with opponent π_s (Calandriello et al. 2024; EGPO code ``loss_funcs.py``):
``L = E[(h(y) − h(y') − target/β)²]``, h = log π_θ − log π_ref (length-normalised for LMs) and
``target = P(y ≻ y'') − P(y' ≻ y'')`` with y'' ~ π_s (or ``P(y ≻ y') − ½`` when y, y', y'' share one
untruncated distribution). EGPO = this loss inside :func:`extragradient_step`; online IPO-1 /
naive self-play = the same loss with plain steps. Batch layout ``[y block; y' block]`` along B;
``out.loss`` is ``[P]``; ``out.loss.mean()`` is this shard's share (see :mod:`.aggregate`).
Registered as one ``LossSpec`` under ``online_ipo`` and ``egpo`` (hparams :class:`EGPOParams`); inputs
``policy_token_logps``, ``ref_token_logps``, ``completion_mask``, ``target``; optional ``num_pairs``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

import torch

from prefopt.core.registry import GROUP_LOSSES
from prefopt.losses.aggregate import LossOutput, LossSpec

__all__ = ["EGPOParams", "online_ipo_loss", "EGSnapshot", "save_snapshot", "restore_snapshot",
           "extragradient_step", "geometric_mixture_logits", "sample_tokens"]


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


@dataclass
class EGSnapshot:
    """Copies of trainable parameters and the optimizer state at θ_t (see :func:`save_snapshot`)."""

    params: dict[str, torch.Tensor]
    optim_state: dict


def save_snapshot(model: torch.nn.Module, optimizer: torch.optim.Optimizer, *,
                  device: torch.device | str | None = None) -> EGSnapshot:
    """Back up trainable params (``requires_grad``; LoRA-friendly) and a deep copy of the optimizer
    state, optionally on ``device`` (e.g. ``"cpu"``)."""
    params = {n: p.detach().to(device or p.device, copy=True)
              for n, p in model.named_parameters() if p.requires_grad}
    state = copy.deepcopy(optimizer.state_dict())
    if device is not None:
        state["state"] = {k: {kk: (v.to(device) if torch.is_tensor(v) else v) for kk, v in s.items()}
                          for k, s in state["state"].items()}
    return EGSnapshot(params=params, optim_state=state)


@torch.no_grad()
def restore_snapshot(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     snap: EGSnapshot) -> None:
    """Copy the saved parameters back in place and reload the saved optimizer state."""
    named = dict(model.named_parameters())
    for name, value in snap.params.items():
        named[name].copy_(value)
    optimizer.load_state_dict(copy.deepcopy(snap.optim_state))


def extragradient_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, *,
                       half_loss: Callable[[], torch.Tensor],
                       sample_opponent: Callable[[], Any],
                       full_loss: Callable[[Any], torch.Tensor],
                       grad_clip: float | None = None,
                       snapshot_device: torch.device | str | None = None):
    """One EGPO update θ_t → θ_{t+1} (Zhou, Fazel, Du 2025, the extragradient update).

    1. save θ_t + optimizer state; take a step on ``half_loss()`` (opponent π_{θ_t}) → θ_{t+½};
    2. ``batch = sample_opponent()`` runs *at θ_{t+½}* (sync weights / draw y, y', y'' there);
    3. restore θ_t + optimizer state and take a step on ``full_loss(batch)`` evaluated at θ_t.

    Returns ``(half_loss_value, full_loss_value)`` detached.
    """
    snap = save_snapshot(model, optimizer, device=snapshot_device)
    params = [p for p in model.parameters() if p.requires_grad]

    def _step(loss_fn, *args):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(*args)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        return loss.detach()

    l_half = _step(half_loss)
    with torch.no_grad():
        batch = sample_opponent()
    restore_snapshot(model, optimizer, snap)
    l_full = _step(full_loss, batch)
    optimizer.zero_grad(set_to_none=True)
    return l_half, l_full


def geometric_mixture_logits(policy_logits: torch.Tensor, ref_logits: torch.Tensor,
                             coef: float) -> torch.Tensor:
    """Token-level geometric mixture ``(1 − c)·log π_θ + c·log π_ref`` (unnormalised log-probs;
    Nash-MD / EGPO sampler). c = 0 → π_θ, c = 1 → π_ref."""
    return ((1.0 - coef) * torch.log_softmax(policy_logits.to(torch.float32), -1)
            + coef * torch.log_softmax(ref_logits.to(torch.float32), -1))


def sample_tokens(logits: torch.Tensor, *, temperature: float = 1.0, top_k: int = 0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample one index per row of ``logits [..., V]`` at ``temperature`` with optional top-k."""
    z = logits.to(torch.float32) / temperature
    if top_k and top_k < z.shape[-1]:
        kth = torch.topk(z, top_k, dim=-1).values[..., -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    probs = torch.softmax(z, -1).reshape(-1, z.shape[-1])
    return torch.multinomial(probs, 1, generator=generator).reshape(z.shape[:-1])
