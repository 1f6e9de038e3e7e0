"""ONE reward/preference interface for the online loop (docs/online.md).

:class:`RewardSource` combines, by weighted sum, any of:

* rule-based/verifiable functions (:class:`~prefopt.rewards.functions.CombinedReward` over ``REWARD_FNS``);
* a ``reward_models`` scorer (:class:`reward_models.scorer.ModelScorer`, or an
  :class:`~reward_models.scorer.EnsembleScorer` with mean/WCO/UWO) - BT/POLAR give scalar scores, a GPM
  gives the GPO-style group score (mean of s(y_i > y_k) over the other samples of the prompt);
* the policy itself as referee (URPO open-ended prompts, :class:`~prefopt.rewards.referee.PolicyReferee`).

``rewards(prompts, completions, **columns) -> Tensor[N]`` (NaN = no reward; :meth:`RewardSource.score` also
returns every part of the sum, for logging) and
``preference(prompts, a, b, **columns) -> Tensor[N]`` = P(a ≻ b | x): a GPM's native preference, else the
BT adapter σ((r(a) − r(b)) / T) over the combined scalar reward.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import Tensor

from prefopt.generation.base import Prompt
from prefopt.rewards.functions import CombinedReward

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from prefopt.loops.online_config import RewardSourceConfig
    from prefopt.rewards.referee import Referee
    from reward_models.scorer import RewardScorer

__all__ = ["RewardSource", "ScoredRewards", "build_reward_source", "load_scorer"]


@dataclass(frozen=True)
class ScoredRewards:
    """What :meth:`RewardSource.score` returns: the ``[N]`` rewards and the parts of their sum.

    ``components``: ``[N]`` tensors (NaN = that part gave none) under ``functions`` (their weighted sum),
    each rule-based function's name, ``model``, ``referee``; an ensemble scorer adds ``model_variance``
    ``[N]`` and ``model_members`` ``[N, M]``.
    """

    total: Tensor
    components: dict[str, Tensor] = field(default_factory=dict)


def _is_gpm(scorer: RewardScorer | None) -> bool:
    from reward_models.kinds import is_pairwise_scorer

    return is_pairwise_scorer(scorer)


def _needs_reference(scorer: RewardScorer) -> bool:
    from reward_models.kinds import needs_reference

    return needs_reference(scorer)


class RewardSource:
    """Rewards and preference oracle behind one interface (see module docstring).

    Args:
        functions: weighted rule-based functions (or None).
        scorer: a ``reward_models`` scorer (``score``/``preference``; GPM: ``group_scores``) or None.
        scorer_weight: weight of the scorer's score in the sum.
        referee: URPO self-referee (``rewards(prompts, completions, groups, tasks)``) or None.
        temperature: oracle temperature T: the BT adapter over scalar rewards is σ((r(a) − r(b)) / T);
            a GPM's native preference σ(s(a > b)) becomes σ(s(a > b) / T) (T < 1 sharpens a weak oracle).
        clip: clip rewards to ±clip (0 = off).
    """

    def __init__(self, functions: CombinedReward | None = None, scorer: RewardScorer | None = None, *,
                 scorer_weight: float = 1.0, referee: Referee | None = None, temperature: float = 1.0,
                 clip: float = 0.0):
        if functions is None and scorer is None and referee is None:
            raise ValueError("a reward source needs reward functions, a reward model or a referee")
        self.functions, self.scorer, self.referee = functions, scorer, referee
        self.scorer_weight, self.temperature, self.clip = scorer_weight, temperature, clip

    @property
    def has_oracle(self) -> bool:
        return True  # the BT adapter over any scalar reward is an oracle

    def _scorer_rewards(self, prompts: Sequence[Prompt], completions: Sequence[str], groups: Sequence[int],
                        answers: Sequence[Any] | None, parts: dict[str, Tensor]) -> Tensor:
        if not _is_gpm(self.scorer):
            kw = {}
            if _needs_reference(self.scorer):
                if answers is None or any(a is None for a in answers):
                    raise ValueError("a POLAR reward model scores an answer against a reference answer: "
                                     "every prompt needs one (the `answer` column)")
                kw["references"] = list(answers)
            if hasattr(self.scorer, "score_members"):  # an ensemble: keep each member's score and the variance
                agg, var, member = self.scorer.score_members(list(prompts), list(completions), **kw)
                parts["model_variance"] = var.float().cpu()
                parts["model_members"] = member.float().cpu().T
                return agg.float().cpu()
            return self.scorer.score(list(prompts), list(completions), **kw).float().cpu()
        out = torch.zeros(len(completions))
        for g in dict.fromkeys(groups):
            idx = [i for i, gi in enumerate(groups) if gi == g]
            out[idx] = self.scorer.group_scores(prompts[idx[0]], [completions[i] for i in idx]).float().cpu()
        return out

    def rewards(self, prompts: Sequence[Prompt], completions: Sequence[str], **columns: Any) -> Tensor:
        """``[N]`` float32 rewards (NaN = none) for completion i of ``prompts[i]``.

        Columns: ``answer``, ``completion_ids``, ``task``, ``group`` (prompt index of each row), ...
        """
        return self.score(prompts, completions, **columns).total

    def score(self, prompts: Sequence[Prompt], completions: Sequence[str], **columns: Any) -> ScoredRewards:
        """:meth:`rewards` and the parts of their sum (:class:`ScoredRewards`)."""
        n = len(completions)
        groups = list(columns.get("group") or range(n))
        total = torch.full((n,), float("nan"))
        parts: dict[str, Tensor] = {}

        def add(values: Tensor, weight: float, name: str) -> None:
            nonlocal total
            parts[name] = values
            ok = ~torch.isnan(values)
            total = torch.where(ok, torch.nan_to_num(total) + weight * torch.nan_to_num(values), total)

        if self.functions is not None:
            sums, by_fn = self.functions.with_components(prompts, completions, **columns)
            add(torch.tensor(sums, dtype=torch.float32), 1.0, "functions")
            for name, vals in by_fn.items():
                parts[name] = torch.tensor([math.nan if v is None else float(v) for v in vals])
        if self.scorer is not None:
            add(self._scorer_rewards(prompts, completions, groups, columns.get("answer"), parts),
                self.scorer_weight, "model")
        if self.referee is not None:
            add(self.referee.rewards(prompts, completions, groups, columns.get("task")), 1.0, "referee")
        if self.clip:
            total = total.clamp(-self.clip, self.clip)
        return ScoredRewards(total, parts)

    def preference(self, prompts: Sequence[Prompt], a: Sequence[str], b: Sequence[str], **columns: Any) -> Tensor:
        """``[N]`` probabilities that ``a[i]`` beats ``b[i]`` for ``prompts[i]`` (no grad)."""
        with torch.no_grad():
            if _is_gpm(self.scorer) and self.functions is None:
                p = self.scorer.preference(list(prompts), list(a), list(b)).float().cpu()
                if self.temperature == 1.0:
                    return p
                return torch.sigmoid(torch.logit(p.clamp(1e-7, 1 - 1e-7)) / self.temperature)
            n = len(a)
            cols = {k: v for k, v in columns.items() if k != "group"}
            both = {k: list(v) + list(v) for k, v in cols.items() if isinstance(v, (list, tuple))}
            r = self.rewards(list(prompts) + list(prompts), list(a) + list(b),
                             group=list(range(n)) + list(range(n)), **both)
            r = torch.nan_to_num(r)
            return torch.sigmoid((r[:n] - r[n:]) / self.temperature)

    def preference_matrix(self, prompt: Prompt, texts: Sequence[str], **columns: Any) -> Tensor:
        """``[K, K]`` with ``P[i, j]`` = P(texts[i] beats texts[j] | prompt), diagonal 0.5. A GPM embeds
        each text once (its skew-symmetric score matrix, linear in K); other oracles ask every ordered
        pair. ``columns`` hold this prompt's per-example values (answer, task, meta)."""
        k = len(texts)
        if _is_gpm(self.scorer) and self.functions is None and hasattr(self.scorer, "score_matrix"):
            with torch.no_grad():
                s = self.scorer.score_matrix(prompt, list(texts)).float().cpu()
            p = torch.sigmoid(s / self.scorer.model.config.beta / self.temperature)
        else:
            ii, jj = zip(*[(i, j) for i in range(k) for j in range(k) if i != j], strict=False)
            rep = {name: [v] * len(ii) for name, v in columns.items()}
            vals = self.preference([prompt] * len(ii), [texts[i] for i in ii], [texts[j] for j in jj], **rep)
            p = torch.zeros(k, k)
            p[torch.as_tensor(ii), torch.as_tensor(jj)] = vals.float()
        p.fill_diagonal_(0.5)
        return p


def load_scorer(paths: Sequence[str], tokenizer: PreTrainedTokenizerBase | None = None, *, method: str = "mean",
                lam: float = 0.5, device: torch.device | str | None = None, **scorer_kwargs: Any) -> RewardScorer:
    """A ``ModelScorer`` for one reward-model directory, an ``EnsembleScorer`` for several; a folder
    without tokenizer files uses ``tokenizer`` (the policy's), else its base model's.

    ``scorer_kwargs`` go to every :class:`~reward_models.scorer.ModelScorer` (``batch_size``,
    ``max_length``, ``layout``, ``bf16``)."""
    from reward_models.scorer import EnsembleScorer, load_model_scorer

    members = [load_model_scorer(path, tokenizer, device=device, **scorer_kwargs) for path in paths]
    if len(members) == 1:
        return members[0]
    return EnsembleScorer(members, method, lam=lam)


def build_reward_source(cfg: RewardSourceConfig, *, tokenizer: PreTrainedTokenizerBase | None = None,
                        referee: Referee | None = None, scorer: RewardScorer | None = None,
                        device: torch.device | str | None = None) -> RewardSource:
    """From a :class:`~prefopt.loops.online_config.RewardSourceConfig` (``scorer``/``referee`` may be
    passed in already built, e.g. in tests)."""
    fns = (CombinedReward([(f.name, f.weight, f.kwargs) for f in cfg.functions])
           if cfg.functions else None)
    if scorer is None and cfg.models:
        scorer = load_scorer(cfg.models, tokenizer, method=cfg.ensemble_method, lam=cfg.ensemble_lam,
                             device=device)
    return RewardSource(fns, scorer, scorer_weight=cfg.model_weight,
                        referee=referee if cfg.policy_referee else None,
                        temperature=cfg.temperature, clip=cfg.clip)
