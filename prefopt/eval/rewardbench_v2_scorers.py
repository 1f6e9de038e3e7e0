"""Score RewardBench 2 prompts (several answers each) with every scorer kind ``prefopt eval rewardbench`` has.

The v1 pair scorers (:func:`prefopt.eval.scorers.build_pair_scorer`) load the models; the registry
``rewardbench-v2 scorer`` maps each resolved kind to an adapter that scores whole groups of answers:

* ``bt``, ``ensemble``, ``polar``: one reward per answer (POLAR against the prompt's reference);
* ``dpo``: the implicit reward ``beta * sum_t [log pi(y_t) - log pi_ref(y_t)]`` per answer;
* ``gpm``: the ``[n, n]`` preference matrix ``s(y_i > y_j | x)`` from one embedding per answer;
* ``judge``: the generative judge in both orders per needed pair, as the antisymmetric logit
  ``logit((P(a first wins) + 1 - P(b first wins)) / 2)`` (probability clamped to [1e-7, 1 - 1e-7]).

An adapter takes groups ``{prompt, answers, all_pairs, row}`` and returns, per group, ``{"scores": [...]}``
or ``{"pair_logits": [[i, j, s(i > j)], ...]}`` (:mod:`prefopt.eval.rewardbench_v2_metrics` scores
both). Pairwise kinds score the chosen answer against each other answer, and every pair when
``all_pairs`` is set (Ties).
"""
from __future__ import annotations

import math
from typing import Any, Callable

from prefopt.core.registry import registry

GROUP_SCORERS = registry("rewardbench-v2 scorer")
_EPS = 1e-7


def _pairs(n: int, all_pairs: bool) -> list[tuple[int, int]]:
    if all_pairs:
        return [(i, j) for i in range(n) for j in range(i + 1, n)]
    return [(0, j) for j in range(1, n)]


def _flat_scores(groups: list[dict], score: Callable[[list, list, list[dict]], list[float]],
                 batch_size: int) -> list[dict]:
    """Score every answer of every group in chunks of ``batch_size``; regroup as ``{"scores": [...]}``."""
    items = [(g["prompt"], a, g["row"]) for g in groups for a in g["answers"]]
    flat: list[float] = []
    for s in range(0, len(items), batch_size):
        chunk = items[s:s + batch_size]
        flat += score([c[0] for c in chunk], [c[1] for c in chunk], [c[2] for c in chunk])
    out, k = [], 0
    for g in groups:
        out.append({"scores": flat[k:k + len(g["answers"])]})
        k += len(g["answers"])
    return out


class ScalarGroups:
    """``bt`` / ``ensemble`` / ``polar``: the pair scorer's reward model, one score per answer."""

    def __init__(self, pair_scorer: Any, batch_size: int):
        self.scorer, self.references, self.batch_size = pair_scorer.scorer, pair_scorer.references, batch_size

    def _score(self, prompts: list, answers: list, rows: list[dict]) -> list[float]:
        kw = {} if self.references is None else {"references": [self.references(r) for r in rows]}
        return self.scorer.score(prompts, answers, **kw).float().tolist()

    def __call__(self, groups: list[dict]) -> list[dict]:
        return _flat_scores(groups, self._score, self.batch_size)


class DPOGroups:
    """``dpo``: the implicit reward of each answer (:meth:`prefopt.eval.scorers.DPOPairs.rewards`)."""

    def __init__(self, pair_scorer: Any, batch_size: int):
        self.pairs, self.batch_size = pair_scorer, batch_size

    def __call__(self, groups: list[dict]) -> list[dict]:
        return _flat_scores(groups, lambda p, a, _r: self.pairs.rewards(p, a).float().tolist(), self.batch_size)


class GPMGroups:
    """``gpm``: every pair from the prompt's score matrix (one embedding per answer)."""

    def __init__(self, pair_scorer: Any, batch_size: int):
        self.scorer = pair_scorer.scorer

    def __call__(self, groups: list[dict]) -> list[dict]:
        out = []
        for g in groups:
            s = self.scorer.score_matrix(g["prompt"], g["answers"]).float().tolist()
            out.append({"pair_logits": [[i, j, s[i][j]] for i, j in _pairs(len(g["answers"]), True)]})
        return out


def judge_logit(p_ab: float, p_ba: float) -> float:
    """Antisymmetric logit of "a beats b" from both orders (``p_ba`` = P(b wins when shown first))."""
    p = min(max((p_ab + 1.0 - p_ba) / 2, _EPS), 1 - _EPS)
    return math.log(p / (1 - p))


class JudgeGroups:
    """``judge``: the generative judge on each needed pair, both orders."""

    def __init__(self, pair_scorer: Any, batch_size: int):
        self.judge, self.batch_size = pair_scorer.judge, batch_size

    def __call__(self, groups: list[dict]) -> list[dict]:
        items = [(gi, i, j) for gi, g in enumerate(groups) for i, j in _pairs(len(g["answers"]), g["all_pairs"])]
        out: list[dict] = [{"pair_logits": []} for _ in groups]
        for s in range(0, len(items), self.batch_size):
            chunk = items[s:s + self.batch_size]
            pa, pb = self.judge.both_orders([groups[gi]["prompt"] for gi, _, _ in chunk],
                                            [groups[gi]["answers"][i] for gi, i, _ in chunk],
                                            [groups[gi]["answers"][j] for gi, _, j in chunk])
            for (gi, i, j), a, b in zip(chunk, pa.tolist(), pb.tolist(), strict=True):
                out[gi]["pair_logits"].append([i, j, judge_logit(a, b)])
        return out


for _name in ("bt", "ensemble", "polar"):
    GROUP_SCORERS.register(_name, ScalarGroups)
GROUP_SCORERS.register("dpo", DPOGroups)
GROUP_SCORERS.register("gpm", GPMGroups)
GROUP_SCORERS.register("judge", JudgeGroups)


def build_group_scorer(kind: str, pair_scorer: Any, batch_size: int) -> Callable[[list[dict]], list[dict]]:
    """The registered adapter of ``kind`` (a resolved kind from ``build_pair_scorer``) over ``pair_scorer``."""
    from reward_models.kinds import serving_kind

    return GROUP_SCORERS.get(serving_kind(kind))(pair_scorer, batch_size)
