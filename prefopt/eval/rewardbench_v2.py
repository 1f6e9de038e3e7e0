"""``prefopt eval rewardbench --benchmark v2``: RewardBench 2 (best-of-4 and Ties), resumably.

Usage::

    prefopt eval rewardbench --benchmark v2 --model runs/rm/bt                  # hub: allenai/reward-bench-2
    prefopt eval rewardbench --benchmark v2 --model runs/rm/bt --data rb2.parquet --out runs/rb2

Data rows in the official format (``allenai/reward-bench-2``, split ``test``): ``id``, ``prompt`` (text),
``chosen`` and ``rejected`` (lists of answers), ``subset`` (Factuality, Precise IF, Math, Safety, Focus,
Ties) and optionally ``num_correct``, ``num_incorrect``, ``total_completions`` (checked against the
lists), ``models``, ``additional_metadata``. ``--data`` takes a .jsonl/.json/.parquet file, ``hf:NAME@SPLIT``
or a bare hub name such as ``allenai/reward-bench-2`` (split ``test``).

Outputs in ``--out``: ``results.json`` (official layout: ``model``, ``model_type``, ``chat_template`` and
one score per subset; then prefopt's ``score``, ``subsets``, ``ties`` parts and metadata),
``per_example.jsonl`` (official columns ``id, subset, num_correct, scores, results``), ``scores.jsonl``
(the resumable store, one row per prompt) and ``run_config.json``. Scoring rules:
:mod:`prefopt.eval.rewardbench_v2_metrics`.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from prefopt.core.errors import DataError
from prefopt.core.io import atomic_write_json, atomic_write_text
from prefopt.core.logging import progress
from prefopt.eval import rewardbench_v2_metrics as M2
from prefopt.eval.resumable import ResultStore
from prefopt.eval.rewardbench import (
    DELAY_ENV,
    _read_hub_or_file,
    check_run_config,
    run_settings,
    scorer_for,
    stored_rows,
)
from prefopt.eval.rewardbench_v2_scorers import build_group_scorer
from prefopt.eval.scorers import resolve_kind

DEFAULT_DATA = "hf:allenai/reward-bench-2@test"
_HUB_NAME = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+")


def data_spec(data: str) -> str:
    """``allenai/reward-bench-2`` (a hub name that is not a local path) -> ``hf:allenai/reward-bench-2@test``."""
    if not data.startswith("hf:") and not Path(data).exists() and _HUB_NAME.fullmatch(data) \
            and not Path(data).suffix:
        return f"hf:{data}@test"
    return data


def _answers(rec: Any, name: str) -> list[str]:
    v = rec.data.get(name)
    if not isinstance(v, list) or not v:
        raise DataError(f"expected a non-empty list of answers, got {type(v).__name__}", file=rec.file,
                        line=rec.line, field=name)
    for k, a in enumerate(v):
        if not isinstance(a, str) or not a.strip():
            raise DataError(f"answer {k} is empty or not text", file=rec.file, line=rec.line, field=name)
    return list(v)


def _check_counts(rec: Any, chosen: list, rejected: list) -> None:
    expected = {"num_correct": len(chosen), "num_incorrect": len(rejected), "num_rejected": len(rejected),
                "total_completions": len(chosen) + len(rejected)}
    for f, n in expected.items():
        if f in rec.data and rec.data[f] is not None and rec.data[f] != n:
            raise DataError(f"says {rec.data[f]!r} but the row has {n}", file=rec.file, line=rec.line, field=f)


def parse_row(rec: Any) -> dict:
    """One validated prompt ``{id, subset, prompt (messages), answers, num_correct, raw, line}``.

    Raises:
        DataError: a missing/empty field, an unknown subset, counts that disagree with the lists, or a Ties
            id that is not ``ref:N``/``tied:N`` (a tied prompt needs two correct answers); names file and line.
    """
    from data_pipelines.schemas import as_messages

    d, where = rec.data, {"file": rec.file, "line": rec.line}
    if d.get("subset") not in M2.SUBSETS:
        raise DataError(f"unknown RewardBench 2 subset {d.get('subset')!r}; known: {', '.join(M2.SUBSETS)}",
                        **where, field="subset")
    if not isinstance(d.get("id"), (str, int)) or isinstance(d.get("id"), bool):
        raise DataError("missing or not a string/integer", **where, field="id")
    prompt = d.get("prompt")
    if not (isinstance(prompt, str) and prompt.strip()) and not (isinstance(prompt, list) and prompt):
        raise DataError("missing or empty prompt", **where, field="prompt")
    chosen, rejected = _answers(rec, "chosen"), _answers(rec, "rejected")
    _check_counts(rec, chosen, rejected)
    if d["subset"] == M2.TIES:
        m = M2.TIES_ID.fullmatch(str(d["id"]))
        if m is None:
            raise DataError(f"Ties id {d['id']!r} is not 'ref:N' or 'tied:N'", **where, field="id")
        if m.group(1) == "tied" and len(chosen) < 2:
            raise DataError("a 'tied:' prompt needs at least two correct answers", **where, field="chosen")
    return {"id": d["id"], "subset": d["subset"], "prompt": as_messages(prompt), "answers": chosen + rejected,
            "num_correct": len(chosen), "raw": d, "line": rec.line}


def _limited(rows: list[dict], limit: int | None) -> list[dict]:
    """First ``limit`` prompts per subset; for Ties the first ``limit`` questions (``ref:N`` with ``tied:N``)."""
    if limit is None:
        return rows
    kept, seen = [], {}
    for r in rows:
        key = M2.TIES_ID.fullmatch(str(r["id"])).group(2) if r["subset"] == M2.TIES else r["id"]
        keys = seen.setdefault(r["subset"], [])
        if key not in keys and len(keys) >= limit:
            continue
        if key not in keys:
            keys.append(key)
        kept.append(r)
    return kept


def load_rows(data: str, limit_per_subset: int | None = None) -> list[dict]:
    """Validated prompts from a file, ``hf:`` spec or hub name (see module docstring)."""
    spec = data_spec(data)
    rows, seen = [], set()
    for rec in _read_hub_or_file(spec, offline_hint="RewardBench 2 in the official row format"):
        row = parse_row(rec)
        key = (row["id"], row["subset"])
        if key in seen:
            raise DataError(f"duplicate prompt (id={row['id']!r}, subset={row['subset']!r})", file=rec.file,
                            line=rec.line, field="id")
        seen.add(key)
        rows.append(row)
    if not rows:
        raise DataError("no rows", file=spec)
    return _limited(rows, limit_per_subset)


def _length(row: dict) -> int:
    return sum(len(m["content"]) for m in row["prompt"]) + sum(len(a) for a in row["answers"])


def score_rows(group_scorer: Any, rows: list[dict], store: ResultStore, batch_size: int) -> None:
    """Score pending prompts in fixed, length-sorted batches of ``batch_size`` prompts; append each batch."""
    order = sorted(rows, key=_length)
    delay = float(os.environ.get(DELAY_ENV, "0") or 0)
    bar = progress(total=len(rows), desc="rewardbench v2")
    bar.update(len(rows) - len(store.pending(rows)))
    for s in range(0, len(order), batch_size):
        todo = store.pending(order[s:s + batch_size])
        if not todo:
            continue
        groups = [{"prompt": r["prompt"], "answers": r["answers"], "all_pairs": r["subset"] == M2.TIES, "row": r}
                  for r in todo]
        fields = group_scorer(groups)
        store.append({"id": r["id"], "subset": r["subset"], "num_correct": r["num_correct"],
                      "n": len(r["answers"]), **f} for r, f in zip(todo, fields, strict=True))
        bar.update(len(todo))
        if delay:
            time.sleep(delay)
    bar.close()


def run(args: argparse.Namespace) -> M2.RewardBench2Result:
    """Evaluate RewardBench 2, write every output, return the result."""
    rows = load_rows(args.data, args.limit_per_subset)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    check_run_config(out, {"benchmark": "v2", **run_settings(args)})
    store = ResultStore(out / "scores.jsonl", key_fields=("id", "subset"))
    start = time.perf_counter()
    if store.pending(rows):
        kind, pair_scorer = scorer_for(args, rows, out)
        score_rows(build_group_scorer(kind, pair_scorer, args.batch_size), rows, store, args.batch_size)
    scored = stored_rows(store, rows)
    meta = {"model": ",".join(args.model), "model_type": resolve_kind(args.kind, args.model)[0],
            "chat_template": "tokenizer", "dtype": "bfloat16" if args.bf16 else "float32",
            "max_length": args.max_length, "batch_size": args.batch_size, "seed": args.seed, "data": args.data}
    result = M2.score_rewardbench2(scored, metadata=meta)
    atomic_write_json(out / "results.json", result.to_dict())
    atomic_write_text(out / "per_example.jsonl",
                      "".join(json.dumps(M2.official_example_row(r)) + "\n" for r in scored))
    atomic_write_json(out / "timing.json", {"seconds": round(time.perf_counter() - start, 2), "rows": len(rows)})
    print(M2.format_table(result))
    print(f"\nresults: {out / 'results.json'}")
    return result
