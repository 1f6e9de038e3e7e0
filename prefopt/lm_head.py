"""The LM head on selected positions only: hidden states -> per-token log-probs without full logits.

A causal LM's training step needs ``log p(y_t | y_<t)`` on *completion* tokens only, yet
``model(...).logits`` projects every position (prompt and padding too) through the vocabulary
(49,152 x 576 for SmolLM2-135M, ~19 % of its forward FLOPs per token) and keeps ``(rows, L, V)`` logits
alive until backward. Here the decoder body runs alone, the hidden states of the positions that
predict a selected token are gathered first (``(M, d)``), and the head is applied to them in chunks of
positions; each chunk computes ``logit[label] - logsumexp(logits)`` in float32 under activation
checkpointing, so at most one ``(chunk, V)`` float32 block exists at a time in forward and in backward
(the chunk's logits are recomputed there: one extra head matmul on the selected positions).

This is the "gather, then project, then logsumexp" trick of fused linear cross-entropy kernels
(Liger-Kernel; TRL's completion-only log-probs), written with torch ops so it runs on CPU and GPU.

:func:`split_causal_lm` decides when it is exact: the model's logits must be exactly
``head(last_hidden_state)`` (no soft-capping or logit scaling), which holds for the architectures in
:data:`PLAIN_HEAD_MODEL_TYPES`; anything else makes the callers fall back to full logits.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = ["HeadOutput", "PLAIN_HEAD_MODEL_TYPES", "head_logps", "split_causal_lm"]

# Causal LMs whose forward is ``logits = lm_head(model(...).last_hidden_state)`` with nothing after it
# (checked against transformers 5.x sources). Gemma-2/3 (soft-capping), Cohere (logit_scale), Granite
# (logits_scaling) and MiniCPM (hidden scaling) are deliberately absent.
PLAIN_HEAD_MODEL_TYPES = frozenset({
    "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "phi3", "gemma",
    "olmo", "olmo2", "smollm3", "starcoder2", "stablelm",
})
_SCALING_ATTRS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def _unwrap_engine(model: Any) -> Any:
    """A DeepSpeed engine's module (its forward adds nothing the body/head calls need)."""
    return model.module if type(model).__name__ == "DeepSpeedEngine" else model


def _unwrap_peft(model: Any) -> Any | None:
    """The LoRA-injected base model of a PEFT wrapper; None for prompt-learning adapters (their
    virtual tokens live in the wrapper's forward)."""
    if not (hasattr(model, "peft_config") and hasattr(model, "get_base_model")):
        return model
    cfg = model.peft_config.get(getattr(model, "active_adapter", "default"))
    if cfg is None or getattr(cfg, "is_prompt_learning", False):
        return None
    return model.get_base_model()


def split_causal_lm(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """``(decoder body, LM head)`` of a causal LM when ``logits == head(body(...).last_hidden_state)``.

    Looks through a DeepSpeed engine and a PEFT (LoRA-family) wrapper; returns None whenever the
    equality is not known to hold (unknown architecture, logit soft-capping/scaling, prompt-learning
    adapters, no separate head), and the callers then use the model's own full logits.
    """
    base = _unwrap_peft(_unwrap_engine(model))
    cfg = getattr(base, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) not in PLAIN_HEAD_MODEL_TYPES:
        return None
    if any(getattr(cfg, a, None) not in (None, 1, 1.0) for a in _SCALING_ATTRS):
        return None
    get_out = getattr(base, "get_output_embeddings", None)
    head = get_out() if callable(get_out) else None
    body = getattr(base, getattr(base, "base_model_prefix", "model") or "model", None)
    if not isinstance(head, nn.Module) or not isinstance(body, nn.Module) or body is base:
        return None
    return body, head


@dataclass(frozen=True)
class HeadOutput:
    """Per selected position: ``logps`` (float32, differentiable) and detached statistics."""

    logps: Tensor                  # (M,) log p(label)
    entropy: Tensor | None = None  # (M,) predictive entropy
    argmax_hit: Tensor | None = None  # (M,) bool: argmax(logits) == label
    mean_logit: Tensor | None = None  # (M,) mean over the vocabulary of the logits


def _chunk(head: nn.Module, stats: bool):
    def run(h: Tensor, labels: Tensor) -> tuple[Tensor, ...]:
        z = head(h).float()
        lse = torch.logsumexp(z, dim=-1)
        lp = z.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - lse
        if not stats:
            return (lp,)
        with torch.no_grad():
            zd = z.detach()
            ent = lse.detach() - (torch.softmax(zd, -1) * zd).sum(-1)
            return lp, ent, zd.argmax(-1) == labels, zd.mean(-1)
    return run


def head_logps(hidden: Tensor, head: nn.Module, labels: Tensor, chunk_size: int = 512, *,
               with_stats: bool = False) -> HeadOutput:
    """``log softmax(head(hidden[m]))[labels[m]]`` for ``M`` gathered positions, chunked.

    Args:
        hidden: ``(M, d)`` hidden states of the positions that predict ``labels``.
        head: the LM head (``nn.Linear`` or a LoRA-wrapped one); any autocast context applies.
        labels: ``(M,)`` int64 target token ids.
        chunk_size: positions per chunk (transient memory ~ ``3 * chunk_size * V`` float32).
        with_stats: also return entropy, argmax hit and mean logit per position (no gradient).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if hidden.shape[0] == 0:
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return HeadOutput(empty, empty, empty.bool(), empty) if with_stats else HeadOutput(empty)
    fn = _chunk(head, with_stats)
    grad = torch.is_grad_enabled() and (hidden.requires_grad or any(p.requires_grad for p in head.parameters()))
    parts = []
    for s in range(0, hidden.shape[0], chunk_size):
        args = (hidden[s:s + chunk_size], labels[s:s + chunk_size])
        parts.append(checkpoint(fn, *args, use_reentrant=False) if grad else fn(*args))
    cols = [torch.cat(c) for c in zip(*parts, strict=False)]
    return HeadOutput(*cols) if with_stats else HeadOutput(cols[0])
