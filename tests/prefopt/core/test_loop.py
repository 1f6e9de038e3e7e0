"""``prefopt.core.loop``: the loop machinery the policy loops and reward-model training share."""
from __future__ import annotations

import pytest
import torch

from prefopt.core.errors import DataError, NumericError
from prefopt.core.loop import (
    MetricAccumulator,
    NonFiniteGuard,
    micro_batches,
    repeat_epochs,
    train_eval_paths,
    whole_steps,
)


def test_train_eval_paths_folder_file_and_empty_eval(tmp_path):
    (tmp_path / "train.jsonl").write_text("{}\n")
    (tmp_path / "test.jsonl").write_text("{}\n")
    assert train_eval_paths(str(tmp_path), None) == (tmp_path / "train.jsonl", tmp_path / "test.jsonl")
    (tmp_path / "test.jsonl").write_text("")  # an empty held-out file: no evaluation, for both trainers
    assert train_eval_paths(str(tmp_path), None) == (tmp_path / "train.jsonl", None)
    assert train_eval_paths(str(tmp_path / "train.jsonl"), None) == (tmp_path / "train.jsonl", None)
    with pytest.raises(DataError, match="eval data not found"):
        train_eval_paths(str(tmp_path), str(tmp_path / "nope.jsonl"))
    with pytest.raises(DataError, match="training data not found"):
        train_eval_paths(str(tmp_path / "missing"), None)
    with pytest.raises(DataError, match="data.path is empty"):
        train_eval_paths("", None)


def test_micro_batches_drop_the_ragged_tail_and_split_by_rank():
    """7 items, batch 2 x 2 ranks: one global batch of 4 (items 0-3); rank 1 takes items 2, 3."""
    assert micro_batches(list(range(7)), 2, 0, 2) == [[0, 1]]
    assert micro_batches(list(range(7)), 2, 1, 2) == [[2, 3]]


def test_whole_steps_and_repeated_epochs():
    """5 micro-batches at grad_accum 2 -> 4 (two whole steps); never below one step."""
    assert whole_steps(5, 2) == 4 and whole_steps(1, 3) == 3
    seq = repeat_epochs(list(range(4)), 5, batch_size=2, rank=0, world=1, seed=0, shuffle=False)
    assert seq == [[0, 1], [2, 3], [0, 1], [2, 3], [0, 1]]  # epochs repeat in file order without shuffle
    a = repeat_epochs(list(range(8)), 4, batch_size=2, rank=0, world=1, seed=3, shuffle=True)
    assert a == repeat_epochs(list(range(8)), 4, batch_size=2, rank=0, world=1, seed=3, shuffle=True)
    assert sorted(x for mb in a for x in mb) == list(range(8))  # one shuffled epoch holds every item once


def test_accumulator_weights_and_guard():
    """Weighted mean (1 * 2 + 4 * 1) / 3 = 2; the guard skips and counts a NaN in skip mode."""
    acc = MetricAccumulator()
    acc.add({"loss": torch.tensor(1.0)}, weight=2.0)
    acc.add({"loss": 4.0}, weight=1.0)
    assert acc.sums == {"loss": 6.0} and acc.counts == {"loss": 3.0}
    guard = NonFiniteGuard("skip")
    assert not guard.ok(torch.tensor(float("nan")), 1) and guard.skipped == 1
    with pytest.raises(NumericError, match="loss is inf at optimizer step 2"):
        NonFiniteGuard().ok(torch.tensor(float("inf")), 2)
