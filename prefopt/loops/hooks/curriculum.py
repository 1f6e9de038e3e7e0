"""Curry-DPO's iterative mode (Pattnaik et al. 2024, Curry-DPO: curriculum learning with ranked preferences).

The data plan (:func:`prefopt.loops.offline_data.make_plan`) orders the pairs by ``meta.stage``; with
``curriculum: iterative`` the policy at the end of stage s becomes the frozen reference of stage s+1
(:func:`prefopt.loops.reference.refresh_reference`) and the optimizer restarts with a schedule over
the stage's steps. ``ordered`` / ``shuffled`` keep one reference and need no hook.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from prefopt.core.checkpoint import CheckpointError
from prefopt.core.errors import ConfigError
from prefopt.core.registry import OFFLINE_HOOKS
from prefopt.loops.hooks.base import OfflineHook
from prefopt.loops.reference import refresh_reference


class StageReference(OfflineHook):
    """Between stages: the trained policy becomes the next stage's reference; fresh optimizer."""

    new_optimizer_each_stage = True

    def __init__(self, lora: Any):
        self.lora = lora

    def check(self, backend: Any) -> None:
        if getattr(backend, "zero_stage", 0) == 3:
            raise ConfigError("Curry-DPO iterative copies the policy into the next stage's reference, which "
                              "ZeRO-3 partitions; use backend.zero_stage=2 or curriculum=ordered")

    def on_stage_start(self, ctx: Any, model: torch.nn.Module, backend: Any) -> torch.nn.Module:
        model, ctx.reference = refresh_reference(model, ctx.reference, self.lora)
        ctx.reference.to(backend.device)
        return model

    def load_state(self, ctx: Any, state: dict[str, Any], ckpt: Path) -> None:
        if state["stage_index"] > 0:
            raise CheckpointError(f"{ckpt}: resuming Curry-DPO iterative inside stage {state['stage_index'] + 1} "
                                  "is not supported (the stage's reference is not in the checkpoint); restart "
                                  "the run or use curriculum=ordered")


OFFLINE_HOOKS.register("stage_reference",
                       lambda cfg, spec: StageReference(cfg.model.lora) if cfg.curriculum == "iterative" else None)
