"""Reward-model checkpoints on disk: :func:`save_reward_model` and :func:`load_reward_model`.

Checkpoint layout written by ``save_pretrained`` (transformers/peft are imported inside functions only):

* full ``bt``: the HF ``*ForSequenceClassification`` layout (``config.json`` with ``num_labels=1`` and
  ``pad_token_id``, ``model.safetensors`` holding ``model.*`` + ``score.weight``), so
  ``AutoModelForSequenceClassification.from_pretrained(dir)`` gives the same scores (with right padding
  and a pad id that never occurs as a real token, HF's pad-search pooling matches ours);
* full ``gpm`` / ``polar``: the backbone body (``AutoModel`` layout) + ``reward_head.safetensors``;
* LoRA ``bt``: the adapter in the plain peft SEQ_CLS layout, head in ``modules_to_save`` (see
  :mod:`reward_models.hf_layout`), so ``AutoPeftModelForSequenceClassification`` loads it;
* LoRA ``gpm`` / ``polar``: the peft adapter (``adapter_config.json``, ``adapter_model.safetensors``) +
  ``reward_head.safetensors`` (heads are saved with the adapter, like ``modules_to_save``);
* always ``reward_config.json`` (kind, dims, beta, gate, reward mean/std, normalize flag, ...).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from prefopt.core.errors import ConfigError, ModelLoadError
from prefopt.core.io import atomic_write_bytes, atomic_write_json
from reward_models.hf_layout import is_seq_cls_adapter, load_seq_cls_adapter, save_seq_cls_adapter
from reward_models.kinds import get_kind
from reward_models.reward_config import REWARD_CONFIG, REWARD_HEAD, RewardConfig

if TYPE_CHECKING:
    from reward_models.models import RewardModel

log = logging.getLogger(__name__)

__all__ = ["save_reward_model", "load_reward_model", "load_backbone", "public_name", "read_heads",
           "base_model_of", "is_peft"]


def base_model_of(backbone: nn.Module) -> nn.Module:
    """The transformer body of a ``*ForCausalLM`` / ``*ForSequenceClassification`` (or the model itself)."""
    prefix = getattr(backbone, "base_model_prefix", "")
    inner = getattr(backbone, prefix, None) if prefix else None
    return inner if isinstance(inner, nn.Module) else backbone


def is_peft(module: nn.Module) -> bool:
    return hasattr(module, "peft_config") and hasattr(module, "get_base_model")


def _head_tensors(model: RewardModel) -> dict[str, Tensor]:
    return {f"{k}.weight": v.weight.detach().cpu().contiguous() for k, v in model.head_modules().items()}


def save_reward_model(model: RewardModel, path: Path) -> Path:
    """Write ``model`` to ``path`` in the layout above; returns ``path``."""
    from safetensors.torch import save as st_save

    path.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    seq_cls = get_kind(cfg.kind).hf_seq_cls
    if is_peft(model.model) and seq_cls:
        save_seq_cls_adapter(model.model, model.score, path, public_name(cfg))
    elif is_peft(model.model):
        model.model.save_pretrained(str(path))
        _set_adapter_base(path, public_name(cfg))
        atomic_write_bytes(path / REWARD_HEAD, st_save(_head_tensors(model)))
    elif seq_cls:
        _save_seq_cls(model, path)
    else:
        model.model.save_pretrained(str(path), safe_serialization=True)
        atomic_write_bytes(path / REWARD_HEAD, st_save(_head_tensors(model)))
    atomic_write_json(path / REWARD_CONFIG, dataclasses.asdict(cfg))
    return path


def public_name(cfg: RewardConfig) -> str:
    """The base model's name for other tools: the hub id of a prefopt special name, else the name given."""
    from prefopt.core.models import public_model_name

    return public_model_name(cfg.model_name or cfg.base_model)


def _set_adapter_base(path: Path, name: str) -> None:
    f = path / "adapter_config.json"
    data = json.loads(f.read_text(encoding="utf-8"))
    data["base_model_name_or_path"] = name
    atomic_write_json(f, data)


def _save_seq_cls(model: RewardModel, path: Path) -> None:
    """Write body + ``score`` as ``*ForSequenceClassification`` (one label, pad id set)."""
    from transformers import AutoModelForSequenceClassification

    hf_cfg = copy.deepcopy(model.model.config)
    hf_cfg.num_labels = 1
    pad = model.config.pad_token_id
    if pad is None:
        pad = getattr(hf_cfg, "eos_token_id", None)
        pad = pad[0] if isinstance(pad, (list, tuple)) else pad
    if pad is None:
        raise ConfigError("a BT checkpoint needs pad_token_id (pass RewardModel(..., pad_token_id=ID) or set "
                          "it on the backbone config) so AutoModelForSequenceClassification can batch")
    hf_cfg.pad_token_id = pad
    if hf_cfg.pad_token_id == getattr(hf_cfg, "eos_token_id", None):
        log.warning("pad_token_id == eos_token_id (%s): AutoModelForSequenceClassification finds the last "
                    "token by searching for non-pad ids, so it reads the token BEFORE a trailing EOS and its "
                    "scores differ from RewardModel's; use a pad token distinct from EOS for exact parity",
                    hf_cfg.pad_token_id)
    with torch.device("meta"):
        seq = AutoModelForSequenceClassification.from_config(hf_cfg)
    setattr(seq, seq.base_model_prefix, model.model)
    seq.score = model.score
    seq.config.architectures = [type(seq).__name__]
    seq.config.prefopt_input_convention = model.config.input_convention
    seq.save_pretrained(str(path), safe_serialization=True)


def _read_safetensors(files: list[Path]) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    out: dict[str, Tensor] = {}
    for f in files:
        out.update(load_file(str(f)))
    return out


def _safetensor_keys(path: Path) -> set[str]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        return set(json.loads(index.read_text(encoding="utf-8"))["weight_map"])
    single = path / "model.safetensors"
    if not single.is_file():
        raise ModelLoadError(f"{path}: no model.safetensors (or index) found")
    from safetensors import safe_open

    with safe_open(str(single), framework="pt") as fh:
        return set(fh.keys())


def load_reward_model(cls: type[RewardModel], path: Path, *, backbone: nn.Module | None,
                      torch_dtype: Any) -> RewardModel:
    """Read a reward-model directory (layout above, or a plain HF sequence-classification checkpoint)."""
    if not path.is_dir():
        raise ModelLoadError(f"reward model directory not found: {path}")
    kw = {} if torch_dtype is None else {"dtype": torch_dtype}
    if (path / REWARD_CONFIG).is_file():
        cfg = RewardConfig.from_json(path / REWARD_CONFIG)
    elif (path / "config.json").is_file():
        cfg = None  # plain HF sequence-classification checkpoint: BT
    else:
        raise ModelLoadError(f"{path}: neither {REWARD_CONFIG} nor config.json found")
    from prefopt.core.models import pickle_allowed, refuse_pickled_weights

    refuse_pickled_weights(path)
    kw = {**kw, "use_safetensors": not pickle_allowed()}
    try:
        if (path / "adapter_config.json").is_file():
            return _load_lora(cls, path, cfg, backbone, kw)
        if cfg is None or get_kind(cfg.kind).hf_seq_cls:
            return _load_seq_cls(cls, path, cfg, kw)
        from transformers import AutoModel

        heads = read_heads(path)
        body = AutoModel.from_pretrained(str(path), **kw)
        return cls._from_parts(body, cfg, heads, path)
    except ModelLoadError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"{path}: cannot load reward model: {exc}") from exc


def read_heads(path: Path) -> dict[str, Tensor]:
    f = path / REWARD_HEAD
    if not f.is_file():
        raise ModelLoadError(f"{path}: {REWARD_HEAD} is missing; refusing to initialise the reward head "
                             "randomly")
    return _read_safetensors([f])


def _load_seq_cls(cls: type[RewardModel], path: Path, cfg: RewardConfig | None, kw: dict) -> RewardModel:
    from transformers import AutoModelForSequenceClassification

    if "score.weight" not in _safetensor_keys(path):
        raise ModelLoadError(f"{path}: checkpoint has no 'score.weight' for the bt head; refusing to "
                             "initialise it randomly")
    seq = AutoModelForSequenceClassification.from_pretrained(str(path), **kw)
    if cfg is None:
        cfg = RewardConfig(kind="bt", hidden_size=int(seq.config.get_text_config().hidden_size),
                           pad_token_id=seq.config.pad_token_id, base_model=str(path))
    body = getattr(seq, seq.base_model_prefix)
    return cls._from_parts(body, cfg, {"score.weight": seq.score.weight.detach()}, path)


def load_backbone(name: str, kw: dict) -> nn.Module:
    """The base model a LoRA reward model was trained on (``AutoModel``); prefopt's special names
    (``tiny-llama``: seed-0 random init, ``smollm2-135m-instruct``: the embedded model's cache folder)."""
    from prefopt.core.models import EMBEDDED_NAME, TINY_CONFIGS, make_tiny_model, prepare_embedded_model

    if name in TINY_CONFIGS:
        return make_tiny_model(name, dtype=kw.get("dtype") or "float32")
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(prepare_embedded_model()) if name == EMBEDDED_NAME else name, **kw)


def _load_lora(cls: type[RewardModel], path: Path, cfg: RewardConfig | None, backbone: nn.Module | None,
               kw: dict) -> RewardModel:
    import peft

    if cfg is None:
        raise ModelLoadError(f"{path}: LoRA checkpoint without {REWARD_CONFIG}")
    if backbone is None:
        if not cfg.base_model:
            raise ModelLoadError(f"{path}: LoRA checkpoint names no base_model; pass backbone=...")
        backbone = load_backbone(cfg.base_model, kw)
    if is_seq_cls_adapter(path):
        body, head = load_seq_cls_adapter(base_model_of(backbone), path)
        return cls._from_parts(body, cfg, {"score.weight": head}, path)
    heads = read_heads(path)
    body = peft.PeftModel.from_pretrained(base_model_of(backbone), str(path))
    return cls._from_parts(body, cfg, heads, path)
