"""Offline training data: built records -> tokenised items -> per-rank micro-batches.

Items keep what the loop needs beyond token ids: curriculum stage (``meta.stage``) and annotator id
(``meta.annotator_id``, for LCPO). Order is a seeded shuffle per epoch (or stage order for
curriculum data), so a resumed run replays exactly the same micro-batches.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_pipelines.errors import Issues
from data_pipelines.sources import load_examples
from data_pipelines.tokenize import (
    LengthPolicy,
    TokenizeStats,
    describe_counts,
    tokenize_pairwise,
    tokenize_ranked,
)
from prefopt.core.errors import DataError
from prefopt.core.loop import epoch_order, micro_batches, repeat_epochs, subset, train_eval_paths, whole_steps

__all__ = ["Item", "Plan", "STAGE_METRIC", "make_plan", "tokenize_items", "train_eval_paths", "epoch_order",
           "micro_batches"]

# The data stage (``meta.stage``) of each optimizer step, logged by every offline run (1 without stages);
# the name comes from the curriculum method that introduced stages (Curry-DPO).
STAGE_METRIC = "curry/stage"


@dataclass(frozen=True)
class Item:
    """One tokenised training unit (a pair, or a ranked list) with loop metadata."""

    tok: Any  # TokenizedPair | TokenizedList
    index: int
    stage: int = 1
    annotator: int = 0


def tokenize_items(path: Path, schema: str, tokenizer: Any, policy: LengthPolicy, limit: int | None,
                   on_error: str = "raise", seed: int | None = None) -> tuple[list[Item], dict[str, Any]]:
    """Load ``path`` as ``schema`` records (validated like ``data build``: file, line and field in every
    error, ``on_error`` policy), keep ``limit`` of them (:func:`prefopt.core.loop.subset`: seeded random
    subset with ``seed``, else the first ``limit``; 0 = none) and tokenise them (keeping stage/annotator
    metadata)."""
    if limit == 0:
        return [], {}
    issues = Issues(on_error)
    records = subset(load_examples(path, schema, issues, for_training=True), limit, seed)
    stats = TokenizeStats()
    items = []
    for rec in records:
        if schema == "pairwise":
            tok = tokenize_pairwise(rec, tokenizer, policy, stats)
        else:
            tok = tokenize_ranked(rec, tokenizer, policy, stats)
        if tok is not None:
            items.append(Item(tok, len(items), int(rec.meta.get("stage", 1)),
                              int(rec.meta.get("annotator_id", 0))))
    counts = {"records": len(records), "skipped_records": issues.as_dict(), **stats.as_dict()}
    if not items:
        raise DataError(f"no usable examples left ({describe_counts(counts)})", file=str(path))
    return items, counts


@dataclass
class Plan:
    """Micro-batches per stage and the optimizer-step budget (per stage and in total)."""

    stages: list[int]
    batches: dict[int, list[list[Any]]]
    total_steps: int
    stage_steps: dict[int, int] = field(default_factory=dict)


def make_plan(cfg: Any, items: list, spec: Any, rank: int, world: int) -> Plan:
    """Order the data into this rank's micro-batches, stage by stage.

    * Every epoch is a seeded shuffle of the stage's pool (no shuffle across curriculum stages;
      ``curriculum: ordered`` keeps the file order inside a stage too, ``shuffled`` mixes all stages).
    * Fractional ``epochs`` (e.g. 1.5) run ``ceil(epochs)`` shuffled epochs cut to
      ``round(epochs * micro-batches per epoch)``. ``max_steps`` > 0 overrides ``epochs`` for a
      single-stage run (epochs repeat as needed) and caps the total for a curriculum.
    * Each stage holds a whole number of optimizer steps (``grad_accum`` micro-batches), so an
      accumulation window never spans a stage boundary (iterative Curry-DPO swaps the reference there).
    """
    accum = cfg.optim.grad_accum
    curriculum = spec.curriculum and cfg.curriculum != "shuffled"
    stages = sorted({it.stage for it in items}) if curriculum else [1]
    batches: dict[int, list] = {}
    for s in stages:
        pool = [it for it in items if not curriculum or it.stage == s]
        shuffle = cfg.data.shuffle and not (curriculum and cfg.curriculum == "ordered")
        per_epoch = len(micro_batches(pool, cfg.batch_size, rank, world))
        if per_epoch == 0:
            continue
        if cfg.max_steps and len(stages) == 1:
            want = cfg.max_steps * accum  # max_steps overrides epochs (data repeats as needed)
        else:
            want = round(max(cfg.epochs, 0.0) * per_epoch)
        batches[s] = repeat_epochs(pool, whole_steps(want, accum), batch_size=cfg.batch_size, rank=rank,
                                   world=world, seed=cfg.run.seed, shuffle=shuffle)
    stages = [s for s in stages if s in batches]
    if not stages:
        raise DataError(f"not enough examples for one batch: {len(items)} usable item(s), batch_size "
                        f"{cfg.batch_size} x {world} process(es)")
    stage_steps = {s: len(batches[s]) // accum for s in stages}
    steps = sum(stage_steps.values())
    if cfg.max_steps:
        steps = min(steps, cfg.max_steps)
    return Plan(stages, batches, steps, stage_steps)
