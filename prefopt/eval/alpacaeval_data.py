"""AlpacaEval inputs: instructions, reference outputs (by name or file) and model-output validation.

``--reference`` accepts a name or a file. Names map to the local copy under
``$PREFOPT_SHARED_DATA/alpaca-eval`` (default ``<repo>/../shared/data/alpaca-eval``; these are the
50-instruction dev slices) and, when that folder is absent, to the hub dataset
``tatsu-lab/alpaca_eval`` (all 805 instructions; needs ``datasets`` and network):

* ``gpt4_turbo`` (AlpacaEval 2.0 baseline, gpt4_1106_preview)
* ``text_davinci_003`` (AlpacaEval 1.0 baseline)
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from prefopt.core.errors import DataError

REFERENCES: dict[str, tuple[str, str]] = {
    "gpt4_turbo": ("reference_gpt4_turbo_gpt4_1106_preview.dev50.jsonl",
                   "hf:tatsu-lab/alpaca_eval:alpaca_eval_gpt4_baseline@eval"),
    "text_davinci_003": ("eval_set_ref_text_davinci_003.dev50.jsonl", "hf:tatsu-lab/alpaca_eval:alpaca_eval@eval"),
}


def shared_alpaca_dir() -> Path:
    """Local AlpacaEval data folder (``$PREFOPT_SHARED_DATA/alpaca-eval`` or beside the repository)."""
    root = os.environ.get("PREFOPT_SHARED_DATA")
    base = Path(root) if root else Path(__file__).resolve().parents[2].parent / "shared" / "data"
    return base / "alpaca-eval"


def resolve_reference(ref: str) -> str:
    """A reference name -> local file (or hub spec when the local copy is absent); a path stays as is."""
    if ref in REFERENCES:
        local, hub = REFERENCES[ref]
        path = shared_alpaca_dir() / local
        return str(path) if path.is_file() else hub
    if ref.startswith("hf:") or Path(ref).is_file():
        return ref
    raise DataError(f"--reference {ref!r} is neither a known name ({', '.join(REFERENCES)}) nor an existing file")


HUB_EVAL_SET = "hf:tatsu-lab/alpaca_eval:alpaca_eval@eval"


def _read(path: str) -> list[tuple[int, dict]]:
    """(line, record) pairs from JSONL/JSON/parquet/hf (line = 1-based line or array index).

    ``hf:tatsu-lab/alpaca_eval`` alone means the eval set (config ``alpaca_eval``, split ``eval``).
    """
    from data_pipelines.sources import read_records

    if path.rstrip("/") == "hf:tatsu-lab/alpaca_eval":
        path = HUB_EVAL_SET
    return [(r.line, r.data) for r in read_records(path)]


def _text(rec: dict, field: str, file: str, line: int, *, required: bool = True) -> str | None:
    v = rec.get(field)
    if v is None:
        if required:
            raise DataError("missing", file=file, line=line, field=field)
        return None
    if not isinstance(v, str):
        raise DataError(f"expected text, got {type(v).__name__}", file=file, line=line, field=field)
    if required and not v.strip():
        raise DataError("empty text", file=file, line=line, field=field)
    return v


def load_eval_set(path: str, limit: int | None = None) -> list[dict]:
    """``[{index, instruction, dataset, output?, generator?}]`` in file order (``output`` may be absent).

    Raises:
        DataError: missing/empty ``instruction``, wrong types, empty file (names file, line, field).
    """
    rows = []
    for line, rec in _read(path):
        instr = _text(rec, "instruction", path, line)
        out = _text(rec, "output", path, line, required=False)
        rows.append({"index": len(rows), "instruction": instr, "dataset": rec.get("dataset") or "",
                     "output": out, "generator": rec.get("generator"), "line": line})
        if limit is not None and len(rows) >= limit:
            break
    if not rows:
        raise DataError("no instructions", file=path)
    return rows


def attach_references(rows: list[dict], ref_path: str) -> list[dict]:
    """Add ``reference`` and ``reference_generator`` to each row, matched by instruction text.

    Raises:
        DataError: a reference with a missing/empty ``output``, or an instruction without a reference.
    """
    refs: dict[str, tuple[str, str]] = {}
    for line, rec in _read(ref_path):
        instr = _text(rec, "instruction", ref_path, line)
        refs[instr] = (_text(rec, "output", ref_path, line), str(rec.get("generator") or "reference"))
    out = []
    for r in rows:
        if r["instruction"] not in refs:
            raise DataError(f"no reference output for instruction {r['index']} ({r['instruction'][:60]!r})",
                            file=ref_path, field="instruction")
        text, gen = refs[r["instruction"]]
        out.append({**r, "reference": text, "reference_generator": gen})
    return out


def validate_model_outputs(path: str, rows: Sequence[dict]) -> list[dict]:
    """Read a ``model_outputs.json`` for the eval set ``rows``: same length, order and instructions.

    Raises:
        DataError: wrong length, missing ``instruction``/``output``, an empty output, or an instruction
            that differs from the eval set's at that position.
    """
    recs = _read(path)
    if len(recs) != len(rows):
        raise DataError(f"{len(recs)} outputs for {len(rows)} instructions", file=path)
    out = []
    for (line, rec), row in zip(recs, rows, strict=False):
        instr = _text(rec, "instruction", path, line)
        text = _text(rec, "output", path, line)
        if instr != row["instruction"]:
            raise DataError(f"instruction differs from the eval set's instruction {row['index']}", file=path,
                            line=line, field="instruction")
        out.append({"index": row["index"], "instruction": instr, "output": text,
                    "generator": str(rec.get("generator") or Path(path).stem), "dataset": row["dataset"]})
    return out


def write_model_outputs(path: Path, outputs: Sequence[dict]) -> None:
    """AlpacaEval's ``model_outputs.json``: a JSON list of {instruction, output, generator, dataset}."""
    from prefopt.core.io import atomic_write_text

    data = [{"instruction": o["instruction"], "output": o["output"], "generator": o["generator"],
             "dataset": o["dataset"]} for o in outputs]
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def config_check(path: Path, config: dict[str, Any], what: str) -> None:
    """Write ``config`` once; refuse to resume a folder produced with different settings."""
    from prefopt.core.errors import ConfigError
    from prefopt.core.io import atomic_write_json

    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
        if diff:
            raise ConfigError(f"{path.parent} holds {what} made with different settings ({', '.join(diff)}); "
                              "use another --out, or pass --overwrite to move the old results aside")
        return
    atomic_write_json(path, config)
