"""`data.layout` changes only speed: padded, packed and shared-prompt batches give the same training
losses (two optimizer steps of DPO on the tiny model, to 1e-5)."""
from __future__ import annotations

import pytest
from offline_helpers import make_cfg, pair_records, train_rows, write_set

from prefopt.train import run_train


@pytest.mark.parametrize("layout", ["packed", "shared_prompt"])
def test_layout_matches_padded(tmp_path, layout):
    data = write_set(tmp_path / "data", pair_records(8))
    losses = {}
    for name in ("padded", layout):
        cfg = make_cfg(data, tmp_path / name, data={"layout": name, "max_eval_examples": 0}, max_steps=2)
        run_train(cfg)
        losses[name] = [r["loss"] for r in train_rows(tmp_path / name)]
    assert len(losses["padded"]) == 2
    assert losses[layout] == pytest.approx(losses["padded"], abs=1e-5)
