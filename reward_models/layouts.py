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

The 4-D mask follows ``prefopt.logprobs`` (additive, in the model's dtype; not for flash-attention).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

LAYOUTS = ("padded", "packed", "shared_prompt")

__all__ = ["LAYOUTS", "RMRows", "build_rows", "collate_right"]


@dataclass(frozen=True)
class RMRows:
    """Backbone rows and, for each of the N sequences, the flat index (into ``rows * width``) of its
    last token (``read_index``) and of its last prompt token (``prompt_index``)."""

    layout: str
    input_ids: Tensor                 # (R, W) int64
    position_ids: Tensor              # (R, W) int64
    attention_mask: Tensor | None     # (R, W) 0/1 for padded; None for packed / shared prompt
    allowed: Tensor | None            # (R, 1, W, W) bool for shared prompt
    read_index: Tensor                # (N,) int64
    prompt_index: Tensor              # (N,) int64

    def body_inputs(self, dtype: torch.dtype) -> dict[str, Any]:
        """Keyword arguments of the backbone's forward."""
        if self.allowed is not None:
            mask: Tensor | None = torch.where(self.allowed, torch.zeros((), dtype=dtype),
                                              torch.tensor(torch.finfo(dtype).min, dtype=dtype))
        else:
            mask = self.attention_mask
        return {"input_ids": self.input_ids, "attention_mask": mask, "position_ids": self.position_ids,
                "use_cache": False}

    def to(self, device: torch.device) -> "RMRows":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return RMRows(self.layout, move(self.input_ids), move(self.position_ids), move(self.attention_mask),
                      move(self.allowed), move(self.read_index), move(self.prompt_index))


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


def _packed(seqs: Sequence[Sequence[int]], plens: Sequence[int]) -> RMRows:
    ids, pos, read, prompt = [], [], [], []
    for s, p in zip(seqs, plens):
        start = len(ids)
        ids += list(s)
        pos += list(range(len(s)))
        read.append(start + len(s) - 1)
        prompt.append(start + max(p, 1) - 1)
    row = lambda xs: torch.tensor(xs, dtype=torch.long)  # noqa: E731
    return RMRows("packed", row(ids)[None], row(pos)[None], None, None, row(read), row(prompt))


def _prompt_groups(seqs: Sequence[Sequence[int]], plens: Sequence[int],
                   groups: Sequence[Any]) -> list[tuple[tuple[int, ...], list[int]]]:
    """``[(prompt tokens, [sequence indices])]``: sequences of the same group with identical prompts."""
    found: dict[tuple[Any, tuple[int, ...]], list[int]] = {}
    for i, (s, p, g) in enumerate(zip(seqs, plens, groups)):
        found.setdefault((g, tuple(s[:max(p, 1)])), []).append(i)
    return [(prompt, idx) for (_, prompt), idx in found.items()]


def _shared(seqs: Sequence[Sequence[int]], plens: Sequence[int], groups: Sequence[Any], pad: int) -> RMRows:
    plan = _prompt_groups(seqs, plens, groups)
    width = max(len(p) + sum(len(seqs[i]) - len(p) for i in idx) for p, idx in plan)
    n_rows = len(plan)
    ids = torch.full((n_rows, width), pad, dtype=torch.long)
    pos = torch.zeros((n_rows, width), dtype=torch.long)
    allowed = torch.eye(width, dtype=torch.bool).repeat(n_rows, 1, 1, 1)  # pads see themselves (no NaN)
    read = torch.zeros(len(seqs), dtype=torch.long)
    prompt_at = torch.zeros(len(seqs), dtype=torch.long)
    for r, (p, idx) in enumerate(plan):
        n_p = len(p)
        ids[r, :n_p] = torch.tensor(p, dtype=torch.long)
        pos[r, :n_p] = torch.arange(n_p)
        allowed[r, 0, :n_p, :n_p] = torch.ones(n_p, n_p, dtype=torch.bool).tril()
        start = n_p
        for i in idx:
            comp = list(seqs[i][n_p:])
            end = start + len(comp)
            if comp:
                ids[r, start:end] = torch.tensor(comp, dtype=torch.long)
                pos[r, start:end] = torch.arange(n_p, n_p + len(comp))
                allowed[r, 0, start:end, :n_p] = True
                allowed[r, 0, start:end, start:end] = torch.ones(len(comp), len(comp), dtype=torch.bool).tril()
            read[i] = r * width + (end - 1 if comp else n_p - 1)
            prompt_at[i] = r * width + n_p - 1
            start = end
    return RMRows("shared_prompt", ids, pos, None, allowed, read, prompt_at)


def build_rows(seqs: Sequence[Sequence[int]], prompt_lengths: Sequence[int], pad_token_id: int,
               layout: str = "padded", groups: Sequence[Any] | None = None) -> RMRows:
    """Rows for ``seqs`` (prompt + response token ids, each with its prompt length) in ``layout``.

    Args:
        seqs: the N sequences, in the order the rewards are wanted.
        prompt_lengths: prompt tokens at the start of each sequence.
        pad_token_id: padding id (padded and shared-prompt rows).
        layout: ``padded`` | ``packed`` | ``shared_prompt``.
        groups: shared prompt only: sequences share a row only within the same group (an item) and
            with an identical prompt; default: any identical prompt.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"reward-model layout must be one of {list(LAYOUTS)}, got {layout!r}")
    if not seqs or any(len(s) == 0 for s in seqs):
        raise ValueError("every sequence needs at least one token")
    if layout == "padded":
        return _padded(seqs, prompt_lengths, pad_token_id)
    if layout == "packed":
        return _packed(seqs, prompt_lengths)
    return _shared(seqs, prompt_lengths, groups if groups is not None else [0] * len(seqs), pad_token_id)
