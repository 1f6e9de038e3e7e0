"""``prefopt eval rewardbench`` end to end on tiny models (every scorer kind), resume and bad inputs.

Data: 23 subsets x 2 rows of the shared dev slice (``rb_slice``). Tiny reward models are tiny-llama
backbones with random heads, so accuracies are arbitrary; the tests check the plumbing and invariants.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prefopt.core.errors import ConfigError, DataError, ModelLoadError
from prefopt.eval.rewardbench import cli_main
from prefopt.eval.rewardbench_metrics import SUBSET_TO_SECTION

REPO = Path(__file__).resolve().parents[3]


def _run(tmp_path: Path, data: Path, *args: str, name: str = "out") -> tuple[Path, dict]:
    out = tmp_path / name
    assert cli_main(["--data", str(data), "--out", str(out), "--max-length", "256", *args]) == 0
    return out, json.loads((out / "results.json").read_text())


def _scores(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "scores.jsonl").read_text().splitlines()]


def test_bt_end_to_end_and_rerun_skips(tmp_path, rb_slice, bt_dir):
    out, res = _run(tmp_path, rb_slice, "--model", str(bt_dir), "--batch-size", "8")
    assert res["n_examples"] == 46 and set(res["subsets"]) == set(SUBSET_TO_SECTION)
    assert all(v["n"] == 2 for v in res["subsets"].values())
    assert set(res["sections"]) == {"Chat", "Chat Hard", "Safety", "Reasoning"} and res["score"] is not None
    assert res["model_type"] == "bt" and (out / "rewardbench.png").stat().st_size > 1000
    rows = _scores(out)
    assert len(rows) == 46 and all({"chosen_score", "rejected_score"} <= set(r) for r in rows)
    assert res["Chat"] == res["sections"]["Chat"] and res["chat_template"] == "tokenizer"
    official = [json.loads(x) for x in (out / "per_example.jsonl").read_text().splitlines()]
    assert len(official) == 46
    assert all(set(r) == {"id", "subset", "scores_chosen", "scores_rejected", "results"} for r in official)
    assert all(r["results"] == float(r["scores_chosen"] > r["scores_rejected"]) for r in official)
    before = (out / "scores.jsonl").read_bytes()
    _, res2 = _run(tmp_path, rb_slice, "--model", str(bt_dir), "--batch-size", "8")
    assert (out / "scores.jsonl").read_bytes() == before and res2 == res


def test_ensemble_folder_reduce_wco(tmp_path, rb_slice, tiny_tokenizer, save_rm):
    """A folder of members is an ensemble; wco = min over members (checked against member runs)."""
    members = tmp_path / "members"
    save_rm(members / "m0", tiny_tokenizer, "bt", seed=1)
    save_rm(members / "m1", tiny_tokenizer, "bt", seed=2)
    out, res = _run(tmp_path, rb_slice, "--model", str(members), "--reduce", "wco", "--limit-per-subset", "1")
    assert res["n_examples"] == 23
    o0, _ = _run(tmp_path, rb_slice, "--model", str(members / "m0"), "--limit-per-subset", "1", name="m0")
    o1, _ = _run(tmp_path, rb_slice, "--model", str(members / "m1"), "--limit-per-subset", "1", name="m1")
    key = lambda r: (r["id"], r["subset"])  # noqa: E731
    s0, s1 = ({key(r): r for r in _scores(o)} for o in (o0, o1))
    for r in _scores(out):
        assert r["chosen_score"] == pytest.approx(min(s0[key(r)]["chosen_score"], s1[key(r)]["chosen_score"]), abs=1e-5)


def test_gpm_native_pairwise(tmp_path, rb_slice, tiny_tokenizer, save_rm):
    gpm = save_rm(tmp_path / "gpm", tiny_tokenizer, "gpm", seed=3)
    out, res = _run(tmp_path, rb_slice, "--model", str(gpm), "--kind", "gpm", "--limit-per-subset", "1")
    rows = _scores(out)
    assert res["n_examples"] == 23 and all("pref_logit" in r for r in rows)
    assert len({round(r["pref_logit"], 6) for r in rows}) > 1


def test_polar_reference_file_and_generated(tmp_path, rb_slice, tiny_tokenizer, save_rm):
    polar = save_rm(tmp_path / "polar", tiny_tokenizer, "polar", seed=4, head_init="normal")
    refs = tmp_path / "refs.jsonl"
    data = [json.loads(x) for x in rb_slice.read_text().splitlines()]
    refs.write_text("".join(json.dumps({"id": r["id"], "subset": r["subset"], "reference": r["chosen"][:80]}) + "\n"
                            for r in data))
    out, res = _run(tmp_path, rb_slice, "--model", str(polar), "--polar-reference", str(refs),
                    "--limit-per-subset", "1")
    assert res["n_examples"] == 23 and all("chosen_score" in r for r in _scores(out))
    with pytest.raises(ConfigError, match="polar-reference"):
        _run(tmp_path, rb_slice, "--model", str(polar), "--limit-per-subset", "1", name="noref")
    out2, _ = _run(tmp_path, rb_slice, "--model", str(polar), "--polar-reference", "generate:tiny-llama",
                   "--polar-max-new-tokens", "4", "--limit-per-subset", "1", name="gen")
    assert len((out2 / "polar_references.jsonl").read_text().splitlines()) == 23


@pytest.mark.slow
def test_dpo_lora_default_reference_and_zero_margin(tmp_path, rb_slice, tiny_model_dir):
    """LoRA adapter: ref = base with adapters off. Policy == reference gives 0 rewards (ties are wrong)."""
    import torch
    from transformers import AutoModelForCausalLM

    from prefopt.core.lora import apply_lora

    peft_model = apply_lora(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), r=4, alpha=8)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    out, res = _run(tmp_path, rb_slice, "--model", str(adapter), "--kind", "dpo", "--limit-per-subset", "1",
                    "--max-length", "128")
    assert any(abs(r["chosen_score"]) > 1e-4 for r in _scores(out))
    out0, res0 = _run(tmp_path, rb_slice, "--model", str(tiny_model_dir), "--kind", "dpo", "--ref-model",
                      str(tiny_model_dir), "--limit-per-subset", "1", "--max-length", "128", name="same")
    assert all(r["chosen_score"] == 0.0 == r["rejected_score"] for r in _scores(out0)) and res0["score"] == 0.0
    with pytest.raises(ConfigError, match="needs --ref-model"):
        _run(tmp_path, rb_slice, "--model", str(tiny_model_dir), "--kind", "dpo", name="noref")


def test_generative_judge_both_orders(tmp_path, rb_slice, tiny_model_dir):
    out, res = _run(tmp_path, rb_slice, "--model", str(tiny_model_dir), "--kind", "judge",
                    "--limit-per-subset", "1", "--max-length", "512")
    rows = _scores(out)
    assert res["n_examples"] == 23
    for r in rows:
        assert 0 < r["pref_prob"] < 1 and 0 < r["pref_prob_swapped"] < 1
        p = (r["pref_prob"] + 1 - r["pref_prob_swapped"]) / 2
        assert r["correct"] == (1.0 if p > 0.5 else 0.0 if p < 0.5 else 0.5)


def _spawn(data: Path, model: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "PREFOPT_EVAL_BATCH_DELAY": "0.4", "PREFOPT_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "prefopt.cli", "eval", "rewardbench", "--model", str(model), "--data", str(data),
           "--out", str(out), "--batch-size", "2", "--max-length", "256"]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_sigkill_and_resume_gives_identical_results(tmp_path, rb_slice, bt_dir):
    ref_out, ref = _run(tmp_path, rb_slice, "--model", str(bt_dir), "--batch-size", "2", name="clean")
    out = tmp_path / "killed"
    proc = _spawn(rb_slice, bt_dir, out)
    deadline = time.time() + 300
    while time.time() < deadline:
        f = out / "scores.jsonl"
        if f.exists() and len(f.read_text().splitlines()) >= 6:
            break
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    n_partial = len((out / "scores.jsonl").read_text().splitlines())
    assert 6 <= n_partial < 46 and not (out / "results.json").exists()
    _, res = _run(tmp_path, rb_slice, "--model", str(bt_dir), "--batch-size", "2", name="killed")
    rows = _scores(out)
    assert len(rows) == 46 and len({(r["id"], r["subset"]) for r in rows}) == 46
    assert res == ref
    clean = {(r["id"], r["subset"]): r for r in _scores(ref_out)}
    for r in rows:
        assert r["chosen_score"] == pytest.approx(clean[(r["id"], r["subset"])]["chosen_score"], abs=1e-6)


def test_bad_inputs(tmp_path, rb_slice, bt_dir):
    lines = rb_slice.read_text().splitlines()
    bad = json.loads(lines[1])
    del bad["chosen"]
    f = tmp_path / "bad.jsonl"
    f.write_text("\n".join([lines[0], json.dumps(bad)]) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl.*line 2.*chosen"):
        _run(tmp_path, f, "--model", str(bt_dir))
    empty = json.loads(lines[0])
    empty["rejected"] = "  "
    f.write_text(json.dumps(empty) + "\n")
    with pytest.raises(DataError, match=r"line 1.*rejected"):
        _run(tmp_path, f, "--model", str(bt_dir))
    with pytest.raises(ModelLoadError, match="does not exist"):
        _run(tmp_path, rb_slice, "--model", str(tmp_path / "nope"))
    with pytest.raises(DataError, match="data file not found"):
        _run(tmp_path, tmp_path / "missing.jsonl", "--model", str(bt_dir))
    _run(tmp_path, rb_slice, "--model", str(bt_dir), "--limit-per-subset", "1", name="cfg")
    with pytest.raises(ConfigError, match="different run"):
        _run(tmp_path, rb_slice, "--model", str(bt_dir), "--limit-per-subset", "1", "--reduce", "wco", name="cfg")
