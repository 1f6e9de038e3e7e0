"""LoRA adapters trained on a tiny-* model reload by name (policy and reward model), as the pipeline's
eval stages do; a tiny model with another seed records a name no loader accepts (no silent seed-0 base)."""
from __future__ import annotations

import pytest
import torch

from prefopt.core.errors import ModelLoadError
from prefopt.core.lora import LoraSettings
from prefopt.core.models import ModelConfig, load_model, make_tiny_model

LORA = LoraSettings(r=4, alpha=8.0, dropout=0.0)
IDS = torch.tensor([[5, 17, 301, 42, 9]])


def _perturb(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name or name.startswith("score"):
                p.add_(torch.randn_like(p) * 0.05)


def test_tiny_model_records_its_name_only_for_seed_0():
    assert make_tiny_model("tiny-llama", seed=0).name_or_path == "tiny-llama"
    assert "not reloadable" in make_tiny_model("tiny-llama", seed=3).name_or_path


def test_lora_policy_on_tiny_model_reloads_by_name(tmp_path):
    from prefopt.eval.scorers import load_policy
    from prefopt.loops.offline import save_policy

    torch.manual_seed(0)
    model, tok = load_model(ModelConfig(name="tiny-llama", lora=LORA))
    _perturb(model)
    model.eval()
    with torch.no_grad():
        want = model(input_ids=IDS).logits
    save_policy(model, tok, tmp_path / "final", base_model="tiny-llama")
    back, _, is_lora = load_policy(str(tmp_path / "final"), dtype="float32")
    with torch.no_grad():
        assert is_lora and torch.equal(back(input_ids=IDS).logits, want)


def test_lora_reward_model_on_tiny_model_reloads_by_name(tmp_path):
    from reward_models.models import RewardModel

    torch.manual_seed(0)
    rm = RewardModel(make_tiny_model("tiny-llama"), "bt", seed=1).enable_lora(LORA)
    _perturb(rm)
    rm.eval()
    mask = torch.ones_like(IDS)
    with torch.no_grad():
        want = rm(IDS, mask).rewards
    rm.save_pretrained(tmp_path / "rm")
    with torch.no_grad():
        assert torch.equal(RewardModel.load(tmp_path / "rm").eval()(IDS, mask).rewards, want)
    odd = RewardModel(make_tiny_model("tiny-llama", seed=3), "bt", seed=1).enable_lora(LORA)
    odd.save_pretrained(tmp_path / "odd")
    with pytest.raises(ModelLoadError):
        RewardModel.load(tmp_path / "odd")
