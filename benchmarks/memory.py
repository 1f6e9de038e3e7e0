"""Peak memory of one benchmark side, measured in a fresh process (see :mod:`benchmarks.common`'s method).

A thread samples the resident set size every 2 ms while the side runs its steps; the parent hands its
own freed heap back to the OS before it starts the probes, so that they do not compete with it.
"""
from __future__ import annotations

import ctypes
import gc
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import Side


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RSSSampler:
    """Samples this process's RSS every ``interval`` s in a thread; ``peak`` is the maximum seen."""

    def __init__(self, interval: float = 0.002):
        self.interval, self.peak, self._stop = interval, _rss_bytes(), threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> "RSSSampler":
        self._t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss_bytes())


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc ``malloc_trim``), so that a
    parent which has finished its timed steps does not hold gigabytes while its memory probes run."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def probe_memory(side: Side, steps: int = 2) -> dict[str, float]:
    """In-process part of the memory probe: baseline RSS now, peak RSS over ``steps`` steps."""
    base = _rss_bytes()
    with RSSSampler() as s:
        for i in range(steps):
            side.step(i)
    maxrss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"setup_rss_mb": base / 2**20, "peak_step_mb": (s.peak - base) / 2**20,
            "peak_total_mb": s.peak / 2**20, "ru_maxrss_mb": maxrss_kb / 1024}


def probe_tensor_memory(side: Side, steps: int = 1) -> dict[str, Any]:
    """:func:`probe_memory` with the step's tensors counted op by op (:class:`TensorMemory`): each phase's
    tensor peak (no allocator free lists or fragmentation), what is alive at it, and the resident peak.
    The backward through the decoder layers (any live module whose class name ends in ``DecoderLayer``)
    is its own phase."""
    from benchmarks.tensor_memory import TensorMemory

    layers = [o for o in gc.get_objects() if type(o).__name__.endswith("DecoderLayer")]  # any side's model
    with TensorMemory(split_at=layers) as mem:
        out: dict[str, Any] = probe_memory(side, steps)
    mb = 2**20
    return {**out, "tensor_peak_step_mb": mem.peak / mb, "tensor_peak_total_mb": out["setup_rss_mb"] + mem.peak / mb,
            "tensor_end_of_step_mb": mem.current / mb, "tensor_phases": mem.report()}


def run_probe_subprocess(bench: str, side: str, argv: list[str], timeout: float = 900) -> dict[str, Any]:
    """Run ``python -m benchmarks.cli _probe BENCH SIDE ARGV...`` in a fresh process; parse its JSON line.
    ``--tensor-memory`` in ``argv`` counts the step's tensors too (:func:`probe_tensor_memory`)."""
    cmd = [sys.executable, "-m", "benchmarks.cli", "_probe", bench, side, *argv]
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=str(root), env=env)
    except subprocess.TimeoutExpired:
        return {"error": "timeout"}
    malloc = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}  # glibc tunables change RSS
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("PROBE_JSON "):
            return {**json.loads(line[len("PROBE_JSON "):]), **({"malloc_env": malloc} if malloc else {})}
    return {"error": (proc.stderr or proc.stdout)[-2000:]}
