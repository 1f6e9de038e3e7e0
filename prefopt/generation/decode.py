"""Levers for the HF generator's decode loop (:class:`prefopt.generation.hf.HFGenerator` options).

* :class:`PreallocLayer` / :func:`preallocate`: a KV cache written into buffers sized once for the whole
  generation, instead of transformers' ``DynamicLayer``, which concatenates every layer's keys and values
  with the new token at every step (``torch.cat``: a full copy of the cache per layer per token).
* :func:`decode_loop`: a minimal sampling loop over a prefilled cache that draws tokens exactly as
  transformers' ``GenerationMixin._sample`` does (float32 logits of the last position, the same logits
  warpers in the same order, ``softmax`` then ``torch.multinomial``), so with the same seed and the same
  rows it draws the same tokens. ``drop_finished`` removes rows that produced EOS from the decode batch.
  ``torch.multinomial`` with one sample is ``argmax(p / q)`` with ``q ~ Exp(1)`` drawn for the whole
  ``[rows, vocab]`` tensor (the Gumbel-max trick; PyTorch ``aten/native/Distributions.cpp``); the loop
  draws ``q`` for all original rows every step and uses the rows still running, so dropping finished
  rows leaves the random stream, and hence the other rows' samples, unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import DynamicLayer


class PreallocLayer(DynamicLayer):
    """One decoder layer's KV cache in preallocated ``[rows, heads, capacity, dim]`` buffers.

    A ``DynamicLayer`` whose ``update`` writes the new positions into the buffers instead of concatenating;
    ``keys``/``values`` are views of the filled part. Grows by doubling if ``capacity`` is exceeded.
    """

    is_croppable = False

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, capacity: int):
        super().__init__()
        self.is_initialized = True
        b, h, n, d = keys.shape
        self.length = n
        self._k = keys.new_empty((b, h, max(capacity, n), d))
        self._v = values.new_empty((b, h, max(capacity, n), values.shape[-1]))
        self._k[:, :, :n].copy_(keys)
        self._v[:, :, :n].copy_(values)
        self.device, self.dtype = keys.device, keys.dtype
        self._view()

    def _view(self) -> None:
        self.keys = self._k[:, :, :self.length]
        self.values = self._v[:, :, :self.length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        n, m = self.length, key_states.shape[-2]
        if n + m > self._k.shape[2]:
            grow = lambda buf: torch.cat([buf, torch.empty_like(buf)], 2)  # noqa: E731
            self._k, self._v = grow(self._k), grow(self._v)
        self._k[:, :, n:n + m].copy_(key_states)
        self._v[:, :, n:n + m].copy_(value_states)
        self.length = n + m
        self._view()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._k, self._v = self._k.repeat_interleave(repeats, 0), self._v.repeat_interleave(repeats, 0)
        self._view()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._k, self._v = self._k[indices], self._v[indices]
        self._view()


def preallocate(cache: Any, capacity: int) -> Any:
    """Swap every full-attention ``DynamicLayer`` of a prefilled transformers cache for a
    :class:`PreallocLayer` holding ``capacity`` positions (prompt + new tokens). Returns ``cache``."""
    for i, layer in enumerate(cache.layers):
        if type(layer) is DynamicLayer and layer.is_initialized and layer.keys.numel():
            cache.layers[i] = PreallocLayer(layer.keys, layer.values, capacity)
    return cache


def hf_warpers(temperature: float, top_k: int, top_p: float) -> list[Any]:
    """The logits warpers transformers' ``_get_logits_processor`` builds for these settings (sampling,
    one beam), in its order: temperature (if not 1), top-k (if not 0), top-p (if below 1)."""
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    out: list[Any] = []
    if temperature != 1.0:
        out.append(TemperatureLogitsWarper(temperature))
    if top_k:
        out.append(TopKLogitsWarper(top_k=top_k, min_tokens_to_keep=1))
    if top_p < 1.0:
        out.append(TopPLogitsWarper(top_p=top_p, min_tokens_to_keep=1))
    return out


@dataclass
class Decoded:
    """``tokens`` ``[rows, steps]`` (``pad`` after a row's EOS) and the log-prob of each sampled token under
    the processed distribution it was drawn from (0 after EOS); ``steps`` = decode steps run."""

    tokens: torch.Tensor
    logprobs: torch.Tensor
    steps: int


def _draw(scores: torch.Tensor, rows: torch.Tensor | None, total: int, sample: bool) -> torch.Tensor:
    """``torch.multinomial(softmax(scores), 1)`` for the running rows, with ``Exp(1)`` noise drawn for all
    ``total`` rows (``rows`` = their indices, None = all running); greedy: argmax."""
    if not sample:
        return scores.argmax(-1)
    probs = torch.softmax(scores, -1)
    q = torch.empty((total, probs.shape[-1]), dtype=probs.dtype, device=probs.device).exponential_(1)
    if rows is not None:
        q = q[rows]
    return (probs / q).argmax(-1)


def decode_loop(model: Any, ids: torch.Tensor, mask: torch.Tensor, cache: Any, *, max_new_tokens: int,
                eos_id: int | None, pad_id: int, warpers: list[Any], sample: bool,
                drop_finished: bool = False) -> Decoded:
    """Sample up to ``max_new_tokens`` per row. ``ids``/``mask`` ``[rows, L]`` are the full (left-padded)
    prompts; ``cache`` holds all but their last token (so the first step feeds the last prompt token,
    as ``generate`` does with a user cache). Stops when every row has produced ``eos_id``."""
    total = ids.shape[0]
    tokens = torch.full((total, max_new_tokens), pad_id, dtype=torch.long, device=ids.device)
    logps = torch.zeros((total, max_new_tokens), dtype=torch.float32, device=ids.device)
    pos = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)[:, -1:]
    step_ids, att, seq = ids[:, -1:], mask, ids
    alive = torch.arange(total, device=ids.device)  # original row of each decode-batch row
    running = torch.ones(total, dtype=torch.bool, device=ids.device)
    steps = 0
    for t in range(max_new_tokens):
        out = model(input_ids=step_ids, attention_mask=att, position_ids=pos, cache=cache, use_cache=True)
        cache = out.cache
        scores = out.logits[:, -1].to(dtype=torch.float32, copy=True)
        for w in warpers:
            scores = w(seq, scores)
        nxt = _draw(scores, alive if drop_finished else None, total, sample)
        lp = torch.log_softmax(scores, -1).gather(-1, nxt[:, None]).squeeze(-1)
        if not drop_finished:  # finished rows keep running (as in generate) and emit padding
            nxt = torch.where(running, nxt, torch.full_like(nxt, pad_id))
            lp = torch.where(running, lp, torch.zeros_like(lp))
        tokens[alive, t], logps[alive, t] = nxt, lp
        steps = t + 1
        done = nxt == eos_id if eos_id is not None else torch.zeros_like(nxt, dtype=torch.bool)
        running = running & ~done
        if not bool(running.any()):
            break
        seq = torch.cat([seq, nxt[:, None]], -1)
        att = torch.cat([att, att.new_ones((att.shape[0], 1))], -1)
        step_ids, pos = nxt[:, None], pos + 1
        if drop_finished and bool(done.any()):
            keep = running.nonzero().squeeze(-1)
            cache.batch_select_indices(keep)
            alive, running = alive[keep], running[keep]
            step_ids, pos, att, seq = step_ids[keep], pos[keep], att[keep], seq[keep]
    return Decoded(tokens[:, :steps], logps[:, :steps], steps)
