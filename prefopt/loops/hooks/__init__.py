"""Offline-loop hooks: the algorithm extras, kept out of the generic loop and step.

An algorithm's registered spec names the hooks it always uses (``AlgorithmSpec.hooks``, e.g. LCPO's
noise-rate state); :data:`CONFIG_HOOKS` are built for every algorithm and act on a config setting
(TR-DPO's ``reference.sync_every``). Each name is a factory in
:data:`prefopt.core.registry.OFFLINE_HOOKS`: ``factory(cfg, spec) -> OfflineHook | None`` (None: not
active for this config).

* ``lcpo_eta`` (:mod:`.lcpo`): LCPO / RE-PO per-annotator reliability, its EMA update and checkpoint.
* ``sparsepo_masks`` (:mod:`.sparsepo`): SparsePO's token masks, KL and learned mask head.
* ``stage_reference`` (:mod:`.curriculum`): Curry-DPO iterative, the policy becomes each stage's reference.
* ``reference_sync`` (:mod:`.reference_sync`): TR-DPO soft reference updates.
"""
from __future__ import annotations

from typing import Any

from prefopt.core.registry import OFFLINE_HOOKS
from prefopt.loops.hooks import curriculum, lcpo, reference_sync, sparsepo  # noqa: F401  (registration)
from prefopt.loops.hooks.base import OfflineHook

__all__ = ["CONFIG_HOOKS", "OfflineHook", "offline_hooks"]

# Hooks built for every offline algorithm (each returns None / does nothing while its setting is off).
CONFIG_HOOKS: tuple[str, ...] = ("reference_sync",)


def offline_hooks(cfg: Any, spec: Any) -> list[OfflineHook]:
    """The active hooks of an offline run: the spec's, then the config-activated ones, in that order."""
    hooks = [OFFLINE_HOOKS.get(name)(cfg, spec) for name in (*spec.hooks, *CONFIG_HOOKS)]
    return [h for h in hooks if h is not None]
