"""Training-loop machinery shared by every trainer (policy loops in ``prefopt.loops`` and reward-model
training in ``reward_models.train``): seeding, bf16 autocast, the weighted metric accumulator and the
non-finite guard, the train/eval data paths, the seeded epoch order and per-rank micro-batches. Lives in ``prefopt.core`` so that ``reward_models`` may use it (import rule:
``data_pipelines -> reward_models -> prefopt``, with ``prefopt.core`` open to all).
"""
from __future__ import annotations

import contextlib
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from prefopt.core.errors import DataError, NumericError

__all__ = ["seed_everything", "autocast", "MetricAccumulator", "NonFiniteGuard", "epoch_order", "micro_batches",
           "whole_steps", "repeat_epochs", "train_eval_paths", "subset"]


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (every process of a run calls it)."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast for forward passes on CPU or GPU; a no-op for fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


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


def epoch_order(items: list, epoch: int, seed: int, shuffle: bool) -> list:
    """Seeded order for one epoch (deterministic, identical on every rank)."""
    order = list(items)
    if shuffle:
        random.Random(seed * 1000003 + epoch).shuffle(order)
    return order


def micro_batches(order: list, batch_size: int, rank: int, world: int) -> list[list]:
    """Split an epoch into global batches of ``batch_size * world``; this rank takes its slice.

    The tail that cannot fill every rank's micro-batch is dropped so all ranks step together.
    """
    global_bs = batch_size * world
    n = len(order) // global_bs
    return [order[i * global_bs + rank * batch_size: i * global_bs + (rank + 1) * batch_size]
            for i in range(n)]


def whole_steps(micro: int, accum: int) -> int:
    """``micro`` micro-batches rounded down to whole optimizer steps of ``accum`` (at least one step)."""
    return max(accum, micro - micro % accum)


def repeat_epochs(pool: list, want: int, *, batch_size: int, rank: int, world: int, seed: int,
                  shuffle: bool) -> list[list]:
    """This rank's first ``want`` micro-batches over as many seeded epochs of ``pool`` as needed
    (epoch ``e`` is :func:`epoch_order` with ``e``, so a resumed run replays the same batches)."""
    seq: list = []
    epoch = 0
    while len(seq) < want:
        seq += micro_batches(epoch_order(pool, epoch, seed, shuffle), batch_size, rank, world)
        epoch += 1
    return seq[:want]


def train_eval_paths(path: str, eval_path: str | None) -> tuple[Path, Path | None]:
    """``(train file, eval file or None)`` from a built folder (``train.jsonl`` + optional ``test.jsonl``)
    or explicit files. An empty eval file means no held-out evaluation (None), for every trainer."""
    if not path:
        raise DataError("data.path is empty: point it at a folder from `prefopt data build` or a .jsonl")
    p = Path(path)
    train = p / "train.jsonl" if p.is_dir() else p
    if not train.is_file():
        raise DataError(f"training data not found: {path} (expected a .jsonl file or a folder with train.jsonl)")
    if eval_path:
        evalp: Path | None = Path(eval_path)
        if not evalp.is_file():
            raise DataError(f"eval data not found: {evalp}")
    else:
        evalp = p / "test.jsonl" if p.is_dir() and (p / "test.jsonl").is_file() else None
    if evalp is not None and evalp.stat().st_size == 0:
        evalp = None
    return train, evalp


def subset(records: list, limit: int | None, seed: int | None) -> list:
    """The records a ``data.max_*_examples`` limit keeps, for every trainer: all (``limit`` None or at
    least ``len(records)``), a seeded random subset in file order (``seed`` given: ``max_train_examples``
    with ``run.seed``), or the first ``limit`` (``seed`` None: ``max_eval_examples``)."""
    if limit is None or limit >= len(records):
        return records
    if seed is None:
        return records[:limit]
    keep = sorted(random.Random(seed).sample(range(len(records)), limit))
    return [records[i] for i in keep]
