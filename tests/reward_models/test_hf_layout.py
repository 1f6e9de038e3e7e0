"""A LoRA BT reward model saved by prefopt loads in plain peft/transformers with the same scores.

The adapter is written as peft writes a ``LoraConfig(task_type="SEQ_CLS")`` model (head in
``modules_to_save``), so ``AutoPeftModelForSequenceClassification`` and the merged
``AutoModelForSequenceClassification`` read the reward at the last non-pad token, exactly where
prefopt's ``RewardModel`` reads it (right padding, pad id 0 never used as a real token).
"""
from __future__ import annotations

import json

import pytest
import torch

from prefopt.core.errors import ModelLoadError
from prefopt.core.lora import LoraSettings
from prefopt.core.models import EMBEDDED_HUB_ID, EMBEDDED_NAME, make_tiny_model, public_model_name
from reward_models.models import REWARD_CONFIG, RewardModel

PAD = 0
LORA = LoraSettings(r=4, alpha=8.0, dropout=0.0, target_modules="all-linear")


def _rows() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    lengths = (9, 5, 7)
    ids = torch.full((3, 9), PAD)
    mask = torch.zeros(3, 9, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(3, 300, (n,), generator=g)
        mask[i, :n] = 1
    return ids, mask


def _trained_lora_rm(base_dir, model_name: str) -> RewardModel:
    from transformers import AutoModelForCausalLM

    backbone = AutoModelForCausalLM.from_pretrained(str(base_dir))
    rm = RewardModel(backbone, "bt", seed=1, pad_token_id=PAD, model_name=model_name).enable_lora(LORA)
    torch.manual_seed(3)
    with torch.no_grad():  # move the adapter and the head away from their init
        for name, p in rm.named_parameters():
            if "lora_" in name or name.startswith("score"):
                p.add_(torch.randn_like(p) * 0.1)
    return rm.eval()


@pytest.fixture()
def base_dir(tmp_path):
    d = tmp_path / "base"
    make_tiny_model("tiny-llama").save_pretrained(str(d), safe_serialization=True)
    return d


def test_lora_rm_loads_in_plain_peft_and_merged_transformers(base_dir, tmp_path):
    from peft import AutoPeftModelForSequenceClassification
    from transformers import AutoModelForSequenceClassification

    rm = _trained_lora_rm(base_dir, str(base_dir))
    ids, mask = _rows()
    with torch.no_grad():
        want = rm(ids, mask).rewards
    rm.save_pretrained(tmp_path / "rm")
    cfg = json.loads((tmp_path / "rm" / "adapter_config.json").read_text())
    assert cfg["task_type"] == "SEQ_CLS" and "score" in cfg["modules_to_save"]
    assert cfg["base_model_name_or_path"] == str(base_dir)

    peft_model = AutoPeftModelForSequenceClassification.from_pretrained(
        str(tmp_path / "rm"), num_labels=1, pad_token_id=PAD).eval()
    with torch.no_grad():
        got = peft_model(input_ids=ids, attention_mask=mask).logits.squeeze(-1)
    assert want.abs().max() > 1e-3  # a real signal, not an all-zero head
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)

    merged = peft_model.merge_and_unload()
    merged.save_pretrained(str(tmp_path / "merged"), safe_serialization=True)
    plain = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "merged")).eval()
    with torch.no_grad():
        got_merged = plain(input_ids=ids, attention_mask=mask).logits.squeeze(-1)
    torch.testing.assert_close(got_merged, want, atol=1e-5, rtol=0)

    back = RewardModel.load(tmp_path / "rm").eval()  # prefopt reads its own SEQ_CLS layout back
    with torch.no_grad():
        torch.testing.assert_close(back(ids, mask).rewards, want, atol=1e-6, rtol=0)


def test_adapter_records_public_name_and_keeps_local_path_in_prefopt_config(base_dir, tmp_path):
    rm = _trained_lora_rm(base_dir, EMBEDDED_NAME)
    rm.save_pretrained(tmp_path / "rm")
    adapter = json.loads((tmp_path / "rm" / "adapter_config.json").read_text())
    ours = json.loads((tmp_path / "rm" / REWARD_CONFIG).read_text())
    assert adapter["base_model_name_or_path"] == EMBEDDED_HUB_ID
    assert ours["base_model"] == str(base_dir) and ours["model_name"] == EMBEDDED_NAME
    assert "EOS" in ours["input_convention"]


def test_public_model_name():
    assert public_model_name(EMBEDDED_NAME) == EMBEDDED_HUB_ID
    assert public_model_name("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    assert public_model_name("tiny-llama") == "tiny-llama"


def test_seq_cls_adapter_without_head_is_refused(base_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    rm = _trained_lora_rm(base_dir, str(base_dir))
    rm.save_pretrained(tmp_path / "rm")
    f = tmp_path / "rm" / "adapter_model.safetensors"
    sd = load_file(str(f))
    sd.pop("base_model.model.score.weight")
    save_file(sd, str(f))
    with pytest.raises(ModelLoadError, match="no 'base_model.model.score.weight'"):
        RewardModel.load(tmp_path / "rm")
