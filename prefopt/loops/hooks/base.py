"""The offline-loop hook interface: one object per algorithm extra, every callback optional.

The loop (:func:`prefopt.loops.offline.run_offline`) and the micro-batch step
(:func:`prefopt.loops.offline_step.pairwise_loss`) call the active hooks' callbacks in order and never
ask which algorithm runs. A hook keeps its own state (e.g. an EM estimate, a mask head, a step count)
and saves it in checkpoints through :meth:`OfflineHook.state_dict` / :meth:`OfflineHook.load_state`,
so a resumed run reproduces an uninterrupted one.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import Tensor

if TYPE_CHECKING:
    from prefopt.loops.offline_step import StepContext, StepInputs


class OfflineHook:
    """Base of every offline-loop hook: each callback does nothing here; a hook overrides what it needs.

    Attributes:
        forward: ``forward(ctx, policy, items) -> StepInputs`` when the hook builds the pairwise loss
            inputs itself (its own forward passes); None = the step's sequence log-probs.
        new_optimizer_each_stage: the optimizer restarts at every data stage, its schedule spanning the
            stage's steps (:meth:`on_stage_start` runs first).
    """

    forward: Callable[..., StepInputs] | None = None
    new_optimizer_each_stage: bool = False

    def check(self, backend: Any) -> None:
        """Reject settings that conflict with the backend (called before the model is loaded)."""

    def on_start(self, ctx: StepContext, model: torch.nn.Module, backend: Any) -> None:
        """Model, data and reference are ready; the optimizer does not exist yet."""

    def optimizer_groups(self) -> list[dict[str, Any]]:
        """Extra optimizer parameter groups (trained alongside the policy)."""
        return []

    def loss_inputs(self, items: list) -> dict[str, Tensor]:
        """Extra named loss inputs for a pairwise micro-batch of ``items``."""
        return {}

    def after_micro_step(self, out: Any, items: list) -> None:
        """A micro-batch's finite loss was back-propagated (``out``: its :class:`LossOutput`)."""

    def after_optimizer_step(self, ctx: StepContext, model: torch.nn.Module, backend: Any, step: int) -> None:
        """Optimizer step ``step`` (1-based) was applied; a collective under several processes."""

    def on_stage_start(self, ctx: StepContext, model: torch.nn.Module, backend: Any) -> torch.nn.Module:
        """A new data stage begins (only with ``new_optimizer_each_stage``); returns the policy to train."""
        return model

    def metrics(self, step: int) -> dict[str, float]:
        """Values logged with optimizer step ``step``."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state stored in each checkpoint's ``state.json`` (keys unique across hooks)."""
        return {}

    def checkpoint_tensors(self, ctx: StepContext) -> dict[str, Tensor]:
        """Tensors stored in each checkpoint's ``extra.safetensors`` (names unique across hooks)."""
        return {}

    def load_state(self, ctx: StepContext, state: dict[str, Any], ckpt: Path) -> None:
        """Restore from checkpoint ``ckpt`` (``state``: its ``state.json``, with ``step`` and ``stage_index``)."""

    def summary(self, step: int) -> dict[str, Any]:
        """Entries for the run's ``summary.json`` after ``step`` optimizer steps."""
        return {}
