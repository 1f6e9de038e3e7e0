"""Deterministic train/test splits by prompt hash, and exact de-duplication.

The split of a record depends only on ``(seed, prompt)``: every record sharing a prompt lands on the
same side, and the assignment is stable across runs, machines and Python hash seeds (SHA-256).
"""
from __future__ import annotations

import hashlib
from typing import Any, Iterable

from data_pipelines.schemas import PairwiseExample, PromptExample, prompt_text


def prompt_unit(prompt: list[dict[str, str]], seed: int) -> float:
    """A uniform number in [0, 1) derived from ``sha256(f"{seed}\\0{prompt_text}")``."""
    digest = hashlib.sha256(f"{seed}\0{prompt_text(prompt)}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_of(prompt: list[dict[str, str]], test_fraction: float, seed: int) -> str:
    """``"test"`` when ``prompt_unit(prompt, seed) < test_fraction``, else ``"train"``."""
    return "test" if prompt_unit(prompt, seed) < test_fraction else "train"


def split_by_prompt(examples: Iterable[Any], test_fraction: float, seed: int) -> tuple[list, list]:
    """Split examples into ``(train, test)`` by prompt hash, keeping input order on each side."""
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction}")
    train, test = [], []
    for ex in examples:
        (test if split_of(ex.prompt, test_fraction, seed) == "test" else train).append(ex)
    return train, test


def dedup_key(ex: Any) -> tuple:
    """Exact identity of a record: (kind, prompt, chosen, rejected) or (kind, prompt, responses[, answer])."""
    p = prompt_text(ex.prompt)
    if isinstance(ex, PairwiseExample):
        return ("pairwise", p, ex.chosen, ex.rejected)
    if isinstance(ex, PromptExample):
        return ("prompt", p, ex.answer)
    return (type(ex).__name__, p, tuple(ex.responses))


def dedup(examples: Iterable[Any], seen: set | None = None) -> tuple[list, int]:
    """Drop exact duplicates (first occurrence kept); return ``(kept, n_removed)``.

    Args:
        examples: schema records.
        seen: keys already emitted elsewhere (updated in place), to de-duplicate across calls.
    """
    seen = set() if seen is None else seen
    kept, removed = [], 0
    for ex in examples:
        key = dedup_key(ex)
        if key in seen:
            removed += 1
            continue
        seen.add(key)
        kept.append(ex)
    return kept, removed
