"""Fixtures for evaluator tests: tiny reward models saved to disk and small data slices."""
from __future__ import annotations

import json
from pathlib import Path

import pytest


def save_tiny_rm(path: Path, tokenizer, kind: str = "bt", seed: int = 0, **cfg) -> Path:
    """A tiny-llama backbone + ``kind`` head, saved with its tokenizer (loadable by ``RewardModel.load``)."""
    from prefopt.core.models import make_tiny_model
    from reward_models.models import RewardModel

    rm = RewardModel(make_tiny_model("tiny-llama", seed=seed), kind, seed=seed, **cfg)
    rm.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def rb_slice(shared_data, tmp_path_factory) -> Path:
    """23 subsets x 2 rows of the RewardBench dev slice."""
    src = shared_data / "reward-bench" / "reward_bench_filtered.dev10per_subset.jsonl"
    seen: dict[str, int] = {}
    out = []
    for line in src.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if seen.get(row["subset"], 0) < 2:
            seen[row["subset"]] = seen.get(row["subset"], 0) + 1
            out.append(line)
    path = tmp_path_factory.mktemp("rb") / "rb_46.jsonl"
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
    assert len(out) == 46 and len(seen) == 23
    return path


@pytest.fixture(scope="session")
def bt_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    return save_tiny_rm(tmp_path_factory.mktemp("bt") / "bt", tiny_tokenizer, "bt", seed=1)


@pytest.fixture(scope="session")
def save_rm():
    """The :func:`save_tiny_rm` helper as a fixture (test modules here are not a package)."""
    return save_tiny_rm
