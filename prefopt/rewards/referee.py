"""URPO: the policy as its own referee, and the URPO reward functions (our design; docs/online.md).

* ``urpo_verifiable`` (REWARD_FNS): player reward on ``task == "verifiable"`` rows - 1 when the extracted
  final answer matches, plus an optional format bonus; None on other tasks.
* ``urpo_referee`` (REWARD_FNS): referee reward on ``task == "pref_rank"`` rows - pairwise agreement of
  the parsed ``RANKING:`` line with the gold order (parse failure 0); None on other tasks.
* :class:`PolicyReferee`: rewards of ``task == "open"`` groups from the *current* policy's own rankings
  (greedy, no grad, same weights as the rollouts of this step), two shuffled calls per chunk of ≤ 8;
  reward_j = (G − rank_j)/(G − 1); parse failure → equal rewards (no gradient from the group).
"""
from __future__ import annotations

import math
import random
from typing import Any, Protocol, Sequence

import torch

from prefopt.core.registry import REWARD_FNS
from prefopt.generation.base import Generator, Prompt
from prefopt.rewards.urpo_text import (
    chunk_indices,
    format_referee_prompt,
    parse_ranking,
    referee_reward,
    self_rank_rewards,
    unshuffle,
    verifiable_reward,
)

__all__ = ["PolicyReferee", "urpo_verifiable", "urpo_referee", "instruction_of"]


def instruction_of(prompt: Any) -> str:
    """The last user turn of a message list (or the string itself)."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    return users[-1] if users else str(prompt)


def _tasks(task: Sequence[str] | None, n: int) -> list[str | None]:
    return list(task) if task is not None else [None] * n


@REWARD_FNS.register("urpo_verifiable")
def urpo_verifiable(prompts: Sequence[Any], completions: Sequence[str], *, answer: Sequence[str | None],
                    task: Sequence[str] | None = None, format_bonus: float = 0.0,
                    **_: Any) -> list[float | None]:
    """URPO player reward on verifiable problems (None for other tasks or without an answer)."""
    out: list[float | None] = []
    for text, gold, t in zip(completions, answer, _tasks(task, len(completions)), strict=False):
        ok = gold is not None and t in (None, "verifiable")
        out.append(verifiable_reward(text, gold, format_bonus=format_bonus) if ok else None)
    return out


@REWARD_FNS.register("urpo_referee")
def urpo_referee(prompts: Sequence[Any], completions: Sequence[str], *, meta: Sequence[dict],
                 task: Sequence[str] | None = None, **_: Any) -> list[float | None]:
    """URPO referee reward: pairwise order agreement with ``meta["gold_order"]`` (labels shown in
    ``meta["shown"]`` order); None for rows that are not ``pref_rank``."""
    out: list[float | None] = []
    for text, m, t in zip(completions, meta, _tasks(task, len(completions)), strict=False):
        if t != "pref_rank" or not m or "gold_order" not in m:
            out.append(None)
        else:
            out.append(referee_reward(text, m["shown"], m["gold_order"]))
    return out


class Referee(Protocol):
    """What a :class:`~prefopt.rewards.sources.RewardSource` asks a referee (URPO's self-referee)."""

    def rewards(self, prompts: Sequence[Prompt], completions: Sequence[str], groups: Sequence[int],
                task: Sequence[str] | None) -> torch.Tensor:
        """``[N]`` rewards (NaN = this referee gives none for the row)."""

    def metrics(self) -> dict[str, float]:
        """Metrics gathered since the last call (then reset)."""


class PolicyReferee:
    """Self-ranking rewards for open-ended groups with the live policy's generator.

    Args:
        generator: a :class:`~prefopt.generation.base.Generator` over the *current* policy.
        max_new_tokens: referee output budget.
        calls: shuffled judge calls per chunk (2 in the spec).
        max_chunk: most candidates per referee call.
        seed: seed of the shuffles.
    """

    def __init__(self, generator: Generator, *, max_new_tokens: int = 48, calls: int = 2, max_chunk: int = 8,
                 seed: int = 0):
        self.generator, self.max_new_tokens = generator, max_new_tokens
        self.calls, self.max_chunk = calls, max_chunk
        self.rng = random.Random(seed)
        self.parse_failures = 0
        self.calls_made = 0
        self.policy_version: Any = None

    def _rank(self, instruction: str, cands: list[str]) -> list[list[int] | None]:
        from prefopt.generation.base import SamplingParams

        prompts, shown_all = [], []
        for _ in range(self.calls):
            text, shown = format_referee_prompt(instruction, cands, rng=self.rng)
            prompts.append([{"role": "user", "content": text}])
            shown_all.append(shown)
        outs = self.generator.generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=self.max_new_tokens))
        orders = []
        for out, shown in zip(outs, shown_all, strict=False):
            ranking = parse_ranking(out[0].text, len(cands))
            self.calls_made += 1
            self.parse_failures += ranking is None
            orders.append(None if ranking is None else unshuffle(ranking, shown))
        return orders

    def rewards(self, prompts: Sequence[Prompt], completions: Sequence[str], groups: Sequence[int],
                task: Sequence[str] | None) -> torch.Tensor:
        """``[N]`` rewards in [0, 1] for rows of ``open`` groups (NaN elsewhere)."""
        out = torch.full((len(completions),), math.nan)
        tasks = _tasks(task, len(completions))
        for g in dict.fromkeys(groups):
            idx = [i for i, gi in enumerate(groups) if gi == g]
            if tasks[idx[0]] != "open":
                continue
            for chunk in chunk_indices(len(idx), self.max_chunk):
                rows = [idx[c] for c in chunk]
                orders = self._rank(instruction_of(prompts[rows[0]]), [completions[r] for r in rows])
                for r, value in zip(rows, self_rank_rewards(orders, len(rows)), strict=False):
                    out[r] = value
        return out

    def metrics(self) -> dict[str, float]:
        """Parse-failure rate since the last call (then reset)."""
        rate = self.parse_failures / self.calls_made if self.calls_made else 0.0
        self.parse_failures = self.calls_made = 0
        return {"urpo/referee_parse_failure": rate}
