"""Shared config builder for the online-loop tests (imported by test_online*.py)."""
from __future__ import annotations

from pathlib import Path

SHORT = {"functions": [{"name": "max_length", "kwargs": {"max_tokens": 4}}], "temperature": 0.25}
BASE = {"prompts": {"kind": "arithmetic", "n": 8, "n_eval": 2}, "reward": SHORT, "rounds": 2,
        "prompts_per_round": 2, "num_generations": 4, "max_new_tokens": 8}


def make_cfg(model_dir: Path, out, algorithm: str, loss: dict | None = None, **online):
    """A ``TrainConfig`` for ``algorithm`` on ``model_dir`` (reward: at most 4 tokens, 2 rounds)."""
    from prefopt.configs import TrainConfig
    from prefopt.core.config import from_dict

    return from_dict(TrainConfig, {
        "algorithm": algorithm, "loss": loss or {}, "model": {"name": str(model_dir)},
        "optim": {"lr": 1e-3, "warmup_ratio": 0.0, "scheduler": "constant"},
        "online": {**BASE, **online},
        "run": {"output_dir": str(out), "report_to": [], "log_every": 1, "seed": 0}})
