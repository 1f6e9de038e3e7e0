"""What differs between reward-model kinds during training: the model a kind builds on a backbone and
the loss of one collated batch. :mod:`reward_models.kinds` registers these per kind; the trainer
(:mod:`reward_models.train`) only calls ``kind.build`` and ``kind.batch_loss``.

Losses: Bradley-Terry (Ouyang et al. 2022, Eq. 1), listwise BT / Plackett-Luce on ranked lists, GPM
(Zhang et al. 2025, arXiv 2410.02197), POLAR (Dou et al. 2025, arXiv 2507.05197, Eq. 7-8); see
:mod:`reward_models.losses`.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from prefopt.core.errors import ConfigError
from reward_models.data import RMBatch
from reward_models.losses import (
    LossOutput,
    bt_loss,
    gpm_loss,
    listwise_bt_loss,
    plackett_luce_loss,
    polar_loss,
)

BatchLoss = tuple[LossOutput, "Tensor | None"]


def _reward_model(cfg: Any, backbone: Any, seed: int, pad: int, **extra: Any) -> Any:
    from reward_models.models import RewardModel

    base = str(getattr(backbone.config, "_name_or_path", "") or cfg.model.name)
    return RewardModel(backbone, cfg.rm.kind, seed=seed, head_init=cfg.rm.head_init, pad_token_id=pad,
                       base_model=base, model_name=cfg.model.name, normalize=cfg.rm.normalize, **extra)


def build_bt(cfg: Any, backbone: Any, tok: Any, seed: int, pad: int) -> Any:
    """A scalar ``score`` head on the last real token."""
    return _reward_model(cfg, backbone, seed, pad)


def build_gpm(cfg: Any, backbone: Any, tok: Any, seed: int, pad: int) -> Any:
    """Preference embeddings (and the prompt gate) from ``rm.gpm``."""
    g = cfg.rm.gpm
    return _reward_model(cfg, backbone, seed, pad, embed_dim=g.embed_dim, beta=g.beta,
                         l2_normalize=g.l2_normalize, gate=g.gate)


def _polar_tokens(cfg: Any, backbone: Any, tok: Any) -> dict[str, Any]:
    pc = cfg.rm.polar
    vocab = tok.get_vocab()
    missing = [t for t in (pc.split_token, pc.reward_token) if t not in vocab]
    if missing:
        if cfg.model.lora is not None:
            raise ConfigError(f"POLAR tokens {missing} are not in the vocabulary; with LoRA the new embedding "
                              "rows would not be saved. Use existing special tokens (rm.polar.split_token/"
                              "reward_token) or full fine-tuning")
        tok.add_special_tokens({"additional_special_tokens": missing})
        backbone.resize_token_embeddings(len(tok))
    return dict(split_token=pc.split_token, reward_token=pc.reward_token, wrapper=pc.wrapper,
                reward_token_id=int(tok.convert_tokens_to_ids(pc.reward_token)))


def build_polar(cfg: Any, backbone: Any, tok: Any, seed: int, pad: int) -> Any:
    """A scalar head read at the REWARD token (added to the vocabulary when missing)."""
    return _reward_model(cfg, backbone, seed, pad, **_polar_tokens(cfg, backbone, tok))


def build_shared_ensemble(cfg: Any, backbone: Any, tok: Any, seed: int, pad: int) -> Any:
    """One backbone with K BT heads (seeds ``seed + i``); independent members are separate BT runs."""
    import dataclasses

    from reward_models.ensemble import SharedBackboneEnsemble

    seeds = [seed + i for i in range(cfg.rm.ensemble.members)]
    model = SharedBackboneEnsemble(backbone, seeds, cfg.rm.ensemble.method, lam=cfg.rm.ensemble.lam,
                                   head_init=cfg.rm.head_init)
    model.config = dataclasses.replace(model.config, pad_token_id=pad)
    return model


def _gather(values: Tensor, slot: Tensor) -> tuple[Tensor, Tensor]:
    """``[B, K]`` view of per-row values through ``slot`` (padding slots masked out)."""
    valid = slot >= 0
    return values[slot.clamp(min=0)], valid


def _fast(batch: RMBatch) -> dict[str, Any]:
    return {} if batch.rows is None else {"rows": batch.rows}


def _ranked_loss(cfg: Any, rewards: Tensor, batch: RMBatch) -> LossOutput:
    r, valid = _gather(rewards, batch.slot)
    if cfg.rm.bt.listwise_loss == "plackett_luce":
        return plackett_luce_loss(r, mask=valid)
    return listwise_bt_loss(r, mask=valid, scores=batch.scores.to(r.device))


def bt_batch_loss(cfg: Any, model: Any, batch: RMBatch) -> BatchLoss:
    """BT on pairs (margin, temperature, centering/L2/barrier/focal terms from ``rm.bt``); listwise BT or
    Plackett-Luce on ranked lists."""
    rewards = model(batch.input_ids, batch.attention_mask, **_fast(batch)).rewards
    if batch.slot.shape[1] > 2 or batch.scores is not None:  # ranked lists
        return _ranked_loss(cfg, rewards, batch), rewards
    rc, rr = rewards[batch.slot[:, 0]], rewards[batch.slot[:, 1]]
    margin = batch.margin if cfg.data.use_margin else None
    b = cfg.rm.bt
    return bt_loss(rc, rr, margin=margin, tau=b.tau, center_coef=b.center_coef, l2_coef=b.l2_coef,
                   barrier_coef=b.barrier_coef, focal=b.focal), rewards


def gpm_batch_loss(cfg: Any, model: Any, batch: RMBatch) -> BatchLoss:
    """GPM on the skew-symmetric score of the chosen and rejected embeddings (gate from the chosen row)."""
    out = model(batch.input_ids, batch.attention_mask, prompt_lengths=batch.prompt_lengths, **_fast(batch))
    c, r = batch.slot[:, 0], batch.slot[:, 1]
    gate = None if out.gate is None else out.gate[c]
    margin = batch.margin if cfg.data.use_margin else None
    return gpm_loss(out.embeddings[c], out.embeddings[r], gate=gate, beta=cfg.rm.gpm.beta, margin=margin), None


def polar_batch_loss(cfg: Any, model: Any, batch: RMBatch) -> BatchLoss:
    """POLAR ranking loss on the two rows that share one reference (ranked lists: as BT)."""
    rewards = model(batch.input_ids, batch.attention_mask, **_fast(batch)).rewards
    if batch.slot.shape[1] > 2 or batch.scores is not None:
        return _ranked_loss(cfg, rewards, batch), rewards
    return polar_loss(rewards[batch.slot[:, 0]], rewards[batch.slot[:, 1]]), rewards


def ensemble_batch_loss(cfg: Any, model: Any, batch: RMBatch) -> BatchLoss:
    """Mean of the K members' BT losses; metrics from the aggregate reward plus the member variance."""
    out = model(batch.input_ids, batch.attention_mask, **_fast(batch))
    c, r = batch.slot[:, 0], batch.slot[:, 1]
    losses = [bt_loss(m[c], m[r], tau=cfg.rm.bt.tau).loss for m in out.member_rewards]  # [K, N] rows
    agg = out.rewards
    res = bt_loss(agg[c], agg[r])
    metrics = {**res.metrics, "member_variance": out.variance.mean().detach()}
    return LossOutput(loss=torch.stack(losses).mean(0), metrics=metrics), agg
