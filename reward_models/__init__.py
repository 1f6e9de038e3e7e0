"""Reward models: BT, GPM and POLAR heads on transformers backbones, ensembles, scorers, POLAR data.

Importing this package registers the RM losses (``RM_LOSSES``: bt, listwise_bt, plackett_luce, gpm,
polar) and the RM kinds (``RM_KINDS``: bt, gpm, polar, ensemble). It imports torch but never
transformers at module level; heavy modules load on first attribute access.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from prefopt.core.registry import RM_KINDS
from reward_models import losses  # noqa: F401  (registers RM_LOSSES)


@dataclass(frozen=True)
class RMKind:
    """A registered reward-model kind.

    Attributes:
        name: registry key.
        loss: default ``RM_LOSSES`` name for training.
        pairwise: scores come from pairs (GPM) rather than one scalar per response.
        needs_reference: scoring requires a reference answer (POLAR).
        target: ``"module:attr"`` of the class that builds it (imported lazily by :meth:`resolve`).
    """

    name: str
    loss: str
    pairwise: bool
    needs_reference: bool
    target: str

    def resolve(self) -> Any:
        module, attr = self.target.split(":")
        return getattr(importlib.import_module(module), attr)


for _kind in (RMKind("bt", "bt", False, False, "reward_models.models:RewardModel"),
              RMKind("gpm", "gpm", True, False, "reward_models.models:RewardModel"),
              RMKind("polar", "polar", False, True, "reward_models.models:RewardModel"),
              RMKind("ensemble", "bt", False, False, "reward_models.ensemble:EnsembleRewardModel")):
    if _kind.name not in RM_KINDS:
        RM_KINDS.register(_kind.name, _kind)

_LAZY = {
    "RewardModel": "reward_models.models", "RewardConfig": "reward_models.models",
    "RewardOutput": "reward_models.models", "EnsembleRewardModel": "reward_models.ensemble",
    "SharedBackboneEnsemble": "reward_models.ensemble", "aggregate": "reward_models.ensemble",
    "RewardScorer": "reward_models.scorer", "ModelScorer": "reward_models.scorer",
    "EnsembleScorer": "reward_models.scorer", "LossOutput": "reward_models.losses",
}

__all__ = ["RMKind", "losses", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'reward_models' has no attribute {name!r}")
