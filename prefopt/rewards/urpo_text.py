"""URPO pure helpers (all formats are our design; docs/online.md): referee prompts, verdict parsing and
the rewards derived from it. No torch, no model calls; the trainer does generation.

Referee output contract: brief reasoning, then a last line ``RANKING: B > A > C`` naming every
candidate label exactly once, best first. Labels are ``A, B, C, …`` in the *shown* (shuffled) order;
``shown[j]`` is the original candidate index displayed under label j.
"""
from __future__ import annotations

import random
import re
from typing import Sequence

__all__ = ["REFEREE_TEMPLATE", "PLAYER_TEMPLATE", "labels", "format_referee_prompt",
           "format_player_prompt", "parse_ranking", "unshuffle", "pairwise_order_reward",
           "referee_reward", "self_rank_rewards", "chunk_indices", "extract_final_answer",
           "verifiable_reward"]

REFEREE_TEMPLATE = (
    "You are a careful referee. Rank the candidate responses to the instruction from best to "
    "worst (helpfulness, correctness, clarity).\n\n"
    "### Instruction\n{instruction}\n\n{candidates}\n\n"
    "Think briefly, then finish with one last line exactly of the form\n"
    "RANKING: {example}\nusing every label exactly once, best first.")
PLAYER_TEMPLATE = "{instruction}\n\nGive your reasoning, then end with a line 'Answer: <final answer>'."

_RANK_LINE = re.compile(r"ranking[\s*_`]*[:：]\s*(.*)$", re.IGNORECASE)


def labels(n: int) -> list[str]:
    """Candidate labels ``A, B, …`` (at most 26)."""
    if not 1 <= n <= 26:
        raise ValueError(f"referee needs between 1 and 26 candidates, got {n}")
    return [chr(ord("A") + j) for j in range(n)]


def format_referee_prompt(instruction: str, candidates: Sequence[str], *,
                          rng: random.Random | None = None,
                          shown: Sequence[int] | None = None) -> tuple[str, list[int]]:
    """Referee prompt over ``candidates`` shown in a random (``rng``) or given (``shown``) order.

    Returns ``(prompt, shown)`` where ``shown[j]`` is the original index displayed under label j.
    """
    n = len(candidates)
    if shown is None:
        shown = list(range(n))
        (rng or random.Random()).shuffle(shown)
    shown = list(shown)
    if sorted(shown) != list(range(n)):
        raise ValueError(f"shown must be a permutation of range({n}), got {shown}")
    labs = labels(n)
    blocks = "\n\n".join(f"### Candidate {labs[j]}\n{candidates[i]}" for j, i in enumerate(shown))
    return REFEREE_TEMPLATE.format(instruction=instruction, candidates=blocks,
                                   example=" > ".join(labs)), shown


def format_player_prompt(instruction: str) -> str:
    """Player prompt for verifiable problems (asks for a final ``Answer:`` line)."""
    return PLAYER_TEMPLATE.format(instruction=instruction)


def parse_ranking(text: str | None, n: int) -> list[int] | None:
    """Label indices best → worst from the last ``RANKING:`` line, or ``None`` when malformed.

    Tolerates case, spaces, markdown emphasis and a trailing period; rejects unknown, duplicate or
    missing labels. Example: ``"... \\n ranking:  c>A > b."`` with n = 3 → [2, 0, 1].
    """
    if not text:
        return None
    line = None
    for raw in reversed(str(text).strip().splitlines()):
        match = _RANK_LINE.search(raw.strip())
        if match:
            line = match.group(1)
            break
    if line is None:
        return None
    parts = [p.strip().strip("*_`.[]()").strip().upper() for p in line.split(">")]
    labs = labels(n)
    if len(parts) != n or any(p not in labs for p in parts) or len(set(parts)) != n:
        return None
    return [labs.index(p) for p in parts]


def unshuffle(ranking: Sequence[int], shown: Sequence[int]) -> list[int]:
    """Map label indices (best → worst) back to original candidate indices."""
    return [shown[j] for j in ranking]


def pairwise_order_reward(pred: Sequence[int], gold: Sequence[int]) -> float:
    """Fraction of candidate pairs ordered as in ``gold`` (= (Kendall τ + 1)/2); for N = 2 this is
    1 when the top choice is the gold one. Example: gold [0, 1, 2], pred [1, 0, 2] → 2/3."""
    if sorted(pred) != sorted(gold):
        return 0.0
    pos = {c: k for k, c in enumerate(pred)}
    pairs = [(a, b) for i, a in enumerate(gold) for b in gold[i + 1:]]
    if not pairs:
        return 1.0
    return sum(pos[a] < pos[b] for a, b in pairs) / len(pairs)


def referee_reward(text: str | None, shown: Sequence[int], gold_order: Sequence[int]) -> float:
    """Reward of a referee completion: pairwise agreement with the gold order; parse failure → 0."""
    ranking = parse_ranking(text, len(shown))
    if ranking is None:
        return 0.0
    return pairwise_order_reward(unshuffle(ranking, shown), gold_order)


def self_rank_rewards(orders: Sequence[Sequence[int] | None], n: int,
                      fallback: float = 0.5) -> list[float]:
    """Open-task rewards from the model's own rankings of its ``n`` responses.

    Each element of ``orders`` is one judge call's ranking (original indices, best first) or None
    (parse failure). Reward of response j = (n − rank_j)/(n − 1), 1-based rank, averaged over the
    successful calls; no successful call → all ``fallback`` (equal rewards, zero advantage).
    """
    good = [list(o) for o in orders if o is not None and sorted(o) == list(range(n))]
    if not good or n < 2:
        return [fallback] * n
    total = [0.0] * n
    for order in good:
        for rank0, j in enumerate(order):
            total[j] += (n - (rank0 + 1)) / (n - 1)
    return [t / len(good) for t in total]


def chunk_indices(n: int, max_chunk: int = 8) -> list[list[int]]:
    """Split ``range(n)`` into the fewest balanced chunks of size ≤ ``max_chunk`` (referee calls
    over large groups; rewards are then normalised within each chunk)."""
    k = max(1, -(-n // max_chunk))
    base, extra = divmod(n, k)
    out, start = [], 0
    for c in range(k):
        size = base + (c < extra)
        out.append(list(range(start, start + size)))
        start += size
    return out


_BOXED = re.compile(r"\\boxed\{([^{}]*(?:\{[^{}]*\}[^{}]*)*)\}")
_ANSWER = re.compile(r"answer\s*[:：]\s*(.+)", re.IGNORECASE)


def extract_final_answer(text: str | None) -> str | None:
    """Last ``\\boxed{…}`` content, else the last ``Answer: …`` line; None when absent."""
    if not text:
        return None
    boxed = _BOXED.findall(text)
    if boxed:
        return boxed[-1].strip()
    found = _ANSWER.findall(text)
    return found[-1].strip().rstrip(".") if found else None


def _norm(ans: str) -> str:
    s = ans.strip().strip("$").replace(" ", "").replace(",", "").rstrip(".").lower()
    try:
        return repr(float(s))
    except ValueError:
        return s


def verifiable_reward(completion: str | None, answer: str, *, format_bonus: float = 0.0) -> float:
    """1 if the extracted final answer equals ``answer`` (string/number normalised), else 0;
    plus ``format_bonus`` when a final answer could be extracted at all (design, default off)."""
    pred = extract_final_answer(completion)
    if pred is None:
        return 0.0
    return float(_norm(pred) == _norm(answer)) + format_bonus
