"""The method leaderboards run end to end on tiny-llama with CI's tiny budget (the configs' `vars`):
configs/compare_offline.yaml (7 offline methods, RM-judged AlpacaEval leaderboard, report) and
configs/compare_online.yaml (GRPO, URPO, DNO, EGPO, P3O on arithmetic prompts, report)."""
from __future__ import annotations

import math
import re

import pytest
import yaml

from prefopt.cli import main

OFFLINE = ["dpo", "ipo", "simpo", "sparsepo", "lcpo", "irpo", "curry_dpo"]
ONLINE = ["grpo", "urpo", "dno", "egpo", "p3o"]



def _run(cfg, out, monkeypatch, repo_root, tiny_vars):
    monkeypatch.chdir(repo_root)  # configs use ../shared/data and configs/... paths
    assert main(["run", cfg, f"output_dir={out}", "vars.model=tiny-llama", *tiny_vars]) == 0
    stages = [s["name"] for s in yaml.safe_load((repo_root / cfg).read_text())["stages"]]
    missing = [s for s in stages if not (out / s / ".stage-done.json").is_file()]
    assert not missing, f"stages without .stage-done.json: {missing}"


def _table(md: str, heading: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the first markdown table after ``heading``."""
    lines = md[md.index(heading):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows[0], rows[2:]


def _number(cell: str) -> float:
    value = float(cell)
    assert math.isfinite(value), cell
    return value


def _comparison(out, methods, main_metric):
    md = (out / "report" / "report.md").read_text()
    head, rows = _table(md, "## Method comparison")
    assert [r[0] for r in rows] == methods and [r[1] for r in rows] == methods
    for row in rows:
        assert int(row[2]) >= 1  # steps
        _number(row[head.index(main_metric)])
        assert all(c == "n/a" or math.isfinite(float(c)) for c in row[3:])
    assert (out / "report" / "compare.png").stat().st_size > 1000
    assert "![method comparison](compare.png)" in md
    return head, rows


@pytest.mark.slow
def test_compare_offline_end_to_end(tmp_path, monkeypatch, repo_root, shared_data, one_thread):
    out = tmp_path / "offline"
    _run("configs/compare_offline.yaml", out, monkeypatch, repo_root,
         ["vars.steps=1", "vars.batch=2", "vars.max_length=64", "vars.max_prompt_length=32",
          "vars.rm_pairs=4", "vars.ae_limit=1", "vars.ae_tokens=2"])
    head, rows = _table((out / "leaderboard" / "leaderboard.md").read_text(), "| policy")
    assert sorted(r[0] for r in rows) == sorted(["base", *OFFLINE])
    assert all(0.0 <= _number(r[head.index("win rate")]) <= 100.0 for r in rows)
    head, rows = _comparison(out, OFFLINE, "eval/accuracy")
    # only IRPO (ranked lists) reports no implicit-reward margin
    assert [r[0] for r in rows if r[head.index("eval/margin")] == "n/a"] == ["irpo"]


@pytest.mark.slow
def test_compare_online_end_to_end(tmp_path, monkeypatch, repo_root, one_thread):
    out = tmp_path / "online"
    _run("configs/compare_online.yaml", out, monkeypatch, repo_root,
         ["vars.rounds=1", "vars.prompts_per_round=2", "vars.generations=2", "vars.max_new_tokens=4",
          "vars.n_prompts=8", "vars.n_eval=2"])
    head, rows = _comparison(out, ONLINE, "eval/reward")
    assert head[3:5] == ["eval/reward", "eval/win_rate_vs_ref"]
    assert all(re.fullmatch(r"[-0-9.e]+", c) for r in rows for c in r[3:])  # every method, every metric
    first_wr = [_number(r[head.index("first eval/win_rate_vs_ref")]) for r in rows]
    assert first_wr == [0.5] * len(ONLINE)  # the policy before training is the reference
    # same prompts (hence the same held-out set), reward/oracle, seed and rounds for every method
    resolved = [yaml.safe_load((out / m / "config.yaml").read_text()) for m in ONLINE]
    same = {(yaml.safe_dump(c["online"]["prompts"]), yaml.safe_dump(c["online"]["reward"]), c["run"]["seed"],
             c["online"]["rounds"], c["online"]["prompts_per_round"], c["online"]["max_new_tokens"]) for c in resolved}
    assert len(same) == 1
