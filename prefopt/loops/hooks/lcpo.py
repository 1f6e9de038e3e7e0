"""LCPO / RE-PO loop state (arXiv 2509.24159): per-annotator label reliability ``eta``.

The loss (:func:`prefopt.losses.lcpo.lcpo`) reads ``eta`` and each pair's annotator id and returns the
E-step confidences ``aux["w"]``; after each optimizer step ``eta_k`` moves by an EMA towards the mean
``w`` of annotator k's pairs in that step (summed over micro-batches and processes), see
:meth:`prefopt.losses.lcpo.LCPOState.update`. ``eta`` is logged (``lcpo/eta_k``), checkpointed
(``lcpo_eta``) and reported in ``summary.json``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from prefopt.core.checkpoint import CheckpointError
from prefopt.core.errors import ConfigError
from prefopt.core.registry import OFFLINE_HOOKS
from prefopt.loops.hooks.base import OfflineHook
from prefopt.losses.lcpo import LCPOState


class LCPOEta(OfflineHook):
    """Feeds ``eta`` to the loss and updates it from the confidences of each optimizer step."""

    def __init__(self, hparams: Any):
        self.state = LCPOState.from_hparams(hparams)
        self._sums: Tensor | None = None  # per-annotator sum of w / count over this step's micro-batches
        self._counts: Tensor | None = None

    def loss_inputs(self, items: list) -> dict[str, Tensor]:
        k = self.state.eta.numel()
        for it in items:
            if it.annotator >= k:
                raise ConfigError(f"training example #{it.index} has meta.annotator_id {it.annotator}, but "
                                  f"loss.num_annotators is {k} (ids run 0..{k - 1}); raise "
                                  "loss.num_annotators or fix the record's meta.annotator_id")
        return {"eta": self.state.eta,
                "annotator_id": torch.tensor([it.annotator for it in items], dtype=torch.long)}

    def after_micro_step(self, out: Any, items: list) -> None:
        sums, counts = LCPOState.batch_stats(out.aux["w"], out.aux["annotator_id"], self.state.eta.numel())
        self._sums = sums if self._sums is None else self._sums + sums
        self._counts = counts if self._counts is None else self._counts + counts

    def after_optimizer_step(self, ctx: Any, model: Any, backend: Any, step: int) -> None:
        if self._sums is None:  # every micro-batch of the step was skipped (non-finite loss)
            return
        sums, counts = backend.all_reduce_sum(self._sums), backend.all_reduce_sum(self._counts)
        self._sums = self._counts = None
        self.state.update(sums=sums, counts=counts)

    def metrics(self, step: int) -> dict[str, float]:
        return {f"lcpo/eta_{k}": float(v) for k, v in enumerate(self.state.eta)}

    def state_dict(self) -> dict[str, Any]:
        return {"lcpo_eta": self.state.eta.tolist()}

    def load_state(self, ctx: Any, state: dict[str, Any], ckpt: Path) -> None:
        if "lcpo_eta" not in state:
            raise CheckpointError(f"{ckpt}: an LCPO run's checkpoint must hold lcpo_eta (saved by another "
                                  "algorithm?); restart the run in a new output_dir")
        self.state.eta = torch.tensor(state["lcpo_eta"], dtype=torch.float32)

    def summary(self, step: int) -> dict[str, Any]:
        return self.state_dict()


OFFLINE_HOOKS.register("lcpo_eta", lambda cfg, spec: LCPOEta(spec.build_hparams(cfg.loss)))
