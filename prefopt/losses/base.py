"""Shared types and helpers for offline losses, and the generic call contract for trainers.

Generic call contract
---------------------
Every entry of :data:`prefopt.core.registry.LOSSES` is a frozen :class:`LossSpec`::

    spec = LOSSES.get("dpo")                         # LossSpec
    hp = from_dict(spec.hparams_cls, yaml_mapping)   # typed hyper-parameters, defaults in the dataclass
    inputs = pair_inputs(policy_token_logps, completion_mask, ref_token_logps)  # dict[str, Tensor]
    out = spec(inputs, hp)                           # LossOutput; loss is per example
    loss = out.loss.mean() * weight                  # trainer reduction (multi-loss: weighted sum of means)

``spec(inputs, hp)`` picks ``spec.inputs`` (required) and ``spec.optional_inputs`` (if present) from the
mapping by name and calls ``spec.fn(**tensors, **dataclasses.asdict(hp))``; a missing required input
raises ``ValueError`` naming it. The functions themselves are pure and can be called directly with
keyword tensors and keyword hyper-parameters.

Input vocabulary (all float32 unless noted; B = number of pairs):

- pairwise, sequence level: ``policy_chosen_logps``, ``policy_rejected_logps``, ``ref_chosen_logps``,
  ``ref_rejected_logps`` (B,) summed over completion tokens; ``chosen_lengths``, ``rejected_lengths`` (B,)
  completion-token counts (built by :func:`pair_inputs`).
- token level (SparsePO, IRPO): ``policy_token_logps``, ``ref_token_logps``, ``completion_mask`` (2B, T) in
  the ``[chosen; rejected]`` layout of CONTRIBUTING.md; ``token_kl`` (2B, T) from :mod:`prefopt.losses.kl`;
  ``mask_u``/``mask_d`` (2B, T) from a SparsePO mask provider.
- unpaired (KTO): ``policy_logps``, ``ref_logps``, ``labels`` (bool), ``kl_policy_logps``, ``kl_ref_logps``.
- listwise (IRPO): ``item_index`` (B, T) long (-1 outside items), ``relevance``, ``rank`` (B, N).
- LCPO: the base loss's inputs plus ``eta`` (K,) from :class:`prefopt.losses.lcpo.LCPOState` and
  optional ``annotator_id`` (B,) long.

``needs_ref`` tells the trainer whether a reference forward is needed; ``needs_token_level`` whether
sequence-level precomputed reference log-probs cannot serve the loss (SparsePO needs full reference logits).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from prefopt.core.loss_output import LossOutput  # noqa: F401  (re-exported: the one definition)


@dataclass(frozen=True)
class LossSpec:
    """A registry entry: the pure loss function plus what the trainer must feed it.

    Attributes:
        fn: the loss function (keyword tensors + keyword hyper-parameters -> LossOutput).
        hparams_cls: frozen dataclass whose fields are exactly ``fn``'s hyper-parameter keywords.
        inputs: names of required input tensors (see the module docstring for the vocabulary).
        optional_inputs: names passed when present in the mapping.
        needs_ref: a reference model (or precomputed reference log-probs) is required.
        needs_token_level: token-level tensors from a live reference forward are required.
        paired: batch is ``[chosen; rejected]`` pairs (False for KTO and IRPO).
    """

    fn: Callable[..., LossOutput]
    hparams_cls: type
    inputs: tuple[str, ...]
    optional_inputs: tuple[str, ...] = ()
    needs_ref: bool = True
    needs_token_level: bool = False
    paired: bool = True

    def __call__(self, inputs: Mapping[str, Any], hparams: Any = None) -> LossOutput:
        hp = self.hparams_cls() if hparams is None else hparams
        if not isinstance(hp, self.hparams_cls):
            raise TypeError(f"expected {self.hparams_cls.__name__}, got {type(hp).__name__}")
        missing = [k for k in self.inputs if inputs.get(k) is None]
        if missing:
            raise ValueError(f"loss {self.fn.__name__} needs input(s): {', '.join(missing)}")
        kwargs = {k: inputs[k] for k in self.inputs}
        kwargs.update({k: inputs[k] for k in self.optional_inputs if inputs.get(k) is not None})
        kwargs.update({f.name: getattr(hp, f.name) for f in dataclasses.fields(hp)})
        return self.fn(**kwargs)


def seq_logps(token_logps: Tensor, mask: Tensor) -> Tensor:
    """Sum of token log-probs over ``mask`` (B, T) -> (B,), float32; masked values never leak (where)."""
    tl = token_logps.float()
    return torch.where(mask.bool(), tl, torch.zeros_like(tl)).sum(-1)


def seq_lengths(mask: Tensor) -> Tensor:
    """Number of valid tokens per row as float32 (B,)."""
    return mask.float().sum(-1)


def seq_mean_logps(token_logps: Tensor, mask: Tensor) -> Tensor:
    """Token-mean log-prob ``sum / max(n, 1)`` (B,)."""
    return seq_logps(token_logps, mask) / seq_lengths(mask).clamp(min=1.0)


def split_pairs(x: Tensor) -> tuple[Tensor, Tensor]:
    """Split a ``[chosen; rejected]`` batch along dim 0; raises if the batch size is odd."""
    if x.shape[0] % 2:
        raise ValueError(f"pairwise batch must have an even size, got {x.shape[0]}")
    c, r = x.chunk(2, dim=0)
    return c, r


def pair_inputs(policy_token_logps: Tensor, completion_mask: Tensor,
                ref_token_logps: Tensor | None = None) -> dict[str, Tensor]:
    """Build the sequence-level input mapping from ``[chosen; rejected]`` token tensors (2B, T)."""
    pol = seq_logps(policy_token_logps, completion_mask)
    n = seq_lengths(completion_mask)
    out = {"policy_token_logps": policy_token_logps, "completion_mask": completion_mask}
    out["policy_chosen_logps"], out["policy_rejected_logps"] = split_pairs(pol)
    out["chosen_lengths"], out["rejected_lengths"] = split_pairs(n)
    if ref_token_logps is not None:
        ref = seq_logps(ref_token_logps, completion_mask)
        out["ref_token_logps"] = ref_token_logps
        out["ref_chosen_logps"], out["ref_rejected_logps"] = split_pairs(ref)
    return out


def reward_metrics(chosen_rewards: Tensor, rejected_rewards: Tensor) -> dict[str, Tensor]:
    """TRL-named reward metrics (batch means, detached)."""
    c, r = chosen_rewards.detach().float(), rejected_rewards.detach().float()
    return {
        "rewards/chosen": c.mean(),
        "rewards/rejected": r.mean(),
        "rewards/margins": (c - r).mean(),
        "rewards/accuracies": (c > r).float().mean(),
    }


def logp_metrics(chosen_logps: Tensor, rejected_logps: Tensor) -> dict[str, Tensor]:
    """``logps/chosen`` and ``logps/rejected`` (summed log-probs, batch mean, detached)."""
    return {"logps/chosen": chosen_logps.detach().float().mean(),
            "logps/rejected": rejected_logps.detach().float().mean()}
