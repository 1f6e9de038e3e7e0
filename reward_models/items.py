"""Reward-model training items per data shape: checked pairs / ranked lists, or POLAR triples.

A kind's :attr:`reward_models.kinds.RMKind.load_items` is one of these; both return ``(train items,
held-out items, tokenisation stats)``.
"""
from __future__ import annotations

from typing import Any

from prefopt.core.errors import DataError
from prefopt.core.logging import is_main_process
from reward_models import data as D

__all__ = ["load_checked_items", "load_polar_items"]


def load_polar_items(cfg: Any, tok: Any, seed: int) -> tuple[list, list, dict]:
    """POLAR: records -> ``(prompt, reference, chosen, rejected)`` triples -> two REWARD-token rows each."""
    train_path, eval_path = D.train_eval_paths(cfg.data.path, cfg.data.eval_path)
    train = D.subset(D.read_records(train_path), cfg.data.max_train_examples, cfg.run.seed)
    held = D.subset(D.read_records(eval_path), cfg.data.max_eval_examples, None) if eval_path else []
    if not train:
        raise DataError("no training records", file=str(train_path))
    p = cfg.rm.polar
    kw = dict(max_length=cfg.data.max_length, max_response_len=p.max_response_len,
              split_token=p.split_token, reward_token=p.reward_token, wrapper=p.wrapper)
    trip = [D.polar_triples(r, seed=seed, per_prompt=p.triples_per_prompt, wrapper=p.wrapper)
            for r in (train, held)]
    return (D.tokenize_triples(trip[0], tok, **kw), D.tokenize_triples(trip[1], tok, **kw),
            {"records": len(train), "triples": len(trip[0])})


def load_checked_items(cfg: Any, tok: Any, seed: int) -> tuple[list, list, dict]:
    """Pairs or ranked lists through the same checks as ``data build`` (file/line/field, ``on_error``)."""
    from data_pipelines.sources import infer_kind
    from data_pipelines.tokenize import LengthPolicy, describe_counts, print_data_summary
    from reward_models.kinds import get_kind

    train_path, eval_path = D.train_eval_paths(cfg.data.path, cfg.data.eval_path)
    first = D.read_records_head(train_path)
    if first is None:
        raise DataError("no training records", file=str(train_path))
    schema = infer_kind(first)
    if schema not in ("pairwise", "ranked") or (schema == "ranked" and not get_kind(cfg.rm.kind).ranked_lists):
        raise DataError(f"rm kind '{cfg.rm.kind}' cannot train on {schema} records", file=str(train_path))
    examples, skipped = D.load_checked(train_path, schema, cfg.data.on_error)
    train = D.subset(examples, cfg.data.max_train_examples, cfg.run.seed)
    held = (D.subset(D.load_checked(eval_path, schema, cfg.data.on_error)[0], cfg.data.max_eval_examples, None)
            if eval_path else [])
    policy = LengthPolicy(cfg.data.max_length, cfg.data.max_prompt_length, cfg.data.overlong, eos_last=True)
    items, stats = D.tokenize_records(train, schema, tok, policy, str(train_path))
    stats["skipped_records"] = skipped
    held_items = D.tokenize_records(held, schema, tok, policy, str(eval_path))[0] if held else []
    if not items:
        raise DataError(f"no usable examples left ({describe_counts(stats)})", file=str(train_path))
    if is_main_process():
        print_data_summary(str(train_path), stats, len(items))
    return items, held_items, stats
