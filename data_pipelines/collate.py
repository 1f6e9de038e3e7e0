"""Collators: tokenised examples -> tensor batches in three layouts.

Every batch has a *padded layout* of N sequences (``prompt + completion``): for pairs N = 2B with rows
``[chosen block; rejected block]`` (row b = chosen of example b, row B + b = its rejected); for ranked
and group lists the rows are example-major (all K completions of example 0, then example 1, ...) and
``group_index[n]`` names the example of row n. ``prefopt.logprobs.forward_token_logps`` returns
per-token log-probs in that padded layout whichever layout ran, together with its masks.

Layouts (``layout`` class attribute):

* ``padded`` - :class:`PairwiseBatch` / :class:`ListBatch`: ``(N, T)`` tensors, right padding by
  default (``padding_side="left"`` optional). ``position_ids`` count real tokens, so left and right
  padding give the same results.
* ``packed`` - :class:`PackedBatch` (padding-free): all sequences concatenated into one row
  ``(1, total)``; ``position_ids`` restart at 0 for every sequence, ``seq_lens``/``cu_seqlens`` give the
  boundaries and ``seq_index`` the sequence of each token (to sum log-probs per sequence).
* ``shared_prompt`` - :class:`SharedPromptBatch` (Prefix-Grouper style): one row per example holding
  the prompt once followed by its K completions; a 4-D mask lets each completion see the prompt and,
  causally, itself only; completion position ids continue from the prompt length.

Masks are int64 0/1 (``attention_mask``: real tokens; ``completion_mask``: completion tokens only,
per CONTRIBUTING's token log-prob convention).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Literal, Sequence

import torch
from torch import Tensor

from data_pipelines.tokenize import TokenizedList, TokenizedPair

Kind = Literal["pairwise", "list"]


@dataclass(frozen=True)
class _Meta:
    # (N,) example index of each padded-layout row.
    group_index: Tensor
    # (N,) float scores (ranked) or rewards (group); None for pairs.
    scores: Tensor | None
    # (B,) float margins for pairs (missing ones are 0); None when no example has one.
    margin: Tensor | None
    # Example ids, length B.
    ids: tuple[str, ...]
    # "pairwise" (rows [chosen; rejected]) or "list" (example-major).
    kind: str

    @property
    def num_examples(self) -> int:
        return len(self.ids)

    @property
    def num_sequences(self) -> int:
        return int(self.group_index.numel())


@dataclass(frozen=True)
class PaddedBatch(_Meta):
    """``input_ids``, ``attention_mask``, ``completion_mask``, ``position_ids``: all ``(N, T)`` int64."""

    layout: ClassVar[str] = "padded"
    input_ids: Tensor = None  # type: ignore[assignment]
    attention_mask: Tensor = None  # type: ignore[assignment]
    completion_mask: Tensor = None  # type: ignore[assignment]
    position_ids: Tensor = None  # type: ignore[assignment]
    padding_side: str = "right"

    @property
    def padded_attention_mask(self) -> Tensor:
        return self.attention_mask

    @property
    def padded_completion_mask(self) -> Tensor:
        return self.completion_mask


class PairwiseBatch(PaddedBatch):
    """Padded pairs: ``(2B, T)`` rows ``[chosen block; rejected block]``; ``margin`` ``(B,)``."""


class ListBatch(PaddedBatch):
    """Padded ranked/group lists: ``(sum_b K_b, T)`` example-major rows; ``scores`` and ``group_index`` ``(N,)``."""


RankedBatch = ListBatch
GroupBatch = ListBatch


@dataclass(frozen=True)
class PackedBatch(_Meta):
    """Padding-free batch. ``input_ids``/``position_ids``/``completion_mask``/``seq_index``: ``(1, L)``
    with ``L = sum(seq_lens)``; ``seq_lens`` ``(N,)`` int64; ``cu_seqlens`` ``(N + 1,)`` int32 (flash-attn
    style offsets); ``max_seqlen`` = longest sequence (the padded layout's T)."""

    layout: ClassVar[str] = "packed"
    input_ids: Tensor = None  # type: ignore[assignment]
    position_ids: Tensor = None  # type: ignore[assignment]
    completion_mask: Tensor = None  # type: ignore[assignment]
    seq_index: Tensor = None  # type: ignore[assignment]
    seq_lens: Tensor = None  # type: ignore[assignment]
    cu_seqlens: Tensor = None  # type: ignore[assignment]
    max_seqlen: int = 0

    def unpack(self, values: Tensor) -> Tensor:
        """``(1, L)`` per-token values -> ``(N, max_seqlen)`` right-padded with zeros."""
        flat = values.reshape(-1)
        out = flat.new_zeros(len(self.seq_lens), self.max_seqlen)
        out[self.seq_index.reshape(-1), self.position_ids.reshape(-1)] = flat
        return out

    @property
    def padded_attention_mask(self) -> Tensor:
        return self.unpack(torch.ones_like(self.input_ids))

    @property
    def padded_completion_mask(self) -> Tensor:
        return self.unpack(self.completion_mask)


@dataclass(frozen=True)
class SharedPromptBatch(_Meta):
    """Prompt once + K completions per row. ``input_ids``/``attention_mask``/``position_ids``/
    ``completion_mask``/``source_index``: ``(B, L)``; ``segments``: per row ``(prompt length, ((start,
    end) of each completion, ...))``, from which :attr:`allowed` builds the ``(B, 1, L, L)`` bool block
    mask (query row may attend key column) when a forward needs it; ``unpack_index``: ``(N, T)`` flat
    index into ``B * L`` (-1 = padding) mapping back to the padded layout. ``source_index[b, t]`` is the
    position whose logits predict token t (the prompt's last token for each completion's first token;
    -1 for the first token)."""

    layout: ClassVar[str] = "shared_prompt"
    input_ids: Tensor = None  # type: ignore[assignment]
    attention_mask: Tensor = None  # type: ignore[assignment]
    position_ids: Tensor = None  # type: ignore[assignment]
    completion_mask: Tensor = None  # type: ignore[assignment]
    source_index: Tensor = None  # type: ignore[assignment]
    unpack_index: Tensor = None  # type: ignore[assignment]
    segments: tuple[tuple[int, tuple[tuple[int, int], ...]], ...] = ()

    @property
    def allowed(self) -> Tensor:
        """``(B, 1, L, L)`` bool block mask (built on each call; the segment attention never needs it)."""
        return block_mask(self.segments, self.input_ids.shape[1])

    def additive_mask(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """``(B, 1, L, L)`` additive mask: 0 where allowed, ``finfo(dtype).min`` elsewhere (build it in
        the model's dtype: a float32 min cast to bf16 would become -inf)."""
        return additive_mask(self.allowed, dtype)

    def unpack(self, values: Tensor) -> Tensor:
        """``(B, L)`` per-token values -> ``(N, T)`` padded layout (zeros on padding)."""
        flat = values.reshape(-1)
        idx = self.unpack_index
        return torch.where(idx >= 0, flat[idx.clamp(min=0)], flat.new_zeros(()))

    @property
    def padded_attention_mask(self) -> Tensor:
        return (self.unpack_index >= 0).long()

    @property
    def padded_completion_mask(self) -> Tensor:
        return self.unpack(self.completion_mask)


# ----------------------------------------------------------------------------------------------- helpers

def block_mask(segments: Sequence[tuple[int, Sequence[tuple[int, int]]]], width: int) -> Tensor:
    """``(B, 1, width, width)`` bool shared-prompt mask from per-row ``(prompt length, completion spans)``:
    the prompt is causal, each completion sees the prompt and, causally, itself; padding sees itself."""
    allowed = torch.eye(width, dtype=torch.bool).repeat(len(segments), 1, 1, 1)  # pads see themselves (no NaN)
    for b, (n_p, spans) in enumerate(segments):
        allowed[b, 0, :n_p, :n_p] = torch.ones(n_p, n_p, dtype=torch.bool).tril()
        for start, end in spans:
            allowed[b, 0, start:end, :n_p] = True
            allowed[b, 0, start:end, start:end] = torch.ones(end - start, end - start, dtype=torch.bool).tril()
    return allowed


def additive_mask(allowed: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Bool "may attend" mask -> additive mask: 0 where allowed, ``finfo(dtype).min`` elsewhere."""
    zero = torch.zeros((), dtype=dtype)
    return torch.where(allowed, zero, torch.tensor(torch.finfo(dtype).min, dtype=dtype))


Item = TokenizedPair | TokenizedList


def _groups(items: Sequence[Item]) -> tuple[str, list[tuple[list[int], list[list[int]]]], list[tuple[int, int]]]:
    """(kind, [(prompt, completions)] per example, row order [(example, completion)])."""
    if not items:
        raise ValueError("cannot collate an empty batch")
    if all(isinstance(x, TokenizedPair) for x in items):
        groups = [(list(x.prompt_ids), [list(x.chosen_ids), list(x.rejected_ids)]) for x in items]
        order = [(b, 0) for b in range(len(items))] + [(b, 1) for b in range(len(items))]
        return "pairwise", groups, order
    if all(isinstance(x, TokenizedList) for x in items):
        groups = [(list(x.prompt_ids), [list(c) for c in x.completion_ids]) for x in items]
        return "list", groups, [(b, k) for b, (_, cs) in enumerate(groups) for k in range(len(cs))]
    raise TypeError("a batch must hold only TokenizedPair or only TokenizedList items")


def _meta(items: Sequence[Item], kind: str, order: list[tuple[int, int]]) -> dict:
    group_index = torch.tensor([b for b, _ in order], dtype=torch.long)
    scores = margin = None
    if kind == "list":
        scores = torch.tensor([items[b].scores[k] for b, k in order], dtype=torch.float32)
    elif any(x.margin is not None for x in items):
        margin = torch.tensor([float(x.margin or 0.0) for x in items], dtype=torch.float32)
    return {"group_index": group_index, "scores": scores, "margin": margin,
            "ids": tuple(x.id for x in items), "kind": kind}


def _round_up(n: int, multiple: int | None) -> int:
    return n if not multiple else -(-n // multiple) * multiple


# ----------------------------------------------------------------------------------------------- collators


def collate_padded(items: Sequence[Item], pad_token_id: int, padding_side: str = "right",
                   pad_to_multiple_of: int | None = None) -> PaddedBatch:
    """Pairs -> :class:`PairwiseBatch` ``(2B, T)``; lists -> :class:`ListBatch` ``(sum K, T)``."""
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    kind, groups, order = _groups(items)
    rows = [(groups[b][0], groups[b][1][k]) for b, k in order]
    width = _round_up(max(len(p) + len(c) for p, c in rows), pad_to_multiple_of)
    n = len(rows)
    input_ids = torch.full((n, width), pad_token_id, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    completion = torch.zeros((n, width), dtype=torch.long)
    for i, (p, c) in enumerate(rows):
        length = len(p) + len(c)
        start = 0 if padding_side == "right" else width - length
        input_ids[i, start:start + length] = torch.tensor(p + c, dtype=torch.long)
        attention[i, start:start + length] = 1
        completion[i, start + len(p):start + length] = 1
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    cls = PairwiseBatch if kind == "pairwise" else ListBatch
    return cls(input_ids=input_ids, attention_mask=attention, completion_mask=completion,
               position_ids=position_ids, padding_side=padding_side, **_meta(items, kind, order))


def collate_pairwise(items: Sequence[TokenizedPair], pad_token_id: int, padding_side: str = "right",
                     pad_to_multiple_of: int | None = None) -> PairwiseBatch:
    """Padded pairwise batch, rows ``[chosen block; rejected block]``."""
    return collate_padded(items, pad_token_id, padding_side, pad_to_multiple_of)  # type: ignore[return-value]


def collate_list(items: Sequence[TokenizedList], pad_token_id: int, padding_side: str = "right",
                 pad_to_multiple_of: int | None = None) -> ListBatch:
    """Padded ranked/group batch ``(sum_b K_b, T)`` with ``group_index`` and ``scores``."""
    return collate_padded(items, pad_token_id, padding_side, pad_to_multiple_of)  # type: ignore[return-value]


def collate_packed(items: Sequence[Item]) -> PackedBatch:
    """Padding-free batch: every sequence of the padded layout, in the same order, in one row."""
    kind, groups, order = _groups(items)
    ids, pos, comp, seq = [], [], [], []
    lens = []
    for i, (b, k) in enumerate(order):
        p, c = groups[b][0], groups[b][1][k]
        ids += p + c
        pos += list(range(len(p) + len(c)))
        comp += [0] * len(p) + [1] * len(c)
        seq += [i] * (len(p) + len(c))
        lens.append(len(p) + len(c))
    seq_lens = torch.tensor(lens, dtype=torch.long)
    cu = torch.zeros(len(lens) + 1, dtype=torch.int32)
    cu[1:] = seq_lens.cumsum(0)
    row = lambda xs: torch.tensor(xs, dtype=torch.long).unsqueeze(0)  # noqa: E731
    return PackedBatch(input_ids=row(ids), position_ids=row(pos), completion_mask=row(comp), seq_index=row(seq),
                       seq_lens=seq_lens, cu_seqlens=cu, max_seqlen=max(lens), **_meta(items, kind, order))


def collate_shared_prompt(items: Sequence[Item], pad_token_id: int,
                          pad_to_multiple_of: int | None = None) -> SharedPromptBatch:
    """One row per example: prompt once, then each completion; see :class:`SharedPromptBatch`."""
    kind, groups, order = _groups(items)
    width = _round_up(max(len(p) + sum(len(c) for c in cs) for p, cs in groups), pad_to_multiple_of)
    b_count = len(groups)
    input_ids = torch.full((b_count, width), pad_token_id, dtype=torch.long)
    attention = torch.zeros((b_count, width), dtype=torch.long)
    position = torch.zeros((b_count, width), dtype=torch.long)
    completion = torch.zeros((b_count, width), dtype=torch.long)
    source = torch.full((b_count, width), -1, dtype=torch.long)
    spans: list[list[tuple[int, int]]] = []  # per example: (start, end) of each completion in the row
    for b, (p, cs) in enumerate(groups):
        n_p = len(p)
        row = p + [t for c in cs for t in c]
        input_ids[b, :len(row)] = torch.tensor(row, dtype=torch.long)
        attention[b, :len(row)] = 1
        position[b, :n_p] = torch.arange(n_p)
        source[b, 1:n_p] = torch.arange(n_p - 1)
        start, spans_b = n_p, []
        for c in cs:
            end = start + len(c)
            position[b, start:end] = torch.arange(n_p, n_p + len(c))
            completion[b, start:end] = 1
            source[b, start:end] = torch.arange(start - 1, end - 1)
            if end > start:  # an empty completion has no first token (and may start past the row)
                source[b, start] = n_p - 1
            spans_b.append((start, end))
            start = end
        spans.append(spans_b)
    t_max = max(len(groups[b][0]) + len(groups[b][1][k]) for b, k in order)
    unpack = torch.full((len(order), t_max), -1, dtype=torch.long)
    for i, (b, k) in enumerate(order):
        n_p = len(groups[b][0])
        start, end = spans[b][k]
        unpack[i, :n_p] = b * width + torch.arange(n_p)
        unpack[i, n_p:n_p + end - start] = b * width + torch.arange(start, end)
    return SharedPromptBatch(input_ids=input_ids, attention_mask=attention, position_ids=position,
                             completion_mask=completion, source_index=source, unpack_index=unpack,
                             segments=tuple((len(p), tuple(s)) for (p, _), s in zip(groups, spans, strict=True)),
                             **_meta(items, kind, order))


def shared_prompt_from_rows(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]],
                            pad_token_id: int, keep: Sequence[bool] | None = None) -> SharedPromptBatch:
    """Padded-layout rows ``prompt_n + completion_n`` -> a :class:`SharedPromptBatch` in which rows with
    identical prompts share one row (a group of rollouts, a ``[y1; y2]`` pair block, ...).

    ``unpack`` returns the *input* row order (not example-major), so per-token values come back
    aligned with the original padded rows. ``keep[n] = False`` leaves row n's completion out of
    ``completion_mask`` (the padded rows' dropped completions).
    """
    if not prompts or len(prompts) != len(completions):
        raise ValueError("need one completion per prompt and at least one row")
    groups: dict[tuple[int, ...], list[int]] = {}
    for n, p in enumerate(prompts):
        groups.setdefault(tuple(p), []).append(n)
    items = [TokenizedList(p, tuple(tuple(completions[n]) for n in idx), tuple(0.0 for _ in idx))
             for p, idx in groups.items()]
    batch = collate_shared_prompt(items, pad_token_id)
    rows_in_order = [n for idx in groups.values() for n in idx]  # example-major order of `batch`
    inverse = torch.empty(len(rows_in_order), dtype=torch.long)
    inverse[torch.tensor(rows_in_order)] = torch.arange(len(rows_in_order))
    unpack = batch.unpack_index[inverse]
    completion = batch.completion_mask
    if keep is not None and not all(keep):
        flat = completion.reshape(-1).clone()
        for n, k in enumerate(keep):
            if not k:
                idx = unpack[n, len(prompts[n]):]
                flat[idx[idx >= 0]] = 0
        completion = flat.reshape(completion.shape)
    group_index = batch.group_index[inverse]
    return dataclasses.replace(batch, unpack_index=unpack, completion_mask=completion, group_index=group_index,
                               scores=None)
