"""AlpacaEval metrics (spec online_optimizers.md section 6, acceptance A-A1..A-A3).

The LC tests run the alpaca_eval library's GLM against small synthetic stand-ins for the two hub files
(``df_gamed.csv``, ``instruction_difficulty.csv``) written by :func:`write_hub_standins`; the real files
live only on the HF hub, so the leaderboard LC values cannot be reproduced offline.
"""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from prefopt.core.errors import DataError
from prefopt.eval import alpacaeval_metrics as ae

ANN_DIR = "alpaca-eval/annotations_weighted_alpaca_eval_gpt4_turbo"
CSV_FIELDS = ("win_rate", "standard_error", "discrete_win_rate")
CSV_COUNTS = ("n_wins", "n_wins_base", "n_draws", "n_total", "avg_length")


def _leaderboard(shared_data):
    with open(shared_data / "alpaca-eval" / "leaderboard_rows_ae2.csv", newline="") as fh:
        return {row[""]: row for row in csv.DictReader(fh)}


@pytest.mark.parametrize("model", ["alpaca-7b", "oasst-sft-pythia-12b"])
def test_reproduces_leaderboard_rows(shared_data, model):
    """A-A1: WR, SE, discrete WR, counts and avg_length of the stored AE2 leaderboard rows (to 1e-6)."""
    ann = ae.load_annotations(shared_data / ANN_DIR / f"{model}.jsonl.gz")
    got = ae.alpacaeval_metrics(ann, compute_lc=False)
    want = _leaderboard(shared_data)[model]
    for k in CSV_FIELDS:
        assert got[k] == pytest.approx(float(want[k]), abs=1e-6), k
    for k in CSV_COUNTS:
        assert got[k] == int(want[k]), k
    assert got["benchmark"] == "AlpacaEval 2.0" and got["judge_is_official"]
    assert got["generator"] == model and got["baseline"] == "gpt4_1106_preview"
    assert got["lc_status"] == "skipped" and got["length_controlled_winrate"] is None


def test_matches_library_get_winrate(shared_data):
    """Our numpy metrics equal alpaca_eval.metrics.get_winrate on the same preferences."""
    glm = ae._import_glm_winrate()
    ann = ae.load_annotations(shared_data / ANN_DIR / "alpaca-7b.jsonl.gz")
    ref = glm.get_winrate([{"preference": r["preference"]} for r in ann])
    got = ae.win_rate_metrics([r["preference"] for r in ann])
    for k, v in ref.items():
        assert got[k] == pytest.approx(float(v), abs=1e-12), k


def test_hand_computed_and_ties():
    """prefs 2, 1, 1.5, 1.75: x = 1, 0, .5, .75 -> WR 56.25; sd(ddof=1) = 0.4270 -> SE 21.35;
    wins 2 (x > .5), base 1, draws 1 -> discrete (2 + .5)/4 = 62.5. Legacy 0 counts as a tie; None is left out."""
    m = ae.win_rate_metrics([2, 1, 1.5, 1.75])
    sd = math.sqrt(((1 - .5625) ** 2 + .5625 ** 2 + .0625 ** 2 + .1875 ** 2) / 3)
    assert m["win_rate"] == pytest.approx(56.25) and m["standard_error"] == pytest.approx(100 * sd / 2)
    assert (m["n_wins"], m["n_wins_base"], m["n_draws"], m["n_total"]) == (2, 1, 1, 4)
    assert m["discrete_win_rate"] == pytest.approx(62.5)
    m0 = ae.win_rate_metrics([0, 2, None, float("nan")])
    assert (m0["n_draws"], m0["n_total"], m0["n_missing"], m0["win_rate"]) == (1, 2, 2, 75.0)


def test_baseline_against_itself_and_swap():
    """A-A1 / A-A3: all ties give exactly 50; swapping roles (pref -> 3 - pref) gives 100 - WR, same SE."""
    m = ae.win_rate_metrics([1.5] * 805)
    assert m["win_rate"] == 50.0 and m["n_draws"] == 805 and m["discrete_win_rate"] == 50.0
    prefs = list(np.random.default_rng(0).uniform(1, 2, 50))
    a, b = ae.win_rate_metrics(prefs), ae.win_rate_metrics([3 - p for p in prefs])
    assert a["win_rate"] + b["win_rate"] == pytest.approx(100) and a["standard_error"] == pytest.approx(
        b["standard_error"])
    assert (a["n_wins"], a["n_wins_base"]) == (b["n_wins_base"], b["n_wins"])


def test_bad_preference_names_line_and_field():
    with pytest.raises(DataError, match="line 2, field 'preference': preference must lie in"):
        ae.win_rate_metrics([1.2, 2.5])
    with pytest.raises(DataError, match="field 'preference'"):
        ae.win_rate_metrics([None])


def test_label_and_table():
    rows = [{"preference": 1.8, "output_2": "abcd", "output_1": "x", "generator_2": "m",
             "generator_1": "b", "annotator": "my_local_judge"}] * 3
    r = ae.alpacaeval_metrics(rows, compute_lc=False)
    assert r["benchmark"] == "AlpacaEval-style" and not r["judge_is_official"] and r["avg_length"] == 4
    r2 = ae.alpacaeval_metrics(rows, judge="weighted_alpaca_eval_gpt4_turbo", compute_lc=False)
    assert r2["benchmark"] == "AlpacaEval 2.0"
    table = ae.leaderboard_table({"pol-a": r, "pol-b": {**r2, "win_rate": 10.0}})
    lines = table.splitlines()
    assert lines[0].startswith("| policy |") and "pol-a" in lines[2] and "pol-b" in lines[3]
    assert "80.00" in lines[2] and "AlpacaEval-style" in lines[2]


def test_lc_unavailable_names_both_files(tmp_path, monkeypatch):
    monkeypatch.delenv(ae.HUB_DIR_ENV, raising=False)
    rows = [{"preference": 1.8, "output_1": "a", "output_2": "bb", "generator_1": "b", "generator_2": "m"}]
    r = ae.alpacaeval_metrics(rows)
    assert r["length_controlled_winrate"] is None and r["lc_status"] == "unavailable"
    assert "df_gamed.csv" in r["lc_message"] and "instruction_difficulty.csv" in r["lc_message"]
    assert r["win_rate"] == pytest.approx(80.0)  # the rest is still computed
    (tmp_path / "df_gamed.csv").write_text("model,index\n")
    monkeypatch.setenv(ae.HUB_DIR_ENV, str(tmp_path))
    r = ae.length_controlled_winrate(rows)
    assert r["lc_status"] == "unavailable" and "missing instruction_difficulty.csv" in r["lc_message"]


# ---------------------------------------------------------------- LC through the library (synthetic hub files)

def write_hub_standins(folder, n, seed=0):
    """Synthetic stand-ins with the columns the library reads.

    df_gamed.csv: two 'gamed' baseline variants x n instructions (model-major, index 0..n-1), preference on
    the [0, 1] scale, std_delta_len (verbose variant longer -> negative), instruction_difficulty,
    not_gamed_baseline=False. instruction_difficulty.csv: index -> the same difficulty.
    """
    import pandas as pd

    rng = np.random.default_rng(seed)
    diff = rng.normal(0, 0.5, n)
    frames = []
    for model, shift in (("gpt4_gamed_verbose", -1.0), ("gpt4_gamed_concise", 1.0)):
        delta = rng.normal(shift, 0.5, n)
        pref = 1 / (1 + np.exp(1.5 * np.tanh(delta)))  # longer variant preferred more often
        frames.append(pd.DataFrame({"model": model, "index": np.arange(n), "preference": pref,
                                    "std_delta_len": delta, "instruction_difficulty": diff,
                                    "not_gamed_baseline": False}))
    pd.concat(frames, ignore_index=True).to_csv(folder / "df_gamed.csv", index=False)
    pd.DataFrame({"instruction_difficulty": diff}).to_csv(folder / "instruction_difficulty.csv")
    return folder


def _annotations(pref, len_model, len_base, model="policy"):
    return [{"instruction": f"q{i}", "output_1": "b" * int(lb), "generator_1": "gpt4_1106_preview",
             "output_2": "m" * int(lm), "generator_2": model, "preference": float(p),
             "annotator": "weighted_alpaca_eval_gpt4_turbo"}
            for i, (p, lm, lb) in enumerate(zip(pref, len_model, len_base, strict=False))]


@pytest.fixture(scope="module")
def hub_dir(tmp_path_factory):
    return write_hub_standins(tmp_path_factory.mktemp("ae_hub"), n=200)


@pytest.mark.slow
def test_lc_length_neutral_close_to_raw(hub_dir):
    """Preferences independent of length: the GLM's length weight ~0, so LC stays near the raw WR."""
    rng = np.random.default_rng(1)
    pref = 1 + 1 / (1 + np.exp(-(rng.normal(-0.8, 1.0, 200))))
    ann = _annotations(pref, rng.integers(200, 2000, 200), rng.integers(200, 2000, 200))
    sklearn = pytest.importorskip("sklearn")
    before = sklearn.get_config()
    r = ae.alpacaeval_metrics(ann, hub_dir=hub_dir)
    assert r["lc_status"] == "ok", r["lc_message"]
    assert math.isfinite(r["length_controlled_winrate"]) and 0 < r["length_controlled_winrate"] < 100
    assert abs(r["length_controlled_winrate"] - r["win_rate"]) < 3.0
    assert r["lc_standard_error"] >= 0 and "get_length_controlled_winrate" in r["lc_message"]
    assert sklearn.get_config() == before and "glm_preference" not in ann[0]


@pytest.mark.slow
def test_lc_discounts_length_gaming(hub_dir, monkeypatch):
    """A policy that wins exactly when it is longer (70% of items) has raw WR ~66.5 but a much lower LC."""
    rng = np.random.default_rng(2)
    longer = rng.random(200) < 0.7
    len_base = rng.integers(500, 1500, 200)
    len_model = np.where(longer, len_base * 2, len_base // 2)
    pref = np.where(longer, 1.95, 1.05)
    monkeypatch.setenv(ae.HUB_DIR_ENV, str(hub_dir))  # the env var route
    r = ae.alpacaeval_metrics(_annotations(pref, len_model, len_base))
    assert r["lc_status"] == "ok"
    assert r["win_rate"] > 60 and r["length_controlled_winrate"] < r["win_rate"] - 10


@pytest.mark.slow
def test_lc_baseline_against_itself_is_50(hub_dir):
    lens = np.full(200, 300)
    ann = _annotations(np.full(200, 1.5), lens, lens, model="gpt4_1106_preview")
    r = ae.length_controlled_winrate(ann, hub_dir=hub_dir)
    assert r["lc_status"] == "ok" and r["length_controlled_winrate"] == pytest.approx(50.0)


def test_lc_rejects_annotations_not_matching_hub_files(tmp_path):
    write_hub_standins(tmp_path, n=10)
    rows = _annotations([1.5] * 3, [1, 2, 3], [3, 2, 1])
    with pytest.raises(DataError, match="covers 10 instructions but there are 3 annotations"):
        ae.length_controlled_winrate(rows, hub_dir=tmp_path)
