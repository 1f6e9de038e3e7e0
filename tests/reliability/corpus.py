"""Helpers of the bad-input corpus: earlier outputs to protect and a check that none of them changed."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path


def write_jsonl(path: Path, rows: list) -> Path:
    """One line per row: dicts/lists as JSON, ``str`` rows written verbatim (for malformed lines)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def earlier_outputs(folder: Path) -> Path:
    """A folder standing for what earlier runs wrote (results, checkpoints, metrics)."""
    write_jsonl(folder / "metrics.jsonl", [{"step": 1, "loss": 0.69}, {"step": 2, "loss": 0.5}])
    (folder / "checkpoints" / "step-000002").mkdir(parents=True, exist_ok=True)
    (folder / "checkpoints" / "step-000002" / "state.json").write_text('{"step": 2}\n')
    (folder / "results.json").write_text('{"accuracy": 0.75}\n')
    return folder


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative names), folder locks (bookkeeping) left out."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".prefopt.lock"}


def unchanged(before: dict[str, str], root: Path) -> list[str]:
    """Files of ``before`` that are missing or changed under ``root`` (new files are allowed)."""
    now = snapshot(root)
    return [name for name, digest in before.items() if now.get(name) != digest]
