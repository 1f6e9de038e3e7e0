"""configs/iterative_dpo.yaml end to end on tiny-llama: two rounds of label -> DPO -> head-to-head, plus the
human-pair baseline. Round 2 starts from pi_1 (round 1's adapter merged) and its reference is pi_1."""
from __future__ import annotations

import json

import pytest
import torch
import yaml

from prefopt.cli import main

TINY = ["vars.model=tiny-llama", "vars.prompts=3", "vars.samples=3", "vars.tokens=4", "vars.prompt_tokens=32",
        "vars.rm_pairs=8", "vars.eval_prompts=4", "vars.agree_limit=4", "vars.batch=2", "vars.epochs=1",
        "vars.lr=1.0e-2"]



def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.slow
def test_two_rounds_and_baseline_tiny(tmp_path, monkeypatch, repo_root, shared_data, one_thread):
    from prefopt.core.models import load_causal_lm
    from prefopt.eval.scorers import load_policy

    monkeypatch.chdir(repo_root)
    out = tmp_path / "it"
    assert main(["run", "configs/iterative_dpo.yaml", f"output_dir={out}", *TINY]) == 0
    stages = [s["name"] for s in yaml.safe_load((repo_root / "configs/iterative_dpo.yaml").read_text())["stages"]]
    assert [s for s in stages if not (out / s / ".stage-done.json").is_file()] == []

    r1 = [json.loads(x) for x in (out / "label_r1" / "ranked.jsonl").read_text().splitlines()]
    r2 = [json.loads(x) for x in (out / "label_r2" / "ranked.jsonl").read_text().splitlines()]
    assert len(r1) == len(r2) == 3 and not {r["id"] for r in r1} & {r["id"] for r in r2}  # disjoint prompts
    assert r2[0]["meta"]["policy"] == str(out / "dpo_r1" / "final")  # round 2 samples pi_1
    assert json.loads((out / "dpo_r2" / "final" / "prefopt.json").read_text())["base_model"] == \
        str(out / "dpo_r1" / "final")

    ids = torch.tensor([[1, 504, 1250, 30, 2]])
    pi0 = _logits(load_causal_lm("tiny-llama")[0], ids)
    pi1 = _logits(load_causal_lm(str(out / "dpo_r1" / "final"))[0], ids)  # adapter folder -> merged
    pi2, _, _ = load_policy(str(out / "dpo_r2" / "final"), dtype="float32")
    assert (pi1 - pi0).abs().max() > 1e-4  # round 1 moved the policy (lr 1e-2 on a tiny model)
    assert (_logits(pi2, ids) - pi1).abs().max() > 1e-4  # round 2 moved it again
    with pi2.disable_adapter():  # round 2's reference = its base with adapters off = pi_1
        torch.testing.assert_close(_logits(pi2, ids), pi1, atol=1e-5, rtol=0)

    for name in ("h2h_r1", "h2h_r2", "h2h_human"):
        res = json.loads((out / name / "results.json").read_text())
        assert res["n"] == 4 and 0.0 <= res["ci_low"] <= res["win_rate"] <= res["ci_high"] <= 1.0
        assert res["judge_agreement"]["n"] == 4
