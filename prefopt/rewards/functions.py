"""Rule-based / verifiable reward functions (registered in ``REWARD_FNS``) and their weighted sum.

TRL-compatible signature (TRL GRPOTrainer reward functions): ``fn(prompts, completions, **columns) -> list[float | None]``,
``None`` = not applicable (e.g. a URPO referee reward on a player prompt). Columns the loop passes:
``answer`` (PromptExample.answer, may be None), ``completion_ids`` (token ids), ``task``, ``meta``.
Hyper-parameters are keyword arguments bound from the YAML (``kwargs:``).
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable, Sequence

from prefopt.core.registry import REWARD_FNS

__all__ = ["CombinedReward", "extract_number", "math_exact", "format_regex", "max_length",
           "length_penalty", "contains", "normalise_answer"]

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def normalise_answer(text: str) -> str:
    """``" 7.0 "`` → ``"7.0"`` as a float repr when numeric, else stripped lower-case text."""
    s = str(text).strip().strip("$").replace(",", "").replace(" ", "").rstrip(".").lower()
    try:
        return repr(float(s))
    except ValueError:
        return s


def extract_number(text: str | None, mode: str = "auto") -> str | None:
    """Final answer of a completion.

    ``auto``: ``\\boxed{}`` or an ``Answer:`` line when present (URPO format), else the last number;
    ``last_number``: the last number; ``first_number``: the first number; ``answer_line``: only
    ``\\boxed{}`` / ``Answer:``. Example: ``"3 + 4 = 7."`` → ``"7"`` (auto).
    """
    from prefopt.rewards.urpo_text import extract_final_answer

    if not text:
        return None
    if mode in ("auto", "answer_line"):
        found = extract_final_answer(text)
        if found is not None or mode == "answer_line":
            return found
    nums = _NUMBER.findall(text)
    if not nums:
        return None
    return nums[0] if mode == "first_number" else nums[-1]


@REWARD_FNS.register("math_exact")
def math_exact(prompts: Sequence[Any], completions: Sequence[str], *, answer: Sequence[str | None],
               mode: str = "auto", **_: Any) -> list[float | None]:
    """1.0 when the extracted final answer equals ``answer`` numerically/textually, else 0.0;
    None when the prompt has no answer. Example: answer "7", "The sum is 7." → 1.0."""
    out: list[float | None] = []
    for text, gold in zip(completions, answer, strict=False):
        if gold is None:
            out.append(None)
            continue
        pred = extract_number(text, mode)
        out.append(float(pred is not None and normalise_answer(pred) == normalise_answer(gold)))
    return out


@REWARD_FNS.register("format_regex")
def format_regex(prompts: Sequence[Any], completions: Sequence[str], *, pattern: str = r"^\s*-?\d+\s*$",
                 full: bool = False, **_: Any) -> list[float]:
    """1.0 when ``pattern`` is found in the completion (``full``: matches all of it), else 0.0.
    Default pattern: the completion is a bare integer. Example: "7" → 1.0, "It is 7" → 0.0."""
    rx = re.compile(pattern, re.DOTALL)
    hit = rx.fullmatch if full else rx.search
    return [float(hit(text or "") is not None) for text in completions]


def _lengths(completions: Sequence[str], completion_ids: Sequence[Sequence[int]] | None) -> list[int]:
    if completion_ids is not None:
        return [len(ids) for ids in completion_ids]
    return [len((t or "").split()) for t in completions]


@REWARD_FNS.register("max_length")
def max_length(prompts: Sequence[Any], completions: Sequence[str], *, max_tokens: int = 8,
               completion_ids: Sequence[Sequence[int]] | None = None, **_: Any) -> list[float]:
    """1.0 when the completion has at most ``max_tokens`` tokens (words without ids), else 0.0."""
    return [float(n <= max_tokens) for n in _lengths(completions, completion_ids)]


@REWARD_FNS.register("length_penalty")
def length_penalty(prompts: Sequence[Any], completions: Sequence[str], *, max_tokens: int = 64,
                   coef: float = 0.01, completion_ids: Sequence[Sequence[int]] | None = None,
                   **_: Any) -> list[float]:
    """``−coef · max(0, n − max_tokens)`` with n the completion's token count (0 when short enough).
    Example: n = 70, max 64, coef 0.01 → −0.06."""
    return [-coef * max(0, n - max_tokens) for n in _lengths(completions, completion_ids)]


@REWARD_FNS.register("char_fraction")
def char_fraction(prompts: Sequence[Any], completions: Sequence[str], *, chars: str = "0123456789",
                  **_: Any) -> list[float]:
    """Fraction of the completion's non-space characters that are in ``chars`` (default: digits), 0.0
    for an empty completion. A graded reward (almost every sample differs), so even a random policy gets
    group-relative advantages to learn from. Example: "7 apples" → 1/7 ≈ 0.143."""
    out = []
    for text in completions:
        visible = [c for c in (text or "") if not c.isspace()]
        out.append(sum(c in chars for c in visible) / len(visible) if visible else 0.0)
    return out


@REWARD_FNS.register("contains")
def contains(prompts: Sequence[Any], completions: Sequence[str], *, text: str = "",
             ignore_case: bool = True, **_: Any) -> list[float]:
    """1.0 when ``text`` occurs in the completion."""
    if ignore_case:
        return [float(text.lower() in (c or "").lower()) for c in completions]
    return [float(text in (c or "")) for c in completions]


class CombinedReward:
    """Weighted sum ``r = Σ_k w_k R_k`` of reward functions (docs/online.md).

    A function returning None for a sample is left out of that sample's sum; when every function
    returns None the reward is NaN ("no reward": excluded from advantages and statistics).
    :meth:`with_components` also returns each function's values (for logging).
    """

    def __init__(self, fns: Sequence[tuple[str | Callable, float, dict[str, Any]]]):
        self.fns = []
        for fn, weight, kwargs in fns:
            name = fn if isinstance(fn, str) else getattr(fn, "__name__", "fn")
            self.fns.append((name, REWARD_FNS.get(fn) if isinstance(fn, str) else fn, float(weight),
                             dict(kwargs)))

    def __call__(self, prompts: Sequence[Any], completions: Sequence[str], **columns: Any) -> list[float]:
        return self.with_components(prompts, completions, **columns)[0]

    def with_components(self, prompts: Sequence[Any], completions: Sequence[str],
                        **columns: Any) -> tuple[list[float], dict[str, list[float | None]]]:
        """``(weighted sums, {function name: its values})`` (NaN sum = every function gave None)."""
        totals = [0.0] * len(completions)
        seen = [False] * len(completions)
        components: dict[str, list[float | None]] = {}
        for name, fn, weight, kwargs in self.fns:
            values = fn(prompts, completions, **columns, **kwargs)
            if len(values) != len(completions):
                raise ValueError(f"reward function {name} returned {len(values)} values for "
                                 f"{len(completions)} completions")
            components[name] = list(values)
            for i, v in enumerate(values):
                if v is not None and not (isinstance(v, float) and math.isnan(v)):
                    totals[i] += weight * float(v)
                    seen[i] = True
        return [t if s else float("nan") for t, s in zip(totals, seen, strict=False)], components
