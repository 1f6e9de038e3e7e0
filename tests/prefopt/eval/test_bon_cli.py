"""``prefopt eval bon``: a tiny BT and GPM scorer on the shared best-of-16 slice and on generic / ranked
files; numbers re-derived from the stored per-prompt scores; resume; bad inputs."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from prefopt.core.errors import ConfigError, DataError
from prefopt.eval import bon_metrics as BM
from prefopt.eval.bon import cli_main
from prefopt.eval.bon_data import load_bon

BON16 = "alpaca-eval-bon16/tulu-2-dpo-13b_bon16.dev50.jsonl.gz"


def _gold_of_first(shared_data: Path, k: int) -> list[list[float]]:
    with gzip.open(shared_data / BON16, "rt", encoding="utf-8") as fh:
        recs = [json.loads(next(fh)) for _ in range(k)]
    return [[c["gpt4_turbo_preference_vs_reference"] for c in r["candidates"]
             if c["gpt4_turbo_preference_vs_reference"] is not None] for r in recs]


def test_bon16_reader_keeps_the_11_scored_candidates(shared_data):
    rows, fmt = load_bon(str(shared_data / BON16), limit=3)
    assert fmt == "alpacaeval_bon" and [len(r["candidates"]) for r in rows] == [11, 11, 11]
    assert [r["gold"] for r in rows] == _gold_of_first(shared_data, 3)
    assert rows[0]["id"] == "3" and rows[0]["prompt"][0]["content"].startswith("What is some cool music")
    assert isinstance(rows[0]["reference"], str) and rows[0]["reference"]


def test_bt_on_bon16_matches_the_stored_scores_and_resumes(tmp_path, shared_data, bt_dir):
    out = tmp_path / "bon"
    args = ["--data", str(shared_data / BON16), "--model", str(bt_dir), "--limit", "2", "--n", "1,2,11",
            "--max-length", "128", "--out", str(out)]
    assert cli_main(args) == 0
    res = json.loads((out / "results.json").read_text())
    scored = [json.loads(x) for x in (out / "scores.jsonl").read_text().splitlines()]
    gold = _gold_of_first(shared_data, 2)
    assert [s["gold"] for s in scored] == gold and all(len(s["scores"]) == 11 for s in scored)
    assert res["kind"] == "bt" and res["n_prompts"] == 2 and res["win_threshold"] == 1.5 and res["ns"] == [1, 2, 11]
    n1, n2, n11 = res["curve"]
    # N=1: every pick is random; N=11: the scorer's own argmax, the oracle's max.
    assert n1["scorer_gold"] == pytest.approx(sum(sum(g) / 11 for g in gold) / 2)
    assert n11["oracle_gold"] == pytest.approx((max(gold[0]) + max(gold[1])) / 2)
    picks = [s["gold"][max(range(11), key=lambda i: (s["scores"][i], -i))] for s in scored]
    assert n11["scorer_gold"] == pytest.approx(sum(picks) / 2)
    brute = [BM.enumerate_pick(BM.argmax_picker(s["scores"]), s["gold"], 2)[0] for s in scored]
    assert n2["scorer_gold"] == pytest.approx(sum(brute) / 2)
    assert n2["scorer_gold_se"] == pytest.approx(abs(brute[0] - brute[1]) / 2)
    wins = [[1.0 if g > 1.5 else 0.0 for g in gg] for gg in gold]
    assert n1["random_win"] == pytest.approx(sum(sum(w) / 11 for w in wins) / 2)
    assert (out / "bon_curve.png").stat().st_size > 1000
    before = (out / "scores.jsonl").read_bytes()
    assert cli_main(args) == 0  # rerun: nothing rescored
    assert (out / "scores.jsonl").read_bytes() == before


def _generic(path: Path, n_prompts: int = 2, k: int = 4) -> Path:
    rows = [{"id": f"p{i}", "prompt": f"Say something about topic {i}.",
             "candidates": [{"text": f"answer {j} " + "word " * j, "gold": float((i + j) % k)} for j in range(k)]}
            for i in range(n_prompts)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_gpm_picks_copeland_winner_per_subset(tmp_path, save_rm, tiny_tokenizer):
    gpm = save_rm(tmp_path / "gpm", tiny_tokenizer, "gpm", seed=3)
    data = _generic(tmp_path / "cands.jsonl")
    out = tmp_path / "bon"
    assert cli_main(["--data", str(data), "--model", str(gpm), "--win-threshold", "1.5", "--max-length", "64",
                     "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    scored = [json.loads(x) for x in (out / "scores.jsonl").read_text().splitlines()]
    assert res["kind"] == "gpm" and "Copeland" in res["method"] and res["ns"] == [1, 2, 4]
    assert all(len(s["matrix"]) == 4 for s in scored)
    m = scored[0]["matrix"]
    assert m[0][1] == pytest.approx(-m[1][0], abs=1e-5)
    for row in res["curve"]:
        want = [BM.enumerate_pick(BM.copeland_picker(s["matrix"]), s["gold"], row["n"])[0] for s in scored]
        assert row["scorer_gold"] == pytest.approx(sum(want) / 2)
    assert res["curve"][-1]["oracle_win"] == 1.0 and res["curve"][0]["random_gold"] == pytest.approx(1.5)


def test_ranked_sets_are_read_as_candidates(tmp_path):
    p = tmp_path / "ranked.jsonl"
    p.write_text(json.dumps({"prompt": [{"role": "user", "content": "hi"}], "responses": ["a", "b", "c"],
                             "scores": [0.1, 0.7, 0.3]}) + "\n")
    rows, fmt = load_bon(str(p))
    assert fmt == "generic" and rows[0]["candidates"] == ["a", "b", "c"] and rows[0]["gold"] == [0.1, 0.7, 0.3]


@pytest.mark.parametrize("cands,match,field", [
    ([{"text": "only one", "gold": 1.0}], "1 scored candidate", "candidates"),
    ([{"text": "a", "gold": None}, {"text": "b", "gold": None}], "all 2 candidates have a null gold", "gold"),
    ([{"text": "a", "gold": 1.0}, {"text": "b", "gold": "high"}], "must be a number", "candidates[1].gold"),
    ([{"text": "a", "gold": 1.0}, {"gold": 2.0}], "candidate 1 has no text", "candidates[1].text"),
])
def test_bad_candidates_name_file_line_and_field(tmp_path, cands, match, field):
    p = tmp_path / "bad.jsonl"
    good = {"prompt": "q", "candidates": [{"text": "x", "gold": 1.0}, {"text": "y", "gold": 2.0}]}
    p.write_text(json.dumps(good) + "\n" + json.dumps({"prompt": "q2", "candidates": cands}) + "\n")
    with pytest.raises(DataError, match=match) as exc:
        load_bon(str(p))
    assert exc.value.line == 2 and field in exc.value.field and str(p) in str(exc.value)


def test_bad_arguments(tmp_path, bt_dir):
    data = _generic(tmp_path / "c.jsonl")
    common = ["--model", str(bt_dir), "--out", str(tmp_path / "o")]
    with pytest.raises(ConfigError, match="--limit must be >= 1"):
        cli_main(["--data", str(data), "--limit", "0", *common])
    with pytest.raises(DataError, match="not found"):
        cli_main(["--data", str(tmp_path / "missing.jsonl"), *common])
    with pytest.raises(ConfigError, match=r"every N must be in 1..4 \(prompt id 'p0' has 4"):
        cli_main(["--data", str(data), "--n", "2,5", *common])
    with pytest.raises(ConfigError, match="comma-separated integers"):
        cli_main(["--data", str(data), "--n", "two", *common])
    p = tmp_path / "dup.jsonl"
    p.write_text((json.dumps({"id": 1, "prompt": "q", "candidates": [{"text": "a", "gold": 1}, {"text": "b",
                                                                                             "gold": 2}]}) + "\n") * 2)
    with pytest.raises(DataError, match="duplicate id '1'"):
        load_bon(str(p))
