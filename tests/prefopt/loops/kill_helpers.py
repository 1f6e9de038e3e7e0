"""Shared by the SIGKILL resume tests: start ``prefopt train CFG`` in a subprocess and kill it with
SIGKILL once its ``metrics.jsonl`` has logged a given optimizer step."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from prefopt.core.logging import read_metrics


def train_rows(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [r for r in read_metrics(path) if "loss" in r] if path.exists() else []


def train_then_sigkill(cfg_path: Path, run_dir: Path, at_step: int, timeout: float = 300.0) -> None:
    """Run ``prefopt train cfg_path``; SIGKILL it when ``run_dir`` has logged step ``>= at_step``."""
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "prefopt.cli", "train", str(cfg_path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        rows = train_rows(run_dir)
        if rows and rows[-1]["step"] >= at_step:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
