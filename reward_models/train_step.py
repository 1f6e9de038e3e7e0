"""Pieces of ``prefopt rm train``: build the reward model, one batch's loss and metrics, held-out accuracy.

Kept apart from the loop (:mod:`reward_models.train`) so tests can call them on tiny models.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from prefopt.core.errors import ConfigError
from prefopt.core.loop import autocast
from reward_models.data import RMBatch, collate_rm
from reward_models.losses import (
    LossOutput,
    bt_loss,
    gpm_loss,
    listwise_bt_loss,
    plackett_luce_loss,
    polar_loss,
)


def resolve_pad_id(cfg: Any, tok: Any) -> int:
    """``rm.pad_token_id``, else the tokenizer's pad id unless it is EOS (then ``<|endoftext|>`` if known)."""
    if cfg.rm.pad_token_id is not None:
        return int(cfg.rm.pad_token_id)
    pad, eos = tok.pad_token_id, tok.eos_token_id
    if pad is None or pad == eos:
        alt = tok.convert_tokens_to_ids("<|endoftext|>") if "<|endoftext|>" in tok.get_vocab() else None
        if alt is not None and alt != eos:
            return int(alt)
    return int(pad if pad is not None else eos)


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


def build_model(cfg: Any, seed: int) -> tuple[Any, Any]:
    """``(reward model, tokenizer)``: backbone (no LoRA yet) + head(s), then the LoRA adapter if configured."""
    from prefopt.core.models import load_model
    from reward_models.ensemble import SharedBackboneEnsemble
    from reward_models.models import RewardModel

    backbone, tok = load_model(dataclasses.replace(cfg.model, lora=None), seed=seed)
    if cfg.model.gradient_checkpointing and cfg.model.lora is not None:
        backbone.enable_input_require_grads()
    pad = resolve_pad_id(cfg, tok)
    tok.pad_token_id = pad
    kind = cfg.rm.kind
    if kind == "ensemble":  # shared backbone, K heads (independent members are separate BT runs)
        seeds = [seed + i for i in range(cfg.rm.ensemble.members)]
        model = SharedBackboneEnsemble(backbone, seeds, cfg.rm.ensemble.method, lam=cfg.rm.ensemble.lam,
                                       head_init=cfg.rm.head_init)
        model.config = dataclasses.replace(model.config, pad_token_id=pad)
        if cfg.model.lora is not None:
            import peft

            lc = cfg.model.lora
            model.model = peft.get_peft_model(model.model, peft.LoraConfig(
                r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout, target_modules=lc.target_modules))
            model.config = dataclasses.replace(model.config, lora=True)
        return model, tok
    extra: dict[str, Any] = {}
    if kind == "gpm":
        g = cfg.rm.gpm
        extra = dict(embed_dim=g.embed_dim, beta=g.beta, l2_normalize=g.l2_normalize, gate=g.gate)
    elif kind == "polar":
        extra = _polar_tokens(cfg, backbone, tok)
    base = str(getattr(backbone.config, "_name_or_path", "") or cfg.model.name)
    model = RewardModel(backbone, kind, seed=seed, head_init=cfg.rm.head_init, pad_token_id=pad,
                        base_model=base, model_name=cfg.model.name, normalize=cfg.rm.normalize, **extra)
    if cfg.model.lora is not None:
        model.enable_lora(cfg.model.lora)
    return model, tok


def _gather(values: Tensor, slot: Tensor) -> tuple[Tensor, Tensor]:
    """``[B, K]`` view of per-row values through ``slot`` (padding slots masked out)."""
    valid = slot >= 0
    return values[slot.clamp(min=0)], valid


def batch_loss(cfg: Any, model: Any, batch: RMBatch) -> tuple[LossOutput, Tensor | None]:
    """Loss of one collated micro-batch and the scalar rewards of its rows (None for GPM).

    Metrics: the loss's own (accuracy, margin, reward mean/min/max, ...) plus ``reward_std``.
    """
    out, rewards = _batch_loss(cfg, model, batch)
    if rewards is not None and rewards.numel() > 1:
        out.metrics["reward_std"] = rewards.detach().float().std()
    return out, rewards


def _batch_loss(cfg: Any, model: Any, batch: RMBatch) -> tuple[LossOutput, Tensor | None]:
    kind, rm = cfg.rm.kind, cfg.rm
    ids, mask = batch.input_ids, batch.attention_mask
    fast = {} if batch.rows is None else {"rows": batch.rows}
    if kind == "gpm":
        out = model(ids, mask, prompt_lengths=batch.prompt_lengths, **fast)
        c, r = batch.slot[:, 0], batch.slot[:, 1]
        gate = None if out.gate is None else out.gate[c]
        margin = batch.margin if cfg.data.use_margin else None
        return gpm_loss(out.embeddings[c], out.embeddings[r], gate=gate, beta=rm.gpm.beta, margin=margin), None
    out = model(ids, mask, **fast)
    if kind == "ensemble":
        members = out.member_rewards  # [K, N]
        losses = [bt_loss(m[batch.slot[:, 0]], m[batch.slot[:, 1]], tau=rm.bt.tau).loss for m in members]
        agg = out.rewards
        res = bt_loss(agg[batch.slot[:, 0]], agg[batch.slot[:, 1]])
        metrics = {**res.metrics, "member_variance": out.variance.mean().detach()}
        return LossOutput(loss=torch.stack(losses).mean(0), metrics=metrics), agg
    rewards = out.rewards
    if batch.slot.shape[1] > 2 or batch.scores is not None:  # ranked lists
        r, valid = _gather(rewards, batch.slot)
        if rm.bt.listwise_loss == "plackett_luce":
            return plackett_luce_loss(r, mask=valid), rewards
        return listwise_bt_loss(r, mask=valid, scores=batch.scores.to(r.device)), rewards
    rc, rr = rewards[batch.slot[:, 0]], rewards[batch.slot[:, 1]]
    if kind == "polar":
        return polar_loss(rc, rr), rewards
    margin = batch.margin if cfg.data.use_margin else None
    b = rm.bt
    return bt_loss(rc, rr, margin=margin, tau=b.tau, center_coef=b.center_coef, l2_coef=b.l2_coef,
                   barrier_coef=b.barrier_coef, focal=b.focal), rewards


def _layout(cfg: Any) -> str:
    return getattr(cfg.data, "layout", "padded")


def to_device(batch: RMBatch, device: torch.device) -> RMBatch:
    moved = {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}
    return RMBatch(**{k: None if v is None else v.to(device) for k, v in moved.items()})


@torch.no_grad()
def evaluate(cfg: Any, model: Any, items: list, pad_id: int, device: torch.device,
             batch_size: int | None = None) -> tuple[dict[str, float], Tensor | None]:
    """Held-out accuracy (strict: chosen beats rejected; GPM: ``s > 0``; lists: ordered pairs right) and
    mean margin; returns the metrics and every scalar reward seen (for reward mean/std)."""
    if not items:
        return {}, None
    was = model.training
    model.eval()
    correct = total = margin = 0.0
    rewards = []
    for i in range(0, len(items), batch_size or cfg.batch_size):
        chunk = items[i:i + (batch_size or cfg.batch_size)]
        batch = to_device(collate_rm(chunk, pad_id, _layout(cfg)), device)
        with autocast(cfg.precision, device):
            out, r = batch_loss(cfg, model, batch)
        n = len(chunk)
        correct += float(out.metrics["accuracy"]) * n
        margin += float(out.metrics.get("margin", out.metrics.get("score_mean", torch.tensor(0.0)))) * n
        total += n
        if r is not None:
            rewards.append(r.detach().float().cpu())
    model.train(was)
    metrics = {"eval/accuracy": correct / total, "eval/margin": margin / total, "eval/items": total}
    allr = torch.cat(rewards) if rewards else None
    if allr is not None:
        metrics.update({"eval/reward_mean": float(allr.mean()), "eval/reward_std": float(allr.std())})
    return metrics, allr
