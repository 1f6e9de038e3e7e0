"""Prompt sources for the online loop: generated arithmetic, jsonl records, HH-RLHF, URPO mixture.

Every source returns :class:`data_pipelines.schemas.PromptExample` objects; ``answer`` carries the gold
answer of verifiable tasks and ``meta`` the task type (``meta["task"]``) plus URPO referee details.
Generation is seeded, so the same config gives the same prompts.
"""
from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, Callable

from data_pipelines.schemas import PromptExample
from prefopt.core.errors import ConfigError, DataError

if TYPE_CHECKING:
    from prefopt.loops.online_config import PromptSourceConfig

__all__ = ["arithmetic_prompts", "jsonl_prompts", "hh_rlhf_prompts", "urpo_prompts", "load_prompts",
           "alpaca_eval_prompts", "read_prompt_file", "OPEN_TOPICS"]

OPEN_TOPICS = ("the sea", "autumn", "a cat", "coffee", "the moon", "trains", "music", "rain", "books",
               "mountains", "bread", "friendship", "winter", "a garden", "the city", "bicycles")


def _sum_question(a: int, b: int, instruction: str) -> str:
    q = f"What is {a} + {b}?"
    return f"{q} {instruction}".strip()


def arithmetic_prompts(n: int, *, max_operand: int = 9, instruction: str = "", seed: int = 0) -> list[PromptExample]:
    """``n`` questions "What is a + b?" with a, b uniform in 0..max_operand; answer = str(a + b).

    Example: seed 0 gives a reproducible list; ``answer`` of "What is 3 + 4?" is "7".
    """
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
        out.append(PromptExample(prompt=[{"role": "user", "content": _sum_question(a, b, instruction)}],
                                 id=f"sum-{i}", source="arithmetic", answer=str(a + b),
                                 meta={"task": "verifiable", "a": a, "b": b}))
    return out


def jsonl_prompts(path: str, n: int | None) -> list[PromptExample]:
    """Prompts of a jsonl/json/parquet file whose records hold ``prompt`` (and optional ``answer``)."""
    from pathlib import Path

    from data_pipelines.sources import read_records

    if Path(path).is_dir():
        path = str(Path(path) / "train.jsonl")
    out = []
    for rec in read_records(path):
        data = rec.data if hasattr(rec, "data") else rec
        if "prompt" not in data:
            raise DataError("record without a 'prompt' field", file=path, line=getattr(rec, "line", None),
                            field="prompt")
        try:
            out.append(PromptExample.from_record(data))
        except (KeyError, TypeError, AttributeError) as exc:
            raise DataError(f"malformed prompt ({type(exc).__name__}: {exc})", file=path,
                            line=getattr(rec, "line", None), field="prompt") from None
        if n is not None and len(out) >= n:
            break
    return out


def hh_rlhf_prompts(path: str, n: int | None) -> list[PromptExample]:
    """Prompt turns (everything before the final assistant reply) of raw HH-RLHF transcripts; the
    chosen final reply is kept as ``answer`` (a POLAR reference). ``n=None`` reads them all. Transcripts
    with an empty turn (a few in the raw data; ``data build`` skips them too) are left out."""
    from data_pipelines.adapters import parse_transcript
    from data_pipelines.sources import read_records

    out = []
    for rec in read_records(path):
        if not isinstance(rec.data.get("chosen"), str):
            raise DataError("expected the HH-RLHF transcript text", file=path, line=rec.line, field="chosen")
        msgs = parse_transcript(rec, rec.data["chosen"], "chosen")
        answer = None
        while msgs and msgs[-1]["role"] == "assistant":
            answer = msgs[-1]["content"] if answer is None else answer
            msgs = msgs[:-1]
        if msgs and all(m["content"].strip() for m in msgs):  # raw HH has a few empty turns: skipped
            out.append(PromptExample(prompt=msgs, id=f"hh-{len(out)}", source="hh_rlhf", answer=answer,
                                     meta={"task": "open"}))
        if n is not None and len(out) >= n:
            break
    return out


def alpaca_eval_prompts(path: str, n: int | None = None) -> list[PromptExample]:
    """AlpacaEval records (``instruction``; ``output`` kept as ``answer``), ids ``ae-<line index>``."""
    from data_pipelines.sources import read_records

    out = []
    for i, rec in enumerate(read_records(path)):
        text = rec.data.get("instruction")
        if not isinstance(text, str) or not text.strip():
            raise DataError("expected a non-empty instruction", file=path, line=rec.line, field="instruction")
        out.append(PromptExample(prompt=[{"role": "user", "content": text}], id=f"ae-{i}", source="alpaca_eval",
                                 answer=rec.data.get("output"), meta={"dataset": rec.data.get("dataset", "")}))
        if n is not None and len(out) >= n:
            break
    return out


def read_prompt_file(kind: str, path: str) -> list[PromptExample]:
    """Every prompt of one file: ``jsonl`` (records with ``prompt``; a built data folder reads its
    train.jsonl), ``hh_rlhf`` (raw transcripts) or ``alpaca_eval`` (``instruction`` records)."""
    from pathlib import Path

    if not Path(path).exists():
        raise ConfigError(f"prompt file not found: {path}")
    return _FILE_READERS.get(kind, _numbered_jsonl_prompts)(path)


def _numbered_jsonl_prompts(path: str) -> list[PromptExample]:
    return [ex if ex.id else PromptExample(ex.prompt, f"p-{i}", ex.source, ex.answer, ex.meta)
            for i, ex in enumerate(jsonl_prompts(path, None))]


# prompt file format -> reader of every prompt in the file (anything else: jsonl with ``prompt``)
_FILE_READERS: dict[str, Callable[[str], list[PromptExample]]] = {
    "hh_rlhf": lambda path: hh_rlhf_prompts(path, None),
    "alpaca_eval": alpaca_eval_prompts,
}


def _pref_item(i: int, rng: random.Random) -> PromptExample:
    from prefopt.rewards.urpo_text import format_referee_prompt

    a, b = rng.randint(0, 9), rng.randint(0, 9)
    wrong = a + b + rng.choice([-2, -1, 1, 2])
    cands = [f"{a} + {b} = {a + b}.", f"{a} + {b} = {wrong}."]
    order = [0, 1] if rng.random() < 0.5 else [1, 0]
    cands = [cands[k] for k in order]
    gold = [order.index(0), order.index(1)]  # correct candidate first
    text, shown = format_referee_prompt(f"What is {a} + {b}?", cands, rng=rng)
    return PromptExample(prompt=[{"role": "user", "content": text}], id=f"rank-{i}", source="urpo",
                         meta={"task": "pref_rank", "shown": shown, "gold_order": gold, "candidates": cands})


def urpo_prompts(n: int, *, mix: tuple[float, ...] = (1.0, 1.0, 1.0), seed: int = 0) -> list[PromptExample]:
    """URPO mixture: verifiable sums (player format), 2-candidate referee items whose gold is the
    correct sum (spec A-U5), and open-ended prompts ranked by the policy itself."""
    from prefopt.rewards.urpo_text import format_player_prompt

    rng = random.Random(seed)
    tasks = rng.choices(["verifiable", "pref_rank", "open"], weights=list(mix), k=n)
    out = []
    for i, task in enumerate(tasks):
        if task == "verifiable":
            a, b = rng.randint(0, 9), rng.randint(0, 9)
            out.append(PromptExample(prompt=[{"role": "user", "content": format_player_prompt(f"What is {a} + {b}?")}],
                                     id=f"sum-{i}", source="urpo", answer=str(a + b), meta={"task": task}))
        elif task == "pref_rank":
            out.append(_pref_item(i, rng))
        else:
            topic = rng.choice(OPEN_TOPICS)
            out.append(PromptExample(prompt=[{"role": "user", "content": f"Write one short sentence about {topic}."}],
                                     id=f"open-{i}", source="urpo", meta={"task": task}))
    return out


def load_prompts(cfg: PromptSourceConfig, seed: int = 0) -> list[PromptExample]:
    """Prompts for a :class:`~prefopt.loops.online_config.PromptSourceConfig` (train + held-out)."""
    total = cfg.n + cfg.n_eval
    if cfg.kind in _GENERATED:
        return _GENERATED[cfg.kind](cfg, total, seed)
    if not cfg.path:
        raise ConfigError(f"online.prompts.kind={cfg.kind} needs online.prompts.path")
    return _FROM_FILE.get(cfg.kind, jsonl_prompts)(cfg.path, total)


# online prompt source kind -> builder: generated sources, then file sources (default jsonl)
_GENERATED: dict[str, Callable[[Any, int, int], list[PromptExample]]] = {
    "arithmetic": lambda cfg, total, seed: arithmetic_prompts(total, max_operand=cfg.max_operand,
                                                              instruction=cfg.instruction, seed=seed),
    "urpo": lambda cfg, total, seed: urpo_prompts(total, mix=tuple(cfg.urpo_mix), seed=seed),
}
_FROM_FILE: dict[str, Callable[[str, int], list[PromptExample]]] = {"hh_rlhf": hh_rlhf_prompts}
