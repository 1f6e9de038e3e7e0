"""``prefopt eval headline``: keys, significance rule, agreement carried over, clear errors."""
from __future__ import annotations

import json

import pytest

from prefopt.core.errors import DataError
from prefopt.eval.headline import build_headline, cli_main, headline_text

H2H = {"win_rate": 0.62, "ci_low": 0.55, "ci_high": 0.68, "n": 200, "judge": "rm:bt:final", "ties": 3,
       "name_a": "pi0", "name_b": "pi1", "judge_agreement": None}
AGREE = {"agreement": 0.58, "ci_low": 0.51, "ci_high": 0.65, "n": 200, "data": "annotations"}


def test_headline_keys_and_significance(tmp_path):
    (tmp_path / "h").mkdir()
    (tmp_path / "h" / "results.json").write_text(json.dumps(H2H))
    (tmp_path / "a.json").write_text(json.dumps(AGREE))
    assert cli_main(["--h2h", str(tmp_path / "h"), "--judge-agreement", str(tmp_path / "a.json"),
                     "--trained", "DPO", "--write", str(tmp_path / "headline.json"), "--out", str(tmp_path / "o")]) == 0
    h = json.loads((tmp_path / "headline.json").read_text())
    assert h == json.loads((tmp_path / "o" / "headline.json").read_text())
    assert {k: h[k] for k in ("win_rate", "ci_low", "ci_high", "n", "judge")} == \
        {"win_rate": 0.62, "ci_low": 0.55, "ci_high": 0.68, "n": 200, "judge": "rm:bt:final"}
    assert h["judge_agreement"]["agreement"] == 0.58 and h["significant"] is True
    assert "win rate 62.0% [55.0, 68.0] n=200 (significant)" in headline_text(h)


def test_not_significant_and_unvalidated_judge_said_plainly():
    h = build_headline({**H2H, "ci_low": 0.49}, None, None, None, "DPO")
    assert h["significant"] is False and h["judge_agreement"] is None
    text = headline_text(h)
    assert "NOT significant" in text and "UNVALIDATED" in text


def test_missing_or_broken_inputs_named(tmp_path):
    with pytest.raises(DataError, match="head-to-head results not found"):
        cli_main(["--h2h", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    (tmp_path / "bad.json").write_text(json.dumps({"win_rate": 0.5}))
    with pytest.raises(DataError, match="head-to-head results miss ci_low"):
        cli_main(["--h2h", str(tmp_path / "bad.json"), "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o" / "headline.json").exists()
