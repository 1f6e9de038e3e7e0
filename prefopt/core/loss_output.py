"""``LossOutput``: what every loss function returns (policy losses in ``prefopt.losses`` and reward-model
losses in ``reward_models.losses``). Lives in ``prefopt.core`` so both packages share one definition
under the import rule ``data_pipelines -> reward_models -> prefopt`` (``prefopt.core`` open to all)."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

__all__ = ["LossOutput"]


@dataclass(frozen=True)
class LossOutput:
    """Result of a loss function.

    Attributes:
        loss: per-example loss, shape (B,); the trainer takes the mean.
        metrics: ``{name: detached tensor}`` to log (TRL names); scalars are batch means.
        aux: detached per-example tensors the trainer needs beyond logging (e.g. LCPO's ``w`` for the
            eta EMA); not logged.
    """

    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)
    aux: dict[str, Tensor] = field(default_factory=dict)
