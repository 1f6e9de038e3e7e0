"""The main job (configs/quickstart.yaml) end to end on tiny-llama with CI's tiny budget: reward model ->
RewardBench and best-of-N, judge -> agreement with the GPT-4 annotations, on-policy labels -> DPO ->
head-to-head -> AlpacaEval with the judge's agreement -> headline.json -> report."""
from __future__ import annotations

import json

import pytest
import yaml

from prefopt.cli import main

TINY = ["vars.model=tiny-llama", "vars.rm_pairs=8", "vars.rm_max_length=128", "vars.rm_prompt_length=96", "vars.rb_limit=1", "vars.bon_limit=2",
        "vars.agree_limit=4", "vars.agree_max_length=64", "vars.label_prompts=4", "vars.samples=3", "vars.tokens=4",
        "vars.prompt_tokens=32", "vars.dpo_batch=2", "vars.epochs=1", "vars.h2h_prompts=5", "vars.ae_limit=1"]



def _json(path):
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.slow
def test_quickstart_end_to_end_tiny(tmp_path, monkeypatch, repo_root, shared_data, one_thread):
    monkeypatch.chdir(repo_root)
    out = tmp_path / "qs"
    assert main(["run", "configs/quickstart.yaml", f"output_dir={out}", *TINY]) == 0
    stages = [s["name"] for s in yaml.safe_load((repo_root / "configs/quickstart.yaml").read_text())["stages"]]
    assert [s for s in stages if not (out / s / ".stage-done.json").is_file()] == []

    label = _json(out / "label" / "stats.json")  # 4 prompts x 3 distinct answers -> 1 best-vs-worst pair each
    assert label["prompts"] == 4 and label["train"] == 4 and label["config"]["policy"]["num_samples"] == 3

    agree = _json(out / "judge_agreement" / "results.json")
    assert agree["n"] == 4 and agree["ci_low"] <= agree["agreement"] <= agree["ci_high"]

    bon = _json(out / "bon" / "results.json")
    assert bon["n_prompts"] == 2 and bon["ns"][0] == 1

    h = _json(out / "headline.json")
    assert h == _json(out / "headline" / "headline.json")
    assert h["n"] == 5 and 0.0 <= h["ci_low"] <= h["win_rate"] <= h["ci_high"] <= 1.0
    assert h["judge_agreement"]["n"] == agree["n"] and h["judge_agreement"]["agreement"] == agree["agreement"]
    assert h["significant"] == (h["ci_low"] > 0.5) and h["bon"]["ns"] == bon["ns"]
    dom = _json(out / "judge_agreement_hh" / "results.json")
    assert dom["n"] == 4 and h["judge_agreement_in_domain"]["agreement"] == dom["agreement"]
    assert h["rewardbench"]["score"] is not None

    # the AlpacaEval results carry the judge's measured agreement
    ae = _json(out / "alpaca_dpo" / "results.json")
    assert json.dumps(agree["agreement"]) in json.dumps(ae)
    assert (out / "report" / "report.md").is_file()


def test_gain_budget_has_the_same_stages(repo_root):
    """configs/quickstart_gain.yaml differs from the main job only in its budget (vars) and folder."""
    main_cfg = yaml.safe_load((repo_root / "configs/quickstart.yaml").read_text())
    gain = yaml.safe_load((repo_root / "configs/quickstart_gain.yaml").read_text())
    assert gain["stages"] == main_cfg["stages"] and set(gain["vars"]) == set(main_cfg["vars"])
    assert int(gain["vars"]["label_prompts"]) > int(main_cfg["vars"]["label_prompts"])
