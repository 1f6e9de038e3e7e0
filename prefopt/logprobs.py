"""Per-token and per-sequence log-probs from logits, memory-light, for every batch layout (torch only).

Convention (CONTRIBUTING.md): ``token_logps[b, t] = log p(input_ids[b, t] | input_ids[b, :t])`` and
position 0 is 0. Log-probs are computed as ``logit[label] - logsumexp(logits)`` one chunk of positions
at a time with a float32 upcast per chunk, so no full-vocab float32 log-softmax ``(B, T, V)`` is ever
materialised. When gradients are needed each chunk runs under activation checkpointing, so the
backward pass also holds at most one float32 chunk (plus the model's own logits).

How the layouts run through a transformers 5.x decoder (checked on Llama, transformers 5.23):

* padded: 2-D ``attention_mask`` plus ``position_ids = cumsum(mask) - 1`` (so left padding equals
  right padding).
* packed: ``attention_mask=None`` and ``position_ids`` restarting at 0 per sequence, batch size 1.
  ``masking_utils.find_packed_sequence_indices`` detects the restarts and builds a block-diagonal
  causal mask for ``sdpa``/``eager``; ``flash_attention_2`` derives ``cu_seqlens`` from the same
  ``position_ids``. Passing a 2-D mask here would disable that detection (sequences would attend
  across boundaries), so none is passed.
* shared prompt: a 4-D mask is returned by ``create_causal_mask`` *as-is* (no causal pattern added),
  so it must already hold the full pattern. ``eager`` *adds* it to the scores, so it must be an
  additive float mask (0 / ``finfo(dtype).min``) in the model's dtype; ``sdpa`` accepts the same (a
  dtype other than the query's is rejected by torch). ``flash_attention_2`` cannot take 4-D masks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

__all__ = ["ForwardLogps", "entropy", "forward_token_logps", "gather_logps", "sequence_logps", "token_logps"]


def _chunk_logps(logits: Tensor, labels: Tensor) -> Tensor:
    """``log softmax(logits)[label]`` for one chunk: ``(B, c, V), (B, c) -> (B, c)`` float32."""
    lf = logits.float()
    return lf.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(lf, dim=-1)


def _chunk_entropy(logits: Tensor) -> Tensor:
    """Entropy ``H = logsumexp(z) - sum softmax(z) z`` for one chunk, float32."""
    lf = logits.float()
    lse = torch.logsumexp(lf, dim=-1, keepdim=True)
    return (lse.squeeze(-1) - (torch.exp(lf - lse) * lf).sum(-1))


def _run(fn: Any, *args: Tensor) -> Tensor:
    if torch.is_grad_enabled() and any(a.requires_grad for a in args):
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def gather_logps(logits: Tensor, labels: Tensor, chunk_size: int = 1024) -> Tensor:
    """Unshifted ``log softmax(logits[b, t])[labels[b, t]]``, chunked over t: ``(B, T, V) -> (B, T)``."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    t = logits.shape[1]
    parts = [_run(_chunk_logps, logits[:, s:s + chunk_size], labels[:, s:s + chunk_size])
             for s in range(0, t, chunk_size)]
    return torch.cat(parts, dim=1) if parts else logits.new_zeros(labels.shape, dtype=torch.float32)


def token_logps(logits: Tensor, input_ids: Tensor, chunk_size: int = 1024) -> Tensor:
    """Per-token log-probs in the CONTRIBUTING layout.

    Args:
        logits: ``(B, T, V)`` model output (any float dtype); ``logits[:, t]`` predicts token ``t + 1``.
        input_ids: ``(B, T)``.
        chunk_size: positions per chunk (memory ~ ``B * chunk_size * V`` float32).

    Returns:
        ``(B, T)`` float32 with ``out[:, 0] = 0`` and ``out[:, t] = log p(input_ids[:, t] | input_ids[:, :t])``.
    """
    body = gather_logps(logits[:, :-1], input_ids[:, 1:], chunk_size)
    return torch.cat([body.new_zeros(body.shape[0], 1), body], dim=1)


def _indexed_logps(logits: Tensor, source: Tensor, labels: Tensor, chunk_size: int) -> Tensor:
    """``out[b, t] = log softmax(logits[b, source[b, t]])[labels[b, t]]``; 0 where ``source < 0``."""
    parts = []
    for s in range(0, labels.shape[1], chunk_size):
        src = source[:, s:s + chunk_size]
        lp = _run(_picked_logps, logits, src.clamp(min=0), labels[:, s:s + chunk_size])
        parts.append(torch.where(src >= 0, lp, lp.new_zeros(())))
    return torch.cat(parts, dim=1)


def _picked_logps(logits: Tensor, src: Tensor, labels: Tensor) -> Tensor:
    """Gather the source rows inside the checkpointed chunk so no (B, c, V) copy is kept for backward."""
    rows = torch.arange(logits.shape[0], device=logits.device).unsqueeze(1)
    return _chunk_logps(logits[rows, src], labels)


def sequence_logps(token_logps: Tensor, mask: Tensor, average: bool = False) -> Tensor:
    """``sum_t mask * token_logps`` per row (``average``: divided by ``max(sum mask, 1)``): ``(B, T) -> (B,)``."""
    m = mask.to(token_logps.dtype)
    total = (token_logps * m).sum(-1)
    return total / m.sum(-1).clamp(min=1.0) if average else total


def entropy(logits: Tensor, chunk_size: int = 1024, shift: bool = True) -> Tensor:
    """Predictive entropy per position, float32, chunked: ``(B, T, V) -> (B, T)``.

    With ``shift`` (default) ``out[:, t]`` is the entropy of the distribution that produced token ``t``
    (from ``logits[:, t - 1]``; ``out[:, 0] = 0``), aligned with :func:`token_logps`.
    """
    src = logits[:, :-1] if shift else logits
    parts = [_run(_chunk_entropy, src[:, s:s + chunk_size]) for s in range(0, src.shape[1], chunk_size)]
    body = torch.cat(parts, dim=1) if parts else src.new_zeros(src.shape[:2], dtype=torch.float32)
    return torch.cat([body.new_zeros(body.shape[0], 1), body], dim=1) if shift else body


@dataclass(frozen=True)
class ForwardLogps:
    """Model outputs in the padded layout ``(N, T)`` of the batch (see ``data_pipelines.collate``)."""

    token_logps: Tensor      # (N, T) float32, CONTRIBUTING layout
    completion_mask: Tensor  # (N, T) int64, 1 on completion tokens
    attention_mask: Tensor   # (N, T) int64, 1 on real tokens
    entropy: Tensor | None = None  # (N, T) float32 when requested


def _model_dtype_device(model: Any) -> tuple[torch.dtype, torch.device]:
    param = next(model.parameters())
    dtype = getattr(model, "dtype", None)
    return (dtype if isinstance(dtype, torch.dtype) else param.dtype), param.device


def forward_token_logps(model: Any, batch: Any, chunk_size: int = 1024, *,
                        with_entropy: bool = False) -> ForwardLogps:
    """Run ``model`` on a padded, packed or shared-prompt batch; return log-probs in the padded layout.

    Args:
        model: a transformers causal LM (or PEFT wrapper) returning ``.logits``.
        batch: ``PaddedBatch`` / ``PackedBatch`` / ``SharedPromptBatch`` from ``data_pipelines.collate``
            (dispatch on its ``layout`` attribute).
        chunk_size: positions per log-softmax chunk.
        with_entropy: also return per-token predictive entropy.
    """
    dtype, device = _model_dtype_device(model)
    layout = getattr(batch, "layout", None)
    if layout not in ("padded", "packed", "shared_prompt"):
        raise TypeError(f"unsupported batch type {type(batch).__name__} (layout {layout!r})")
    ids = batch.input_ids.to(device)
    if layout == "padded":
        logits = model(input_ids=ids, attention_mask=batch.attention_mask.to(device),
                       position_ids=batch.position_ids.to(device), use_cache=False).logits
        lp = token_logps(logits, ids, chunk_size)
        ent = entropy(logits, chunk_size) if with_entropy else None
        return ForwardLogps(lp, batch.completion_mask.to(device), batch.attention_mask.to(device), ent)
    if layout == "packed":
        pos = batch.position_ids.to(device)
        logits = model(input_ids=ids, attention_mask=None, position_ids=pos, use_cache=False).logits
        starts = pos == 0  # first token of each sequence: nothing predicts it
        lp = token_logps(logits, ids, chunk_size).masked_fill(starts, 0.0)
        ent = entropy(logits, chunk_size).masked_fill(starts, 0.0) if with_entropy else None
        unpack = lambda x: _to(batch, device).unpack(x)  # noqa: E731
    else:  # shared_prompt
        mask = batch.additive_mask(dtype).to(device)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=batch.position_ids.to(device),
                       use_cache=False).logits
        source = batch.source_index.to(device)
        lp = _indexed_logps(logits, source, ids, chunk_size)
        ent = None
        if with_entropy:
            rows = torch.arange(ids.shape[0], device=device).unsqueeze(1)
            ent = entropy(logits[rows, source.clamp(min=0)], chunk_size, shift=False) * (source >= 0)
        unpack = lambda x: _to(batch, device).unpack(x)  # noqa: E731
    return ForwardLogps(unpack(lp), batch.padded_completion_mask.to(device),
                        batch.padded_attention_mask.to(device), None if ent is None else unpack(ent))


def _to(batch: Any, device: torch.device) -> Any:
    """Move the index tensors ``unpack`` needs onto ``device`` (a shallow copy; CPU is a no-op)."""
    import dataclasses

    if batch.input_ids.device == device:
        return batch
    moved = {f.name: getattr(batch, f.name).to(device) if isinstance(getattr(batch, f.name), Tensor)
             else getattr(batch, f.name) for f in dataclasses.fields(batch)}
    return type(batch)(**moved)
