"""LoRA adapter folders as models: the base an adapter names, and the adapter merged into it.

Iterative DPO trains round t+1 on top of round t's adapter: a ``model.name`` that points at an adapter
folder loads as that adapter merged into its base (which may itself be an adapter folder).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefopt.core.errors import ModelLoadError

__all__ = ["adapter_base", "load_merged_adapter", "publish_adapter_base"]


def adapter_base(folder: Path) -> str:
    """The base model of a LoRA adapter folder: prefopt's own record first, else PEFT's."""
    meta = folder / "prefopt.json"
    if meta.is_file():
        base = json.loads(meta.read_text(encoding="utf-8")).get("base_model")
        if base:
            return str(base)
    base = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise ModelLoadError(f"{folder}/adapter_config.json names no base_model_name_or_path")
    return str(base)


def publish_adapter_base(folder: Path, base: str) -> None:
    """Name the base of the adapter in ``folder`` by its public name in ``adapter_config.json`` (the
    embedded model's hub id instead of this machine's cache folder; hub ids and user paths unchanged),
    so plain PEFT elsewhere finds it. prefopt's own ``prefopt.json`` keeps the local name."""
    from prefopt.core.models import public_model_name

    cfg = folder / "adapter_config.json"
    if not cfg.is_file() or not base:
        return
    data = json.loads(cfg.read_text(encoding="utf-8"))
    data["base_model_name_or_path"] = public_model_name(base)
    cfg.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def load_merged_adapter(folder: Path, dtype: str = "float32", trust_remote_code: bool = False) -> tuple[Any, Any]:
    """``(model, tokenizer)``: a LoRA adapter folder merged into its base weights (the base may itself be
    an adapter folder, e.g. the policy of an earlier round of iterative DPO). The merged model records
    ``folder`` as its name, so adapters trained on top of it name this folder as their base."""
    import peft

    from prefopt.core.models import load_causal_lm, load_tokenizer

    base, tok = load_causal_lm(adapter_base(folder), dtype=dtype, trust_remote_code=trust_remote_code)
    model = peft.PeftModel.from_pretrained(base, str(folder)).merge_and_unload()
    model.config._name_or_path = str(folder)
    if (folder / "tokenizer_config.json").is_file():
        tok = load_tokenizer(str(folder))
    return model.eval(), tok
