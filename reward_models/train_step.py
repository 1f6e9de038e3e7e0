"""Pieces of ``prefopt rm train``: build the reward model, one batch's loss and metrics, held-out accuracy.

Kept apart from the loop (:mod:`reward_models.train`) so tests can call them on tiny models.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from prefopt.core.loop import autocast
from reward_models.data import RMBatch, collate_rm
from reward_models.kinds import get_kind
from reward_models.losses import LossOutput


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


def build_model(cfg: Any, seed: int) -> tuple[Any, Any]:
    """``(reward model, tokenizer)``: backbone (no LoRA yet) + the kind's head(s), then the LoRA adapter."""
    from prefopt.core.models import load_model

    backbone, tok = load_model(dataclasses.replace(cfg.model, lora=None), seed=seed)
    if cfg.model.gradient_checkpointing and cfg.model.lora is not None:
        backbone.enable_input_require_grads()
    pad = resolve_pad_id(cfg, tok)
    tok.pad_token_id = pad
    model = get_kind(cfg.rm.kind).build(cfg, backbone, tok, seed, pad)
    if cfg.model.lora is not None:
        model.enable_lora(cfg.model.lora)
    return model, tok


def batch_loss(cfg: Any, model: Any, batch: RMBatch) -> tuple[LossOutput, Tensor | None]:
    """Loss of one collated micro-batch and the scalar rewards of its rows (None for GPM).

    Metrics: the loss's own (accuracy, margin, reward mean/min/max, ...) plus ``reward_std``.
    """
    out, rewards = get_kind(cfg.rm.kind).batch_loss(cfg, model, batch)
    if rewards is not None and rewards.numel() > 1:
        out.metrics["reward_std"] = rewards.detach().float().std()
    return out, rewards


def resolve_layout(cfg: Any, model: Any, log: bool = True) -> str:
    """Concrete ``data.layout`` for ``model`` (``auto``: shared_prompt unless the kind reads its reward at a
    special token in padded rows (POLAR), or a backbone that cannot take the block mask)."""
    from reward_models.kinds import get_kind
    from reward_models.layouts import resolve_auto_layout, shared_prompt_blockers

    reasons = ([f"{cfg.rm.kind} reads its reward at the REWARD token, which only padded rows keep"]
               if get_kind(cfg.rm.kind).reward_token else [])
    reasons += shared_prompt_blockers(getattr(model, "model", model), cfg.model.attn_implementation)
    return resolve_auto_layout(getattr(cfg.data, "layout", "padded"), reasons, f"rm train {cfg.rm.kind}", log)


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
    layout = resolve_layout(cfg, model, log=False)  # a config straight from YAML may still say auto
    for i in range(0, len(items), batch_size or cfg.batch_size):
        chunk = items[i:i + (batch_size or cfg.batch_size)]
        batch = to_device(collate_rm(chunk, pad_id, layout), device)
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
