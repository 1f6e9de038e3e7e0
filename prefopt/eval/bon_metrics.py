"""Best-of-N maths: the expected gold score of a scorer's pick among N of M candidates, exactly.

Setting (Gao et al. 2023, "Scaling Laws for Reward Model Overoptimization"; RewardBench's best-of-N
evaluation): each prompt has M candidates with a gold score ``g_i`` (e.g. the GPT-4-Turbo preference
against a reference in [1, 2]). For a subset S of size N drawn uniformly from the M candidates, the
scorer keeps its favourite candidate ``pick(S)``; we report ``E_S[g_pick(S)]`` and the gold win rate
``E_S[1{g_pick(S) > threshold}]``, averaged over the C(M, N) subsets **exactly**:

* scalar scorer (one score per candidate, a total order): rank candidates by score, best first (ties
  broken by the lower candidate index). Candidate of rank r (0-based) is picked iff it is in S and the
  other N-1 members all rank below it, so ``P(pick = r) = C(M-1-r, N-1) / C(M, N)`` (order statistics);
* pairwise scorer (a preference matrix, e.g. a GPM or a both-orders LM judge): the pick is the Copeland
  winner *inside* S (most pairwise wins, a tie 0.5; then the larger summed margin; then the lower
  index), so subsets are enumerated (all of them while C(M, N) <= ``max_subsets``, else seeded draws).

Baselines: a random pick has expectation mean(g) for every N; the oracle pick is the closed form applied
to the gold order itself (the expected maximum of N of the M golds).
Uncertainty: the per-prompt expectations are exact, so the SE is over prompts, std(ddof=1)/sqrt(P).
``gain_gold``/``gain_win`` are the scorer's pick minus a random pick, paired per prompt (their SE is
over the per-prompt differences, so it is much smaller than the unpaired SEs of the two curves).
"""
from __future__ import annotations

import itertools
import math
import random
from typing import Callable, Sequence

Picker = Callable[[Sequence[int]], int]


def pick_probabilities(scores: Sequence[float], n: int) -> list[float]:
    """``P(candidate i is the argmax-score pick of a uniform N-subset)`` for every i (sums to 1)."""
    m = len(scores)
    if not 1 <= n <= m:
        raise ValueError(f"N={n} must be in 1..{m} (the number of candidates)")
    order = sorted(range(m), key=lambda i: (-scores[i], i))
    total = math.comb(m, n)
    probs = [0.0] * m
    for rank, i in enumerate(order):
        probs[i] = math.comb(m - 1 - rank, n - 1) / total
    return probs


def expected_pick(scores: Sequence[float], values: Sequence[float], n: int) -> float:
    """``E_S[values[pick(S)]]`` for the scalar scorer ``scores`` over all N-subsets (closed form)."""
    return sum(p * v for p, v in zip(pick_probabilities(scores, n), values, strict=True))


def copeland_picker(matrix: Sequence[Sequence[float]]) -> Picker:
    """Subset -> Copeland winner for an antisymmetric margin matrix (``m[i][j] > 0``: i preferred to j)."""

    def pick(subset: Sequence[int]) -> int:
        def key(i: int) -> tuple[float, float, int]:
            wins = sum(1.0 if matrix[i][j] > 0 else 0.5 if matrix[i][j] == 0 else 0.0 for j in subset if j != i)
            return (wins, sum(matrix[i][j] for j in subset if j != i), -i)
        return max(subset, key=key)

    return pick


def argmax_picker(scores: Sequence[float]) -> Picker:
    """Subset -> highest-score member (lower index on ties), the rule :func:`pick_probabilities` assumes."""
    return lambda subset: min(subset, key=lambda i: (-scores[i], i))


def enumerate_pick(picker: Picker, values: Sequence[float], n: int, *, max_subsets: int = 20000,
                   seed: int = 0) -> tuple[float, bool]:
    """``(E_S[values[picker(S)]], exact)``: all C(M, N) subsets, or ``max_subsets`` seeded draws."""
    m = len(values)
    if not 1 <= n <= m:
        raise ValueError(f"N={n} must be in 1..{m} (the number of candidates)")
    if math.comb(m, n) <= max_subsets:
        subsets: Sequence[Sequence[int]] = list(itertools.combinations(range(m), n))
        exact = True
    else:
        rng = random.Random(seed)
        subsets = [sorted(rng.sample(range(m), n)) for _ in range(max_subsets)]
        exact = False
    return sum(values[picker(s)] for s in subsets) / len(subsets), exact


def mean_se(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and its standard error std(ddof=1)/sqrt(n) (SE 0.0 for a single value)."""
    n = len(xs)
    mu = sum(xs) / n
    if n < 2:
        return mu, 0.0
    return mu, math.sqrt(sum((x - mu) ** 2 for x in xs) / (n - 1) / n)


def prompt_curve(gold: Sequence[float], ns: Sequence[int], *, scores: Sequence[float] | None = None,
                 matrix: Sequence[Sequence[float]] | None = None, threshold: float | None = None,
                 max_subsets: int = 20000, seed: int = 0) -> dict[int, dict[str, float | None]]:
    """Per N: the scorer's, the random and the oracle pick's expected gold and gold win rate for one prompt.

    Give ``scores`` (scalar scorer, closed form) or ``matrix`` (pairwise scorer, Copeland in the subset).
    """
    if (scores is None) == (matrix is None):
        raise ValueError("give exactly one of scores= or matrix=")
    wins = None if threshold is None else [1.0 if g > threshold else 0.0 for g in gold]
    out: dict[int, dict[str, float | None]] = {}
    for n in ns:
        if scores is not None:
            sel_gold = expected_pick(scores, gold, n)
            sel_win = None if wins is None else expected_pick(scores, wins, n)
        else:
            pick = copeland_picker(matrix)
            sel_gold, _ = enumerate_pick(pick, gold, n, max_subsets=max_subsets, seed=seed + n)
            sel_win = None if wins is None else enumerate_pick(pick, wins, n, max_subsets=max_subsets,
                                                               seed=seed + n)[0]
        out[n] = {"scorer_gold": sel_gold, "scorer_win": sel_win,
                  "random_gold": sum(gold) / len(gold), "random_win": None if wins is None else sum(wins) / len(wins),
                  "oracle_gold": expected_pick(gold, gold, n),
                  "oracle_win": None if wins is None else expected_pick(gold, wins, n)}
    return out


def aggregate_curves(curves: Sequence[dict[int, dict[str, float | None]]], ns: Sequence[int]) -> list[dict]:
    """Mean and SE over prompts of every per-prompt number, one row per N (``n_prompts`` included), plus
    the paired gain of the scorer's pick over a random pick (``gain_gold``, ``gain_win``)."""
    rows = []
    for n in ns:
        row: dict = {"n": n, "n_prompts": len(curves)}
        for key in ("scorer_gold", "scorer_win", "random_gold", "random_win", "oracle_gold", "oracle_win"):
            vals = [c[n][key] for c in curves]
            if any(v is None for v in vals):
                row[key], row[key + "_se"] = None, None
            else:
                row[key], row[key + "_se"] = mean_se(vals)
        for key, a, b in (("gain_gold", "scorer_gold", "random_gold"), ("gain_win", "scorer_win", "random_win")):
            if row[a] is None:
                row[key], row[key + "_se"] = None, None
            else:  # paired over prompts: the scorer's pick minus a random pick on the same candidates
                row[key], row[key + "_se"] = mean_se([c[n][a] - c[n][b] for c in curves])
        rows.append(row)
    return rows


def default_ns(m: int) -> list[int]:
    """1, 2, 4, 8, ... up to M, plus M itself."""
    ns, n = [], 1
    while n <= m:
        ns.append(n)
        n *= 2
    return ns if ns[-1] == m else ns + [m]
