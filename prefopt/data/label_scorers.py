"""Who scores the K sampled answers of a prompt for ``prefopt data label`` (the ``label_scorer`` registry).

* ``reward``: scalar scores from a :class:`~prefopt.rewards.sources.RewardSource` (BT or POLAR reward
  models, ensembles with mean/WCO/UWO, rule functions) - the same source the online loop uses. An
  ensemble also gives each member's score and the member variance (Coste et al. 2024, "Reward Model
  Ensembles Help Mitigate Overoptimization").
* ``gpm``: the K x K preference matrix of a general preference model (Zhang et al. 2024, "General
  Preference Modeling with Preference Representations"), one embedding per answer.
* ``judge``: the matrix from a pairwise judge (a local LM asked in both orders, or an HTTP endpoint);
  every pairwise judgement is stored as soon as it is known, so a rerun after a failure pays for none twice.

Matrix scorers rank answers by Copeland score: ``c_i = sum_{j != i} 1[P_ij > 1/2] + 1/2 * 1[P_ij = 1/2]``
(a Condorcet winner has ``K - 1``). Every scorer returns a :class:`GroupScores`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from data_pipelines.schemas import PromptExample
from prefopt.core.errors import ConfigError, DataError
from prefopt.core.registry import registry
from reward_models.kinds import is_pairwise_scorer

LABEL_SCORERS = registry("label_scorer")

__all__ = ["LABEL_SCORERS", "GroupScores", "LabelScorerSpec", "copeland_scores", "get_label_scorer"]


@dataclass(frozen=True)
class GroupScores:
    """Scores of one prompt's answers (higher is better) and what they came from."""

    scores: list[float]
    members: list[list[float]] | None = None  # ensemble: [answer][member]
    variance: list[float] | None = None  # ensemble: member variance per answer
    matrix: list[list[float]] | None = None  # matrix scorers: P[i][j] = P(answer i beats answer j)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LabelScorerSpec:
    """A registered scorer: ``check(scorer_cfg)`` validates settings; ``build(cfg, out_dir)`` returns a
    callable ``(prompt: PromptExample, answers: list[str]) -> GroupScores``."""

    name: str
    check: Callable[[Any], None]
    build: Callable[[Any, Path], Callable[[PromptExample, list[str]], GroupScores]]
    describe: Callable[[Any], dict[str, Any]]


def get_label_scorer(name: str) -> LabelScorerSpec:
    return LABEL_SCORERS.get(name)


def copeland_scores(matrix: torch.Tensor) -> list[float]:
    """Copeland score of each answer from ``P[i, j] = P(i beats j)`` (diagonal ignored).

    Example: ``P = [[.5, .9, .6], [.1, .5, .5], [.4, .5, .5]]`` gives ``[2.0, 0.5, 0.5]``.
    """
    p = matrix.float()
    wins = (p > 0.5).float() + 0.5 * (p == 0.5).float()
    wins.fill_diagonal_(0.0)
    return wins.sum(1).tolist()


# ------------------------------------------------------------------------------------------ reward


def _check_reward(cfg: Any) -> None:
    if not cfg.reward.models and not cfg.reward.functions:
        raise ConfigError("scorer.kind=reward needs scorer.reward.models (reward-model folders) or "
                          "scorer.reward.functions (rule rewards)")


def require_folders(cfg: Any) -> None:
    """Checked when the scorer is built (not by `prefopt validate`, which runs before earlier stages)."""
    for path in cfg.reward.models:
        if not Path(path).exists():
            raise ConfigError(f"scorer.reward.models: reward model folder not found: {path}")


def _build_reward(cfg: Any, out_dir: Path) -> Callable[[PromptExample, list[str]], GroupScores]:
    from prefopt.rewards.sources import build_reward_source, load_scorer

    require_folders(cfg)
    scorer = None
    if cfg.reward.models:
        scorer = load_scorer(cfg.reward.models, method=cfg.reward.ensemble_method, lam=cfg.reward.ensemble_lam,
                             batch_size=cfg.batch_size, max_length=cfg.max_length, layout=cfg.layout)
        if is_pairwise_scorer(scorer):
            raise ConfigError(f"{cfg.reward.models[0]} is a GPM: it has no scalar score; use scorer.kind=gpm")
    source = build_reward_source(cfg.reward, scorer=scorer)

    def score(prompt: PromptExample, answers: list[str]) -> GroupScores:
        k = len(answers)
        scored = source.score([prompt.prompt] * k, answers, answer=[prompt.answer] * k, group=[0] * k)
        r, comp = scored.total, scored.components
        if torch.isnan(r).any():
            raise DataError("the reward source gave no reward (NaN) for an answer", field=f"prompt {prompt.id}")
        members = comp["model_members"].tolist() if "model_members" in comp else None
        var = comp["model_variance"].tolist() if "model_variance" in comp else None
        return GroupScores([float(x) for x in r], members, var)

    return score


def _describe_reward(cfg: Any) -> dict[str, Any]:
    return {"kind": "reward", "models": list(cfg.reward.models), "ensemble_method": cfg.reward.ensemble_method,
            "functions": [f.name for f in cfg.reward.functions], "layout": cfg.layout}


# ------------------------------------------------------------------------------------------ matrices


def _matrix_scores(p: torch.Tensor) -> GroupScores:
    k = p.shape[0]
    mean_win = ((p.sum(1) - p.diagonal()) / max(k - 1, 1)).tolist()
    return GroupScores(copeland_scores(p), matrix=[[round(float(x), 6) for x in row] for row in p],
                       extra={"mean_win_prob": mean_win})


def _check_gpm(cfg: Any) -> None:
    if len(cfg.reward.models) != 1:
        raise ConfigError(f"scorer.kind=gpm needs exactly one GPM folder in scorer.reward.models, "
                          f"got {len(cfg.reward.models)}")
    _check_reward(cfg)


def _build_gpm(cfg: Any, out_dir: Path) -> Callable[[PromptExample, list[str]], GroupScores]:
    from prefopt.rewards.sources import RewardSource, load_scorer

    require_folders(cfg)
    scorer = load_scorer(cfg.reward.models, batch_size=cfg.batch_size, max_length=cfg.max_length)
    if not is_pairwise_scorer(scorer):
        raise ConfigError(f"{cfg.reward.models[0]} is a '{getattr(scorer, 'kind', '?')}' reward model, not a GPM; "
                          "use scorer.kind=reward")
    source = RewardSource(None, scorer, temperature=cfg.reward.temperature)
    return lambda prompt, answers: _matrix_scores(source.preference_matrix(prompt.prompt, answers))


class JudgeMatrix:
    """P(answer i beats answer j) from a judge; each unordered pair asked once (the LM judge itself asks
    both orders), each judgement appended to ``judgements.jsonl`` before the next is asked."""

    def __init__(self, judge: Any, store_path: Path):
        from prefopt.eval.resumable import ResultStore

        self.judge = judge
        self.store = ResultStore(store_path, key_fields=("id", "i", "j"))
        self.known = {(r["id"], r["i"], r["j"]): r["p"] for r in self.store.rows()}

    def _ask(self, prompt: PromptExample, a: str, b: str, key: tuple) -> float:
        if key in self.known:
            return self.known[key]
        text = prompt.prompt[-1]["content"]
        ann = self.judge.annotate([text], [b], [a], keys=[f"{key[0]}:{key[1]}:{key[2]}"])[0]
        if ann.get("preference") is None:
            raise DataError("the judge gave no usable preference; rerun to retry this pair",
                            field=f"prompt {prompt.id}, answers {key[1]} vs {key[2]}")
        p = float(ann["preference"]) - 1.0
        self.store.append([{"id": key[0], "i": key[1], "j": key[2], "p": p}])
        self.known[key] = p
        return p

    def __call__(self, prompt: PromptExample, answers: list[str]) -> GroupScores:
        k = len(answers)
        p = torch.full((k, k), 0.5)
        for i in range(k):
            for j in range(i + 1, k):
                p[i, j] = self._ask(prompt, answers[i], answers[j], (prompt.id, i, j))
                p[j, i] = 1.0 - p[i, j]
        return _matrix_scores(p)


def _check_judge(cfg: Any) -> None:
    j = cfg.judge
    if not j.model:
        raise ConfigError(f"scorer.kind=judge needs scorer.judge.model (the {j.kind} judge's model)")
    needs_url = "base_url" in _JUDGE_ARGS[j.kind](j)  # the kind's judge talks to a server
    if needs_url and not j.base_url.startswith(("http://", "https://")):
        raise ConfigError(f"scorer.judge.base_url must be an http(s) URL, got {j.base_url!r}")


# judge kind -> make_judge keyword arguments from the scorer.judge section
_JUDGE_ARGS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "lm": lambda j: {"model": j.model, "max_length": j.max_length, "batch_size": 1},
    "http": lambda j: {"base_url": j.base_url, "model": j.model, "api_key_env": j.api_key_env},
}


def _build_judge(cfg: Any, out_dir: Path) -> Callable[[PromptExample, list[str]], GroupScores]:
    from prefopt.eval.judges import make_judge

    j = cfg.judge
    return JudgeMatrix(make_judge(j.kind, **_JUDGE_ARGS[j.kind](j)), out_dir / "judgements.jsonl")


def _describe_gpm(cfg: Any) -> dict[str, Any]:
    return {"kind": "gpm", "model": cfg.reward.models[0], "temperature": cfg.reward.temperature,
            "rank": "copeland"}


def _describe_judge(cfg: Any) -> dict[str, Any]:
    return {"kind": "judge", "judge": cfg.judge.kind, "model": cfg.judge.model, "rank": "copeland"}


for _spec in (LabelScorerSpec("reward", _check_reward, _build_reward, _describe_reward),
              LabelScorerSpec("gpm", _check_gpm, _build_gpm, _describe_gpm),
              LabelScorerSpec("judge", _check_judge, _build_judge, _describe_judge)):
    if _spec.name not in LABEL_SCORERS:
        LABEL_SCORERS.register(_spec.name, _spec)
