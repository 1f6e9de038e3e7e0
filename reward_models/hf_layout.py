"""LoRA reward models in the plain Hugging Face layout (peft task ``SEQ_CLS``, head in ``modules_to_save``).

prefopt trains a LoRA reward model as an adapter on the transformer *body* (``LlamaModel``) plus a separate
``score`` head. Saved like that, ``AutoPeftModelForSequenceClassification`` sees no classification task and
returns a bare body. This module writes (and reads back) a BT LoRA model the way peft would have saved a
``*ForSequenceClassification`` trained with ``LoraConfig(task_type="SEQ_CLS")``:

* ``adapter_model.safetensors``: the LoRA tensors under ``base_model.model.<prefix>.`` (``<prefix>`` is the
  architecture's ``base_model_prefix``, ``model`` for Llama/Qwen) and the head as
  ``base_model.model.score.weight`` (peft's saved name for a ``modules_to_save`` module);
* ``adapter_config.json``: ``task_type: SEQ_CLS``, ``modules_to_save: [score]`` and
  ``base_model_name_or_path`` = the model's public name (hub id or the embedded model's hub id), never a
  local cache path (that stays in prefopt's ``reward_config.json``).

So ``AutoPeftModelForSequenceClassification.from_pretrained(dir, num_labels=1)`` (or
``AutoModelForSequenceClassification`` + ``PeftModel``) scores like prefopt's scorer; ``merge_and_unload``
gives a plain ``*ForSequenceClassification``.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from prefopt.core.errors import ModelLoadError

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
HEAD_KEY = "base_model.model.score.weight"
# How prefopt turns a conversation into the token row it scores (written into configs and model cards).
INPUT_CONVENTION = ("tokenizer.apply_chat_template(messages) cut right after the last EOS token "
                    "(the template's trailing newline after EOS is dropped); the reward is read at that EOS")

__all__ = ["ADAPTER_CONFIG", "HEAD_KEY", "INPUT_CONVENTION", "is_seq_cls_adapter", "load_seq_cls_adapter",
           "save_seq_cls_adapter"]


def is_seq_cls_adapter(path: Path) -> bool:
    """True when ``path/adapter_config.json`` says ``task_type: SEQ_CLS``."""
    f = Path(path) / ADAPTER_CONFIG
    if not f.is_file():
        return False
    try:
        return json.loads(f.read_text(encoding="utf-8")).get("task_type") == "SEQ_CLS"
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{f}: not valid JSON: {exc}") from None


def _body_prefix(body: nn.Module) -> str:
    prefix = getattr(body, "base_model_prefix", "") or "model"
    return f"base_model.model.{prefix}."


def save_seq_cls_adapter(peft_body: Any, score: nn.Linear, path: Path, base_name: str) -> None:
    """Write the adapter of ``peft_body`` (a ``PeftModel`` around a transformer body) + ``score`` as SEQ_CLS.

    Args:
        peft_body: the peft-wrapped body the reward model trained.
        score: the ``Linear(d, 1)`` BT head.
        path: output directory.
        base_name: what ``base_model_name_or_path`` should say (the public model name).
    """
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    inner = peft_body.get_base_model()
    body_sd = get_peft_model_state_dict(peft_body)
    out: dict[str, Tensor] = {}
    for key, value in body_sd.items():
        if not key.startswith("base_model.model."):
            raise ModelLoadError(f"unexpected adapter tensor name {key!r}; cannot write the SEQ_CLS layout")
        out[_body_prefix(inner) + key[len("base_model.model."):]] = value.detach().cpu().contiguous()
    out[HEAD_KEY] = score.weight.detach().cpu().contiguous()
    cfg = copy.deepcopy(peft_body.peft_config["default"])
    cfg.task_type = "SEQ_CLS"
    cfg.modules_to_save = ["score"]
    cfg.base_model_name_or_path = base_name
    cfg.inference_mode = True
    path.mkdir(parents=True, exist_ok=True)
    cfg.save_pretrained(str(path))
    save_file(out, str(path / ADAPTER_WEIGHTS), metadata={"format": "pt"})


def load_seq_cls_adapter(body: nn.Module, path: Path) -> tuple[Any, Tensor]:
    """Put a SEQ_CLS adapter written by :func:`save_seq_cls_adapter` (or by peft itself) on ``body``.

    Returns:
        ``(peft-wrapped body, score weight [1, d])``. Any LoRA tensor missing from the file, or a file
        tensor the body has no place for, is a :class:`ModelLoadError` (never a silent re-init).
    """
    import dataclasses

    import peft
    from safetensors.torch import load_file

    weights = path / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise ModelLoadError(f"{path}: {ADAPTER_WEIGHTS} is missing")
    sd = load_file(str(weights))
    head = sd.pop(HEAD_KEY, None)
    if head is None:
        raise ModelLoadError(f"{path}: adapter has no '{HEAD_KEY}' (the reward head); refusing to "
                             "initialise it randomly")
    prefix = _body_prefix(body)
    stray = sorted(k for k in sd if not k.startswith(prefix))
    if stray:
        raise ModelLoadError(f"{path}: adapter tensors outside the model body: {', '.join(stray[:3])}")
    body_sd = {"base_model.model." + k[len(prefix):]: v for k, v in sd.items()}
    pcfg = peft.PeftConfig.from_pretrained(str(path))
    pcfg = dataclasses.replace(pcfg, task_type=None, modules_to_save=None, inference_mode=True)
    wrapped = peft.get_peft_model(body, pcfg)
    want = set(peft.get_peft_model_state_dict(wrapped))
    if want != set(body_sd):
        missing, extra = sorted(want - set(body_sd)), sorted(set(body_sd) - want)
        raise ModelLoadError(f"{path}: adapter does not fit the base model (missing: {missing[:3]}, "
                             f"unexpected: {extra[:3]})")
    peft.set_peft_model_state_dict(wrapped, body_sd)
    return wrapped, head
