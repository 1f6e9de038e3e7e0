"""Judge validation and head-to-head maths: Wilson intervals, agreement, position consistency, length bias.

* Wilson (1927), "Probable inference, the law of succession, and statistical inference": the score
  interval ``(p + z^2/2n ± z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)``; used for every proportion here.
  Half-counts (ties scored 0.5) enter as fractional successes; a tie has a smaller variance than a
  Bernoulli outcome, so the interval is then slightly conservative.
* Agreement with labelled pairs: the judge's decision (the answer with preference > 0.5; exactly 0.5 is
  a judge tie, scored 0.5) matches the label. Human/GPT-4 ties (label preference exactly 1.5) are
  excluded and counted.
* Position consistency (Zheng et al. 2023, "Judging LLM-as-a-Judge with MT-Bench and Chatbot Arena"):
  an order-sensitive judge is asked with each answer shown first; it is consistent on a pair when it
  picks the same answer in both orders.
* Length bias: how often the judge picks the longer answer (characters) vs how often the labels do, over
  pairs of unequal length; "always prefer the longer answer" is the trivial baseline to beat.
"""
from __future__ import annotations

import math
from typing import Sequence

Z95 = 1.959963984540054


def wilson_ci(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of ``successes / n`` (``(nan, nan)`` for n = 0)."""
    if n <= 0:
        return math.nan, math.nan
    p = successes / n
    denom = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def proportion(successes: float, n: int) -> dict:
    """``{value, ci_low, ci_high, n}`` with the Wilson 95 % interval (value None when n = 0)."""
    lo, hi = wilson_ci(successes, n)
    return {"value": successes / n if n else None, "ci_low": lo if n else None, "ci_high": hi if n else None,
            "n": n}


def decision(p_second: float) -> float:
    """1.0 if the second answer is preferred (``p > 0.5``), 0.0 if the first, 0.5 for an exact tie."""
    return 1.0 if p_second > 0.5 else 0.0 if p_second < 0.5 else 0.5


def agreement(p_second: Sequence[float], label_second: Sequence[bool]) -> dict:
    """Share of pairs where the judge's decision matches the label (judge ties count 0.5), Wilson CI."""
    hits = sum(d if lab else 1.0 - d for d, lab in zip(map(decision, p_second), label_second, strict=True))
    return proportion(hits, len(label_second))


def position_consistency(p_second_first: Sequence[float], p_first_first: Sequence[float]) -> dict:
    """Share of pairs where the judge picks the same answer in both orders.

    Args:
        p_second_first: P(second answer better) when the second answer is shown first.
        p_first_first: P(first answer better) when the first answer is shown first.
    """
    same = sum(1.0 for a, b in zip(p_second_first, p_first_first, strict=True) if (a > 0.5) == (b < 0.5) and a != 0.5)
    return proportion(same, len(p_first_first))


def longer_share(picked_second: Sequence[float], len_first: Sequence[int], len_second: Sequence[int]) -> dict:
    """Share of the pick (1 = second, 0 = first, 0.5 = tie) that went to the longer answer (unequal lengths)."""
    num, n = 0.0, 0
    for d, a, b in zip(picked_second, len_first, len_second, strict=True):
        if a == b:
            continue
        n += 1
        num += d if b > a else 1.0 - d
    return proportion(num, n)


def longer_baseline(label_second: Sequence[bool], len_first: Sequence[int], len_second: Sequence[int]) -> dict:
    """Agreement of "always prefer the longer answer" with the labels (equal lengths score 0.5), all pairs."""
    hits = 0.0
    for lab, a, b in zip(label_second, len_first, len_second, strict=True):
        hits += 0.5 if a == b else float((b > a) == lab)
    return proportion(hits, len(label_second))


def win_rate(p_b: Sequence[float]) -> dict:
    """Head-to-head: B's win rate over A from P(B beats A) per prompt (a tie, p = 0.5, counts half).

    Returns ``{win_rate, ci_low, ci_high, n, wins, ties, losses, mean_preference, mean_preference_se}``;
    the CI is Wilson's over the n prompts.
    """
    ds = [decision(p) for p in p_b]
    wins, ties = sum(1 for d in ds if d == 1.0), sum(1 for d in ds if d == 0.5)
    prop = proportion(wins + 0.5 * ties, len(ds))
    n = len(p_b)
    mu = sum(p_b) / n if n else None
    se = math.sqrt(sum((p - mu) ** 2 for p in p_b) / (n - 1) / n) if n > 1 else None
    return {"win_rate": prop["value"], "ci_low": prop["ci_low"], "ci_high": prop["ci_high"], "n": n,
            "wins": wins, "ties": ties, "losses": n - wins - ties, "mean_preference": mu, "mean_preference_se": se}
