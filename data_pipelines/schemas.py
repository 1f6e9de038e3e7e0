"""Record types for preference data: the ONLY example types crossing package borders.

Text records (before tokenisation):

* :class:`PairwiseExample` - prompt, chosen reply, rejected reply, optional margin.
* :class:`RankedExample`   - prompt, K >= 2 responses with scores (higher is better).
* :class:`GroupExample`    - prompt, N rollouts with rewards (online algorithms).

A prompt is always stored as a list of chat messages ``[{"role": ..., "content": ...}]`` whose last
message is from the user; completions are plain strings (the final assistant reply). Records
round-trip through JSON with :meth:`to_record` / ``from_record`` so built sets are plain jsonl.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

Message = dict[str, str]
ROLES = ("system", "user", "assistant")


def as_messages(prompt: str | list[Message]) -> list[Message]:
    """Normalise a plain-string prompt to a one-turn user message list (message lists pass through)."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def prompt_text(prompt: list[Message]) -> str:
    """A stable plain-text key for a prompt (used for de-duplication and grouping)."""
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


@dataclass(frozen=True)
class PairwiseExample:
    """One preference pair. ``margin`` is an optional non-negative strength (e.g. a score gap)."""

    prompt: list[Message]
    chosen: str
    rejected: str
    margin: float | None = None
    id: str = ""
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        return {"id": self.id, "source": self.source, "prompt": self.prompt, "chosen": self.chosen,
                "rejected": self.rejected, "margin": self.margin, "meta": self.meta}

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> "PairwiseExample":
        return cls(prompt=as_messages(rec["prompt"]), chosen=rec["chosen"], rejected=rec["rejected"],
                   margin=rec.get("margin"), id=str(rec.get("id", "")), source=rec.get("source", ""),
                   meta=dict(rec.get("meta") or {}))


@dataclass(frozen=True)
class RankedExample:
    """K >= 2 responses to one prompt with scores (higher is better); not necessarily sorted."""

    prompt: list[Message]
    responses: list[str]
    scores: list[float]
    id: str = ""
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        return {"id": self.id, "source": self.source, "prompt": self.prompt,
                "responses": self.responses, "scores": self.scores, "meta": self.meta}

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> "RankedExample":
        return cls(prompt=as_messages(rec["prompt"]), responses=list(rec["responses"]),
                   scores=[float(s) for s in rec["scores"]], id=str(rec.get("id", "")),
                   source=rec.get("source", ""), meta=dict(rec.get("meta") or {}))


@dataclass(frozen=True)
class GroupExample:
    """A prompt with N rollouts and their rewards (online group-relative algorithms)."""

    prompt: list[Message]
    responses: list[str]
    rewards: list[float]
    id: str = ""
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        return {"id": self.id, "source": self.source, "prompt": self.prompt,
                "responses": self.responses, "rewards": self.rewards, "meta": self.meta}

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> "GroupExample":
        return cls(prompt=as_messages(rec["prompt"]), responses=list(rec["responses"]),
                   rewards=[float(r) for r in rec["rewards"]], id=str(rec.get("id", "")),
                   source=rec.get("source", ""), meta=dict(rec.get("meta") or {}))


@dataclass(frozen=True)
class PromptExample:
    """A prompt alone (online rollouts, AlpacaEval generation), with an optional reference answer."""

    prompt: list[Message]
    id: str = ""
    source: str = ""
    answer: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        return {"id": self.id, "source": self.source, "prompt": self.prompt, "answer": self.answer,
                "meta": self.meta}

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> "PromptExample":
        return cls(prompt=as_messages(rec["prompt"]), id=str(rec.get("id", "")),
                   source=rec.get("source", ""), answer=rec.get("answer"), meta=dict(rec.get("meta") or {}))


SCHEMAS = {"pairwise": PairwiseExample, "ranked": RankedExample, "group": GroupExample,
           "prompt": PromptExample}


def is_finite_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(float(x))
