"""The synthetic flipped-label generator used for LCPO's noise-rate recovery run (docs/offline.md)."""
from __future__ import annotations

import json

import pytest

from prefopt.toy.flipped_pairs import main, make_rows, realised_flip_rates


def test_rows_flip_at_the_annotators_rate_and_are_seeded():
    rows = make_rows(400, [0.0, 0.3], seed=0)
    assert [r["meta"]["annotator_id"] for r in rows[:4]] == [0, 1, 0, 1]
    rates = realised_flip_rates(rows)
    assert rates[0] == 0.0 and rates[1] == pytest.approx(0.285)  # 57 of 200 with seed 0
    for r in rows:
        yes, no = (r["chosen"], r["rejected"]) if not r["meta"]["flipped"] else (r["rejected"], r["chosen"])
        assert yes.startswith("yes ") and no == "no " + yes[4:]
    assert make_rows(400, [0.0, 0.3], seed=0) == rows and make_rows(400, [0.0, 0.3], seed=1) != rows


def test_cli_writes_train_and_stats(tmp_path):
    main([str(tmp_path), "--n", "10", "--flip-rates", "0.2"])
    lines = (tmp_path / "train.jsonl").read_text().splitlines()
    assert len(lines) == 10 and json.loads(lines[0])["id"] == "flip0"
    assert json.loads((tmp_path / "stats.json").read_text())["n"] == 10


def test_bad_rates_raise():
    with pytest.raises(ValueError, match=r"flip rates must be in \[0, 0.5\)"):
        make_rows(4, [0.6])
