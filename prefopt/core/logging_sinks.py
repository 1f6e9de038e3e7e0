"""Metric sinks behind ``run.report_to``: TensorBoard (``torch.utils.tensorboard``) and W&B (``wandb``).

Each sink is ``log(values, step)`` + ``close()``; :data:`SINKS` maps the ``report_to`` names to their
factories. Third-party packages are imported only when their sink is asked for.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping

from prefopt.core.errors import ConfigError


class TensorBoardSink:
    """Scalars into ``run_dir/tb`` (one event file per run)."""

    def __init__(self, run_dir: Path, config: Mapping[str, Any]):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ConfigError("run.report_to has 'tensorboard' but the tensorboard package is not "
                              "installed (pip install tensorboard)") from exc
        self._writer = SummaryWriter(str(run_dir / "tb"))

    def log(self, values: Mapping[str, float], step: int) -> None:
        for k, v in values.items():
            self._writer.add_scalar(k, v, step)

    def close(self) -> None:
        self._writer.close()


class WandbSink:
    """One W&B run per prefopt run: project ``$WANDB_PROJECT`` (default ``prefopt``), name = folder name,
    files under ``run_dir/wandb``. ``WANDB_MODE=offline`` writes locally only (``wandb sync`` later)."""

    def __init__(self, run_dir: Path, config: Mapping[str, Any]):
        try:
            import wandb
        except ImportError as exc:
            raise ConfigError("run.report_to has 'wandb' but the wandb package is not installed "
                              "(pip install wandb)") from exc
        self._run = wandb.init(project=os.environ.get("WANDB_PROJECT", "prefopt"), name=run_dir.name,
                               dir=str(run_dir), config=dict(config), reinit="create_new")

    def log(self, values: Mapping[str, float], step: int) -> None:
        self._run.log(dict(values), step=step)

    def close(self) -> None:
        self._run.finish()


SINKS: dict[str, Callable[[Path, Mapping[str, Any]], Any]] = {"tensorboard": TensorBoardSink,
                                                              "wandb": WandbSink}


def open_sinks(names: tuple[str, ...], run_dir: Path, config: Mapping[str, Any]) -> list:
    """Open one sink per ``report_to`` name (unknown names -> ConfigError listing the known ones)."""
    unknown = [n for n in names if n not in SINKS]
    if unknown:
        raise ConfigError(f"run.report_to: unknown {unknown}; choose from {sorted(SINKS)}")
    return [SINKS[n](run_dir, config) for n in dict.fromkeys(names)]
