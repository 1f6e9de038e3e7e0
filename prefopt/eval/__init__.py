"""Evaluation metrics and helpers: RewardBench v1 scoring, AlpacaEval metrics, plots, resumable results.

Kept light on purpose: submodules are imported explicitly (``from prefopt.eval import rewardbench_metrics``);
matplotlib, pandas and the optional ``alpaca_eval`` package are only imported inside the functions that
need them.
"""
from __future__ import annotations

from prefopt.eval import judges  # noqa: E402,F401  (registers the rm/lm/http judges; torch-free import)

__all__ = ["alpacaeval_metrics", "judges", "plots", "resumable", "rewardbench_metrics"]
