"""Pieces both loops share: run set-up, seeding, autocast, metric accumulation, numeric guard."""
from __future__ import annotations

import contextlib
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from prefopt.core.config import save_resolved
from prefopt.core.errors import NumericError
from prefopt.core.logging import MetricLogger


def seed_everything(seed: int) -> None:
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast for forward passes on CPU or GPU; a no-op for fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


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


@dataclass
class MetricAccumulator:
    """Sums metric values with weights over the micro-batches of one optimizer step."""

    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, float] = field(default_factory=dict)

    def add(self, metrics: dict[str, Any], weight: float = 1.0) -> None:
        for k, v in metrics.items():
            value = float(v.detach().float().mean()) if torch.is_tensor(v) else float(v)
            self.sums[k] = self.sums.get(k, 0.0) + value * weight
            self.counts[k] = self.counts.get(k, 0.0) + weight

    def reduce(self, backend: Any) -> dict[str, float]:
        out = backend.reduce_metrics(self.sums, self.counts)
        self.sums, self.counts = {}, {}
        return out


class NonFiniteGuard:
    """Stops (default) or skips-and-counts when a loss is NaN/inf."""

    def __init__(self, mode: str = "stop"):
        self.mode = mode
        self.skipped = 0

    def ok(self, loss: torch.Tensor, step: int) -> bool:
        value = float(loss.detach())
        if math.isfinite(value):
            return True
        if self.mode == "skip":
            self.skipped += 1
            return False
        raise NumericError(f"loss is {value} at optimizer step {step}; training stopped. The last good "
                           "checkpoint (if any) is kept; set run.on_nonfinite=skip to skip such batches")

    def grad_ok(self, stats: dict[str, float], step: int) -> bool:
        """Check the step's gradient norm (the backend never applies a non-finite gradient)."""
        norm = stats.get("optim/grad_norm", 0.0)
        if math.isfinite(norm):
            return True
        if self.mode == "skip":
            self.skipped += 1
            return False
        raise NumericError(f"gradient norm is {norm} at optimizer step {step}; training stopped before "
                           "applying it. The last good checkpoint (if any) is kept; set "
                           "run.on_nonfinite=skip to skip such steps")


def batched(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]
