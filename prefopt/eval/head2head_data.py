"""Head-to-head inputs: prompts from several sources, and precomputed AlpacaEval ``model_outputs.json``.

``--prompts`` (format from the first record):

* AlpacaEval jsonl/json (``instruction``): prompt = one user turn;
* raw hh-rlhf jsonl(.gz) (``chosen`` transcripts): prompt = the dialogue before the last Assistant turn
  (:func:`prefopt.data.prompts.hh_rlhf_prompts`);
* a jsonl of ``{prompt}`` (text or chat messages; :func:`prefopt.data.prompts.jsonl_prompts`).

Rows: ``{index, prompt (messages), instruction (the prompt as one text)}``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from prefopt.core.errors import ConfigError, DataError
from prefopt.eval.judges.base import flatten_prompt

_ALL = 10 ** 9


def _alpaca(path: str, n: int) -> list[list[dict]]:
    from prefopt.eval.alpacaeval_data import load_eval_set

    return [[{"role": "user", "content": r["instruction"]}] for r in load_eval_set(path, n)]


def _hh(path: str, n: int) -> list[list[dict]]:
    from prefopt.data.prompts import hh_rlhf_prompts

    return [list(p.prompt) for p in hh_rlhf_prompts(path, n)]


def _plain(path: str, n: int) -> list[list[dict]]:
    from prefopt.data.prompts import jsonl_prompts

    return [list(p.prompt) for p in jsonl_prompts(path, n)]


def _source(first: dict) -> Callable[[str, int], list[list[dict]]]:
    keys = [("instruction", _alpaca), ("prompt", _plain), ("chosen", _hh)]
    for key, fn in keys:
        if key in first:
            return fn
    raise DataError(f"cannot tell the prompt format: the first record has none of {[k for k, _ in keys]}")


def load_prompts(path: str, limit: int | None) -> list[dict]:
    """The first ``limit`` prompts of ``path`` as rows (see the module docstring)."""
    from data_pipelines.sources import read_records

    if limit is not None and limit <= 0:
        raise ConfigError(f"--limit must be >= 1, got {limit}")
    if not Path(path).is_file():
        raise DataError("prompts file not found", file=path)
    first = next(iter(read_records(path)), None)
    if first is None:
        raise DataError("no prompts", file=path)
    try:
        fn = _source(first.data)
    except DataError as exc:
        raise DataError(exc.reason, file=path, line=first.line) from None
    prompts = fn(path, limit or _ALL)
    if not prompts:
        raise DataError("no prompts", file=path)
    return [{"index": i, "prompt": [{"role": m["role"], "content": m["content"]} for m in p],
             "instruction": _single_text(p)} for i, p in enumerate(prompts)]


def _single_text(messages: list[dict]) -> str:
    """A one-turn prompt is its text (AlpacaEval's ``instruction``); a dialogue is flattened."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return flatten_prompt(messages)


def read_outputs(path: str, rows: list[dict]) -> list[dict]:
    """Outputs of ``model_outputs.json`` (or jsonl) for ``rows``, matched by instruction text.

    Raises:
        DataError: missing file, a record without ``instruction``/``output``, an empty output, or a prompt
            with no output in the file (names file, line and field).
    """
    from prefopt.eval.alpacaeval_data import _read, _text

    if not Path(path).is_file():
        raise DataError("outputs file not found", file=path)
    by_instr: dict[str, tuple[str, str]] = {}
    for line, rec in _read(path):
        instr = _text(rec, "instruction", path, line)
        by_instr.setdefault(instr, (_text(rec, "output", path, line), str(rec.get("generator") or "")))
    out = []
    for r in rows:
        if r["instruction"] not in by_instr:
            raise DataError(f"no output for prompt {r['index']} ({r['instruction'][:60]!r}): the outputs file does "
                            "not match --prompts", file=path, field="instruction")
        text, gen = by_instr[r["instruction"]]
        out.append({"index": r["index"], "output": text, "generator": gen})
    return out
