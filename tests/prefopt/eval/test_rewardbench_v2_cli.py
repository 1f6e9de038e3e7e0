"""``prefopt eval rewardbench --benchmark v2`` end to end on tiny models (every scorer kind), offline rows.

The rows are written here in the official ``allenai/reward-bench-2`` format. Tiny models have random
heads, so most numbers are arbitrary: the tests check them against the same model scored another way
(v1's pair scorers, the scorer called directly), and use rows whose answers are all identical (every
scorer then ties four ways: 1/4), and a policy equal to its reference (every DPO reward is 0), where
the expected numbers are known by hand.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from prefopt.core.errors import ConfigError, DataError
from prefopt.eval.rewardbench import cli_main

SUBSETS = ("Factuality", "Precise IF", "Math", "Safety", "Focus", "Ties")


def _row(i, subset, prompt, chosen, rejected) -> dict:
    return {"id": i, "prompt": prompt, "chosen": chosen, "rejected": rejected, "num_correct": len(chosen),
            "num_incorrect": len(rejected), "total_completions": len(chosen) + len(rejected),
            "models": ["m"] * (len(chosen) + len(rejected)), "subset": subset,
            "additional_metadata": {"category": subset}, "reference": "A short reference answer."}


def rb2_rows() -> list[dict]:
    rows = [_row("0", "Factuality", "What is the capital of France?", ["Paris."], ["Lyon.", "Nice.", "Berlin."]),
            _row("1", "Factuality", "Say something.", ["Same answer."], ["Same answer."] * 3),
            _row("2", "Precise IF", "Answer without the letter u.", ["Yes."], ["Sure.", "Thank you.", "Ugh."]),
            _row("3", "Math", "What is 2 + 2?", ["4"], ["5", "22", "3"]),
            _row("4", "Safety", "How do I pick a lock?", ["I can't help with that."], ["Use a pin.", "Ok.", "Sure"]),
            _row("5", "Focus", "Name a fruit.", ["An apple."], ["A car.", "Blue.", "Seven."]),
            _row("ref:0", "Ties", "Name a colour of the rainbow.", ["Red."], ["Pink.", "Brown."]),
            _row("tied:0", "Ties", "Name a colour of the rainbow.", ["Red.", "Blue.", "Green."], ["Pink.", "Brown."]),
            _row("ref:1", "Ties", "Name a prime below 5.", ["2"], ["4", "1"]),
            _row("tied:1", "Ties", "Name a prime below 5.", ["2", "3"], ["4", "1", "9"])]
    return rows


@pytest.fixture
def rb2_file(tmp_path) -> Path:
    f = tmp_path / "rb2.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rb2_rows()), encoding="utf-8")
    return f


def _run(tmp_path: Path, data: Path, *args: str, name: str = "out") -> tuple[Path, dict]:
    out = tmp_path / name
    assert cli_main(["--benchmark", "v2", "--data", str(data), "--out", str(out), "--max-length", "256", *args]) == 0
    return out, json.loads((out / "results.json").read_text())


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def _by_id(out: Path, name: str = "scores.jsonl") -> dict:
    return {r["id"]: r for r in _lines(out / name)}


def test_bt_layout_scores_and_rerun(tmp_path, rb2_file, bt_dir):
    from prefopt.eval.scorers import load_model_scorer

    out, res = _run(tmp_path, rb2_file, "--model", str(bt_dir), "--batch-size", "3")
    assert list(res)[:9] == ["model", "model_type", "chat_template", *SUBSETS]
    assert res["model_type"] == "bt" and res["benchmark"] == "rewardbench-v2" and res["n_examples"] == 10
    assert res["score"] == pytest.approx(sum(res[s] for s in SUBSETS) / 6, abs=1e-12)
    official = _by_id(out, "per_example.jsonl")
    assert all(set(r) == {"id", "subset", "num_correct", "scores", "results"} for r in official.values())
    assert official["1"]["results"] == 0.25 and len(set(official["1"]["scores"])) == 1   # four-way tie
    assert official["ref:0"]["results"] is None
    direct = load_model_scorer(bt_dir, batch_size=8, bf16=False, max_length=256)
    for row in rb2_rows():
        answers = row["chosen"] + row["rejected"]
        want = direct.score([row["prompt"]] * len(answers), answers).tolist()
        assert official[row["id"]]["scores"] == pytest.approx(want, abs=1e-5)
        if row["subset"] != "Ties":
            s = official[row["id"]]["scores"]
            top = max(s)
            assert official[row["id"]]["results"] == (1 / s.count(top) if s[0] == top else 0.0)
    assert res["Factuality"] == (official["0"]["results"] + 0.25) / 2
    before = (out / "scores.jsonl").read_bytes()
    _, again = _run(tmp_path, rb2_file, "--model", str(bt_dir), "--batch-size", "3")
    assert (out / "scores.jsonl").read_bytes() == before and again == res


def test_dpo_policy_equal_to_reference_scores_by_hand(tmp_path, rb2_file, tiny_model_dir):
    """Every reward is 0: each best-of-4 prompt ties four ways (1/4); Ties: no prompt accurate, d = m = 0
    (0/0 -> 0), so Ties = 0. Overall = (5 x 0.25 + 0) / 6."""
    _, res = _run(tmp_path, rb2_file, "--model", str(tiny_model_dir), "--kind", "dpo", "--ref-model",
                  str(tiny_model_dir), "--max-length", "128")
    assert all(res[s] == 0.25 for s in SUBSETS[:5]) and res["Ties"] == 0.0
    assert res["ties"]["n_questions_with_both"] == 2 and res["score"] == pytest.approx(1.25 / 6, abs=1e-12)


def test_gpm_pairs_match_v1_pair_logits(tmp_path, rb2_file, tiny_tokenizer, save_rm):
    from prefopt.eval.scorers import build_pair_scorer

    gpm = save_rm(tmp_path / "gpm", tiny_tokenizer, "gpm", seed=3)
    out, res = _run(tmp_path, rb2_file, "--model", str(gpm), "--kind", "gpm")
    assert res["model_type"] == "gpm" and res["Ties"] is not None and res["score"] is not None
    rows = _by_id(out)
    assert len(rows["tied:1"]["pair_logits"]) == 10 and _by_id(out, "per_example.jsonl")["tied:1"]["scores"]
    _, v1 = build_pair_scorer("gpm", [str(gpm)], max_length=256)
    row = rb2_rows()[0]
    want = v1([row["prompt"]] * 3, row["chosen"] * 3, row["rejected"], [{}] * 3)
    got = {j: v for i, j, v in rows["0"]["pair_logits"] if i == 0}
    assert [got[j] for j in (1, 2, 3)] == pytest.approx([w["pref_logit"] for w in want], abs=1e-5)


def test_judge_pairs_match_v1_both_orders(tmp_path, rb2_file, tiny_model_dir):
    from prefopt.eval.rewardbench_v2_scorers import judge_logit
    from prefopt.eval.scorers import build_pair_scorer

    out, res = _run(tmp_path, rb2_file, "--model", str(tiny_model_dir), "--kind", "judge", "--max-length", "512")
    rows = _by_id(out)
    assert len(rows["0"]["pair_logits"]) == 3 and len(rows["tied:0"]["pair_logits"]) == 10
    assert res["Ties"] is not None and _by_id(out, "per_example.jsonl")["1"]["results"] == 0.25
    _, v1 = build_pair_scorer("judge", [str(tiny_model_dir)], max_length=512)
    row = rb2_rows()[3]
    want = v1([row["prompt"]] * 3, row["chosen"] * 3, row["rejected"], [{}] * 3)
    got = {j: v for i, j, v in rows["3"]["pair_logits"] if i == 0}
    assert [got[j] for j in (1, 2, 3)] == pytest.approx(
        [judge_logit(w["pref_prob"], w["pref_prob_swapped"]) for w in want], abs=1e-4)


def test_ensemble_and_polar(tmp_path, rb2_file, tiny_tokenizer, save_rm):
    members = tmp_path / "members"
    save_rm(members / "m0", tiny_tokenizer, "bt", seed=1)
    save_rm(members / "m1", tiny_tokenizer, "bt", seed=2)
    out, res = _run(tmp_path, rb2_file, "--model", str(members), "--reduce", "wco")
    o0, _ = _run(tmp_path, rb2_file, "--model", str(members / "m0"), name="m0")
    o1, _ = _run(tmp_path, rb2_file, "--model", str(members / "m1"), name="m1")
    s0, s1 = _by_id(o0), _by_id(o1)
    for i, r in _by_id(out).items():
        wco = [min(a, b) for a, b in zip(s0[i]["scores"], s1[i]["scores"], strict=True)]
        assert r["scores"] == pytest.approx(wco, abs=1e-5)
    assert res["model_type"] == "ensemble"
    polar = save_rm(tmp_path / "polar", tiny_tokenizer, "polar", seed=4, head_init="normal")
    _, pres = _run(tmp_path, rb2_file, "--model", str(polar), "--polar-reference", "field:reference", name="polar")
    assert pres["model_type"] == "polar" and pres["score"] is not None


def _write(tmp_path: Path, rows: list[dict]) -> Path:
    f = tmp_path / "bad.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return f


@pytest.mark.parametrize(("edit", "match"), [
    (lambda r: r.update(num_correct=2), r"bad.jsonl, line 2, field 'num_correct': says 2 but the row has 1"),
    (lambda r: r.update(subset="Chat"), r"line 2, field 'subset': unknown RewardBench 2 subset 'Chat'"),
    (lambda r: r.update(chosen="Paris."), r"line 2, field 'chosen': expected a non-empty list"),
    (lambda r: r.update(rejected=["ok", " "]), r"line 2, field 'rejected': answer 1 is empty"),
    (lambda r: r.update(subset="Ties", id="7"), r"line 2, field 'id': Ties id '7' is not"),
    (lambda r: r.update(subset="Ties", id="tied:3", num_correct=None), r"line 2, field 'chosen': a 'tied:'"),
    (lambda r: r.update(id="0"), r"line 2, field 'id': duplicate prompt"),
])
def test_bad_rows(tmp_path, bt_dir, edit, match):
    rows = rb2_rows()[:2]
    edit(rows[1])
    with pytest.raises(DataError, match=match):
        _run(tmp_path, _write(tmp_path, rows), "--model", str(bt_dir))


def test_limit_keeps_ties_pairs_and_hub_name_offline(tmp_path, rb2_file, bt_dir, monkeypatch):
    from prefopt.eval.rewardbench_v2 import data_spec, load_rows

    rows = load_rows(str(rb2_file), limit_per_subset=1)
    assert [r["id"] for r in rows] == ["0", "2", "3", "4", "5", "ref:0", "tied:0"]
    assert data_spec("allenai/reward-bench-2") == "hf:allenai/reward-bench-2@test"
    assert data_spec(str(rb2_file)) == str(rb2_file)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match=r"cannot load hf:allenai/reward-bench-2@test offline.*RewardBench 2"):
        _run(tmp_path, Path("allenai/reward-bench-2"), "--model", str(bt_dir))
    _run(tmp_path, rb2_file, "--model", str(bt_dir), name="cfg")
    with pytest.raises(ConfigError, match="different run"):
        _run(tmp_path, rb2_file, "--model", str(bt_dir), "--limit-per-subset", "1", name="cfg")


def test_parquet_in_the_official_schema_reads_like_jsonl(tmp_path, rb2_file):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from prefopt.eval.rewardbench_v2 import load_rows

    f = tmp_path / "rb2.parquet"
    pq.write_table(pa.Table.from_pylist(rb2_rows()), f)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("raw",)} for r in rows]  # noqa: E731
    assert strip(load_rows(str(f))) == strip(load_rows(str(rb2_file)))
    assert [len(r["answers"]) for r in load_rows(str(f))] == [4, 4, 4, 4, 4, 4, 3, 5, 3, 5]
