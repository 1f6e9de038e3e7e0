"""Token-row layouts for reward-model forwards: padded, packed (padding-free), shared prompt.

A reward model reads one hidden state per sequence (its last token; a GPM gate also reads the last
prompt token), so any layout that gives every sequence the same causal context gives the same
rewards. :class:`RMRows` holds the rows the backbone runs on and, per sequence (in the padded row
order of :func:`reward_models.data.collate_rm`), the flat positions to read:

* ``padded``: one right-padded row per sequence (what ``RewardModel.forward`` does by default);
* ``packed``: all sequences in one row, position ids restarting at 0 per sequence (transformers
  builds the block-diagonal causal mask from them for sdpa/eager; flash-attention reads them too);
* ``shared_prompt``: one row per prompt with its completions after it (Prefix Grouper, arXiv
  2506.05433): a 4-D mask lets each completion see the prompt and, causally, itself; its position
  ids continue from the prompt length. A pair's prompt is encoded once instead of twice.

Packed and shared-prompt rows come from the ``data_pipelines.collate`` collators the policy losses use;
the 4-D mask is additive, in the model's dtype (not for flash-attention).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from data_pipelines.collate import block_mask, collate_packed, shared_prompt_from_rows
from data_pipelines.tokenize import TokenizedList
from reward_models.segment_attention import packed_inputs, packed_spans, shared_prompt_inputs, text_config

LAYOUTS = ("padded", "packed", "shared_prompt")

__all__ = ["LAYOUTS", "RMRows", "build_rows", "collate_right", "resolve_auto_layout", "shared_prompt_blockers"]

FLASH_REASON = "flash_attention_2 cannot take the 4-D block mask"


def shared_prompt_blockers(model: Any, attn_implementation: str | None = None) -> list[str]:
    """Why the shared-prompt block mask would not be exact for ``model`` (empty list: it is exact).

    * ``flash_attention_2`` takes no 4-D mask at all;
    * sliding-window attention (Mistral/Gemma-style ``sliding_window`` layers): a 4-D mask is passed
      to every layer as-is, so the window would be lost on sequences longer than it.
    """
    reasons = []
    text = text_config(model)
    attn = attn_implementation or getattr(text, "_attn_implementation", None)
    if attn == "flash_attention_2":
        reasons.append(FLASH_REASON)
    window = getattr(text, "sliding_window", None)
    types = getattr(text, "layer_types", None)
    sliding = (any("sliding" in str(t) for t in types) if types is not None
               else bool(window) and getattr(text, "use_sliding_window", True))
    if window and sliding:
        reasons.append(f"the model has sliding-window attention ({window} tokens), which a 4-D mask overrides")
    return reasons


def resolve_auto_layout(requested: str, reasons: Sequence[str], what: str, log: bool = True) -> str:
    """``requested`` unless it is ``auto``: then ``shared_prompt`` (each prompt encoded once; the same
    values as padded rows) when nothing in ``reasons`` stands against it, else ``padded`` with one
    console line (stderr, unless ``log`` is off) naming ``what`` and the reasons. Explicit layouts are
    returned unchanged."""
    import sys

    if requested != "auto":
        return requested
    if not reasons:
        return "shared_prompt"
    if log:
        print(f"{what}: layout auto -> padded, not shared_prompt: {'; '.join(reasons)}", file=sys.stderr,
              flush=True)
    return "padded"


@dataclass(frozen=True)
class RMRows:
    """Backbone rows and, for each of the N sequences, the flat index (into ``rows * width``) of its
    last token (``read_index``) and of its last prompt token (``prompt_index``)."""

    layout: str
    input_ids: Tensor                 # (R, W) int64
    position_ids: Tensor              # (R, W) int64
    attention_mask: Tensor | None     # (R, W) 0/1 for padded; None for packed / shared prompt
    segments: tuple | None            # per row (prompt length, completion spans); packed: one row, prompt 0
    read_index: Tensor                # (N,) int64
    prompt_index: Tensor              # (N,) int64

    @property
    def allowed(self) -> Tensor | None:
        """``(R, 1, W, W)`` bool block mask of shared-prompt and packed rows (None for padded rows)."""
        return None if self.segments is None else block_mask(self.segments, self.input_ids.shape[1])

    def body_inputs(self, body: Any, dtype: torch.dtype) -> dict[str, Any]:
        """Keyword arguments of ``body``'s forward (shared prompt: segment attention where ``body`` runs
        it, else the dense block mask; :mod:`reward_models.segment_attention`)."""
        kw = {"input_ids": self.input_ids, "position_ids": self.position_ids, "use_cache": False}
        if self.layout == "packed":
            return {**kw, **packed_inputs(body, self.segments[0][1], dtype, self.input_ids.device)}
        if self.segments is None:
            return {**kw, "attention_mask": self.attention_mask}
        return {**kw, **shared_prompt_inputs(body, self.segments, self.input_ids.shape[1], dtype,
                                             self.input_ids.device)}

    def read(self, body: Any) -> tuple[Tensor, Tensor]:
        """Run ``body`` on the rows; hidden states ``(N, d)`` at each sequence's last token and at its
        last prompt token."""
        out = body(**self.body_inputs(body, next(body.parameters()).dtype))
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        flat = hidden.reshape(-1, hidden.shape[-1])
        return flat[self.read_index], flat[self.prompt_index]

    def to(self, device: torch.device) -> "RMRows":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return RMRows(self.layout, move(self.input_ids), move(self.position_ids), move(self.attention_mask),
                      self.segments, move(self.read_index), move(self.prompt_index))


def collate_right(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Right-pad token rows -> ``(input_ids, attention_mask)``."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.as_tensor(list(r), dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


def _padded(seqs: Sequence[Sequence[int]], plens: Sequence[int], pad: int) -> RMRows:
    ids, mask = collate_right(seqs, pad)
    width = ids.shape[1]
    base = torch.arange(len(seqs)) * width
    read = base + torch.tensor([len(s) - 1 for s in seqs])
    prompt = base + torch.tensor([max(p, 1) - 1 for p in plens])
    return RMRows("padded", ids, (mask.cumsum(-1) - 1).clamp(min=0), mask, None, read, prompt)


def _split(seqs: Sequence[Sequence[int]], plens: Sequence[int]) -> tuple[list[list[int]], list[list[int]]]:
    """``(prompts, completions)``; a prompt keeps at least one token (the GPM gate reads its end)."""
    cut = [max(p, 1) for p in plens]
    return [list(s[:c]) for s, c in zip(seqs, cut, strict=False)], [list(s[c:]) for s, c in zip(seqs, cut, strict=False)]


def _packed(seqs: Sequence[Sequence[int]], plens: Sequence[int]) -> RMRows:
    """``collate_packed`` rows; each sequence is read at its last token, the gate at its prompt end."""
    prompts, comps = _split(seqs, plens)
    b = collate_packed([TokenizedList(p, (c,), (0.0,)) for p, c in zip(prompts, comps, strict=False)])
    starts = b.cu_seqlens[:-1].long()
    prompt = starts + torch.tensor([len(p) for p in prompts]) - 1
    return RMRows("packed", b.input_ids, b.position_ids, None, ((0, packed_spans(b.cu_seqlens)),),
                  b.cu_seqlens[1:].long() - 1, prompt)


def _shared(seqs: Sequence[Sequence[int]], plens: Sequence[int], pad: int) -> RMRows:
    """``shared_prompt_from_rows``: sequences with identical prompts share one row."""
    prompts, comps = _split(seqs, plens)
    b = shared_prompt_from_rows(prompts, comps, pad)
    n = torch.arange(len(seqs))
    read = b.unpack_index[n, torch.tensor([len(s) for s in seqs]) - 1]
    prompt = b.unpack_index[n, torch.tensor([len(p) for p in prompts]) - 1]
    return RMRows("shared_prompt", b.input_ids, b.position_ids, None, b.segments, read, prompt)


def build_rows(seqs: Sequence[Sequence[int]], prompt_lengths: Sequence[int], pad_token_id: int,
               layout: str = "padded") -> RMRows:
    """Rows for ``seqs`` (prompt + response token ids, each with its prompt length) in ``layout``.

    Args:
        seqs: the N sequences, in the order the rewards are wanted.
        prompt_lengths: prompt tokens at the start of each sequence.
        pad_token_id: padding id (padded and shared-prompt rows).
        layout: ``padded`` | ``packed`` | ``shared_prompt`` (sequences with identical prompts share a row).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"reward-model layout must be one of {list(LAYOUTS)}, got {layout!r}")
    if not seqs or any(len(s) == 0 for s in seqs):
        raise ValueError("every sequence needs at least one token")
    if layout == "padded":
        return _padded(seqs, prompt_lengths, pad_token_id)
    if layout == "packed":
        return _packed(seqs, prompt_lengths)
    return _shared(seqs, prompt_lengths, pad_token_id)
