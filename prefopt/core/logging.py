"""One metric logger for every loop: JSONL plus TensorBoard / W&B (``run.report_to``), rank 0 only.

Metric names are slash-namespaced (``loss/total``, ``rewards/margins``, ``perf/tokens_per_s``) in
``metrics.jsonl``; TensorBoard and W&B get TRL's names where TRL has one (:mod:`prefopt.core.metric_names`,
mapping written to ``metric_names.json``). Loops hand a dict of floats once per optimizer step. Progress
bars come from :func:`progress` (silent on ranks other than 0) and carry :func:`short_postfix`.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping


class _UnusedDeepSpeedFilter(logging.Filter):
    """Drops DeepSpeed's "Setting accelerator to CPU" auto-detect warning (see :func:`quiet_unused_deepspeed`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Setting accelerator to CPU" not in record.getMessage()


_DS_FILTER = _UnusedDeepSpeedFilter()


def quiet_unused_deepspeed(quiet: bool = True) -> None:
    """Silence (``quiet``) or restore DeepSpeed's accelerator auto-detect warning.

    With ``deepspeed`` installed, ``transformers``' ``save_pretrained`` imports it (through accelerate's
    ``extract_model_from_parallel``) even in a run that never uses it, and the import logs "Setting
    accelerator to CPU" on a machine without a GPU. The CLI installs this filter on the ``DeepSpeed``
    logger at start; :class:`prefopt.core.backend.DeepSpeedBackend` (``prefopt train`` with DeepSpeed)
    removes it before it imports DeepSpeed for real. The filter drops only that one message.
    """
    ds_logger = logging.getLogger("DeepSpeed")
    (ds_logger.addFilter if quiet else ds_logger.removeFilter)(_DS_FILTER)


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


def short_postfix(values: Mapping[str, float], limit: int = 3) -> str:
    """A few key metrics for a progress bar (``loss=0.52 acc=0.75 gnorm=1.3``); full ones go to the files."""
    shown = []
    for keys, label in _POSTFIX:
        key = next((k for k in keys if k in values), None)
        if key is not None and len(shown) < limit:
            shown.append(f"{label}={values[key]:.3g}")
    return " ".join(shown)


_POSTFIX = ((("loss/total", "loss"), "loss"), (("rewards/accuracies", "accuracy", "eval/accuracy"), "acc"),
            (("reward", "eval/reward"), "reward"), (("optim/grad_norm",), "gnorm"))


class MetricLogger:
    """Writes metrics to ``run_dir/metrics.jsonl`` and the ``report_to`` sinks on rank 0.

    Args:
        run_dir: the run directory (created if missing).
        report_to: sinks besides the JSONL file: ``tensorboard`` (``run_dir/tb``), ``wandb`` (the ``wandb``
            package; ``WANDB_MODE=offline`` keeps it off the network). TRL's convention.
        print_every: print every N logged steps a short line of key metrics to stderr (0 = never; the
            loops show them as the progress-bar postfix instead).
        names: ``prefopt name -> logged name`` for the sinks (see :mod:`prefopt.core.metric_names`);
            the mapping used is written to ``run_dir/metric_names.json``.
        config: the resolved config (a dict) handed to W&B.
    """

    def __init__(self, run_dir: str | os.PathLike, *, report_to: Iterable[str] = ("tensorboard",),
                 print_every: int = 0, filename: str = "metrics.jsonl", names: Mapping[str, str] | None = None,
                 config: Mapping[str, Any] | None = None):
        from prefopt.core.logging_sinks import open_sinks

        self.run_dir = Path(run_dir)
        self.enabled = is_main_process()
        self.print_every = print_every
        self._names = dict(names or {})
        self._used: dict[str, str] = {}
        self._sinks: list = []
        self._fh = None
        self._count = 0
        self._start = time.time()
        if not self.enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.run_dir / filename, "a", encoding="utf-8")
        self._sinks = open_sinks(tuple(report_to), self.run_dir, dict(config or {}))

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
        renamed = {self._rename(k): v for k, v in values.items()}
        for sink in self._sinks:
            sink.log(renamed, step)
        self._count += 1
        if self.print_every and self._count % self.print_every == 0:
            print(f"step {step}: {short_postfix(values)}", file=sys.stderr, flush=True)
        return values

    def _rename(self, key: str) -> str:
        if key not in self._used:
            self._used[key] = self._names.get(key, key)
            from prefopt.core.io import atomic_write_json
            from prefopt.core.metric_names import METRIC_NAMES_FILE

            atomic_write_json(self.run_dir / METRIC_NAMES_FILE, dict(sorted(self._used.items())))
        return self._used[key]

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
        for sink in self._sinks:
            sink.close()
        self._sinks = []

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
