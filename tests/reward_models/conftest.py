"""Shared fixtures for the ``prefopt rm train`` tests: tiny synthetic preference data and config builder."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = ["apples", "rivers", "music", "trains", "stars", "bread", "clocks", "gardens"]


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def pair_rows(n: int, offset: int = 0) -> list[dict]:
    """Pairs where the chosen reply is a polite yes and the rejected one a curt no (learnable)."""
    rows = []
    for i in range(offset, offset + n):
        w = WORDS[i % len(WORDS)]
        rows.append({"id": f"p{i}", "prompt": [{"role": "user", "content": f"Do you like {w} number {i}?"}],
                     "chosen": f"Yes, I really like {w}. Thank you for asking!", "rejected": f"No {w}.",
                     "margin": 1.0})
    return rows


@pytest.fixture(scope="session")
def rm_data(tmp_path_factory) -> dict[str, Path]:
    """Folders ``pairs`` (24 train / 8 test), ``ranked`` (K=3 with a tie) and ``triples`` (POLAR)."""
    root = tmp_path_factory.mktemp("rm_data")
    _write(root / "pairs" / "train.jsonl", pair_rows(24))
    _write(root / "pairs" / "test.jsonl", pair_rows(8, offset=100))
    ranked = []
    for i in range(24):
        w = WORDS[i % len(WORDS)]
        ranked.append({"id": f"r{i}", "prompt": [{"role": "user", "content": f"Tell me about {w} {i}."}],
                       "responses": [f"Sure! {w} are wonderful, here is why.", f"{w} exist.", "No.", "Nope."],
                       "scores": [3.0, 2.0, 1.0, 1.0]})
    _write(root / "ranked" / "train.jsonl", ranked[:20])
    _write(root / "ranked" / "test.jsonl", ranked[20:])
    triples = [{"prompt": f"Describe {WORDS[i % 8]} {i}.", "reference": f"Lovely {WORDS[i % 8]} indeed, friend.",
                "chosen": f"Lovely {WORDS[i % 8]}, friend.", "rejected": "zzz qqq xxx"} for i in range(24)]
    _write(root / "triples" / "train.jsonl", triples[:20])
    _write(root / "triples" / "test.jsonl", triples[20:])
    return {"pairs": root / "pairs", "ranked": root / "ranked", "triples": root / "triples"}


def base_config(data: Path, out: Path) -> dict:
    """A fast tiny-llama RM config (seconds on CPU)."""
    return {"kind": "rm", "rm": {"kind": "bt"}, "model": {"name": "tiny-llama"},
            "data": {"path": str(data), "max_eval_examples": 8, "max_length": 48, "max_prompt_length": 32,
                     "overlong": "truncate_left"},
            "optim": {"lr": 1.0e-2, "warmup_ratio": 0.0},
            "batch_size": 4, "max_steps": 6,
            "run": {"output_dir": str(out), "seed": 0, "report_to": [], "log_every": 1}}


def make_config(data: Path, out: Path, overrides: list[str] | None = None, **sections):
    """Load the config through the real config machinery; ``<out>.yaml`` holds the resolved config."""
    from prefopt.core.config import load_config

    cfg = base_config(data, out)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    path = Path(str(out) + ".yaml")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    loaded = load_config(path, overrides or [], expect="rm")
    from prefopt.core.config import to_dict  # the file holds the resolved config (for subprocesses)

    path.write_text(yaml.safe_dump({"kind": "rm", **to_dict(loaded)}), encoding="utf-8")
    return loaded, path
