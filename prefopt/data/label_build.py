"""Last stage of ``prefopt data label``: ranked records -> the training files ``prefopt train`` reads.

The ``data build`` builders turn the ranked records into pairs (``ranked_to_pairs``: best_vs_worst,
all_pairs, adjacent, best_vs_rest; margin = score gap), Curry-DPO curricula, group sets, or keep them
ranked (``none``, for IRPO). Pairs whose margin is below ``output.min_margin`` are dropped and counted;
``split.test_fraction`` sends a share of the prompts (by prompt hash) to ``test.jsonl``.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from data_pipelines.build import apply_builder
from data_pipelines.schemas import PairwiseExample, RankedExample
from data_pipelines.splits import split_by_prompt
from prefopt.core.errors import DataError
from prefopt.core.io import atomic_write_text

__all__ = ["build_outputs", "filter_margin"]


def filter_margin(examples: list, min_margin: float, counts: Counter) -> list:
    """Drop pairs with ``margin < min_margin`` (counted as ``pair_margin_below_min``); others pass."""
    if min_margin <= 0:
        return examples
    kept = [ex for ex in examples if not (isinstance(ex, PairwiseExample) and (ex.margin or 0.0) < min_margin)]
    counts["pair_margin_below_min"] += len(examples) - len(kept)
    return kept


def _write(path: Path, examples: list) -> None:
    atomic_write_text(path, "".join(json.dumps(ex.to_record(), ensure_ascii=False) + "\n" for ex in examples))


def build_outputs(cfg: Any, ranked: list[RankedExample], out: Path, counts: Counter, stats: dict) -> list[str]:
    """Build, filter, split and write ``train.jsonl``/``test.jsonl``; returns the file names written.

    Raises:
        DataError: nothing is left to train on (the message gives the drop counts by reason); files
            from an earlier successful run are left as they were.
    """
    built = apply_builder(ranked, cfg.output.builder, counts)
    built = filter_margin(built, cfg.output.min_margin, counts)
    if not built:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(counts.items()) if v) or "no scored prompts"
        raise DataError(f"labelling produced no training records ({len(ranked)} ranked prompts; {reasons}); "
                        "lower output.min_margin, raise policy.num_samples or policy.temperature, or check "
                        "the scorer", file=str(out / "ranked.jsonl"))
    train, test = split_by_prompt(built, cfg.split.test_fraction, cfg.prompts.seed)
    _write(out / "train.jsonl", train)
    _write(out / "test.jsonl", test)
    margins = [ex.margin for ex in train if isinstance(ex, PairwiseExample) and ex.margin is not None]
    stats.update(train=len(train), test=len(test), ranked=len(ranked),
                 mean_margin=round(sum(margins) / len(margins), 6) if margins else None)
    return ["ranked.jsonl", "train.jsonl", "test.jsonl", "stats.json"]
