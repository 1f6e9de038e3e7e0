"""Policy weights for a generation engine that holds its own copy of the model (vLLM).

:func:`policy_state_for_inference` returns the policy's weights under the names of a plain transformers
checkpoint (what ``vllm``'s ``model.load_weights`` expects). A PEFT LoRA policy is merged for inference:
every LoRA layer contributes ``W + scale · B @ A`` (PEFT's own ``get_delta_weight``), computed out of
place, so the training model, its adapters and its outputs stay bitwise unchanged (``merge_adapter`` /
``unmerge_adapter`` would round the base weights). :func:`sync_generator` pushes that state into a
generator that needs it; the HF generator runs on the live policy and needs nothing.

No vLLM import here: this module is used by the online loop with every backend.
"""
from __future__ import annotations

from typing import Any

import torch

from prefopt.core.errors import ConfigError
from prefopt.generation.base import Generator

__all__ = ["policy_state_for_inference", "sync_generator", "unwrap_model"]

_PEFT_PREFIX = "base_model.model."
_ADAPTER_PARTS = {"lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector"}


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DeepSpeed / DDP wrappers (their ``.module``)."""
    while isinstance(getattr(model, "module", None), torch.nn.Module):
        model = model.module
    return model


def _is_peft(model: torch.nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a core dependency
        return False
    return isinstance(model, PeftModel)


def _hf_name(key: str) -> str:
    """``base_model.model.x.q_proj.base_layer.weight`` -> ``x.q_proj.weight``."""
    if key.startswith(_PEFT_PREFIX):
        key = key[len(_PEFT_PREFIX):]
    return key.replace(".base_layer.", ".")


def _lora_delta(module: Any) -> dict[str, torch.Tensor]:
    """Sum of the active adapters' deltas of one LoRA layer, keyed by the base parameter (``weight``)."""
    if module.disable_adapters or module.merged:  # base only, or the delta is already in the base weight
        return {}
    delta = None
    for name in module.active_adapters:
        if name not in module.lora_A and name not in getattr(module, "lora_embedding_A", {}):
            continue
        if getattr(module, "use_dora", {}).get(name) or getattr(module, "lora_bias", {}).get(name):
            raise ConfigError(f"online.generator=vllm syncs merged LoRA weights; adapter '{name}' uses DoRA or "
                              "lora_bias, whose merge is not a plain weight delta - use online.generator=hf "
                              "or a plain LoRA adapter")
        d = module.get_delta_weight(name)
        delta = d if delta is None else delta + d
    return {} if delta is None else {"weight": delta}


@torch.no_grad()
def policy_state_for_inference(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The policy's weights named as in its transformers checkpoint (detached, on the model's devices).

    * DeepSpeed / DDP wrappers are unwrapped (``.module``).
    * A plain model: its ``state_dict()``.
    * A PEFT LoRA model: the merged weights ``W + scale · B @ A`` of the active adapter(s), PEFT prefixes
      (``base_model.model.``, ``.base_layer``) stripped, ``lora_A`` / ``lora_B`` left out, the active copy
      of every ``modules_to_save`` module under its original name. The key set equals the base model's
      ``state_dict`` keys; nothing in the training model is modified.
    """
    model = unwrap_model(model)
    if not _is_peft(model):
        return dict(model.state_dict())
    from peft.tuners.lora import LoraLayer
    from peft.utils import ModulesToSaveWrapper

    lora: dict[str, Any] = {}
    wrappers: dict[str, Any] = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            lora[name] = module
        elif isinstance(module, ModulesToSaveWrapper):
            wrappers[name] = module
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        parts = key.split(".")
        if _ADAPTER_PARTS & set(parts):
            continue
        owner = next((w for w in wrappers if key.startswith(w + ".")), None)
        if owner is not None:
            continue  # filled below from the active copy
        out[_hf_name(key)] = value
    for name, wrapper in wrappers.items():
        active = [a for a in wrapper.active_adapters]
        use_copy = not wrapper.disable_adapters and active and all(a in wrapper.modules_to_save for a in active)
        module = wrapper.modules_to_save[active[0]] if use_copy else wrapper.original_module
        for key, value in module.state_dict().items():
            out[_hf_name(f"{name}.{key}")] = value
    for name, module in lora.items():
        base = module.get_base_layer()
        for pname, delta in _lora_delta(module).items():
            key = _hf_name(f"{name}.{pname}")
            weight = getattr(base, pname)
            out[key] = (weight + delta).to(weight.dtype)
    return out


def sync_generator(generator: Generator, model: torch.nn.Module) -> bool:
    """Push the policy's current weights into ``generator`` when it holds its own copy.

    Calls ``generator.sync_weights(policy_state_for_inference(model))`` when the generator has
    ``sync_weights`` and does not already run on ``model`` itself (the HF generator on the live policy).
    Returns whether weights were pushed.
    """
    sync = getattr(generator, "sync_weights", None)
    if sync is None:
        return False
    live = getattr(generator, "model", None)
    if live is not None and (live is model or live is unwrap_model(model)):
        return False
    sync(policy_state_for_inference(model))
    return True
