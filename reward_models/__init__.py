"""Reward models: BT, GPM and POLAR heads on transformers backbones, ensembles, scorers, POLAR data.

Importing this package registers the RM losses (``RM_LOSSES``: bt, listwise_bt, plackett_luce, gpm,
polar) and the RM kinds (``RM_KINDS``: bt, gpm, polar, ensemble). It imports torch but never
transformers at module level; heavy modules load on first attribute access.
"""
from __future__ import annotations

import importlib
from typing import Any

from reward_models import losses  # noqa: F401  (registers RM_LOSSES)
from reward_models.kinds import RMKind  # registers RM_KINDS (the kind specs: build, batch loss, data)

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
