"""Evaluation metrics and helpers: RewardBench v1 scoring, AlpacaEval metrics, plots, resumable results.

Kept light on purpose: submodules are imported explicitly (``from prefopt.eval import rewardbench_metrics``);
matplotlib, pandas and the optional ``alpaca_eval`` package are only imported inside the functions that
need them.
"""
from __future__ import annotations

__all__ = ["alpacaeval_metrics", "plots", "resumable", "rewardbench_metrics"]
