"""`prefopt run`: stages run in order into their folders, a rerun skips finished stages, bad stage
references and failing stages give clear errors."""
from __future__ import annotations

import json

import pytest
import yaml

from prefopt.cli import main
from prefopt.core.config import load_config
from prefopt.core.errors import ConfigError


def _pipeline(tmp_path, shared_data, steps=2):
    data_cfg = tmp_path / "data.yaml"
    data_cfg.write_text(yaml.safe_dump({
        "kind": "data", "output_dir": "unused",
        "sources": [{"path": str(shared_data / "hh-rlhf/helpful-base.train.sample.jsonl.gz"),
                     "adapter": "hh_rlhf", "on_error": "skip", "max_records": 24}],
        "split": {"test_fraction": 0.25, "seed": 0}}))
    train_cfg = tmp_path / "train.yaml"
    train_cfg.write_text(yaml.safe_dump({
        "kind": "train", "algorithm": "dpo", "model": {"name": "tiny-llama"},
        "data": {"path": "unused", "max_length": 64, "max_prompt_length": 32, "overlong": "truncate_left"},
        "optim": {"lr": 1e-3, "warmup_ratio": 0.0}, "batch_size": 2, "max_steps": steps,
        "run": {"report_to": []}}))
    run_cfg = tmp_path / "run.yaml"
    run_cfg.write_text(yaml.safe_dump({
        "kind": "run", "output_dir": str(tmp_path / "out"),
        "stages": [{"name": "data", "command": "data build", "config": str(data_cfg)},
                   {"name": "dpo", "command": "train", "config": str(train_cfg),
                    "overrides": ["data.path={stage:data}"]}]}))
    return run_cfg


def test_pipeline_runs_then_skips(tmp_path, shared_data, capsys):
    run_cfg = _pipeline(tmp_path, shared_data)
    assert main(["validate", str(run_cfg)]) == 0
    assert main(["run", str(run_cfg)]) == 0
    out = tmp_path / "out"
    assert (out / "data" / "train.jsonl").exists() and (out / "dpo" / "final").is_dir()
    summary = json.loads((out / "dpo" / "summary.json").read_text())
    assert summary["steps"] == 2
    first = json.loads((out / "pipeline.json").read_text())
    assert [s["status"] for s in first["stages"]] == ["done", "done"]
    capsys.readouterr()
    assert main(["run", str(run_cfg)]) == 0
    second = json.loads((out / "pipeline.json").read_text())
    assert [s["status"] for s in second["stages"]] == ["skipped (done)", "skipped (done)"]
    assert "prefopt run: 2 stages" in capsys.readouterr().out
    assert main(["report", "--run", str(out)]) == 0
    md = (out / "report" / "report.md").read_text()
    assert md.index("## data: data") < md.index("## dpo: training")
    assert "## data: data" in md and "| helpful-base.train.sample | 24 |" in md and "## dpo: training" in md and "- **steps**: 2" in md
    assert (out / "dpo" / "curves.png").stat().st_size > 1000
    page = (out / "report" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 1 and "kind: run" in page


def test_changed_stage_reruns_it_and_later_ones(tmp_path, shared_data):
    run_cfg = _pipeline(tmp_path, shared_data)
    assert main(["run", str(run_cfg)]) == 0
    train_cfg = tmp_path / "train.yaml"
    data = yaml.safe_load(train_cfg.read_text())
    data["max_steps"] = 3
    train_cfg.write_text(yaml.safe_dump(data))
    assert main(["run", str(run_cfg), "output_dir=" + str(tmp_path / "out")]) == 0
    stages = json.loads((tmp_path / "out" / "pipeline.json").read_text())["stages"]
    assert [s["status"] for s in stages] == ["skipped (done)", "done"]


def test_bad_stage_reference(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump({"kind": "run", "stages": [
        {"name": "a", "command": "eval rewardbench", "args": ["--model", "{stage:b}"]},
        {"name": "b", "command": "eval rewardbench"}]}))
    with pytest.raises(ConfigError, match=r"stage 'a' refers to \{stage:b\}, which is not an earlier stage"):
        load_config(p)
    p.write_text(yaml.safe_dump({"kind": "run", "stages": [{"name": "a", "command": "train"}]}))
    with pytest.raises(ConfigError, match="command 'train' needs a config file"):
        load_config(p)


def test_vars_substitute_and_override(tmp_path):
    """{var:NAME} takes the config's value or the command line's; an unknown var fails at load time."""
    from prefopt.pipeline import _argv

    run_cfg = tmp_path / "run.yaml"
    run_cfg.write_text(yaml.safe_dump({
        "kind": "run", "output_dir": str(tmp_path / "out"), "vars": {"steps": 8, "model": "smollm2-135m-instruct"},
        "stages": [{"name": "ae", "command": "eval alpacaeval", "args": ["--policy", "{var:model}", "--limit", "{var:steps}"]}]}))
    cfg = load_config(run_cfg, expect="run")
    assert cfg.vars == {"steps": "8", "model": "smollm2-135m-instruct"}
    assert _argv(cfg, cfg.stages[0])[2:6] == ["--policy", "smollm2-135m-instruct", "--limit", "8"]
    small = load_config(run_cfg, ["vars.steps=2", "vars.model=tiny-llama"], expect="run")
    assert _argv(small, small.stages[0])[2:6] == ["--policy", "tiny-llama", "--limit", "2"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(run_cfg.read_text().replace("{var:steps}", "{var:stpes}"))
    with pytest.raises(ConfigError, match=r"uses \{var:stpes\}, which is not in vars \(known: model, steps\)"):
        load_config(bad, expect="run")
