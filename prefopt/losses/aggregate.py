"""Token/sequence aggregation of per-token losses with *global* counts (shard-invariant).

:func:`aggregate` returns per-sequence **contributions** ``c[i]`` (sequence i's share of the
aggregated objective): ``c.sum()`` is this shard's part, and the sum over shards (ranks,
micro-batches) equals the unsharded loss, provided the caller passes the global counts (tokens /
sequences of the whole accumulated batch). With counts left as ``None`` the local ones are used
(TRL's ``bnpo`` behaviour for ``token_mean``).

The group losses follow the ``LossOutput`` contract of :mod:`prefopt.losses.base` ("per-example
loss, the trainer takes the mean"): they return ``loss = B_local · c``, so ``out.loss.mean()`` is this
shard's share and, with default (local) counts, simply the usual aggregated loss. Under DDP, whose
gradient all-reduce *averages* over W ranks, multiply by W (or pass global counts divided by W).

Modes (``loss_type``, named as in TRL's GRPOTrainer):
- ``token_mean``            Σ_{i,t} m ℓ / N_tok                    (``dapo``; ``bnpo`` with local N_tok)
- ``seq_mean_token_mean``   (1/N_seq) Σ_i (Σ_t m ℓ / |y_i|)        (``grpo``)
- ``seq_mean_token_sum_norm`` Σ_{i,t} m ℓ / (N_seq · L_max)        (``dr_grpo``)
"""
from __future__ import annotations

import torch

from prefopt.losses.base import LossOutput, LossSpec

__all__ = ["AGG_MODES", "LOSS_TYPE_TO_MODE", "LossOutput", "LossSpec", "aggregate", "masked_mean",
           "to_mean_contract"]

AGG_MODES = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")
LOSS_TYPE_TO_MODE = {
    "dapo": "token_mean",
    "bnpo": "token_mean",
    "grpo": "seq_mean_token_mean",
    "dr_grpo": "seq_mean_token_sum_norm",
}


def _count(value, default: torch.Tensor) -> torch.Tensor:
    if value is None:
        return default
    return torch.as_tensor(value, dtype=torch.float32, device=default.device)


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, mode: str, *,
              num_tokens: torch.Tensor | float | None = None,
              num_sequences: torch.Tensor | float | None = None,
              max_len: int | None = None) -> torch.Tensor:
    """Per-sequence contributions ``c[i]`` whose sum is the aggregated loss.

    Args:
        per_token: ``[B, T]`` per-token loss values.
        mask: ``[B, T]`` 1 on tokens that count (completion tokens), 0 elsewhere.
        mode: one of :data:`AGG_MODES` or a ``loss_type`` alias in :data:`LOSS_TYPE_TO_MODE`.
        num_tokens: global number of active tokens (``token_mean``); default: ``mask.sum()``.
        num_sequences: global number of sequences (``seq_*`` modes); default: ``B``.
        max_len: ``L_max`` for ``seq_mean_token_sum_norm``; default: ``T``.

    Returns:
        ``[B]`` float32 tensor; ``.sum()`` gives this shard's share of the global loss.
        Example (spec A-G4): lengths 1 and 3, all ℓ = 1 → ``token_mean`` 1, ``seq_mean_token_mean`` 1,
        ``seq_mean_token_sum_norm`` with ``max_len=4``: 4/(2·4) = 0.5.
    """
    mode = LOSS_TYPE_TO_MODE.get(mode, mode)
    if mode not in AGG_MODES:
        raise ValueError(f"unknown aggregation mode '{mode}'; known: {', '.join(AGG_MODES)} "
                         f"or loss types {', '.join(LOSS_TYPE_TO_MODE)}")
    m = mask.to(torch.float32)
    per_seq_sum = (per_token.to(torch.float32) * m).sum(-1)
    if mode == "token_mean":
        n = _count(num_tokens, m.sum()).clamp(min=1.0)
        return per_seq_sum / n
    n_seq = _count(num_sequences, torch.tensor(float(m.shape[0]), device=m.device)).clamp(min=1.0)
    if mode == "seq_mean_token_mean":
        return per_seq_sum / m.sum(-1).clamp(min=1.0) / n_seq
    length = float(max_len if max_len is not None else m.shape[-1])
    return per_seq_sum / (n_seq * length)


def to_mean_contract(contributions: torch.Tensor) -> torch.Tensor:
    """Scale contributions by the local batch size so that ``.mean()`` equals their sum."""
    return contributions * contributions.shape[0]


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Detached mean of ``values`` over ``mask`` (0 when the mask is empty); for metrics."""
    m = mask.to(torch.float32)
    return ((values.detach().to(torch.float32) * m).sum() / m.sum().clamp(min=1.0))
