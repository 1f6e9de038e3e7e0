"""TR-DPO soft reference updates (Gorbatovski et al. 2024, "Learn Your Reference Model for Real Good
Alignment", arXiv 2404.09656).

With ``reference.sync_every > 0``, after every ``sync_every``-th optimizer step the frozen reference is
pulled towards the policy, ``ref <- a * policy + (1 - a) * ref`` (``a = reference.sync_alpha``;
:meth:`prefopt.loops.reference.Reference.soft_sync`). The synced reference is stored in each checkpoint
(``extra.safetensors``, names ``reference/...``) so a resume is exact; a checkpoint that holds one is
restored even when sync is now off (the run continues from the reference it had).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from prefopt.core.checkpoint import CheckpointError, load_extra_tensors
from prefopt.core.errors import ConfigError
from prefopt.core.registry import OFFLINE_HOOKS
from prefopt.loops.hooks.base import OfflineHook

REF_PREFIX = "reference/"


def check_reference_sync(cfg: Any, spec: Any, zero3: bool = False) -> None:
    """TR-DPO soft sync needs a separate, whole reference copy to update."""
    ref = cfg.reference
    if not ref.sync_every:
        return
    if not spec.needs_ref:
        raise ConfigError(f"reference.sync_every is set but {cfg.algorithm} is reference-free (no reference "
                          "to sync); set reference.sync_every=0")
    if ref.mode == "precompute":
        raise ConfigError("reference.sync_every (TR-DPO soft sync) changes the reference during training; "
                          "reference.mode=precompute caches it once - use reference.mode auto or copy")
    if ref.mode == "adapter_disabled" or cfg.model.lora is not None:
        raise ConfigError("reference.sync_every (TR-DPO soft sync) needs a separate frozen reference copy; "
                          "with LoRA the reference is the policy with adapters disabled (no copy to update) - "
                          "train without model.lora or set reference.sync_every=0")
    if zero3:
        raise ConfigError("reference.sync_every (TR-DPO soft sync) mixes the policy into the reference copy, "
                          "which ZeRO-3 partitions; use backend.zero_stage=2")


class ReferenceSync(OfflineHook):
    """Soft-syncs the frozen reference every ``sync_every`` steps; logs ``ref/syncs`` while sync is on."""

    def __init__(self, cfg: Any, spec: Any):
        self.cfg, self.spec = cfg, spec
        self.every, self.alpha = cfg.reference.sync_every, cfg.reference.sync_alpha

    def check(self, backend: Any) -> None:
        check_reference_sync(self.cfg, self.spec, getattr(backend, "zero_stage", 0) == 3)

    def after_optimizer_step(self, ctx: Any, model: Any, backend: Any, step: int) -> None:
        if self.every and step % self.every == 0:
            ctx.reference.soft_sync(model, self.alpha)

    def metrics(self, step: int) -> dict[str, float]:
        return {"ref/syncs": float(step // self.every)} if self.every else {}

    def summary(self, step: int) -> dict[str, Any]:
        return {"ref_syncs": step // self.every} if self.every else {}

    def checkpoint_tensors(self, ctx: Any) -> dict[str, Tensor]:
        if not self.every or ctx.reference is None:
            return {}
        return {REF_PREFIX + k: v for k, v in ctx.reference.state_tensors().items()}

    def load_state(self, ctx: Any, state: dict[str, Any], ckpt: Path) -> None:
        saved = {k[len(REF_PREFIX):]: v for k, v in load_extra_tensors(ckpt).items() if k.startswith(REF_PREFIX)}
        frozen = ctx.reference is not None and ctx.reference.frozen is not None
        if saved and frozen:
            try:
                ctx.reference.load_state_tensors(saved)
            except RuntimeError as exc:
                raise CheckpointError(f"{ckpt}: {exc}") from None
        elif self.every and frozen and state["step"] >= self.every:
            raise CheckpointError(f"{ckpt}: reference.sync_every={self.every} but the checkpoint (step "
                                  f"{state['step']}) holds no synced reference (saved with sync off?); restart "
                                  "the run or set reference.sync_every=0")


OFFLINE_HOOKS.register("reference_sync", ReferenceSync)
