"""``prefopt eval judge-agreement``: tiny RM judge on the official GPT-4 annotations (stratified subset),
tiny LM judge on chosen/rejected pairs (both orders), the http judge's both-orders mode with scripted
replies, and bad inputs. Every reported number is recomputed from the stored per-pair rows."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from prefopt.core.errors import ConfigError, DataError, PrefoptError
from prefopt.eval import agreement as AG
from prefopt.eval.judge_agreement import cli_main

ANN = "alpaca-eval/annotations_weighted_alpaca_eval_gpt4_turbo"


def _annotations(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def _stored(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "pairs.jsonl").read_text().splitlines()]


def test_rm_judge_on_gpt4_annotations(tmp_path, shared_data, bt_dir):
    files = [shared_data / ANN / "alpaca-7b.jsonl.gz", shared_data / ANN / "oasst-sft-pythia-12b.jsonl.gz"]
    out = tmp_path / "agree"
    args = ["--judge", "rm", "--judge-model", str(bt_dir), "--data", ",".join(map(str, files)), "--limit", "6",
            "--max-length", "128", "--judge-batch-size", "3", "--seed", "1", "--out", str(out)]
    assert cli_main(args) == 0
    res = json.loads((out / "results.json").read_text())
    rows = _stored(out)
    by_file = {str(f): _annotations(f) for f in files}
    assert res["n"] == 6 and [v["n"] for v in res["per_file"].values()] == [3, 3]  # stratified by file
    assert res["n_ties_skipped"] == sum(a["preference"] == 1.5 for f in by_file.values() for a in f)
    for r in rows:  # labels and lengths come from the annotation row named by (file, row)
        ann = by_file[r["file"]][r["row"] - 1]
        assert r["label_second"] == (ann["preference"] > 1.5)
        assert (r["len_first"], r["len_second"]) == (len(ann["output_1"]), len(ann["output_2"]))
    p, lab = [r["p_second"] for r in rows], [r["label_second"] for r in rows]
    hits = sum((x > 0.5) == y for x, y in zip(p, lab, strict=True))
    assert res["agreement"] == pytest.approx(hits / 6)
    assert (res["ci_low"], res["ci_high"]) == pytest.approx(AG.wilson_ci(hits, 6))
    l1, l2 = [r["len_first"] for r in rows], [r["len_second"] for r in rows]
    assert res["longer_baseline_agreement"] == pytest.approx(
        sum((b > a) == y for a, b, y in zip(l1, l2, lab, strict=True)) / 6)
    assert res["judge"].startswith("rm:bt") and res["position_consistency"] is None
    before = (out / "pairs.jsonl").read_bytes()
    assert cli_main(args) == 0  # rerun: nothing judged twice
    assert (out / "pairs.jsonl").read_bytes() == before
    other = tmp_path / "agree2"
    args2 = list(args)
    args2[args2.index("--seed") + 1], args2[-1] = "2", str(other)
    assert cli_main(args2) == 0  # another seed, another stratified subset
    assert {(r["file"], r["row"]) for r in _stored(other)} != {(r["file"], r["row"]) for r in rows}


def _pairs_file(path: Path) -> Path:
    rows = [{"prompt": "What is 2 + 2?", "chosen": "4.", "rejected": "It is five, I think, or maybe six."},
            {"prompt": "Name a colour.", "chosen": "Blue is a colour.", "rejected": "Seven."},
            {"prompt": [{"role": "user", "content": "Hi"}], "chosen": "Hello! How can I help?", "rejected": "Go."}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_lm_judge_both_orders_on_chosen_rejected_pairs(tmp_path, tiny_model_dir):
    data = _pairs_file(tmp_path / "pairs.jsonl")
    out = tmp_path / "lm"
    assert cli_main(["--judge", "lm", "--judge-model", str(tiny_model_dir), "--data", str(data), "--max-length",
                     "256", "--judge-batch-size", "3", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    rows = _stored(out)
    chosen_len = [2, 17, 22]
    for r in rows:  # label_second == the chosen answer was shown second
        assert (r["len_second"] == chosen_len[r["row"] - 1]) == r["label_second"]
    pc = res["position_consistency"]
    assert pc["n"] == 3
    assert pc["value"] == pytest.approx(AG.position_consistency([r["p_second_first"] for r in rows],
                                                                [r["p_first_first"] for r in rows])["value"])
    for r in rows:  # the lm judge's preference averages the two orders
        assert r["p_second"] == pytest.approx((r["p_second_first"] + 1 - r["p_first_first"]) / 2, abs=1e-6)
    # labels prefer the shorter answer on 1 of 3 pairs (pair 1: "4." beats the long one)
    assert res["longer_pref_labels"] == pytest.approx(2 / 3)


def test_http_judge_both_orders_measures_position_bias(monkeypatch):
    from prefopt.eval.judges.http import HTTPJudge

    first_always = HTTPJudge("http://127.0.0.1:9/v1", "scripted", both_orders=True)
    monkeypatch.setattr(first_always, "_post", lambda body: {"choices": [{"message": {"content": "m"}}]})
    [a] = first_always.annotate(["q"], ["GOOD answer"], ["BAD answer"])
    assert a["preference"] == 1.5 and a["p_output_first"] == 1.0 and a["p_reference_first"] == 1.0
    assert AG.position_consistency([a["p_output_first"]], [a["p_reference_first"]])["value"] == 0.0

    def good_wins(body):
        text = "\n".join(m["content"] for m in body["messages"])
        return {"choices": [{"message": {"content": "M" if text.rindex("GOOD") > text.rindex("BAD") else "m"}}]}

    fair = HTTPJudge("http://127.0.0.1:9/v1", "scripted", both_orders=True)
    monkeypatch.setattr(fair, "_post", good_wins)
    [b] = fair.annotate([[{"role": "user", "content": "q"}]], ["BAD answer"], ["GOOD answer"])
    assert b["preference"] == 2.0 and b["p_output_first"] == 1.0 and b["p_reference_first"] == 0.0
    assert AG.position_consistency([b["p_output_first"]], [b["p_reference_first"]])["value"] == 1.0


def test_bad_inputs(tmp_path, bt_dir):
    data = _pairs_file(tmp_path / "pairs.jsonl")
    common = ["--judge-model", str(bt_dir), "--out", str(tmp_path / "o")]
    with pytest.raises(PrefoptError, match="unknown judge 'gpt5'.*known: http, lm, rm"):
        cli_main(["--judge", "gpt5", "--data", str(data), *common])
    with pytest.raises(ConfigError, match="--limit must be >= 1"):
        cli_main(["--judge", "rm", "--data", str(data), "--limit", "0", *common])
    with pytest.raises(DataError, match="nope.jsonl: file not found"):
        cli_main(["--judge", "rm", "--data", f"{data},{tmp_path / 'nope.jsonl'}", *common])
    bad = tmp_path / "ann.jsonl"
    bad.write_text(json.dumps({"instruction": "q", "output_1": "a", "output_2": "b", "preference": 1.8}) + "\n"
                   + json.dumps({"instruction": "q", "output_1": "a", "output_2": "b", "preference": 7}) + "\n")
    with pytest.raises(DataError, match=r"line 2, field 'preference'.*\[1, 2\]"):
        cli_main(["--judge", "rm", "--data", str(bad), *common])
    ties = tmp_path / "ties.jsonl"
    ties.write_text(json.dumps({"instruction": "q", "output_1": "a", "output_2": "b", "preference": 1.5}) + "\n")
    with pytest.raises(DataError, match=r"no labelled \(non-tie\) pairs \(1 ties skipped\)"):
        cli_main(["--judge", "rm", "--data", str(ties), *common])


class _ScriptedJudge:
    """Order-sensitive fake judge: prefers the longer answer; raises on call number ``fail_at``."""

    name = "scripted"

    def __init__(self, fail_at: int | None = None):
        self.calls, self.fail_at = 0, fail_at

    def annotate(self, instructions, references, outputs, *, keys=None):
        self.calls += 1
        if self.calls == self.fail_at:
            raise ConfigError("http judge failed: HTTP 503 from http://judge/v1/chat/completions")
        return [{"preference": 2.0 if len(o) > len(r) else 1.0, "p_output_first": 1.0 if len(o) > len(r) else 0.0,
                 "p_reference_first": 0.0 if len(o) > len(r) else 1.0} for r, o in zip(references, outputs, strict=True)]


def test_judge_failing_mid_run_resumes_without_duplicates(tmp_path, monkeypatch):
    import prefopt.eval.judge_agreement as JA

    data = _pairs_file(tmp_path / "pairs.jsonl")
    out = tmp_path / "flaky"
    args = ["--judge", "http", "--judge-model", "scripted", "--data", str(data), "--judge-batch-size", "1",
            "--out", str(out)]
    flaky = _ScriptedJudge(fail_at=2)
    monkeypatch.setattr(JA, "make_cli_judge", lambda a: flaky)
    with pytest.raises(ConfigError, match="HTTP 503"):
        cli_main(args)
    assert len(_stored(out)) == 1  # the first pair was kept
    healthy = _ScriptedJudge()
    monkeypatch.setattr(JA, "make_cli_judge", lambda a: healthy)
    assert cli_main(args) == 0
    rows = _stored(out)
    assert healthy.calls == 2 and sorted(r["row"] for r in rows) == [1, 2, 3]  # nothing judged twice
    res = json.loads((out / "results.json").read_text())
    # always-longer judge: agrees with the labels on pairs 2 and 3 (chosen longer), not on pair 1
    assert res["agreement"] == pytest.approx(2 / 3) and res["longer_pref_judge"] == 1.0
    assert res["position_consistency"]["value"] == 1.0 and res["longer_baseline_agreement"] == pytest.approx(2 / 3)


class _GarbledOnceJudge(_ScriptedJudge):
    """Like ``_ScriptedJudge`` but its first answer is unparsable (what the http judge returns then)."""

    def annotate(self, instructions, references, outputs, *, keys=None):
        rows = super().annotate(instructions, references, outputs, keys=keys)
        if self.calls == 1:
            rows[0] = {"preference": None, "retry": True, "error": "unparsable judge answer: 'Output (c)'"}
        return rows


def test_unparsable_answer_is_retried_by_the_next_run(tmp_path, monkeypatch):
    import prefopt.eval.judge_agreement as JA

    data = _pairs_file(tmp_path / "pairs.jsonl")
    out = tmp_path / "garbled"
    args = ["--judge", "http", "--judge-model", "scripted", "--data", str(data), "--judge-batch-size", "1",
            "--out", str(out)]
    garbled = _GarbledOnceJudge()
    monkeypatch.setattr(JA, "make_cli_judge", lambda a: garbled)
    assert cli_main(args) == 0
    first = json.loads((out / "results.json").read_text())
    assert first["n_unparsable"] == 1 and first["n"] == 2
    again = _ScriptedJudge()
    monkeypatch.setattr(JA, "make_cli_judge", lambda a: again)
    assert cli_main(args) == 0
    assert again.calls == 1  # only the failed pair was asked again
    res = json.loads((out / "results.json").read_text())
    assert res["n_unparsable"] == 0 and res["n"] == 3 and res["agreement"] == pytest.approx(2 / 3)
    assert [r["retry"] for r in _stored(out)] == [True, False, False, False]  # the failure stays on record
