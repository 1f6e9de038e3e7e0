"""``prefopt export`` of a real offline DPO + LoRA run folder: the adapter export loads with plain peft and
the ``--merge`` export with plain transformers, and both give prefopt's policy logits (to 1e-5) and the
same greedy generation."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from prefopt.cli import main
from prefopt.export import cli_main


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory) -> Path:
    """`prefopt train` (DPO, LoRA r=4, 4 steps at lr 1e-2) on a saved tiny-llama base."""
    from data_pipelines.schemas import PairwiseExample
    from prefopt.core.models import load_tokenizer, make_tiny_model

    tmp = tmp_path_factory.mktemp("dpo_export")
    base = tmp / "base"
    make_tiny_model("tiny-llama", seed=0).save_pretrained(str(base), safe_serialization=True)
    load_tokenizer("tiny-llama").save_pretrained(str(base))
    data = tmp / "data"
    data.mkdir()
    recs = [PairwiseExample(prompt=[{"role": "user", "content": f"say {i}"}], chosen=f"yes {i} apple",
                            rejected=f"no {i} stone", id=f"p{i}", source="t").to_record() for i in range(8)]
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    cfg = tmp / "dpo.yaml"
    cfg.write_text(yaml.safe_dump({
        "kind": "train", "algorithm": "dpo",
        "model": {"name": str(base), "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        "data": {"path": str(data), "max_length": 128, "max_prompt_length": 96, "max_eval_examples": 0},
        "optim": {"lr": 1e-2, "warmup_ratio": 0.0}, "batch_size": 2, "epochs": 1,
        "run": {"output_dir": str(tmp / "run"), "seed": 0, "report_to": []}}))
    assert main(["train", str(cfg)]) == 0
    assert (tmp / "run" / "final" / "adapter_config.json").is_file()
    return tmp / "run"


def _inputs(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """A two-row left-padded batch built with the exported tokenizer's own chat template."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    texts = [tok.apply_chat_template([{"role": "user", "content": c}], tokenize=False, add_generation_prompt=True)
             for c in ("say 3", "say something longer please")]
    tok.padding_side = "left"
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return enc["input_ids"], enc["attention_mask"]


@torch.no_grad()
def _logits_and_greedy(model, ids, mask, gen_folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    from transformers import GenerationConfig

    model.eval()
    gen = GenerationConfig.from_pretrained(str(gen_folder))
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=8,
                         generation_config=gen)
    return model(input_ids=ids, attention_mask=mask).logits, out[:, ids.shape[1]:]


@pytest.mark.parametrize("merge", [False, True])
def test_policy_export_loads_elsewhere_with_prefopt_outputs(dpo_run, tmp_path, merge):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    from prefopt.eval.scorers import load_policy

    out = tmp_path / ("merged" if merge else "adapter")
    assert cli_main([str(dpo_run), "--out", str(out), *(["--merge"] if merge else [])]) == 0
    assert (out / "generation_config.json").is_file() and (out / "README.md").is_file()
    assert (out / "adapter_config.json").is_file() != merge
    assert (out / ("model.safetensors" if merge else "adapter_model.safetensors")).is_file()
    assert not any(p.suffix in (".bin", ".pt", ".pkl") for p in out.iterdir())
    ids, mask = _inputs(out)
    prefopt_policy, _, is_lora = load_policy(str(dpo_run / "final"), dtype="float32")
    assert is_lora
    want_logits, want_tokens = _logits_and_greedy(prefopt_policy, ids, mask, out)
    loader = AutoModelForCausalLM if merge else AutoPeftModelForCausalLM
    got_logits, got_tokens = _logits_and_greedy(loader.from_pretrained(str(out)), ids, mask, out)
    torch.testing.assert_close(got_logits, want_logits, atol=1e-5, rtol=0)
    assert torch.equal(got_tokens, want_tokens) and got_tokens.shape == (2, 8)
    with prefopt_policy.disable_adapter():  # the adapter is not a no-op: trained LoRA moved the logits
        base_logits, _ = _logits_and_greedy(prefopt_policy, ids, mask, out)
    assert (base_logits - want_logits).abs().max() > 1e-3


def test_policy_adapter_export_names_the_public_base(dpo_run, tmp_path):
    """A policy adapter trained on the embedded model records its cache folder (as peft does); the export
    names the hub id instead, and the model card's base_model follows."""
    import shutil

    from prefopt.core.models import EMBEDDED_HUB_ID, EMBEDDED_NAME, cache_root

    run = tmp_path / "run"
    shutil.copytree(dpo_run, run)
    cfg_file = run / "final" / "adapter_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["base_model_name_or_path"] = str(cache_root() / "models" / EMBEDDED_NAME)
    cfg_file.write_text(json.dumps(cfg))
    (run / "final" / "prefopt.json").write_text(json.dumps({"lora": True, "base_model": EMBEDDED_NAME}))
    out = tmp_path / "export"
    assert cli_main([str(run), "--out", str(out)]) == 0
    exported = json.loads((out / "adapter_config.json").read_text())
    assert exported["base_model_name_or_path"] == EMBEDDED_HUB_ID
    assert {k: v for k, v in exported.items() if k != "base_model_name_or_path"} == \
        {k: v for k, v in cfg.items() if k != "base_model_name_or_path"}
    assert f"base_model: {EMBEDDED_HUB_ID}" in (out / "README.md").read_text()
    assert json.loads(cfg_file.read_text())["base_model_name_or_path"].startswith(str(cache_root()))
