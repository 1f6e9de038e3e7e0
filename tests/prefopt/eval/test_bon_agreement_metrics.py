"""Golden numbers for the best-of-N and judge-agreement maths (hand-derived in the comments)."""
from __future__ import annotations

import math

import pytest

from prefopt.eval import agreement as A
from prefopt.eval import bon_metrics as B

# 4 candidates. Scorer order (best first): 2 (0.9), 0 (0.5), 3 (0.3), 1 (0.1); gold order: 1, 2, 0, 3.
GOLD = [1.2, 1.8, 1.6, 1.1]
SCORES = [0.5, 0.1, 0.9, 0.3]


def test_pick_probabilities_are_order_statistics():
    # N=2: P(rank r) = C(3-r, 1)/C(4, 2) = 3/6, 2/6, 1/6, 0 for ranks 0..3 (candidates 2, 0, 3, 1).
    assert B.pick_probabilities(SCORES, 2) == pytest.approx([2 / 6, 0.0, 3 / 6, 1 / 6])
    # N=3: 3/4, 1/4, 0, 0.
    assert B.pick_probabilities(SCORES, 3) == pytest.approx([1 / 4, 0.0, 3 / 4, 0.0])
    assert sum(B.pick_probabilities(SCORES, 1)) == pytest.approx(1.0)


@pytest.mark.parametrize("n,expected", [
    (1, 5.7 / 4),                       # random pick = mean gold
    (2, (1.2 + 1.6 + 1.2 + 1.6 + 1.1 + 1.6) / 6),  # picks of {01,02,03,12,13,23}: 0,2,0,2,3,2
    (3, 0.75 * 1.6 + 0.25 * 1.2),
    (4, 1.6),                            # the scorer's overall favourite
])
def test_expected_pick_hand_values_and_brute_force(n, expected):
    assert B.expected_pick(SCORES, GOLD, n) == pytest.approx(expected)
    brute, exact = B.enumerate_pick(B.argmax_picker(SCORES), GOLD, n)
    assert exact and brute == pytest.approx(expected)


def test_oracle_and_random_and_win_rate():
    curve = B.prompt_curve(GOLD, [1, 2, 3, 4], scores=SCORES, threshold=1.5)
    assert curve[2]["oracle_gold"] == pytest.approx(0.5 * 1.8 + 1.6 / 3 + 1.2 / 6)  # 1.6333
    assert curve[3]["oracle_gold"] == pytest.approx(0.75 * 1.8 + 0.25 * 1.6)         # 1.75
    assert curve[4]["oracle_gold"] == pytest.approx(max(GOLD))
    assert all(curve[n]["random_gold"] == pytest.approx(1.425) for n in (1, 2, 3, 4))
    # wins (gold > 1.5) = [0, 1, 1, 0]: random 0.5; oracle N=2 = 1 - C(2,2)/C(4,2) = 5/6; scorer picks 2 w.p. 1/2
    assert curve[2]["random_win"] == pytest.approx(0.5)
    assert curve[2]["oracle_win"] == pytest.approx(5 / 6)
    assert curve[2]["scorer_win"] == pytest.approx(0.5)
    assert curve[4]["scorer_win"] == pytest.approx(1.0)
    assert B.prompt_curve(GOLD, [2], scores=SCORES)[2]["scorer_win"] is None


def test_ties_in_scores_break_to_lower_index_in_both_forms():
    s = [1.0, 1.0, 0.0]
    g = [1.0, 2.0, 1.5]
    assert B.expected_pick(s, g, 2) == pytest.approx((1.0 + 1.0 + 2.0) / 3)
    assert B.enumerate_pick(B.argmax_picker(s), g, 2)[0] == pytest.approx(4.0 / 3)


def test_copeland_in_subset_with_a_cycle():
    # 0 > 1 (margin 1), 1 > 2 (2), 2 > 0 (0.5): a cycle; in the full set each has 1 win and summed margins
    # are 0.5, 1.0, -1.5, so candidate 1 wins. Pairs: {0,1} -> 0, {0,2} -> 2, {1,2} -> 1.
    m = [[0, 1, -0.5], [-1, 0, 2], [0.5, -2, 0]]
    g = [1.0, 2.0, 1.5]
    assert B.copeland_picker(m)([0, 1, 2]) == 1
    curve = B.prompt_curve(g, [1, 2, 3], matrix=m, threshold=1.2)
    assert curve[2]["scorer_gold"] == pytest.approx((1.0 + 1.5 + 2.0) / 3)
    assert curve[3]["scorer_gold"] == pytest.approx(2.0)
    assert curve[2]["scorer_win"] == pytest.approx(2 / 3)


def test_sampled_subsets_when_too_many():
    g = list(range(10))
    val, exact = B.enumerate_pick(B.argmax_picker(g), g, 5, max_subsets=50, seed=1)
    assert not exact and 4 <= val <= 9
    assert val == B.enumerate_pick(B.argmax_picker(g), g, 5, max_subsets=50, seed=1)[0]


def test_aggregate_curves_mean_and_se():
    c1 = B.prompt_curve([1.0, 2.0], [1, 2], scores=[0.0, 1.0])   # N=2 picks 2.0
    c2 = B.prompt_curve([1.0, 2.0], [1, 2], scores=[1.0, 0.0])   # N=2 picks 1.0
    rows = B.aggregate_curves([c1, c2], [1, 2])
    assert rows[1]["scorer_gold"] == pytest.approx(1.5)
    assert rows[1]["scorer_gold_se"] == pytest.approx(math.sqrt(0.5) / math.sqrt(2))  # std([2,1]) / sqrt 2
    assert rows[0]["random_gold_se"] == 0.0 and rows[1]["oracle_gold"] == 2.0 and rows[0]["n_prompts"] == 2
    assert rows[0]["scorer_win"] is None and rows[0]["gain_win"] is None
    # paired gain at N=2: prompt 1 picks 2.0 (random 1.5): +0.5; prompt 2 picks 1.0: -0.5
    assert rows[1]["gain_gold"] == pytest.approx(0.0) and rows[1]["gain_gold_se"] == pytest.approx(0.5)
    assert rows[0]["gain_gold"] == 0.0 and rows[0]["gain_gold_se"] == 0.0  # N=1 is a random pick


def test_bad_n_and_default_ns():
    with pytest.raises(ValueError, match="N=5"):
        B.expected_pick(SCORES, GOLD, 5)
    assert B.default_ns(11) == [1, 2, 4, 8, 11] and B.default_ns(8) == [1, 2, 4, 8]


def test_wilson_known_values():
    assert A.wilson_ci(8, 10) == pytest.approx((0.4901625, 0.9433178), abs=1e-6)
    lo, hi = A.wilson_ci(0, 5)
    assert lo == 0.0 and hi == pytest.approx(1.959964 ** 2 / (5 + 1.959964 ** 2), abs=1e-6)
    assert all(math.isnan(x) for x in A.wilson_ci(0, 0))


def test_agreement_position_consistency_length_bias():
    p = [0.9, 0.2, 0.5, 0.7]          # judge decisions: second, first, tie, second
    labels = [True, True, False, False]
    ag = A.agreement(p, labels)
    assert ag["value"] == pytest.approx((1 + 0 + 0.5 + 0) / 4) and ag["n"] == 4
    # both orders: consistent when P(second | second first) > .5 and P(first | first first) < .5, or both flipped
    pc = A.position_consistency([0.9, 0.4, 0.6, 0.5], [0.2, 0.8, 0.7, 0.5])
    assert pc["value"] == pytest.approx(2 / 4)   # 0: second twice, 1: first twice; 2: first position twice; 3: tie
    len1, len2 = [10, 50, 5, 7], [20, 10, 5, 3]   # longer: second, first, equal, first
    lb = A.longer_share([A.decision(x) for x in p], len1, len2)
    assert lb["n"] == 3 and lb["value"] == pytest.approx((1 + 1 + 0) / 3)
    assert A.longer_share([float(x) for x in labels], len1, len2)["value"] == pytest.approx((1 + 0 + 1) / 3)
    assert A.longer_baseline(labels, len1, len2)["value"] == pytest.approx((1 + 0 + 0.5 + 1) / 4)


def test_win_rate_counts_ties_half():
    r = A.win_rate([0.8, 0.5, 0.3, 0.9])
    assert (r["wins"], r["ties"], r["losses"], r["n"]) == (2, 1, 1, 4)
    assert r["win_rate"] == pytest.approx(2.5 / 4)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx(A.wilson_ci(2.5, 4))
    assert r["mean_preference"] == pytest.approx(0.625)
