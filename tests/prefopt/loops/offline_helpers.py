"""Shared builders for the offline-loop tests: tiny pairwise / ranked / curriculum data and configs."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from data_pipelines.schemas import PairwiseExample, RankedExample

WORDS = ["apple", "river", "stone", "cloud", "green", "quiet", "seven", "light", "paper", "north"]


def _text(i: int, n: int = 3) -> str:
    return " ".join(WORDS[(i * 3 + k) % len(WORDS)] for k in range(n))


def pair_records(n: int, *, flip_every: int = 0, stages: int = 0, annotators: int = 0) -> list[dict]:
    """``n`` short pairs: chosen 'yes <words>', rejected 'no <other words>' (learnable in a few steps)."""
    out = []
    for i in range(n):
        chosen, rejected = f"yes {_text(i)}", f"no {_text(i + 5)}"
        if flip_every and i % flip_every == 0:
            chosen, rejected = rejected, chosen
        meta: dict[str, Any] = {}
        if stages:
            meta["stage"] = 1 + i % stages
        if annotators:
            meta["annotator_id"] = i % annotators
        out.append(PairwiseExample(prompt=[{"role": "user", "content": f"say {_text(i, 2)}"}],
                                   chosen=chosen, rejected=rejected, id=f"p{i}", source="t",
                                   meta=meta).to_record())
    return out


def ranked_records(n: int, k: int = 3) -> list[dict]:
    out = []
    for i in range(n):
        responses = [f"{w} {_text(i + j)}" for j, w in enumerate(["best", "okay", "bad", "worst"][:k])]
        out.append(RankedExample(prompt=[{"role": "user", "content": f"rank {_text(i, 2)}"}],
                                 responses=responses, scores=[float(k - j) for j in range(k)],
                                 id=f"r{i}", source="t").to_record())
    return out


def write_set(folder: Path, train: list[dict], test: list[dict] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    if test is not None:
        (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test))
    return folder


def make_cfg(data_path: Path, out: Path, **over: Any) -> Any:
    """A TrainConfig for tiny-llama on ``data`` with test-sized defaults; ``over`` replaces sections
    (dicts are merged one level deep)."""
    from prefopt.configs import TrainConfig
    from prefopt.core.config import from_dict

    base: dict[str, Any] = {
        "algorithm": "dpo",
        "model": {"name": "tiny-llama"},
        "data": {"path": str(data_path), "max_length": 48, "max_prompt_length": 24, "overlong": "truncate_left",
                 "max_eval_examples": 4},
        "optim": {"lr": 1e-3, "warmup_ratio": 0.0, "scheduler": "constant", "max_grad_norm": 0.0},
        "run": {"output_dir": str(out), "seed": 0, "report_to": [], "log_every": 1},
        "batch_size": 2,
        "epochs": 1.0,
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            base[k] = {**base[k], **v}
        else:
            base[k] = v
    return from_dict(TrainConfig, base)


def train_rows(run_dir: Path) -> list[dict]:
    """metrics.jsonl rows of optimizer steps (rows holding a training loss), last write per step wins."""
    from prefopt.core.logging import read_metrics

    rows: dict[int, dict] = {}
    for r in read_metrics(Path(run_dir) / "metrics.jsonl"):
        if "loss" in r:
            rows[r["step"]] = r
    return [rows[k] for k in sorted(rows)]
