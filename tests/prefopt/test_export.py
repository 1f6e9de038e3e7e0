"""``prefopt export``: a standalone HF folder (adapter or merged) with card, loadable by plain peft /
transformers with prefopt's scores; ``--push-to-hub`` through huggingface_hub against a loopback hub."""
from __future__ import annotations

import json

import pytest
import torch
import yaml

from prefopt.core.lora import LoraSettings
from prefopt.core.models import load_tokenizer, make_tiny_model
from prefopt.export import cli_main, export_run, push_to_hub
from reward_models.models import RewardModel
from tests.prefopt.hub_server import HubServer

PAD = 0
IDS = torch.tensor([[5, 17, 301, 42, 9, 2], [8, 99, 7, 2, PAD, PAD]])
MASK = (IDS != PAD).long()


@pytest.fixture()
def rm_run(tmp_path):
    """A run folder as `prefopt rm train` leaves it: final/ (LoRA BT RM + tokenizer), config, metrics."""
    from transformers import AutoModelForCausalLM

    base = tmp_path / "base"
    make_tiny_model("tiny-llama").save_pretrained(str(base), safe_serialization=True)
    rm = RewardModel(AutoModelForCausalLM.from_pretrained(str(base)), "bt", seed=1, pad_token_id=PAD,
                     model_name=str(base)).enable_lora(LoraSettings(r=4, alpha=8.0, dropout=0.0))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in rm.named_parameters():
            if "lora_" in name or name.startswith("score"):
                p.add_(torch.randn_like(p) * 0.1)
    run = tmp_path / "run"
    rm.save_pretrained(run / "final")
    load_tokenizer("tiny-llama").save_pretrained(str(run / "final"))
    data = tmp_path / "data"
    data.mkdir()
    (data / "config.yaml").write_text(yaml.safe_dump({"sources": [{"adapter": "hh_rlhf", "path": "x"}]}))
    (run / "config.yaml").write_text(yaml.safe_dump({"kind": "rm", "rm": {"kind": "bt"},
                                                     "model": {"name": str(base)}, "data": {"path": str(data)}}))
    (run / "metrics.jsonl").write_text(json.dumps({"step": 0, "eval/accuracy": 0.5}) + "\n"
                                       + json.dumps({"step": 12, "loss": 0.4, "eval/accuracy": 0.75}) + "\n")
    with torch.no_grad():
        want = rm.eval()(IDS, MASK).rewards
    return run, want


def test_export_adapter_loads_with_plain_peft_and_has_a_card(rm_run, tmp_path):
    from peft import AutoPeftModelForSequenceClassification

    run, want = rm_run
    out = export_run(run, tmp_path / "export")
    assert (out / "adapter_model.safetensors").is_file() and not (out / "reward_config.json").exists()
    assert "chat_template" in json.loads((out / "tokenizer_config.json").read_text()) or \
        (out / "chat_template.jinja").is_file()
    card = (out / "README.md").read_text()
    assert "MIT (Anthropic/hh-rlhf)" in card and "| `eval/accuracy` | 0.75 |" in card
    assert "library_name: peft" in card and "12 optimizer steps" in card and "Input convention" in card
    model = AutoPeftModelForSequenceClassification.from_pretrained(str(out), num_labels=1, pad_token_id=PAD)
    with torch.no_grad():
        got = model.eval()(input_ids=IDS, attention_mask=MASK).logits.squeeze(-1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_export_merge_gives_a_plain_sequence_classifier(rm_run, tmp_path):
    from transformers import AutoModelForSequenceClassification

    run, want = rm_run
    assert cli_main([str(run), "--out", str(tmp_path / "merged"), "--merge"]) == 0
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    model = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "merged")).eval()
    with torch.no_grad():
        got = model(input_ids=IDS, attention_mask=MASK).logits.squeeze(-1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert "library_name: transformers" in (tmp_path / "merged" / "README.md").read_text()


def test_push_to_hub_uploads_every_file_to_a_loopback_hub(rm_run, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # the loopback hub only
    run, _ = rm_run
    out = export_run(run, tmp_path / "export")
    with HubServer() as hub:
        url = push_to_hub(out, "alice/tiny-rm", endpoint=hub.endpoint, token="hf_test")
        got = hub.store["alice/tiny-rm"]
    assert "alice/tiny-rm" in url
    files = {p.name for p in out.iterdir() if p.is_file()}
    assert set(got) == files
    assert got["adapter_model.safetensors"] == (out / "adapter_model.safetensors").read_bytes()
