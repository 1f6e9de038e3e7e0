"""Builders: ranked records -> preference pairs (four strategies), Curry-DPO curricula, group sets.

Registered in :data:`prefopt.core.registry.DATASETS` under ``builder.ranked_to_pairs``,
``builder.curriculum`` and ``builder.group`` (adapters use plain names). Each builder is
``fn(examples, counts, **params) -> list`` where ``counts`` (a ``Counter``) receives
``pairs``, ``tie_pairs_dropped`` (gap-0 pairs) and ``prompts_without_pairs``.

Responses are ranked by score, descending, ties kept in input order (stable sort). Every pair has
``margin = score(chosen) - score(rejected) > 0``; pairs with gap 0 are dropped and counted.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from data_pipelines.schemas import GroupExample, PairwiseExample, RankedExample
from prefopt.core.errors import ConfigError
from prefopt.core.registry import DATASETS

STRATEGIES = ("all_pairs", "best_vs_worst", "adjacent", "best_vs_rest")


@dataclass(frozen=True)
class BuilderSpec:
    """A registered builder: ``fn(examples, counts, **params) -> list of examples``."""

    name: str
    fn: Callable[..., list]
    input: str
    output: str
    doc: str = ""
    kind: str = "builder"


def register_builder(name: str, input: str, output: str) -> Callable:
    """Decorator registering ``fn`` in ``DATASETS`` as ``builder.<name>``."""

    def deco(fn: Callable) -> Callable:
        DATASETS.register(f"builder.{name}", BuilderSpec(name, fn, input, output, (fn.__doc__ or "").strip()))
        return fn

    return deco


def rank_order(scores: Sequence[float]) -> list[int]:
    """Indices sorted by score, best first; equal scores keep their input order."""
    return sorted(range(len(scores)), key=lambda i: -scores[i])


def pair_positions(k: int, strategy: str) -> list[tuple[int, int]]:
    """Positions ``(a, b)`` (0-based, in rank order, ``a < b``) that ``strategy`` pairs among ``k`` responses.

    Counts before dropping ties: all_pairs k(k-1)/2, best_vs_worst 1, adjacent k-1, best_vs_rest k-1.
    """
    if strategy == "all_pairs":
        return [(a, b) for a in range(k) for b in range(a + 1, k)]
    if strategy == "best_vs_worst":
        return [(0, k - 1)] if k >= 2 else []
    if strategy == "adjacent":
        return [(a, a + 1) for a in range(k - 1)]
    if strategy == "best_vs_rest":
        return [(0, b) for b in range(1, k)]
    raise ConfigError(f"unknown pair strategy '{strategy}'; known: {', '.join(STRATEGIES)}")


def _require_ranked(ex: Any, builder: str) -> RankedExample:
    if not isinstance(ex, RankedExample):
        raise ConfigError(f"builder '{builder}' needs ranked records, got {type(ex).__name__} "
                          f"(source '{getattr(ex, 'source', '?')}')")
    return ex


def _pair(ex: RankedExample, i: int, j: int, **meta: Any) -> PairwiseExample:
    """Pair original responses ``i`` (chosen) and ``j`` (rejected) of ``ex``."""
    return PairwiseExample(prompt=ex.prompt, chosen=ex.responses[i], rejected=ex.responses[j],
                           margin=ex.scores[i] - ex.scores[j], id=f"{ex.id}#{i}>{j}", source=ex.source,
                           meta={**ex.meta, "chosen_score": ex.scores[i], "rejected_score": ex.scores[j], **meta})


def pairs_from_ranked(ex: RankedExample, strategy: str, counts: Counter) -> list[PairwiseExample]:
    """The pairs of one ranked record under ``strategy``, gap-0 pairs dropped and counted."""
    order = rank_order(ex.scores)
    out = []
    for a, b in pair_positions(len(order), strategy):
        i, j = order[a], order[b]
        if ex.scores[i] - ex.scores[j] <= 0:
            counts["tie_pairs_dropped"] += 1
            continue
        out.append(_pair(ex, i, j))
    counts["pairs"] += len(out)
    if not out:
        counts["prompts_without_pairs"] += 1
    return out


@register_builder("ranked_to_pairs", input="ranked", output="pairwise")
def ranked_to_pairs(examples: Iterable[Any], counts: Counter, strategy: str = "all_pairs") -> list:
    """Ranked records -> pairs: ``all_pairs``, ``best_vs_worst``, ``adjacent`` or ``best_vs_rest``."""
    pair_positions(2, strategy)  # validate the name even for empty input
    out: list[PairwiseExample] = []
    for ex in examples:
        out.extend(pairs_from_ranked(_require_ranked(ex, "ranked_to_pairs"), strategy, counts))
    return out


def local_stage(level: int, n_levels: int, stages: int) -> int:
    """Stage (1-based) of the ``level``-th largest distinct gap among ``n_levels`` of one prompt.

    ``stages == 0`` or ``n_levels <= stages``: consecutive stages 1, 2, ...; otherwise the levels are
    split into ``stages`` near-equal consecutive chunks (``floor(level * stages / n_levels) + 1``).
    """
    if stages <= 0 or n_levels <= stages:
        return level + 1
    return level * stages // n_levels + 1


def global_stage(gap: float, thresholds: Sequence[float]) -> int:
    """Stage from strictly descending gap thresholds: stage 1 = gap >= t1, stage 2 = gap >= t2, ... last = rest."""
    return 1 + sum(1 for t in thresholds if gap < t)


def curriculum_pairs(ex: RankedExample, counts: Counter, stages: int = 0,
                     thresholds: Sequence[float] | None = None) -> list[PairwiseExample]:
    """Curry-DPO pairs of one prompt: ``(R1, Rk)`` for k = K..2, gap-0 dropped, sorted by gap descending.

    ``meta["stage"]`` = the per-prompt stage (:func:`local_stage`; pairs with equal gaps share a stage)
    or, with ``thresholds``, the global gap bucket (:func:`global_stage`). ``meta["gap"]`` = margin.
    """
    order = rank_order(ex.scores)
    best, out = order[0], []
    for j in reversed(order[1:]):  # worst first = largest gap first
        if ex.scores[best] - ex.scores[j] <= 0:
            counts["tie_pairs_dropped"] += 1
            continue
        out.append((ex.scores[best] - ex.scores[j], j))
    out.sort(key=lambda t: -t[0])  # stable: equal gaps keep the worst-first order
    levels = sorted({gap for gap, _ in out}, reverse=True)
    pairs = []
    for gap, j in out:
        stage = (global_stage(gap, thresholds) if thresholds
                 else local_stage(levels.index(gap), len(levels), stages))
        pairs.append(_pair(ex, best, j, stage=stage, gap=gap))
    counts["pairs"] += len(pairs)
    if not pairs:
        counts["prompts_without_pairs"] += 1
    return pairs


def check_thresholds(thresholds: Sequence[float] | None) -> None:
    """Thresholds must be finite, positive and strictly descending."""
    if not thresholds:
        return
    if any(not math.isfinite(t) or t <= 0 for t in thresholds) or any(
            a <= b for a, b in zip(thresholds, thresholds[1:], strict=False)):
        raise ConfigError(f"curriculum thresholds must be positive and strictly descending, got {list(thresholds)}")


@register_builder("curriculum", input="ranked", output="pairwise")
def curriculum(examples: Iterable[Any], counts: Counter, stages: int = 0,
               thresholds: Sequence[float] | None = None, ordered: bool = True) -> list:
    """Curry-DPO curriculum (spec offline_losses §5): best-vs-k pairs staged easy (large gap) -> hard.

    Args:
        stages: maximum number of per-prompt stages S (0 = one stage per distinct gap).
        thresholds: global mode: descending gap thresholds instead of per-prompt stages.
        ordered: output all stage-1 pairs, then stage-2, ... (stable within a stage); else prompt order.
    """
    check_thresholds(thresholds)
    out: list[PairwiseExample] = []
    for ex in examples:
        out.extend(curriculum_pairs(_require_ranked(ex, "curriculum"), counts, stages, thresholds))
    if ordered:
        out.sort(key=lambda p: p.meta["stage"])
    for p in out:
        counts[f"stage_{p.meta['stage']}"] += 1
    return out


@register_builder("group", input="ranked", output="group")
def to_group(examples: Iterable[Any], counts: Counter) -> list:
    """Ranked records (responses + scores) -> GroupExample (rewards = scores); group records pass through."""
    out = []
    for ex in examples:
        if isinstance(ex, GroupExample):
            out.append(ex)
            continue
        ex = _require_ranked(ex, "group")
        out.append(GroupExample(prompt=ex.prompt, responses=list(ex.responses), rewards=list(ex.scores),
                                id=ex.id, source=ex.source, meta=dict(ex.meta)))
    counts["groups"] += len(out)
    return out


def get_builder(name: str) -> BuilderSpec:
    """Look up ``builder.<name>`` in the registry."""
    return DATASETS.get(f"builder.{name}")
