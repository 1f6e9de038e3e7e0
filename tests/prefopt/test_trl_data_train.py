"""`prefopt train` (DPO) reads a TRL preference file given as ``data.path=file.jsonl`` (auto-detected:
conversational and standard implicit-prompt rows), through the console entry."""
from __future__ import annotations

import json

import pytest
import yaml

from prefopt.cli import main


@pytest.mark.parametrize("fmt", ["conversational", "standard_implicit"])
def test_dpo_trains_on_a_trl_file(tmp_path, capsys, fmt):
    rows = []
    for i in range(8):
        if fmt == "conversational":
            q = [{"role": "user", "content": f"What is {i} plus {i}?"}]
            rows.append({"prompt": q, "chosen": [{"role": "assistant", "content": f"It is {2 * i}."}],
                         "rejected": [{"role": "assistant", "content": f"It is {2 * i + 3}."}]})
        else:
            rows.append({"chosen": f"Question {i}: the answer is yes", "rejected": f"Question {i}: the answer is no"})
    data = tmp_path / "trl.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tmp_path / "dpo.yaml"
    cfg.write_text(yaml.safe_dump({
        "kind": "train", "algorithm": "dpo", "model": {"name": "tiny-llama"},
        "data": {"path": str(data), "max_length": 128, "max_prompt_length": 96, "max_eval_examples": 0},
        "optim": {"lr": 1e-3, "warmup_ratio": 0.0}, "batch_size": 4, "epochs": 1, "max_steps": 2,
        "run": {"output_dir": str(tmp_path / "run"), "seed": 0, "report_to": []}}))
    assert main(["train", str(cfg)]) == 0
    cap = capsys.readouterr()
    assert f"{data}: 8 item(s) from 8 valid record(s)" in cap.err
    assert f"done: prefopt train -> {tmp_path / 'run'}, 2 steps" in cap.out
    steps = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in r for r in steps)
