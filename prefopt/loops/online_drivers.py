"""The registered online drivers: how an online algorithm turns prompts into optimizer steps.

``OnlineAlgorithmSpec.driver`` names an entry of ``ONLINE_DRIVERS``; the online loop
(:mod:`prefopt.loops.online`) asks the entry and never names a driver.

* Round drivers (``collect``): rollouts are drawn once per round into a
  :class:`~prefopt.loops.online_algos.Buffer`, then ``num_iterations`` passes of ``minibatches`` optimizer
  steps run over it: ``group`` (GRPO, GSPO, URPO, RLOO), ``p3o``, ``dno``.
* Step drivers (``update``, for specs with ``rollout_every_step``): rollouts are drawn between optimizer
  steps, one update per minibatch: ``egpo`` (the extragradient update), ``online_ipo``.

``needs_reference(hparams)`` says whether the loss needs π_ref at these hyper-parameters (GRPO without a
KL term, β = 0, and DNO without τ need none, so no reference copy is made).

Adding a driver is one :class:`OnlineDriver` registered here (its collector or update in its own module).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from prefopt.core.registry import registry
from prefopt.loops.online_algos import Buffer, collect_dno, collect_group, collect_p3o
from prefopt.loops.online_egpo import egpo_update, online_ipo_update

if TYPE_CHECKING:
    from data_pipelines.schemas import PromptExample
    from prefopt.loops.online import OnlineContext

__all__ = ["ONLINE_DRIVERS", "OnlineDriver", "Collector", "StepUpdate", "get_driver"]

ONLINE_DRIVERS = registry("online_driver")

StepResult = tuple[dict | None, dict]  # (optimizer stats, metrics) of one optimizer step
# (ctx, this process's prompts of the round, seed) -> the round's buffer.
Collector = Callable[["OnlineContext", Sequence["PromptExample"], int], Buffer]
# (ctx, prompts of one minibatch, seed, the loop's optimizer step on a buffer) -> that update's result.
StepUpdate = Callable[["OnlineContext", Sequence["PromptExample"], int, Callable[[Buffer], StepResult]], StepResult]


def _always(hparams: Any) -> bool:
    return True


@dataclass(frozen=True)
class OnlineDriver:
    """One driver: exactly one of ``collect`` (round driver) or ``update`` (step driver)."""

    collect: Collector | None = None
    update: StepUpdate | None = None
    needs_reference: Callable[[Any], bool] = _always

    def __post_init__(self) -> None:
        if (self.collect is None) == (self.update is None):
            raise ValueError("an online driver has exactly one of collect (per round) or update (per step)")


def get_driver(name: str) -> OnlineDriver:
    """The registered driver ``name`` (an unknown name fails listing the registered ones)."""
    return ONLINE_DRIVERS.get(name)


for _name, _driver in (
    ("group", OnlineDriver(collect=collect_group, needs_reference=lambda hp: bool(getattr(hp, "beta", 0.0)))),
    ("p3o", OnlineDriver(collect=collect_p3o)),
    ("dno", OnlineDriver(collect=collect_dno, needs_reference=lambda hp: bool(getattr(hp, "tau", 0.0)))),
    ("egpo", OnlineDriver(update=egpo_update)),
    ("online_ipo", OnlineDriver(update=online_ipo_update)),
):
    if _name not in ONLINE_DRIVERS:
        ONLINE_DRIVERS.register(_name, _driver)
