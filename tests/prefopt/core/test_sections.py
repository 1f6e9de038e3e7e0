"""The shared ``run:`` / ``data:`` sections (prefopt.core.sections), the one ``max_*_examples`` subset rule
(prefopt.core.loop.subset) and resolve_sections (config.yaml: every resolved value, nothing unused)."""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field

import pytest

from prefopt.configs import RunSection, TrainDataConfig
from prefopt.core.loop import subset
from prefopt.core.sections import DataSectionBase, RunSectionBase, resolve_sections
from reward_models.config import RMDataConfig, RMRunSection


def _names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def test_kind_sections_add_only_their_own_fields():
    assert _names(RunSection) == _names(RunSectionBase)
    assert _names(TrainDataConfig) == _names(DataSectionBase)
    assert _names(RMRunSection) == _names(RunSectionBase) + ["eval_at_start"]
    assert _names(RMDataConfig) == _names(DataSectionBase) + ["use_margin"]
    assert (RunSection().output_dir, RMRunSection().output_dir) == ("runs/train", "runs/rm")
    assert (TrainDataConfig().max_prompt_length, RMDataConfig().max_prompt_length) == (256, 384)


@pytest.mark.parametrize("cls", [TrainDataConfig, RMDataConfig])
@pytest.mark.parametrize("kwargs, message", [
    ({"max_length": 64, "max_prompt_length": 64}, "max_prompt_length must be smaller than data.max_length"),
    ({"max_train_examples": 0}, r"data.max_train_examples must be >= 1 \(or null = all\), got 0"),
    ({"max_eval_examples": -1}, r"data.max_eval_examples must be >= 0 \(or null = all\), got -1"),
])
def test_data_validation_is_shared(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


@pytest.mark.parametrize("cls", [RunSection, RMRunSection])
def test_run_validation_is_shared(cls):
    with pytest.raises(ValueError, match="run.log_every must be >= 1, got 0"):
        cls(log_every=0)
    with pytest.raises(ValueError, match=r"run.save_every must be >= 0 \(0 = off\), got -2"):
        cls(save_every=-2)


def test_subset_rule():
    records = list(range(10))
    assert subset(records, None, 0) is records and subset(records, 10, 0) is records
    assert subset(records, 3, None) == [0, 1, 2]  # max_eval_examples: the first N
    # max_train_examples: random.Random(0).sample(range(10), 3) = [6, 9, 0], kept in file order
    assert subset(records, 3, 0) == [0, 6, 9]
    assert subset(records, 3, 1) == [1, 2, 4]  # Random(1).sample -> [2, 1, 4]


def test_offline_and_rm_data_take_the_same_seeded_subset(tmp_path, tiny_tokenizer):
    """``kind: train`` and ``kind: rm`` keep the same records for one file, limit and seed (not the first N)."""
    from data_pipelines.tokenize import LengthPolicy
    from prefopt.loops.offline_data import tokenize_items
    from reward_models import data as D

    rows = [{"id": f"p{i}", "prompt": f"question {i}", "chosen": f"good {i}", "rejected": f"bad {i}"}
            for i in range(12)]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    policy = LengthPolicy(512, 256, "drop")
    items, stats = tokenize_items(path, "pairwise", tiny_tokenizer, policy, 4, seed=7)
    prompts = [tiny_tokenizer.decode(list(it.tok.prompt_ids)) for it in items]
    kept = [int(re.search(r"question (\d+)", p).group(1)) for p in prompts]
    assert stats["records"] == 4 and kept == subset(list(range(12)), 4, 7) and kept != [0, 1, 2, 3]
    rm_ids = [ex.id for ex in D.subset(D.load_checked(path, "pairwise")[0], 4, 7)]
    assert rm_ids == [f"p{i}" for i in kept]
    assert tokenize_items(path, "pairwise", tiny_tokenizer, policy, 0) == ([], {})  # max_eval_examples=0


@dataclass(frozen=True)
class _Inner:
    x: int = 1


@dataclass(frozen=True)
class _Cfg:
    mode: str = "a"
    inner: _Inner = field(default_factory=_Inner)
    extra: _Inner | None = None
    skip: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        resolve_sections(self, "the toy")

    def unused_keys(self) -> tuple[str, ...]:
        return self.skip


def test_resolve_sections_fills_used_and_drops_default_unused():
    from prefopt.core.config import to_dict

    assert _Cfg().extra == _Inner()  # an optional section that is read gets its defaults
    cfg = _Cfg(extra=_Inner(), skip=("extra", "inner.x"))
    assert cfg.extra is None and to_dict(cfg) == {"mode": "a", "inner": {}, "skip": ["extra", "inner.x"]}
    with pytest.raises(ValueError, match="extra, inner.x: not read by the toy, so these settings would be ignored"):
        _Cfg(extra=_Inner(2), inner=_Inner(3), skip=("extra", "inner.x"))
