"""A policy adapter saved by prefopt names its base by the public name in ``adapter_config.json`` (the
embedded model's hub id, not this machine's cache folder), while ``prefopt.json`` keeps the local name."""
from __future__ import annotations

import json

import peft

from prefopt.core.adapters import adapter_base, publish_adapter_base
from prefopt.core.models import EMBEDDED_HUB_ID, EMBEDDED_NAME, cache_root, make_tiny_model
from prefopt.loops.offline import save_policy


def test_publish_adapter_base(tmp_path):
    cfg = tmp_path / "adapter_config.json"
    cache = str(cache_root() / "models" / EMBEDDED_NAME)
    cfg.write_text(json.dumps({"base_model_name_or_path": cache, "r": 8}))
    publish_adapter_base(tmp_path, cache)
    assert json.loads(cfg.read_text()) == {"base_model_name_or_path": EMBEDDED_HUB_ID, "r": 8}
    publish_adapter_base(tmp_path, "/data/my-model")  # a user's own path stays as it is
    assert json.loads(cfg.read_text())["base_model_name_or_path"] == "/data/my-model"
    publish_adapter_base(tmp_path / "none", cache)  # a full model (no adapter_config.json): nothing to do


def test_save_policy_writes_the_public_base(tmp_path, tiny_tokenizer):
    model = peft.get_peft_model(make_tiny_model("tiny-llama", seed=0),
                                peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    out = tmp_path / "final"
    save_policy(model, tiny_tokenizer, out, base_model=EMBEDDED_NAME)
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == EMBEDDED_HUB_ID
    assert json.loads((out / "prefopt.json").read_text()) == {"lora": True, "base_model": EMBEDDED_NAME}
    assert adapter_base(out) == EMBEDDED_NAME  # prefopt itself still loads from the local name
