"""Per-token and per-sequence log-probs, memory-light, for every batch layout (torch only).

:func:`forward_token_logps` runs the decoder body and applies the LM head to the completion
positions only (:mod:`prefopt.lm_head`) whenever that is exact for the architecture, so neither the
prompt nor the padding is ever projected onto the vocabulary; otherwise it uses the model's logits.

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
  across boundaries), so none is passed. A model on ``sdpa`` runs it as segment attention instead
  (:mod:`reward_models.segment_attention`: each sequence its own causal block, no mask).
* shared prompt, on ``sdpa``: segment attention (:mod:`reward_models.segment_attention`) with a
  placeholder 4-D mask; on other implementations the dense block mask:
  a 4-D mask is returned by ``create_causal_mask`` *as-is* (no causal pattern added),
  so it must already hold the full pattern. ``eager`` *adds* it to the scores, so it must be an
  additive float mask (0 / ``finfo(dtype).min``) in the model's dtype; ``sdpa`` accepts the same (a
  dtype other than the query's is rejected by torch). ``flash_attention_2`` cannot take 4-D masks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from prefopt.lm_head import split_causal_lm

__all__ = ["ForwardLogps", "TokenBatch", "entropy", "forward_token_logps", "gather_logps", "sequence_logps",
           "token_logps"]


class TokenBatch(Protocol):
    """What :func:`forward_token_logps` runs on: a batch of ``data_pipelines.collate`` (``PaddedBatch``,
    ``PackedBatch``, ``SharedPromptBatch``) or one shaped like them (the online loop's ``RolloutBatch``),
    dispatched on its ``layout`` class attribute (``padded`` | ``packed`` | ``shared_prompt``)."""

    layout: ClassVar[str]
    input_ids: Tensor


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
    """Model outputs in the padded layout ``(N, T)`` of the batch (see ``data_pipelines.collate``).

    With ``positions="completion"`` (the default of :func:`forward_token_logps`) ``token_logps`` (and
    the statistics) are 0 outside ``completion_mask``; with ``positions="all"`` every real token t >= 1
    of each sequence is filled.
    """

    token_logps: Tensor      # (N, T) float32, CONTRIBUTING layout
    completion_mask: Tensor  # (N, T) int64, 1 on completion tokens
    attention_mask: Tensor   # (N, T) int64, 1 on real tokens
    entropy: Tensor | None = None  # (N, T) float32 when requested
    argmax_hit: Tensor | None = None  # (N, T) bool, head path with stats only
    mean_logit: Tensor | None = None  # (N, T) float32, head path with stats only


def _model_dtype_device(model: Any) -> tuple[torch.dtype, torch.device]:
    param = next(model.parameters())
    dtype = getattr(model, "dtype", None)
    return (dtype if isinstance(dtype, torch.dtype) else param.dtype), param.device


def forward_token_logps(model: torch.nn.Module, batch: TokenBatch, chunk_size: int = 1024, *,
                        with_entropy: bool = False,
                        with_stats: bool = False, positions: str = "completion",
                        full_logits: bool = False) -> ForwardLogps:
    """Run ``model`` on a padded, packed or shared-prompt batch; return log-probs in the padded layout.

    Fast path (default, when :func:`prefopt.lm_head.split_causal_lm` accepts the model): the decoder
    body runs once, the hidden states that predict the selected tokens are gathered, and the LM head
    is applied to those only (:func:`prefopt.lm_head.head_logps`); no ``(rows, L, V)`` logits exist.
    Otherwise (or with ``full_logits``) the model's own logits are used with chunked log-softmax.
    Both paths agree to float rounding (``tests/prefopt/test_lm_head.py``).

    Args:
        model: a transformers causal LM (or PEFT wrapper / DeepSpeed engine) returning ``.logits``.
        batch: ``PaddedBatch`` / ``PackedBatch`` / ``SharedPromptBatch`` from ``data_pipelines.collate``
            (dispatch on its ``layout`` attribute).
        chunk_size: positions per log-softmax chunk (the head path uses at most 512).
        with_entropy: also return per-token predictive entropy.
        with_stats: entropy plus argmax hit and mean logit per token (head path; the full path gives
            entropy only).
        positions: ``"completion"`` (completion tokens only; the rest are 0) or ``"all"``.
        full_logits: force the full-logits path.
    """
    if positions not in ("completion", "all"):
        raise ValueError(f"positions must be 'completion' or 'all', got {positions!r}")
    layout = getattr(batch, "layout", None)
    if layout not in ("padded", "packed", "shared_prompt"):
        raise TypeError(f"unsupported batch type {type(batch).__name__} (layout {layout!r})")
    split = None if full_logits else split_causal_lm(model)
    if split is not None:
        return _head_path(model, split, batch, min(chunk_size, 512), with_entropy or with_stats,
                          with_stats, positions)
    return _full_path(model, batch, chunk_size, with_entropy or with_stats, positions)


def _model_inputs(model: Any, batch: Any, dtype: torch.dtype, device: torch.device) -> dict[str, Any]:
    """Keyword inputs of the model/body forward for each layout (see the module docstring); shared-prompt
    rows run :mod:`reward_models.segment_attention` where ``model`` has it, else the dense block mask."""
    kw = {"input_ids": batch.input_ids.to(device), "position_ids": batch.position_ids.to(device), "use_cache": False}
    if batch.layout == "padded":
        return {**kw, "attention_mask": batch.attention_mask.to(device)}
    from reward_models.segment_attention import packed_inputs, packed_spans, shared_prompt_inputs

    if batch.layout == "packed":
        return {**kw, **packed_inputs(model, packed_spans(batch.cu_seqlens), dtype, device)}

    return {**kw, **shared_prompt_inputs(model, batch.segments, batch.input_ids.shape[1], dtype, device)}


def _selected(batch: Any, device: torch.device, positions: str) -> tuple[Tensor, Tensor, Tensor]:
    """``(row, source, target)`` int64 index vectors: the hidden state at ``(row, source)`` predicts the
    token at ``(row, target)``, for every selected token of the batch in its own layout."""
    ids = batch.input_ids.to(device)
    if batch.layout == "shared_prompt":
        src = batch.source_index.to(device)
        keep = src >= 0
    else:
        src = (torch.arange(ids.shape[1], device=device) - 1).expand_as(ids)
        keep = batch.position_ids.to(device) != 0  # a sequence's first token has nothing before it
        if batch.layout == "padded":
            keep = keep & batch.attention_mask.to(device).bool()
    if positions == "completion":
        keep = keep & batch.completion_mask.to(device).bool()
    rows, tgt = keep.nonzero(as_tuple=True)
    return rows, src[rows, tgt], tgt


def _finish(batch: Any, device: torch.device, per_row: dict[str, Tensor | None]) -> ForwardLogps:
    """Map ``(rows, L)`` layout tensors to the padded layout and wrap them."""
    if batch.layout == "padded":
        back = lambda x: x  # noqa: E731
        comp, att = batch.completion_mask.to(device), batch.attention_mask.to(device)
    else:
        moved = _to(batch, device)
        back = moved.unpack
        comp, att = batch.padded_completion_mask.to(device), batch.padded_attention_mask.to(device)
    out = {k: None if v is None else back(v) for k, v in per_row.items()}
    if out.get("argmax_hit") is not None:
        out["argmax_hit"] = out["argmax_hit"].bool()
    return ForwardLogps(out["lp"], comp, att, out.get("entropy"), out.get("argmax_hit"), out.get("mean_logit"))


def _head_path(model: Any, split: tuple[Any, Any], batch: Any, chunk_size: int, want_entropy: bool,
               with_stats: bool, positions: str) -> ForwardLogps:
    from prefopt.lm_head import head_logps

    body, head = split
    dtype, device = _model_dtype_device(body)
    kw = _model_inputs(body, batch, dtype, device)
    out = body(**kw)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    rows, src, tgt = _selected(batch, device, positions)
    ids = kw["input_ids"]
    res = head_logps(hidden[rows, src], head, ids[rows, tgt], chunk_size, with_stats=want_entropy)
    # No selected token (every completion masked out): keep the graph connected to body and head with an
    # exact zero, as the full-logits path does, so backward still runs and every parameter gets a gradient.
    anchor = 0.0 * head_logps(hidden[0, :1], head, ids[0, :1], 1).logps.sum() if rows.numel() == 0 else None

    def place(v: Tensor | None) -> Tensor | None:
        if v is None:
            return None
        full = torch.zeros(ids.shape, dtype=v.dtype if v.dtype != torch.bool else torch.float32, device=device)
        return full.index_put((rows, tgt), v.to(full.dtype))

    lp = place(res.logps)
    if anchor is not None:
        lp = lp + anchor

    return _finish(batch, device, {"lp": lp, "entropy": place(res.entropy) if want_entropy else None,
                                   "argmax_hit": place(res.argmax_hit) if with_stats else None,
                                   "mean_logit": place(res.mean_logit) if with_stats else None})


def _full_path(model: Any, batch: Any, chunk_size: int, with_entropy: bool, positions: str) -> ForwardLogps:
    """Full logits from ``model(...)``, chunked log-softmax (any architecture)."""
    dtype, device = _model_dtype_device(model)
    kw = _model_inputs(model, batch, dtype, device)
    logits = model(**kw).logits
    ids = kw["input_ids"]
    if batch.layout == "shared_prompt":
        source = batch.source_index.to(device)
        lp = _indexed_logps(logits, source, ids, chunk_size)
        ent = None
        if with_entropy:
            rows = torch.arange(ids.shape[0], device=device).unsqueeze(1)
            ent = entropy(logits[rows, source.clamp(min=0)], chunk_size, shift=False) * (source >= 0)
    else:
        lp = token_logps(logits, ids, chunk_size)
        ent = entropy(logits, chunk_size) if with_entropy else None
        starts = kw["position_ids"] == 0  # the first token of each sequence: nothing predicts it
        lp = lp.masked_fill(starts, 0.0)
        ent = None if ent is None else ent.masked_fill(starts, 0.0)
    if positions == "completion":
        keep = batch.completion_mask.to(device).bool()
    else:  # real tokens (a packed row has no padding)
        keep = getattr(batch, "attention_mask", None)
        keep = torch.ones_like(ids, dtype=torch.bool) if keep is None else keep.to(device).bool()
    lp = lp * keep
    ent = None if ent is None else ent * keep
    return _finish(batch, device, {"lp": lp, "entropy": ent})


def _to(batch: Any, device: torch.device) -> Any:
    """Move the index tensors ``unpack`` needs onto ``device`` (a shallow copy; CPU is a no-op)."""
    import dataclasses

    if batch.input_ids.device == device:
        return batch
    moved = {f.name: getattr(batch, f.name).to(device) if isinstance(getattr(batch, f.name), Tensor)
             else getattr(batch, f.name) for f in dataclasses.fields(batch)}
    return type(batch)(**moved)
