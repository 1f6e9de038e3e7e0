"""One metric logger for every loop: stdout, JSONL and TensorBoard, rank 0 only.

Metric names are slash-namespaced (``loss/total``, ``rewards/margins``, ``perf/tokens_per_s``).
Loops hand a dict of floats once per optimizer step; the logger writes a JSONL line, a TensorBoard
scalar per name and (every ``print_every`` steps) a compact stdout line. Progress bars come from
:func:`progress`, silent on ranks other than 0.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping


def is_main_process() -> bool:
    """True on global rank 0 (or when not launched distributed)."""
    return int(os.environ.get("RANK", "0")) == 0


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
             disable: bool | None = None, **kwargs: Any):
    """A tqdm progress bar shown on rank 0 only (and only when stderr is a terminal or forced)."""
    from tqdm.auto import tqdm

    if disable is None:
        disable = not is_main_process() or os.environ.get("PREFOPT_NO_PROGRESS") == "1"
    return tqdm(iterable, total=total, desc=desc, disable=disable, dynamic_ncols=True,
                file=sys.stderr, **kwargs)


def _to_float(value: Any) -> float:
    if hasattr(value, "item"):
        value = value.detach().float().item() if hasattr(value, "detach") else value.item()
    return float(value)


class MetricLogger:
    """Writes metrics to ``run_dir/metrics.jsonl`` and TensorBoard (``run_dir/tb``) on rank 0.

    Args:
        run_dir: the run directory (created if missing).
        tensorboard: also write TensorBoard event files.
        print_every: print a stdout line every N logged steps (0 = never).
    """

    def __init__(self, run_dir: str | os.PathLike, *, tensorboard: bool = True, print_every: int = 1,
                 filename: str = "metrics.jsonl"):
        self.run_dir = Path(run_dir)
        self.enabled = is_main_process()
        self.print_every = print_every
        self._tb = None
        self._fh = None
        self._count = 0
        self._start = time.time()
        if not self.enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.run_dir / filename, "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.run_dir / "tb"))
            except ImportError:  # tensorboard not installed: JSONL still works
                self._tb = None

    def log(self, metrics: Mapping[str, Any], step: int) -> dict[str, float]:
        """Log one step of metrics; returns the float values written."""
        values = {k: _to_float(v) for k, v in metrics.items()}
        if not self.enabled:
            return values
        row = {"step": step, "time_s": round(time.time() - self._start, 3), **values}
        from prefopt.core.io import output_errors

        with output_errors(self._fh.name):
            self._fh.write(json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                       for k, v in row.items()}) + "\n")
            self._fh.flush()
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(k, v, step)
        self._count += 1
        if self.print_every and self._count % self.print_every == 0:
            shown = " ".join(f"{k}={v:.4g}" for k, v in values.items() if not k.startswith("perf/"))
            print(f"step {step}: {shown}", file=sys.stderr, flush=True)
        return values

    def rewind(self, step: int) -> int:
        """Drop logged rows after ``step`` (call on resume with the checkpoint's step, or -1 for a fresh
        start) so the file never repeats steps; returns the number of rows dropped."""
        if not self.enabled or self._fh is None:
            return 0
        from prefopt.core.io import atomic_write_text

        self._fh.close()
        path = Path(self._fh.name)
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        kept = []
        for ln in lines:
            try:
                row_step = json.loads(ln).get("step", 0)
            except json.JSONDecodeError:  # a torn last line from a killed run
                continue
            if isinstance(row_step, (int, float)) and row_step <= step:
                kept.append(ln)
        if len(kept) != len(lines):
            atomic_write_text(path, "".join(ln + "\n" for ln in kept))
        self._fh = open(path, "a", encoding="utf-8")
        return len(lines) - len(kept)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> "MetricLogger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a ``metrics.jsonl`` file back (for reports and plots)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
