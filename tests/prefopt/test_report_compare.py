"""`prefopt report`: the "Method comparison" section (table + bar chart) over a pipeline's training
stages, from hand-made stage folders; every stage's figure is linked/embedded as its own file."""
from __future__ import annotations

import base64
import json
import re

import yaml

from prefopt.report import build_report


def _stage(run, name, summary, metrics):
    folder = run / name
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))


def _run(tmp_path, stages):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"kind": "run", "stages": [
        {"name": n, "command": c} for n, c in stages]}))
    return run


def test_comparison_table_and_plot(tmp_path):
    run = _run(tmp_path, [("judge", "rm train"), ("dpo", "train"), ("irpo", "train"), ("grpo", "train"),
                          ("report", "report")])
    _stage(run, "judge", {"kind": "bt", "steps": 3, "final_eval": {"eval/accuracy": 0.9}},
           [{"step": 1, "loss/total": 0.7}])
    _stage(run, "dpo", {"algorithm": "dpo", "steps": 8,
                        "first_eval": {"eval/accuracy": 0.5, "eval/margin": 0.0, "eval/pairs": 8.0},
                        "final_eval": {"eval/accuracy": 0.625, "eval/margin": 0.01234567, "eval/pairs": 8.0}},
           [{"step": 1, "loss/total": 0.69}, {"step": 2, "loss/total": 0.6}])
    _stage(run, "irpo", {"algorithm": "irpo", "steps": 8, "first_eval": {"eval/accuracy": 0.25},
                         "final_eval": {"eval/accuracy": 0.75, "eval/lists": 4.0}},
           [{"step": 1, "rewards/accuracies": 0.5}])
    _stage(run, "grpo", {"algorithm": "grpo", "steps": 2,
                         "first_eval": {"eval/reward": 0.375, "eval/win_rate_vs_ref": 0.5},
                         "final_eval": {"eval/reward": 0.75, "eval/win_rate_vs_ref": 0.587}},
           [{"step": 1, "reward": 0.25}, {"step": 2, "reward": 0.5, "eval/reward": 0.75}])
    md_path, html_path = build_report(run, run / "report")
    md = md_path.read_text()
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert table == [  # the reward model stage (no algorithm) is not a method
        "| stage | algorithm | steps | eval/accuracy | eval/margin | eval/reward | eval/win_rate_vs_ref "
        "| first eval/accuracy | first eval/margin | first eval/reward | first eval/win_rate_vs_ref |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        "| dpo | dpo | 8 | 0.625 | 0.01235 | n/a | n/a | 0.5 | 0 | n/a | n/a |",
        "| irpo | irpo | 8 | 0.75 | n/a | n/a | n/a | 0.25 | n/a | n/a | n/a |",
        "| grpo | grpo | 2 | n/a | n/a | 0.75 | 0.587 | n/a | n/a | 0.375 | 0.5 |",
    ]
    assert md.index("## Method comparison") < md.index("## judge: training")
    assert "![method comparison](compare.png)" in md
    assert (run / "report" / "compare.png").stat().st_size > 1000
    # each stage's curves link to its own folder and the HTML embeds five different images
    for name in ("judge", "dpo", "irpo", "grpo"):
        assert f"![{name} curves](../{name}/curves.png)" in md
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html_path.read_text())
    assert len(images) == 5 and len(set(images)) == 5
    assert base64.b64decode(images[0]) == (run / "report" / "compare.png").read_bytes()


def test_one_training_stage_has_no_comparison(tmp_path):
    run = _run(tmp_path, [("dpo", "train")])
    _stage(run, "dpo", {"algorithm": "dpo", "steps": 1, "final_eval": {"eval/accuracy": 1.0}},
           [{"step": 1, "loss/total": 0.69}])
    md_path, _ = build_report(run, run / "report")
    assert "Method comparison" not in md_path.read_text()
    assert not (run / "report" / "compare.png").exists()
