"""``prefopt eval head2head``: precomputed outputs with a tiny RM judge (ties, win rate and CI recomputed),
real tiny-policy generation (identical policies tie everywhere), empty generations, mismatched files,
the prompt sources and ``eval alpacaeval --judge-agreement``."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from prefopt.core.errors import DataError
from prefopt.eval import agreement as AG
from prefopt.eval.head2head import cli_main
from prefopt.eval.head2head_data import load_prompts

REF = "alpaca-eval/reference_gpt4_turbo_gpt4_1106_preview.dev50.jsonl"


def _instructions(shared_data: Path, k: int) -> list[str]:
    return [json.loads(x)["instruction"] for x in (shared_data / REF).read_text().splitlines()[:k]]


def _outputs(path: Path, instructions: list[str], texts: list[str], name: str) -> Path:
    path.write_text(json.dumps([{"instruction": i, "output": t, "generator": name, "dataset": ""}
                                for i, t in zip(instructions, texts, strict=True)]))
    return path


def _agreement(path: Path) -> Path:
    path.write_text(json.dumps({"agreement": 0.7, "ci_low": 0.6, "ci_high": 0.78, "n": 120, "judge": "rm:bt:bt",
                                "n_ties_skipped": 2}))
    return path


def test_outputs_files_rm_judge(tmp_path, shared_data, bt_dir, capsys):
    instr = _instructions(shared_data, 4)
    a = _outputs(tmp_path / "a.json", instr, ["Short.", "A medium answer here.", "same text", "x"], "pol-a")
    b = _outputs(tmp_path / "b.json", instr, ["A much longer answer, with detail.", "No.", "same text", "yy"], "pol-b")
    out = tmp_path / "h2h"
    args = ["--outputs-a", str(a), "--outputs-b", str(b), "--name-a", "base", "--name-b", "dpo", "--prompts",
            str(shared_data / REF), "--limit", "4", "--judge", "rm", "--judge-model", str(bt_dir), "--max-length",
            "128", "--judge-agreement", str(_agreement(tmp_path / "agree.json")), "--out", str(out)]
    assert cli_main(args) == 0
    res = json.loads((out / "results.json").read_text())
    judged = [json.loads(x) for x in (out / "judgements.jsonl").read_text().splitlines()]
    p = [j["p_b"] for j in judged]
    assert p[2] == 0.5 and res["ties"] == 1  # identical answers tie without asking the judge
    wins = sum(x > 0.5 for x in p)
    assert res["wins"] == wins and res["n"] == 4
    assert res["win_rate"] == pytest.approx((wins + 0.5) / 4)
    assert (res["ci_low"], res["ci_high"]) == pytest.approx(AG.wilson_ci(wins + 0.5, 4))
    assert res["judge_agreement"] == {"agreement": 0.7, "ci_low": 0.6, "ci_high": 0.78, "n": 120, "judge": "rm:bt:bt"}
    assert (res["name_a"], res["name_b"]) == ("base", "dpo")
    assert res["mean_len_a"] == pytest.approx((6 + 21 + 9 + 1) / 4)
    assert res["mean_len_b"] == pytest.approx((34 + 3 + 9 + 2) / 4)
    longer, not_longer = res["by_length"]["b_longer"], res["by_length"]["b_not_longer"]
    assert (longer["n"], not_longer["n"]) == (2, 2)  # B longer on prompts 1 and 4
    assert longer["win_rate"] == pytest.approx(sum(x > 0.5 for x in (p[0], p[3])) / 2)
    assert not_longer["win_rate"] == pytest.approx((float(p[1] > 0.5) + 0.5) / 2)  # prompt 3 is the tie
    assert (not_longer["ci_low"], not_longer["ci_high"]) == pytest.approx(AG.wilson_ci(float(p[1] > 0.5) + 0.5, 2))
    captured = capsys.readouterr()
    assert "head2head dpo vs base: win rate" in captured.out and str(out / "results.json") in captured.out
    assert "unvalidated" not in captured.err
    before = (out / "judgements.jsonl").read_bytes()
    assert cli_main(args) == 0  # rerun: nothing judged twice
    assert (out / "judgements.jsonl").read_bytes() == before


def test_unvalidated_judge_warns(tmp_path, shared_data, bt_dir, capsys):
    instr = _instructions(shared_data, 2)
    a = _outputs(tmp_path / "a.json", instr, ["one", "two"], "a")
    b = _outputs(tmp_path / "b.json", instr, ["three", "four"], "b")
    assert cli_main(["--outputs-a", str(a), "--outputs-b", str(b), "--prompts", str(shared_data / REF), "--limit",
                     "2", "--judge", "rm", "--judge-model", str(bt_dir), "--max-length", "64",
                     "--out", str(tmp_path / "o")]) == 0
    captured = capsys.readouterr()
    assert "warning: judge rm:bt" in captured.err and "unvalidated" in captured.err
    assert "agreement not measured" in captured.out
    assert json.loads((tmp_path / "o" / "results.json").read_text())["judge_agreement"] is None


def test_identical_tiny_policies_tie_everywhere(tmp_path, tiny_model_dir, bt_dir):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("Say hi.", "Count to three.")))
    out = tmp_path / "gen"
    args = ["--policy-a", "tiny-llama", "--policy-b", str(tiny_model_dir), "--prompts", str(prompts),
            "--max-new-tokens", "4", "--judge", "rm", "--judge-model", str(bt_dir), "--max-length", "64",
            "--out", str(out)]
    assert cli_main(args) == 0
    res = json.loads((out / "results.json").read_text())
    a = [json.loads(x)["output"] for x in (out / "outputs_a.jsonl").read_text().splitlines()]
    b = [json.loads(x)["output"] for x in (out / "outputs_b.jsonl").read_text().splitlines()]
    assert a == b and all(a)  # same weights (tiny-llama seed 0), greedy
    assert res["ties"] == 2 and res["win_rate"] == 0.5 and res["n"] == 2
    before = [(out / f).read_bytes() for f in ("outputs_a.jsonl", "outputs_b.jsonl", "judgements.jsonl")]
    assert cli_main(args) == 0  # rerun: nothing regenerated or re-judged
    assert [(out / f).read_bytes() for f in ("outputs_a.jsonl", "outputs_b.jsonl", "judgements.jsonl")] == before


class _Silent:
    """A generator that answers every prompt with empty text (counts its calls)."""

    calls = 0

    def generate(self, prompts, params):
        from prefopt.generation import Completion

        _Silent.calls += 1
        return [[Completion(token_ids=[], text="", logprobs=[])] for _ in prompts]


def test_empty_generations_stop_then_allow_empty(tmp_path, shared_data, bt_dir, monkeypatch):
    import prefopt.eval.alpacaeval as ae

    monkeypatch.setattr(ae, "build_generator", lambda args: _Silent())
    out = tmp_path / "empty"
    args = ["--policy-a", "silent-a", "--policy-b", "silent-b", "--prompts", str(shared_data / REF), "--limit", "2",
            "--judge", "rm", "--judge-model", str(bt_dir), "--max-length", "64", "--out", str(out)]
    with pytest.raises(DataError, match=r"outputs_a.jsonl, field 'output': policy A \(silent-a\) returned empty "
                                        r"text for 2 prompt\(s\) \(indices \[0, 1\]\)"):
        cli_main(args)
    calls = _Silent.calls
    assert cli_main([*args, "--allow-empty"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["n_empty_a"] == 2 and res["n_empty_b"] == 2 and res["ties"] == 2
    assert _Silent.calls == calls + 1  # A was not generated again, only B


def test_mismatched_and_bad_outputs_files(tmp_path, shared_data, bt_dir):
    instr = _instructions(shared_data, 3)
    a = _outputs(tmp_path / "a.json", instr, ["1", "2", "3"], "a")
    common = ["--prompts", str(shared_data / REF), "--limit", "3", "--judge", "rm", "--judge-model", str(bt_dir),
              "--out", str(tmp_path / "o")]
    short = _outputs(tmp_path / "short.json", instr[:2], ["1", "2"], "b")
    with pytest.raises(DataError, match=r"short.json, field 'instruction': no output for prompt 2 .*does not match"):
        cli_main(["--outputs-a", str(a), "--outputs-b", str(short), *common])
    empty = _outputs(tmp_path / "empty.json", instr, ["1", "  ", "3"], "b")
    with pytest.raises(DataError, match=r"empty.json, line 2, field 'output': empty text"):
        cli_main(["--outputs-a", str(a), "--outputs-b", str(empty), *common])
    with pytest.raises(DataError, match="outputs file not found"):
        cli_main(["--outputs-a", str(a), "--outputs-b", str(tmp_path / "none.json"), *common])
    with pytest.raises(Exception, match="unknown judge 'oracle'"):
        cli_main(["--outputs-a", str(a), "--outputs-b", str(a), *common[:4], "--judge", "oracle", "--out",
                  str(tmp_path / "o")])
    with pytest.raises(Exception, match="--limit must be >= 1"):
        cli_main(["--outputs-a", str(a), "--outputs-b", str(a), "--prompts", str(shared_data / REF), "--limit", "-1",
                  "--judge", "rm", "--out", str(tmp_path / "o")])
    with pytest.raises(DataError, match="missing.json: judge-agreement results not found"):
        cli_main(["--outputs-a", str(a), "--outputs-b", str(a), *common, "--judge-agreement",
                  str(tmp_path / "missing.json")])


def test_prompt_sources(tmp_path, shared_data):
    hh = load_prompts(str(shared_data / "hh-rlhf" / "helpful-base.test.jsonl.gz"), 3)
    assert len(hh) == 3 and all(r["prompt"][-1]["role"] == "user" for r in hh)
    assert hh[0]["prompt"][0]["content"].startswith("How can I find out what types of butterflies")
    ae = load_prompts(str(shared_data / REF), 2)
    assert ae[1]["instruction"] == _instructions(shared_data, 2)[1] and ae[1]["prompt"][0]["role"] == "user"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "x"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl, line 1: cannot tell the prompt format"):
        load_prompts(str(bad), None)


def test_alpacaeval_stores_and_shows_judge_agreement(tmp_path, shared_data, bt_dir, capsys):
    from prefopt.eval.alpacaeval import cli_main as ae_main
    from prefopt.eval.alpacaeval_metrics import leaderboard_table

    instr = _instructions(shared_data, 2)
    outs = _outputs(tmp_path / "m.json", instr, ["An answer.", "Another answer."], "pol")
    base = ["--model-outputs", str(outs), "--reference", str(shared_data / REF), "--limit", "2", "--judge", "rm",
            "--judge-model", str(bt_dir), "--max-length", "64"]
    assert ae_main([*base, "--judge-agreement", str(_agreement(tmp_path / "ag.json")), "--out",
                    str(tmp_path / "with")]) == 0
    res = json.loads((tmp_path / "with" / "results.json").read_text())
    assert res["judge_agreement"]["agreement"] == 0.7 and res["judge_agreement"]["n"] == 120
    assert "70.0% [60.0, 78.0] n=120" in capsys.readouterr().out
    assert ae_main([*base, "--out", str(tmp_path / "without")]) == 0
    assert "agreement not measured" in capsys.readouterr().out
    table = leaderboard_table({"x": res, "y": {**res, "judge_agreement": None}})
    assert table.splitlines()[0].endswith("judge agreement |") and "agreement not measured" in table


class _GarbledFirstJudge:
    """Prefers the longer answer; on its first call the first answer is unparsable (http judge style)."""

    name = "scripted"

    def __init__(self):
        self.calls, self.asked = 0, 0

    def annotate(self, instructions, references, outputs, *, keys=None):
        self.calls += 1
        self.asked += len(outputs)
        rows = [{"preference": 2.0 if len(o) > len(r) else 1.0} for r, o in zip(references, outputs, strict=True)]
        if self.calls == 1:
            rows[0] = {"preference": None, "retry": True, "error": "unparsable judge answer"}
        return rows


def test_unparsable_judgement_is_asked_again(tmp_path, shared_data, monkeypatch):
    import prefopt.eval.head2head as H2H

    instr = _instructions(shared_data, 3)
    a = _outputs(tmp_path / "a.json", instr, ["Short.", "A medium answer here.", "x"], "pol-a")
    b = _outputs(tmp_path / "b.json", instr, ["A much longer answer.", "No.", "yy"], "pol-b")
    out = tmp_path / "h2h"
    args = ["--outputs-a", str(a), "--outputs-b", str(b), "--prompts", str(shared_data / REF), "--limit", "3",
            "--judge", "http", "--judge-model", "scripted", "--out", str(out)]
    first = _GarbledFirstJudge()
    monkeypatch.setattr(H2H, "make_cli_judge", lambda a: first)
    assert cli_main(args) == 0
    assert json.loads((out / "results.json").read_text())["n_unparsable"] == 1
    second = _GarbledFirstJudge()
    second.calls = 1  # answers everything this time
    monkeypatch.setattr(H2H, "make_cli_judge", lambda a: second)
    assert cli_main(args) == 0
    res = json.loads((out / "results.json").read_text())
    assert second.asked == 1 and res["n_unparsable"] == 0 and res["n"] == 3
    assert res["wins"] == 2 and res["win_rate"] == pytest.approx(2 / 3)  # B longer on prompts 1 and 3
