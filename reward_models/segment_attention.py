"""Shared-prompt attention that skips the masked blocks (``attn_implementation="prefopt_sdpa"``).

A shared-prompt row holds a prompt of ``P`` tokens followed by its completions; each completion sees
the prompt and, causally, itself (Prefix Grouper, arXiv 2506.05433, Sec. 3). Run through ``sdpa`` with
the dense 4-D block mask, the kernel computes every query-key pair of the ``W x W`` row and throws most
away: for one pair with ``P = C`` that is ``(3C)^2`` scores where the two padded causal rows need
``2 * (2C)^2 / 2``. Here the same attention is computed per block instead:

* when the prompt is at most about as long as the completions, each completion runs as
  ``[prompt; completion]`` under ``is_causal`` (the CPU and CUDA kernels skip the upper triangle; the
  prompt's own outputs come from the first), with no mask at all;
* when the prompt is longer, the prompt's queries attend causally to the prompt once and each
  completion's queries attend to ``[prompt keys; its own keys]`` under a small lower-right causal mask.

Each row takes the form with fewer scores; the completions of a row are one batched ``sdpa`` call.
A packed (padding-free) row is the same thing with an empty prompt (:func:`packed_inputs`).

The outputs are placed back into the row (padding positions get zeros: no real token attends to them).
Every query sees exactly the keys it sees under the block mask, so the result equals the dense-mask
``sdpa`` to float rounding (``tests/reward_models/test_segment_attention.py``), and no ``W x W`` tensor
exists, which is what lets long rows fit.

The implementation is registered with transformers' ``AttentionInterface``; without a
``prefopt_segments`` keyword it *is* ``sdpa`` (padded rows, generation). :func:`use_segment_attention`
switches a loaded ``sdpa`` model to it; :func:`shared_prompt_inputs` gives the forward's keyword inputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

NAME = "prefopt_sdpa"

# One row: (prompt length, ((start, end) of each completion in the row, ...)).
RowSegments = tuple[int, tuple[tuple[int, int], ...]]

__all__ = ["NAME", "SegmentPlan", "packed_inputs", "packed_spans", "segment_attention_forward", "segments_enabled",
           "shared_prompt_inputs", "text_config", "use_segment_attention"]


@dataclass(frozen=True)
class _RowPlan:
    prompt_len: int
    kv_index: Tensor | None    # (K, X) row positions of each completion's keys (padding -> 0)
    q_index: Tensor | None     # (K, Cmax) query positions (masked form); None: queries = keys (causal form)
    mask: Tensor | None        # (K, 1, Cmax, X) bool, True = may attend (masked form only)
    out_index: Tensor          # (W,) index into the concatenated outputs, the last slot a zero


@dataclass(frozen=True)
class SegmentPlan:
    """Index tensors and masks of a batch of shared-prompt rows, built once per forward and shared by
    every layer (and by the recomputation under activation checkpointing)."""

    width: int
    rows: tuple[_RowPlan, ...]

    @classmethod
    def build(cls, segments: Sequence[RowSegments], width: int, device: torch.device | str = "cpu") -> "SegmentPlan":
        return cls(width, tuple(_row_plan(p, spans, width, torch.device(device)) for p, spans in segments))


def _row_plan(prompt_len: int, spans: Sequence[tuple[int, int]], width: int, device: torch.device) -> _RowPlan:
    """One row's plan in the cheaper of two exact forms (scores computed, counting the kernel's causal skip):

    * causal form, ``K (P + Cmax)^2 / 2``: each completion runs as ``[prompt; completion]`` under
      ``is_causal`` (its padding comes last, so no real query sees it), the prompt's outputs are taken
      from the first; no mask at all;
    * masked form, ``P^2 / 2 + K Cmax (P + Cmax)``: the prompt causally once, each completion's queries
      over ``[prompt; own]`` keys under a ``(Cmax, P + Cmax)`` mask; cheaper when the prompt is long.
    """
    spans = [(s, e) for s, e in spans if e > s]
    lens = [e - s for s, e in spans]
    c_max, k, p = max(lens, default=0), len(spans), prompt_len
    causal = k > 0 and k * (p + c_max) ** 2 / 2 <= p * p / 2 + k * c_max * (p + c_max)
    zero_slot = k * (p + c_max) if causal else p + k * c_max  # after all outputs of the row
    out_index = torch.full((width,), zero_slot, dtype=torch.long)
    if k == 0:
        out_index[:p] = torch.arange(p)
        return _RowPlan(p, None, None, None, out_index.to(device))
    kv_index = torch.zeros((k, p + c_max), dtype=torch.long)
    kv_index[:, :p] = torch.arange(p)
    q_index = None if causal else torch.zeros((k, c_max), dtype=torch.long)
    mask = None if causal else torch.zeros((k, 1, c_max, p + c_max), dtype=torch.bool)
    if mask is not None:
        mask[:, 0, :, 0] = True  # padding queries see one key (no NaN); real ones see it anyway
    out_index[:p] = torch.arange(p)  # both forms put the prompt's outputs first
    for i, ((s, e), n) in enumerate(zip(spans, lens, strict=True)):
        kv_index[i, p:p + n] = torch.arange(s, e)
        if causal:
            out_index[s:e] = i * (p + c_max) + p + torch.arange(n)
            continue
        q_index[i, :n] = torch.arange(s, e)
        mask[i, 0, :n, :p] = True
        mask[i, 0, :n, p:p + n] = torch.ones(n, n, dtype=torch.bool).tril()
        out_index[s:e] = p + i * c_max + torch.arange(n)
    move = lambda t: None if t is None else t.to(device)  # noqa: E731
    return _RowPlan(p, move(kv_index), move(q_index), move(mask), out_index.to(device))


def _row_attention(plan: _RowPlan, q: Tensor, k: Tensor, v: Tensor, scale: float | None, gqa: bool,
                   dropout: float) -> Tensor:
    """``(H, W, D)`` attention output of one row (``q``: ``(H, W, D)``; ``k``/``v``: ``(Hkv, W, D)``)."""
    h, _, d = q.shape
    kw: dict[str, Any] = {"scale": scale, "dropout_p": dropout, **({"enable_gqa": True} if gqa else {})}
    parts = []
    p = plan.prompt_len
    if plan.kv_index is None or plan.q_index is not None:  # prompt on its own (no completion / masked form)
        if p > 0:
            parts.append(F.scaled_dot_product_attention(q[None, :, :p], k[None, :, :p], v[None, :, :p],
                                                        is_causal=True, **kw)[0])
    if plan.kv_index is not None:
        kc = k[:, plan.kv_index].transpose(0, 1)         # (K, Hkv, P + Cmax, D)
        vc = v[:, plan.kv_index].transpose(0, 1)
        if plan.q_index is None:                         # causal form: queries are the keys' positions
            oc = F.scaled_dot_product_attention(q[:, plan.kv_index].transpose(0, 1), kc, vc, is_causal=True, **kw)
        else:
            oc = F.scaled_dot_product_attention(q[:, plan.q_index].transpose(0, 1), kc, vc, attn_mask=plan.mask,
                                                **kw)
        parts.append(oc.transpose(0, 1).reshape(h, -1, d))
    parts.append(q.new_zeros((h, 1, d)))
    return torch.cat(parts, dim=1)[:, plan.out_index]


def segment_attention_forward(module: torch.nn.Module, query: Tensor, key: Tensor, value: Tensor,
                              attention_mask: Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                              **kwargs: Any) -> tuple[Tensor, None]:
    """transformers attention function: per-block attention when a ``prefopt_segments`` plan is passed,
    transformers' own ``sdpa`` otherwise. Returns ``((B, W, H, D), None)`` as ``sdpa`` does."""
    plan: SegmentPlan | None = kwargs.pop("prefopt_segments", None)
    if plan is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    if query.shape[0] != len(plan.rows) or query.shape[2] != plan.width:
        raise ValueError(f"segment plan is for {len(plan.rows)} rows x {plan.width} tokens, the attention got "
                         f"{query.shape[0]} x {query.shape[2]}")
    gqa = query.shape[1] != key.shape[1]
    out = torch.stack([_row_attention(r, query[b], key[b], value[b], scaling, gqa, dropout)
                       for b, r in enumerate(plan.rows)])
    return out.transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, segment_attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)


_register()


def _unwrapped(model: Any) -> Any:
    """The transformers model inside a DeepSpeed engine (``.module``; the engine's own ``config`` is its
    DeepSpeed settings); PEFT wrappers forward attributes to their model."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, torch.nn.Module) and hasattr(inner, "config") else model


def text_config(model: Any) -> Any:
    """The (text) transformers config of ``model``, through DeepSpeed/PEFT wrappers; None if it has none."""
    cfg = getattr(_unwrapped(model), "config", None)
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def segments_enabled(model: Any) -> bool:
    """Whether ``model`` runs :func:`segment_attention_forward` (so a plan may replace the dense mask)."""
    return getattr(text_config(model), "_attn_implementation", None) == NAME


def use_segment_attention(model: Any) -> Any:
    """Switch a model that runs transformers' ``sdpa`` through the ``AttentionInterface`` to
    ``prefopt_sdpa`` (identical without a plan); other implementations (eager, flash-attention) and
    models that cannot switch are left alone. Returns ``model``."""
    inner = _unwrapped(model)
    if getattr(text_config(model), "_attn_implementation", None) != "sdpa":
        return model
    can_set = getattr(inner, "_can_set_attn_implementation", None)
    if callable(can_set) and can_set() and hasattr(inner, "set_attn_implementation"):
        inner.set_attn_implementation(NAME)
    return model


def shared_prompt_inputs(model: Any, segments: Sequence[RowSegments], width: int, dtype: torch.dtype,
                         device: torch.device) -> dict[str, Any]:
    """``attention_mask`` (and ``prefopt_segments``) keyword inputs of a shared-prompt forward.

    A model on transformers' ``sdpa`` is switched to segment attention here (:func:`use_segment_attention`;
    exact, and the same as ``sdpa`` for every other forward). With it and the row segments: a plan
    (:func:`_plan_inputs`). Otherwise the dense additive block mask (``(B, 1, W, W)``, in ``dtype``)."""
    if segments and segments_enabled(use_segment_attention(model)):
        return _plan_inputs(segments, width, dtype, device)
    from data_pipelines.collate import additive_mask, block_mask

    return {"attention_mask": additive_mask(block_mask(segments, width), dtype).to(device)}


def packed_spans(cu_seqlens: Tensor) -> tuple[tuple[int, int], ...]:
    """``(start, end)`` of each sequence of a packed row from its ``cu_seqlens``."""
    cu = [int(x) for x in cu_seqlens.tolist()]
    return tuple(zip(cu[:-1], cu[1:], strict=True))


def packed_inputs(model: Any, spans: Sequence[tuple[int, int]], dtype: torch.dtype,
                  device: torch.device) -> dict[str, Any]:
    """``attention_mask`` (and ``prefopt_segments``) keyword inputs of a packed (padding-free) row.

    A packed row is a shared-prompt row with an empty prompt: each sequence attends causally to itself,
    so with segment attention every sequence runs as its own causal block. Otherwise ``None``:
    transformers then finds the sequences from the restarting ``position_ids`` (a block-diagonal mask
    for ``sdpa``/``eager``; ``cu_seqlens`` for flash-attention)."""
    if spans and segments_enabled(use_segment_attention(model)):
        return _plan_inputs(((0, tuple(spans)),), spans[-1][1], dtype, device)
    return {"attention_mask": None}


def _plan_inputs(segments: Sequence[RowSegments], width: int, dtype: torch.dtype,
                 device: torch.device) -> dict[str, Any]:
    """A segment plan plus a ``(B, 1, 1, 1)`` placeholder mask (a 4-D mask makes transformers pass it
    through untouched, so no ``W x W`` mask is built)."""
    return {"attention_mask": torch.zeros((len(segments), 1, 1, 1), dtype=dtype, device=device),
            "prefopt_segments": SegmentPlan.build(segments, width, device)}
