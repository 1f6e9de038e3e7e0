"""Group-relative advantage estimators (registered in ``ADVANTAGES``).

Common signature: ``fn(rewards, group_ids, **hparams) -> Tensor[N]``.
``rewards`` is ``[N]`` float (NaN = "no reward", excluded from the statistics; its advantage is 0),
``group_ids`` is ``[N]`` integer (samples of the same prompt share an id; ids need not be sorted or
contiguous). Advantages are detached float32. A group whose valid rewards are all equal gets exactly
zero advantages (spec A-G2).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from prefopt.core.registry import ADVANTAGES

__all__ = ["GRPOAdvantageParams", "grpo_advantages", "dr_grpo_advantages", "rloo_advantages",
           "group_reward_stats", "CONFIG_OPTIONS", "advantage_options", "unread_options"]

SCALES = ("group", "batch", "none")

# The ``online:`` fields an estimator reads: {estimator: {keyword: online config field}}. The online loop
# passes ``advantage_options(name, online)``; an estimator without an entry takes no options.
CONFIG_OPTIONS: dict[str, dict[str, str]] = {"grpo": {"scale": "scale_rewards"}}


def advantage_options(name: str, online: object) -> dict[str, object]:
    """Keyword options of estimator ``name`` read from the online config (``{}`` when it has none)."""
    return {kw: getattr(online, field) for kw, field in CONFIG_OPTIONS.get(name, {}).items()}


def unread_options(name: str, online: object, defaults: object) -> dict[str, list[str]]:
    """Estimator options of the online config that estimator ``name`` does not read but that are set away
    from their default (``defaults``: a default online config): ``{field: [estimators that read it]}``.
    The config check refuses them, so a setting is never silently ignored."""
    read = set(CONFIG_OPTIONS.get(name, {}).values())
    readers: dict[str, list[str]] = {}
    for est, opts in sorted(CONFIG_OPTIONS.items()):
        for field in opts.values():
            readers.setdefault(field, []).append(est)
    return {f: r for f, r in readers.items() if f not in read and getattr(online, f) != getattr(defaults, f)}


@dataclass(frozen=True)
class GRPOAdvantageParams:
    """Defaults as in TRL's GRPOConfig. ``scale``: group | batch | none (none = Dr. GRPO)."""

    scale: str = "group"
    eps: float = 1e-4


def _group_stats(rewards: torch.Tensor, group_ids: torch.Tensor):
    """(rewards with NaN→0, inverse index, valid mask, per-group count, sum, mean); NaN excluded."""
    r = rewards.detach().to(torch.float32).reshape(-1)
    uniq, inv = torch.unique(group_ids.reshape(-1), return_inverse=True)
    n_groups = uniq.numel()
    valid = ~torch.isnan(r)
    r0 = torch.where(valid, r, torch.zeros_like(r))
    cnt = torch.zeros(n_groups, device=r.device).index_add_(0, inv, valid.float())
    tot = torch.zeros(n_groups, device=r.device).index_add_(0, inv, r0)
    mean = tot / cnt.clamp(min=1.0)
    return r0, inv, valid, cnt, tot, mean


def _group_std(r0, inv, valid, cnt, mean):
    """Bessel-corrected per-group std over valid rewards (0 for groups with < 2 valid rewards)."""
    dev = torch.where(valid, r0 - mean[inv], torch.zeros_like(r0))
    ss = torch.zeros_like(cnt).index_add_(0, inv, dev.pow(2))
    return torch.sqrt(ss / (cnt - 1.0).clamp(min=1.0))


def _constant_groups(r0, inv, valid, n_groups):
    """Per-group flag: all valid rewards identical (max == min), compared exactly."""
    big = torch.finfo(torch.float32).max
    gmax = torch.full((n_groups,), -big, device=r0.device).scatter_reduce(
        0, inv, torch.where(valid, r0, torch.full_like(r0, -big)), reduce="amax")
    gmin = torch.full((n_groups,), big, device=r0.device).scatter_reduce(
        0, inv, torch.where(valid, r0, torch.full_like(r0, big)), reduce="amin")
    return gmax <= gmin


@ADVANTAGES.register("grpo")
def grpo_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, *, scale: str = "group",
                    eps: float = 1e-4) -> torch.Tensor:
    """GRPO outcome advantage ``A_i = (r_i − mean_g r) / (std r + eps)`` (DeepSeekMath §4.1.2).

    ``scale="group"``: std over the group (Bessel); ``"batch"``: std over all valid rewards of the
    batch; ``"none"``: no division (Dr. GRPO, Liu et al. 2025 eq. 3).
    Example: one group r = (1, 0, 0, 1) → mean ½, std √(1/3) ≈ 0.5774, A ≈ (0.8659, −0.8659, …).
    """
    if scale not in SCALES:
        raise ValueError(f"unknown advantage scale '{scale}'; known: {', '.join(SCALES)}")
    r0, inv, valid, cnt, _, mean = _group_stats(rewards, group_ids)
    centred = torch.where(valid, r0 - mean[inv], torch.zeros_like(r0))
    if scale == "group":
        centred = centred / (_group_std(r0, inv, valid, cnt, mean)[inv] + eps)
    elif scale == "batch":
        vals = r0[valid]
        std = vals.std() if vals.numel() > 1 else torch.zeros((), device=r0.device)
        centred = centred / (torch.nan_to_num(std) + eps)
    flat = _constant_groups(r0, inv, valid, int(cnt.numel()))
    adv = torch.where(flat[inv] | ~valid, torch.zeros_like(centred), centred)
    return adv.reshape(rewards.shape)


@ADVANTAGES.register("dr_grpo")
def dr_grpo_advantages(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Dr. GRPO advantage ``A_i = r_i − mean_g r`` (no std scaling; Liu et al. 2025, eq. 3)."""
    return grpo_advantages(rewards, group_ids, scale="none")


@ADVANTAGES.register("rloo")
def rloo_advantages(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """REINFORCE leave-one-out: ``A_i = r_i − (Σ_{j≠i} r_j)/(n−1)`` (Ahmadian et al. 2024, eq. 5).

    Equals ``n/(n−1) · (r_i − mean)``; groups with < 2 valid rewards get 0.
    Example: r = (1, 0, 0) → A = (1 − 0, 0 − ½, 0 − ½) = (1, −½, −½).
    """
    r0, inv, valid, cnt, tot, _ = _group_stats(rewards, group_ids)
    n = cnt[inv]
    baseline = (tot[inv] - r0) / (n - 1.0).clamp(min=1.0)
    adv = torch.where(valid & (n > 1), r0 - baseline, torch.zeros_like(r0))
    flat = _constant_groups(r0, inv, valid, int(cnt.numel()))
    adv = torch.where(flat[inv], torch.zeros_like(adv), adv)
    return adv.reshape(rewards.shape)


def group_reward_stats(rewards: torch.Tensor, group_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Detached logging metrics: reward mean/std over valid rewards and ``frac_reward_zero_std``."""
    r0, inv, valid, cnt, _, _ = _group_stats(rewards, group_ids)
    flat = _constant_groups(r0, inv, valid, int(cnt.numel()))
    vals = r0[valid]
    std = vals.std() if vals.numel() > 1 else torch.zeros(())
    return {"reward": vals.mean() if vals.numel() else torch.zeros(()),
            "reward_std": torch.nan_to_num(std),
            "frac_reward_zero_std": flat.float().mean() if flat.numel() else torch.zeros(())}
