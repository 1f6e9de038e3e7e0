"""Reward-model kinds as registered specs: the registry is the dispatch (no ``kind == ...`` branches).

An :class:`RMKind` says what a kind builds for training, how one batch's loss is computed, which data it
reads, and the serving traits the scorers need. ``prefopt rm train``, the scorers and the RM configs
look kinds up in :data:`prefopt.core.registry.RM_KINDS`; adding a kind is one spec here plus its build /
batch-loss functions (see CONTRIBUTING.md).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from prefopt.core.registry import RM_KINDS
from reward_models import kind_steps as S
from reward_models.items import load_checked_items, load_polar_items
from reward_models.rao_kupper import rao_kupper_batch_loss

__all__ = ["RMKind", "get_kind", "kind_names", "model_kinds", "scorer_kind", "serving_kind", "is_pairwise_scorer", "needs_reference"]


@dataclass(frozen=True)
class RMKind:
    """A registered reward-model kind.

    Attributes:
        name: registry key (the YAML ``rm.kind`` and ``reward_config.json`` ``kind``).
        loss: default ``RM_LOSSES`` name for training.
        pairwise: preferences come from pairs of embeddings (GPM): no scalar reward per response, so no
            reward mean/std and no ranked-list training.
        needs_reference: scoring requires a reference answer (POLAR).
        target: ``"module:attr"`` of the class that loads it (imported lazily by :meth:`resolve`).
        build: ``(cfg, backbone, tokenizer, seed, pad_id) -> model`` for training (before LoRA).
        batch_loss: ``(cfg, model, RMBatch) -> (LossOutput, rewards [rows] or None)``.
        load_items: ``(cfg, tokenizer, seed) -> (train items, held-out items, stats)``.
        reward_token: the reward is read at a REWARD token, found only in padded rows (POLAR).
        head_init: default head initialisation of a freshly built head.
        hf_seq_cls: a full checkpoint is written as HF ``*ForSequenceClassification`` (BT).
        members: trains K members (ensemble); without a shared backbone each member is a ``bt`` run.
        serves_as: the kind whose evaluation adapters score it (a scalar-head kind scores like ``bt``);
            None = its own name.
        sections: the ``rm.<section>`` settings it reads (:class:`reward_models.config.RMSection`); a run's
            config.yaml holds only these (the others keep their defaults).
        reads_margin: its batch loss reads each pair's ``margin`` when ``data.use_margin`` is set.
    """

    name: str
    loss: str
    pairwise: bool
    needs_reference: bool
    target: str
    build: Callable[..., Any]
    batch_loss: Callable[..., Any]
    load_items: Callable[..., Any] = load_checked_items
    reward_token: bool = False
    head_init: str = "normal"
    hf_seq_cls: bool = False
    members: bool = False
    serves_as: str | None = None
    sections: tuple[str, ...] = ()
    reads_margin: bool = False

    @property
    def ranked_lists(self) -> bool:
        """Can train on ranked records (listwise BT / Plackett-Luce need a scalar reward)."""
        return not self.pairwise

    def resolve(self) -> Any:
        module, attr = self.target.split(":")
        return getattr(importlib.import_module(module), attr)


_MODEL = "reward_models.models:RewardModel"
for _kind in (
    RMKind("bt", "bt", False, False, _MODEL, S.build_bt, S.bt_batch_loss, hf_seq_cls=True, sections=("bt",),
           reads_margin=True),
    RMKind("gpm", "gpm", True, False, _MODEL, S.build_gpm, S.gpm_batch_loss, sections=("gpm",),
           reads_margin=True),
    RMKind("polar", "polar", False, True, _MODEL, S.build_polar, S.polar_batch_loss, load_polar_items,
           reward_token=True, head_init="zeros", sections=("polar",)),
    RMKind("ensemble", "bt", False, False, "reward_models.ensemble:EnsembleRewardModel",
           S.build_shared_ensemble, S.ensemble_batch_loss, members=True, sections=("ensemble", "bt")),
    RMKind("rao_kupper", "rao_kupper", False, False, _MODEL, S.build_bt, rao_kupper_batch_loss, hf_seq_cls=True,
           serves_as="bt", sections=("rao_kupper",)),
):
    if _kind.name not in RM_KINDS:
        RM_KINDS.register(_kind.name, _kind)


def get_kind(name: str) -> RMKind:
    """The spec of kind ``name`` (an unknown name lists the known ones)."""
    return RM_KINDS.get(name)


def kind_names() -> tuple[str, ...]:
    """Every registered kind (the one RM-kind list every CLI choice and config check derives from)."""
    return tuple(RM_KINDS.names())


def model_kinds() -> tuple[str, ...]:
    """Kinds a single :class:`reward_models.models.RewardModel` can be (``reward_config.json`` kinds)."""
    return tuple(k for k in kind_names() if RM_KINDS.get(k).target == _MODEL)


def serving_kind(name: str) -> str:
    """The name evaluation adapters are registered under for kind ``name`` (``serves_as``); a name that is
    not a reward-model kind (dpo, judge) is returned as it is."""
    return (RM_KINDS.get(name).serves_as or name) if name in RM_KINDS else name


def scorer_kind(scorer: Any) -> RMKind | None:
    """The registered kind of a model or scorer (its ``kind`` attribute); None for anything else
    (ensemble scorers, rule-based rewards, judges)."""
    name = getattr(scorer, "kind", None)
    return RM_KINDS.get(name) if isinstance(name, str) and name in RM_KINDS else None


def is_pairwise_scorer(scorer: Any) -> bool:
    """Scores only pairs (GPM): no scalar reward per response."""
    kind = scorer_kind(scorer)
    return kind is not None and kind.pairwise


def needs_reference(scorer: Any) -> bool:
    """The scorer, or any member of an ensemble scorer, scores against a reference answer (POLAR)."""
    parts = [scorer, *getattr(scorer, "members", ())]
    return any(k is not None and k.needs_reference for k in map(scorer_kind, parts))
