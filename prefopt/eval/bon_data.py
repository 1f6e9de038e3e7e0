"""Best-of-N inputs: prompts with candidates and gold scores, in two formats (detected per record).

* AlpacaEval best-of-16 (``../shared/data/alpaca-eval-bon16``): ``{id, instruction, reference_output,
  candidates: [{sample_index, output, gpt4_turbo_preference_vs_reference}]}``; candidates whose gold is
  null are skipped (11 of 16 are scored there).
* generic jsonl (what ``prefopt data label`` with a gold scorer produces): ``{prompt, candidates:
  [{text, gold}], id?, reference?}``; ``prompt`` is text or a list of chat messages.
* ranked sets (``{prompt, responses, scores}``, the ranked schema of ``data_pipelines``): the scores
  are the gold.

Every prompt becomes ``{id, prompt (messages), candidates, gold, reference, line}``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from prefopt.core.errors import ConfigError, DataError

BON16_GOLD = "gpt4_turbo_preference_vs_reference"
# format -> (text field, gold field, prompt field, reference field) of a candidate/record.
FORMATS = {"alpacaeval_bon": ("output", BON16_GOLD, "instruction", "reference_output"),
           "generic": ("text", "gold", "prompt", "reference")}


def detect_format(rec: dict) -> str:
    """``alpacaeval_bon`` when the record has ``instruction``, else ``generic``."""
    return "alpacaeval_bon" if "instruction" in rec else "generic"


def _from_ranked(rec: dict) -> dict:
    """A ranked-set record as a generic one (``responses``/``scores`` -> ``candidates``)."""
    if "candidates" in rec or not isinstance(rec.get("responses"), list):
        return rec
    scores = rec.get("scores")
    if not isinstance(scores, list) or len(scores) != len(rec["responses"]):
        return {**rec, "candidates": None}
    return {**rec, "candidates": [{"text": t, "gold": g} for t, g in zip(rec["responses"], scores, strict=True)]}


def _messages(value: Any, file: str, line: int, field: str) -> list[dict]:
    if isinstance(value, str) and value.strip():
        return [{"role": "user", "content": value}]
    if isinstance(value, list) and value and all(isinstance(m, dict) and "content" in m for m in value):
        return [{"role": m.get("role", "user"), "content": m["content"]} for m in value]
    raise DataError("missing or empty prompt", file=file, line=line, field=field)


def _candidates(rec: dict, fmt: str, file: str, line: int) -> tuple[list[str], list[float]]:
    text_f, gold_f = FORMATS[fmt][:2]
    cands = rec.get("candidates")
    if not isinstance(cands, list):
        raise DataError("expected a list of candidates", file=file, line=line, field="candidates")
    texts, gold = [], []
    for k, c in enumerate(cands):
        if not isinstance(c, dict) or not isinstance(c.get(text_f), str):
            raise DataError(f"candidate {k} has no text", file=file, line=line, field=f"candidates[{k}].{text_f}")
        g = c.get(gold_f)
        if g is None:
            continue
        if not isinstance(g, (int, float)) or isinstance(g, bool):
            raise DataError(f"candidate {k}: gold score must be a number, got {g!r}", file=file, line=line,
                            field=f"candidates[{k}].{gold_f}")
        texts.append(c[text_f])
        gold.append(float(g))
    if not gold and cands:
        raise DataError(f"all {len(cands)} candidates have a null gold score", file=file, line=line,
                        field=f"candidates[].{gold_f}")
    if len(gold) < 2:
        raise DataError(f"{len(gold)} scored candidate(s); best-of-N needs K >= 2", file=file, line=line,
                        field="candidates")
    return texts, gold


def load_bon(path: str, limit: int | None = None) -> tuple[list[dict], str]:
    """``(prompts, format)`` from a jsonl/json(.gz) file; the first ``limit`` prompts when given.

    Raises:
        DataError: a missing file, an empty file, or a bad record (names file, line and field).
    """
    from data_pipelines.sources import read_records

    if limit is not None and limit <= 0:
        raise ConfigError(f"--limit must be >= 1, got {limit}")
    if not Path(path).is_file():
        raise DataError("file not found", file=path)
    rows, fmt = [], None
    for rec in read_records(path):
        data = _from_ranked(rec.data)
        fmt = fmt or detect_format(data)
        _, _, prompt_f, ref_f = FORMATS[fmt]
        texts, gold = _candidates(data, fmt, path, rec.line)
        rid = data.get("id")
        rows.append({"id": str(len(rows) if rid in (None, "") else rid),
                     "prompt": _messages(data.get(prompt_f), path, rec.line, prompt_f),
                     "candidates": texts, "gold": gold, "reference": data.get(ref_f), "line": rec.line})
        if limit is not None and len(rows) >= limit:
            break
    if not rows:
        raise DataError("no prompts", file=path)
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"duplicate id {dup!r}", file=path, field="id")
    return rows, fmt
