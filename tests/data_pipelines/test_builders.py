"""Builders: ranked -> pairs strategies, Curry-DPO curriculum (spec offline_losses §5), groups."""
from __future__ import annotations

import itertools
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_pipelines.builders import (
    STRATEGIES,
    curriculum,
    global_stage,
    local_stage,
    pair_positions,
    ranked_to_pairs,
    to_group,
)
from data_pipelines.schemas import GroupExample, PairwiseExample, RankedExample
from prefopt.core.errors import ConfigError

Q = [{"role": "user", "content": "q"}]


def _ranked(scores, rid="r"):
    return RankedExample(prompt=Q, responses=[f"R{i + 1}" for i in range(len(scores))],
                         scores=[float(s) for s in scores], id=rid, source="s")


def _pairs(scores, strategy):
    counts = Counter()
    return [(p.chosen, p.rejected, p.margin) for p in ranked_to_pairs([_ranked(scores)], counts, strategy)], counts


def test_strategies_on_distinct_scores():
    """Scores [1, 4, 2, 3] rank R2 > R4 > R3 > R1."""
    s = [1, 4, 2, 3]
    assert _pairs(s, "best_vs_worst")[0] == [("R2", "R1", 3.0)]
    assert _pairs(s, "adjacent")[0] == [("R2", "R4", 1.0), ("R4", "R3", 1.0), ("R3", "R1", 1.0)]
    assert _pairs(s, "best_vs_rest")[0] == [("R2", "R4", 1.0), ("R2", "R3", 2.0), ("R2", "R1", 3.0)]
    assert sorted(_pairs(s, "all_pairs")[0]) == sorted([("R2", "R4", 1.0), ("R2", "R3", 2.0), ("R2", "R1", 3.0),
                                                        ("R4", "R3", 1.0), ("R4", "R1", 2.0), ("R3", "R1", 1.0)])


def test_ties_are_dropped_and_counted():
    """[3, 3, 1]: all_pairs has 3 candidates, (R1,R2) ties -> 2 pairs, 1 dropped; all equal -> no pairs."""
    pairs, counts = _pairs([3, 3, 1], "all_pairs")
    assert pairs == [("R1", "R3", 2.0), ("R2", "R3", 2.0)]
    assert counts == Counter(pairs=2, tie_pairs_dropped=1)
    pairs, counts = _pairs([2, 2], "best_vs_worst")
    assert pairs == [] and counts == Counter(tie_pairs_dropped=1, prompts_without_pairs=1)


def test_pair_meta_ids_and_unknown_strategy():
    (p,) = ranked_to_pairs([_ranked([1, 5])], Counter(), "best_vs_worst")
    assert (p.id, p.meta, p.source) == ("r#1>0", {"chosen_score": 5.0, "rejected_score": 1.0}, "s")
    with pytest.raises(ConfigError, match="unknown pair strategy 'best'; known: all_pairs, best_vs_worst"):
        ranked_to_pairs([], Counter(), "best")


def test_builders_need_ranked_input():
    pair = PairwiseExample(prompt=Q, chosen="a", rejected="b", source="src")
    with pytest.raises(ConfigError, match="builder 'ranked_to_pairs' needs ranked records, got PairwiseExample "
                                          r"\(source 'src'\)"):
        ranked_to_pairs([pair], Counter())


@settings(max_examples=150, deadline=None)
@given(scores=st.lists(st.integers(min_value=-5, max_value=5), min_size=2, max_size=8),
       strategy=st.sampled_from(STRATEGIES))
def test_property_pair_counts_and_margins(scores, strategy):
    """Pair count = candidate positions (k(k-1)/2, 1, k-1, k-1) minus tied candidates; every margin > 0."""
    k = len(scores)
    ex = _ranked(scores)
    counts = Counter()
    pairs = ranked_to_pairs([ex], counts, strategy)
    expected_candidates = {"all_pairs": k * (k - 1) // 2, "best_vs_worst": 1, "adjacent": k - 1,
                           "best_vs_rest": k - 1}[strategy]
    assert len(pair_positions(k, strategy)) == expected_candidates
    assert len(pairs) + counts["tie_pairs_dropped"] == expected_candidates
    score_of = dict(zip(ex.responses, ex.scores, strict=False))
    for p in pairs:
        assert p.margin > 0 and p.margin == score_of[p.chosen] - score_of[p.rejected]
        assert score_of[p.chosen] > score_of[p.rejected]
    if strategy == "all_pairs":  # exactly the strictly ordered pairs
        assert len(pairs) == sum(1 for a, b in itertools.combinations(scores, 2) if a != b)
    if len(set(scores)) == k:  # distinct scores: nothing dropped
        assert counts["tie_pairs_dropped"] == 0


def _stages(scores, **kw):
    counts = Counter()
    out = curriculum([_ranked(scores)], counts, **kw)
    return [(p.chosen, p.rejected, p.margin, p.meta["stage"]) for p in out], counts


def test_curry_acceptance_1_four_distinct_scores():
    """Spec §5 check 1: [5, 4, 3, 2] -> stage 1 (R1,R4) gap 3, stage 2 (R1,R3) gap 2, stage 3 (R1,R2) gap 1."""
    assert _stages([5, 4, 3, 2])[0] == [("R1", "R4", 3.0, 1), ("R1", "R3", 2.0, 2), ("R1", "R2", 1.0, 3)]


def test_curry_acceptance_2_k2_is_one_stage_equal_to_dpo():
    """Spec §5 check 2: K = 2 -> one stage holding exactly the standard DPO pair."""
    staged, _ = _stages([1, 4])
    (dpo,) = ranked_to_pairs([_ranked([1, 4])], Counter(), "best_vs_worst")
    assert staged == [(dpo.chosen, dpo.rejected, dpo.margin, 1)]


def test_curry_acceptance_3_tied_pair_dropped():
    """Spec §5 check 3: [5, 5, 3] -> the tied (R1,R2) pair is dropped; one pair remains."""
    staged, counts = _stages([5, 5, 3])
    assert staged == [("R1", "R3", 2.0, 1)]
    assert counts["tie_pairs_dropped"] == 1 and counts["pairs"] == 1


def test_curry_ordered_emits_stage_1_before_stage_2():
    """Spec §5 check 5 (data side): ordered output has non-decreasing stages across prompts."""
    exs = [_ranked([5, 4, 3, 2], "a"), _ranked([3, 1], "b"), _ranked([9, 7, 2], "c")]
    out = curriculum(exs, Counter(), ordered=True)
    assert [p.meta["stage"] for p in out] == [1, 1, 1, 2, 2, 3]
    assert [p.id for p in out][:3] == ["a#0>3", "b#0>1", "c#0>2"]  # stable within a stage
    unordered = curriculum(exs, Counter(), ordered=False)
    assert [p.meta["stage"] for p in unordered] == [1, 2, 3, 1, 1, 2]


def test_curry_equal_gaps_share_a_stage_and_max_stages():
    """[5, 3, 3, 1]: gaps 4, 2, 2 -> stages 1, 2, 2. With K = 6 distinct and S = 2: 5 levels -> 1,1,1,2,2."""
    assert [s for *_, s in _stages([5, 3, 3, 1])[0]] == [1, 2, 2]
    assert [s for *_, s in _stages([6, 5, 4, 3, 2, 1], stages=2)[0]] == [1, 1, 1, 2, 2]
    assert [local_stage(j, 5, 2) for j in range(5)] == [1, 1, 1, 2, 2]


def test_curry_global_thresholds():
    """Thresholds [3, 2]: gap >= 3 -> 1, 2 <= gap < 3 -> 2, gap < 2 -> 3 (across prompts)."""
    assert [global_stage(g, [3, 2]) for g in (4, 3, 2.5, 2, 1)] == [1, 1, 2, 2, 3]
    staged, counts = _stages([5, 4, 3, 1], thresholds=[3, 2])
    assert staged == [("R1", "R4", 4.0, 1), ("R1", "R3", 2.0, 2), ("R1", "R2", 1.0, 3)]
    assert (counts["stage_1"], counts["stage_2"], counts["stage_3"]) == (1, 1, 1)
    with pytest.raises(ConfigError, match="strictly descending"):
        curriculum([], Counter(), thresholds=[2, 3])


def test_group_builder():
    counts = Counter()
    (g,) = to_group([_ranked([1, 2, 3])], counts)
    assert g == GroupExample(prompt=Q, responses=["R1", "R2", "R3"], rewards=[1.0, 2.0, 3.0], id="r", source="s")
    assert counts["groups"] == 1
