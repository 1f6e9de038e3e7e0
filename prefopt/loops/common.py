"""Pieces both policy loops share: run set-up and batching; seeding, autocast, metric accumulation and the
numeric guard come from :mod:`prefopt.core.loop` (re-exported here)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from prefopt.core.config import save_resolved
from prefopt.core.logging import MetricLogger
from prefopt.core.loop import MetricAccumulator, NonFiniteGuard, autocast, seed_everything

__all__ = ["start_run", "batched", "MetricAccumulator", "NonFiniteGuard", "autocast", "seed_everything"]


def start_run(cfg: Any, is_main: bool = True) -> tuple[Path, MetricLogger]:
    """Create the run directory, write the resolved config, open the metric logger."""
    run_dir = Path(cfg.run.output_dir)
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_resolved(cfg, run_dir)
    from prefopt.core.config import to_dict
    from prefopt.core.metric_names import TABLES

    table = TABLES["online" if getattr(cfg, "online", None) is not None else "policy"]
    logger = MetricLogger(run_dir, report_to=cfg.run.report_to, names=table, config=to_dict(cfg))
    return run_dir, logger


def batched(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]
