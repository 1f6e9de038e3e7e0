"""Reward-model training data: built records -> tokenised RM items -> padded RM batches.

* **pairs** (``prompt, chosen, rejected``): two sequences ``prompt + completion`` (completion ends with
  EOS, spec 0.2), with the prompt length of each row (the GPM gate reads the last prompt token).
* **ranked** (``prompt, responses, scores``): K sequences sorted best first with their scores (listwise BT).
* **POLAR triples** (``prompt, reference, chosen, rejected``; ranked records are turned into triples with
  :func:`reward_models.polar_data.build_sft_triples`): ``encode_polar(prompt, reference, chosen)`` and
  ``encode_polar(prompt, reference, rejected)``.

Batches put the first sequence of every item first: pairs are ``[chosen block; rejected block]``.
The order of items per epoch is a seeded shuffle, identical on every rank, so a resumed run replays the
same micro-batches.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from prefopt.core.errors import DataError
from prefopt.core.loop import (  # noqa: F401  (re-exported: shared with the policy loops)
    epoch_order,
    micro_batches,
    subset,
    train_eval_paths,
)


@dataclass(frozen=True)
class RMItem:
    """One training unit: K >= 2 token sequences (best first), prompt lengths, optional margin/scores."""

    seqs: tuple[tuple[int, ...], ...]
    prompt_lengths: tuple[int, ...]
    scores: tuple[float, ...] | None = None
    margin: float | None = None


@dataclass(frozen=True)
class RMBatch:
    """Padded rows of a micro-batch. Row ``slot[b, k]`` holds item b's k-th sequence (-1 = none)."""

    input_ids: Tensor
    attention_mask: Tensor
    prompt_lengths: Tensor
    slot: Tensor
    scores: Tensor | None = None
    margin: Tensor | None = None
    # The same sequences in a faster layout (packed / shared prompt); None = use the padded rows.
    rows: Any = None

    @property
    def num_items(self) -> int:
        return int(self.slot.shape[0])


def read_records(path: Path) -> list[dict]:
    """Raw JSON rows of a built ``.jsonl`` file (TRL preference rows converted to prefopt's schema)."""
    from data_pipelines.sources import iter_jsonl
    from data_pipelines.trl_formats import from_trl

    raws = list(iter_jsonl(path))
    trl = from_trl(raws)
    return [r.data for r in raws] if trl is None else [ex.to_record() for ex in trl]


def read_records_head(path: Path) -> dict | None:
    """The first raw record of ``path`` (to tell its schema), or None when it has none."""
    from data_pipelines.errors import Issues
    from data_pipelines.sources import iter_jsonl

    return next((r.data for r in iter_jsonl(path, Issues("skip"))), None)


def load_checked(path: Path, schema: str, on_error: str = "raise") -> tuple[list, dict[str, int]]:
    """``pairwise``/``ranked`` examples of ``path`` checked exactly as ``prefopt data build`` checks them
    (file, line and field in every error); returns ``(examples, skipped counts by reason)``."""
    from data_pipelines.errors import Issues
    from data_pipelines.sources import load_examples

    issues = Issues(on_error)
    return load_examples(path, schema, issues, for_training=True), issues.as_dict()


def tokenize_records(records: list, schema: str, tokenizer: Any, policy: Any,
                     where: str = "") -> tuple[list[RMItem], dict[str, int]]:
    """Tokenise validated ``pairwise`` or ``ranked`` examples (see :func:`load_checked`) into RM items
    (over-length rows follow ``policy``)."""
    from data_pipelines.tokenize import TokenizeStats, tokenize_pairwise, tokenize_ranked

    stats = TokenizeStats()
    items: list[RMItem] = []
    bad = 0
    for ex in records:
        try:
            tok = (tokenize_pairwise if schema == "pairwise" else tokenize_ranked)(ex, tokenizer, policy, stats)
        except DataError:  # e.g. an empty message inside the prompt: skipped and counted
            bad += 1
            continue
        if tok is None:
            continue
        if schema == "pairwise":
            n = len(tok.prompt_ids)
            items.append(RMItem((tok.prompt_ids + tok.chosen_ids, tok.prompt_ids + tok.rejected_ids), (n, n),
                                margin=tok.margin))
        else:
            order = sorted(range(len(tok.scores)), key=lambda i: (-tok.scores[i], i))
            n = len(tok.prompt_ids)
            items.append(RMItem(tuple(tok.prompt_ids + tok.completion_ids[i] for i in order),
                                (n,) * len(order), tuple(tok.scores[i] for i in order)))
    return items, {"records": len(records), "skipped_bad_text": bad, **stats.as_dict()}


def polar_triples(records: list[dict], *, seed: int, per_prompt: int, wrapper: str) -> list[dict]:
    """Rows with ``reference`` are kept; ranked rows become (best, chosen, rejected) triples."""
    from reward_models.polar_data import build_sft_triples

    direct = [r for r in records if "reference" in r]
    ranked = [r for r in records if "reference" not in r and "scores" in r]
    bad = len(records) - len(direct) - len(ranked)
    if bad:
        raise DataError(f"{bad} record(s) are neither POLAR triples (prompt, reference, chosen, rejected) "
                        "nor ranked lists (prompt, responses, scores)")
    return direct + build_sft_triples(ranked, seed=seed, max_per_prompt=per_prompt, wrapper=wrapper)


def tokenize_triples(triples: list[dict], tokenizer: Any, *, max_length: int, max_response_len: int,
                     split_token: str, reward_token: str, wrapper: str) -> list[RMItem]:
    """POLAR items: ``[encode(prompt, ref, chosen), encode(prompt, ref, rejected)]``."""
    from reward_models.polar_data import encode_polar

    items = []
    for line, t in enumerate(triples, 1):
        for key in ("prompt", "reference", "chosen", "rejected"):
            if key not in t:
                raise DataError(f"POLAR triple without '{key}'", line=line, field=key)
        kw = dict(wrapper=t.get("wrapper", wrapper), split_token=split_token, reward_token=reward_token,
                  max_len=max_length, max_response_len=max_response_len)
        seqs = tuple(tuple(encode_polar(tokenizer, t["prompt"], t["reference"], t[k], **kw))
                     for k in ("chosen", "rejected"))
        items.append(RMItem(seqs, (1, 1)))
    return items


def bootstrap(items: list, seed: int) -> list:
    """A bootstrap resample (same size, with replacement) for ensemble members."""
    rng = random.Random(seed)
    return [items[rng.randrange(len(items))] for _ in items]


def collate_rm(items: Sequence[RMItem], pad_token_id: int, layout: str = "padded") -> RMBatch:
    """Right-padded rows, sequence k of every item together (``[chosen block; rejected block]``).

    ``layout`` ``packed`` / ``shared_prompt`` also builds :class:`reward_models.layouts.RMRows` for the
    same sequence order (``batch.rows``; sequences with identical prompts share one row).
    """
    from reward_models.layouts import build_rows, collate_right

    kmax = max(len(it.seqs) for it in items)
    rows: list[tuple[int, ...]] = []
    plen: list[int] = []
    slot = torch.full((len(items), kmax), -1, dtype=torch.long)
    for k in range(kmax):
        for b, it in enumerate(items):
            if k < len(it.seqs):
                slot[b, k] = len(rows)
                rows.append(it.seqs[k])
                plen.append(min(it.prompt_lengths[k], len(it.seqs[k])))
    ids, mask = collate_right(rows, pad_token_id)
    scores = None
    if any(it.scores is not None for it in items):
        scores = torch.full((len(items), kmax), float("nan"))
        for b, it in enumerate(items):
            scores[b, :len(it.scores or ())] = torch.tensor(it.scores or (), dtype=torch.float32)
    margin = None
    if any(it.margin is not None for it in items):
        margin = torch.tensor([float(it.margin or 0.0) for it in items], dtype=torch.float32)
    fast = None if layout == "padded" else build_rows(rows, plen, pad_token_id, layout)
    return RMBatch(ids, mask, torch.tensor(plen, dtype=torch.long), slot, scores, margin, fast)
