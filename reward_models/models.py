"""``RewardModel``: a transformers backbone (base model, no LM head) + a BT / GPM / POLAR head.

Kinds (spec sections 1-3):

* ``bt``    - ``score: Linear(d, 1, bias=False)`` on the last real token -> one scalar per row.
* ``gpm``   - ``embed_head: Linear(d, 2k)`` on the last real token (L2-normalised by default) and an
  optional prompt gate ``gate_head: Linear(d, k)`` on the last *prompt* token.
* ``polar`` - ``score: Linear(d, 1, bias=False)`` (zero-init) read at the REWARD token.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from prefopt.core.errors import ConfigError, ModelLoadError
from prefopt.core.io import atomic_write_bytes, atomic_write_json
from reward_models.heads import (
    GATES,
    HEAD_INITS,
    embed_values,
    gate_values,
    gather_positions,
    last_token_index,
    make_linear_head,
    position_ids_from_mask,
    prompt_last_index,
    score_matrix,
    skew_score,
)
from reward_models.hf_layout import (
    INPUT_CONVENTION,
    is_seq_cls_adapter,
    load_seq_cls_adapter,
    save_seq_cls_adapter,
)
from reward_models.layouts import RMRows

log = logging.getLogger(__name__)

KINDS = ("bt", "gpm", "polar")
REWARD_CONFIG = "reward_config.json"
REWARD_HEAD = "reward_head.safetensors"
FORMAT_VERSION = 1

__all__ = ["RewardConfig", "RewardOutput", "RewardModel", "KINDS", "REWARD_CONFIG", "REWARD_HEAD"]


@dataclass
class RewardConfig:
    """What ``reward_config.json`` stores beside the weights."""

    kind: str = "bt"
    hidden_size: int = 0
    embed_dim: int = 6                 # GPM: 2k; must be even (default 6, never 2: k=1 can stall)
    beta: float = 0.1                  # GPM temperature: P(a > b) = sigmoid(s / beta)
    l2_normalize: bool = True          # GPM: v = u / ||u|| (the spec's GPM `normalize`)
    gate: str | None = "scaled_softmax"  # GPM gate; None removes gate_head
    head_init: str = "normal"          # "normal" (std 1/(d+1)) or "zeros"; POLAR default zeros
    reward_mean: float = 0.0           # serving-time normalisation statistics (never used in training)
    reward_std: float = 1.0
    normalize: bool = False            # apply (r - mean) / std in `serve_rewards`
    split_token: str | None = None     # POLAR SPLIT / REWARD special-token strings
    reward_token: str | None = None
    reward_token_id: int | None = None  # POLAR: read the reward at the last occurrence of this id
    wrapper: str = "sft"               # POLAR template wrapper: "sft" or "pretrain"
    pad_token_id: int | None = None
    base_model: str = ""               # backbone name/path (LoRA checkpoints reload it; may be a local path)
    model_name: str = ""               # public name (hub id) written into adapter_config.json and cards
    input_convention: str = INPUT_CONVENTION  # how a conversation becomes the scored token row
    lora: bool = False
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"reward model kind must be one of {list(KINDS)}, got {self.kind!r}")
        if self.kind == "gpm" and (self.embed_dim < 2 or self.embed_dim % 2):
            raise ConfigError(f"GPM embed_dim must be even and >= 2, got {self.embed_dim}")
        if self.gate is not None and self.gate not in GATES:
            raise ConfigError(f"GPM gate must be one of {list(GATES)} or null, got {self.gate!r}")
        if self.head_init not in HEAD_INITS:
            raise ConfigError(f"head_init must be one of {list(HEAD_INITS)}, got {self.head_init!r}")
        if self.wrapper not in ("sft", "pretrain"):
            raise ConfigError(f"POLAR wrapper must be 'sft' or 'pretrain', got {self.wrapper!r}")
        if not self.reward_std > 0:
            raise ConfigError(f"reward_std must be > 0, got {self.reward_std}")

    @classmethod
    def from_json(cls, path: Path) -> "RewardConfig":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelLoadError(f"{path}: cannot read reward config: {exc}") from None
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelLoadError(f"{path}: unknown reward config key(s): {', '.join(unknown)}")
        try:
            return cls(**data)
        except ConfigError as exc:
            raise ModelLoadError(f"{path}: {exc}") from None


@dataclass(frozen=True)
class RewardOutput:
    """Forward result. ``rewards [B]`` for bt/polar; ``embeddings [B, 2k]`` and ``gate [B, k]`` for gpm."""

    rewards: Tensor | None = None
    embeddings: Tensor | None = None
    gate: Tensor | None = None
    index: Tensor | None = None  # position the head read in each row


def _base_model(backbone: nn.Module) -> nn.Module:
    """The transformer body of a ``*ForCausalLM`` / ``*ForSequenceClassification`` (or the model itself)."""
    prefix = getattr(backbone, "base_model_prefix", "")
    inner = getattr(backbone, prefix, None) if prefix else None
    return inner if isinstance(inner, nn.Module) else backbone


def _is_peft(module: nn.Module) -> bool:
    return hasattr(module, "peft_config") and hasattr(module, "get_base_model")


class RewardModel(nn.Module):
    """Backbone body + reward head(s). The LM head of a causal LM is dropped (never computed).

    Args:
        backbone: a transformers model (``LlamaForCausalLM``, ``AutoModel`` body, ...).
        kind: ``"bt"``, ``"gpm"`` or ``"polar"``.
        seed: seed for the head initialisation (ensemble members differ only by this, spec E3).
        **config: any :class:`RewardConfig` field (``embed_dim``, ``beta``, ``gate``, ``head_init``, ...).
    """

    def __init__(self, backbone: nn.Module, kind: str = "bt", *, seed: int | None = None, **config: Any):
        super().__init__()
        self.model = _base_model(backbone)
        bcfg = self.model.config
        text_cfg = bcfg.get_text_config() if hasattr(bcfg, "get_text_config") else bcfg
        config.setdefault("hidden_size", int(text_cfg.hidden_size))
        if kind == "polar":
            config.setdefault("head_init", "zeros")
        if config.get("pad_token_id") is None:
            config["pad_token_id"] = getattr(text_cfg, "pad_token_id", None)
        config.setdefault("base_model", str(getattr(bcfg, "_name_or_path", "") or ""))
        self.config = RewardConfig(kind=kind, **config)
        self._init_heads(seed)

    def _init_heads(self, seed: int | None) -> None:
        c = self.config
        d = c.hidden_size
        self.score = self.embed_head = self.gate_head = None
        if c.kind in ("bt", "polar"):
            self.score = make_linear_head(d, 1, c.head_init, seed)
        else:
            self.embed_head = make_linear_head(d, c.embed_dim, c.head_init, seed)
            if c.gate is not None:
                gseed = None if seed is None else seed + 1
                self.gate_head = make_linear_head(d, c.embed_dim // 2, c.head_init, gseed)
        dtype = next(self.model.parameters()).dtype
        device = next(self.model.parameters()).device
        for head in self.head_modules().values():
            head.to(device=device, dtype=dtype)

    # ------------------------------------------------------------------ forward
    def head_modules(self) -> dict[str, nn.Linear]:
        """The head layers by their checkpoint names (treat them as LoRA ``modules_to_save``)."""
        heads = {"score": self.score, "embed_head": self.embed_head, "gate_head": self.gate_head}
        return {k: v for k, v in heads.items() if v is not None}

    def hidden_states(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Last hidden states ``[B, T, d]``; positions come from the mask so padding side is irrelevant."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=position_ids_from_mask(attention_mask), use_cache=False)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    def _reward_index(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        tok = self.config.reward_token_id
        if self.config.kind != "polar" or tok is None:
            return last_token_index(attention_mask)
        hits = (input_ids == tok) & attention_mask.bool()
        if not bool(hits.any(-1).all()):
            raise ValueError(f"POLAR: a row has no REWARD token (id {tok})")
        pos = torch.arange(input_ids.shape[-1], device=input_ids.device).expand_as(hits)
        return torch.where(hits, pos, torch.full_like(pos, -1)).amax(-1)

    def _head(self, head: nn.Linear, h: Tensor) -> Tensor:
        return head(h.to(head.weight.dtype)).float()

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None, *,
                prompt_lengths: Tensor | None = None, rows: RMRows | None = None) -> RewardOutput:
        """Score a batch of token rows (any padding side), or the sequences of ``rows``.

        Args:
            input_ids: ``[B, T]`` token ids.
            attention_mask: ``[B, T]`` 1 on real tokens (default: all real).
            prompt_lengths: ``[B]`` prompt token counts; required by a GPM gate (spec section 2).
            rows: instead of the above, :class:`reward_models.layouts.RMRows` in any layout (packed,
                shared prompt, ...); outputs follow its sequence order. Not for POLAR.
        """
        if rows is not None:
            return self._forward_rows(rows)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.hidden_states(input_ids, attention_mask)
        index = self._reward_index(input_ids, attention_mask)
        pooled = gather_positions(hidden, index)
        h_prompt = None
        if self.gate_head is not None:
            if prompt_lengths is None:
                raise ValueError("GPM with a gate needs prompt_lengths (the collator must return them)")
            h_prompt = gather_positions(hidden, prompt_last_index(attention_mask, prompt_lengths))
        return self._read(pooled, h_prompt, index)

    def _forward_rows(self, rows: RMRows) -> RewardOutput:
        if self.config.kind == "polar":
            raise ValueError("POLAR reads the reward at its REWARD token: use padded rows (layout 'padded')")
        pooled, h_prompt = rows.read(self.model)
        return self._read(pooled, h_prompt if self.gate_head is not None else None, None)

    def _read(self, pooled: Tensor, h_prompt: Tensor | None, index: Tensor | None) -> RewardOutput:
        """Heads on the pooled hidden states (and the GPM gate on the last prompt token)."""
        if self.score is not None:
            return RewardOutput(rewards=self._head(self.score, pooled).squeeze(-1), index=index)
        emb = embed_values(self._head(self.embed_head, pooled), self.config.l2_normalize)
        lam = None
        if self.gate_head is not None:
            lam = gate_values(self._head(self.gate_head, h_prompt), self.config.gate, self.config.hidden_size)
        return RewardOutput(embeddings=emb, gate=lam, index=index)

    # ------------------------------------------------------------------ GPM / serving helpers
    @staticmethod
    def gpm_score(a: RewardOutput, b: RewardOutput) -> Tensor:
        """``s(a > b | x)`` for two GPM outputs of the same prompts (gate taken from ``a``)."""
        return skew_score(a.embeddings, b.embeddings, a.gate)

    @staticmethod
    def gpm_score_matrix(out: RewardOutput) -> Tensor:
        """``[n, n]`` score matrix for n responses to ONE prompt (rows of ``out``)."""
        lam = None if out.gate is None else out.gate[0]
        return score_matrix(out.embeddings, lam)

    def serve_rewards(self, rewards: Tensor) -> Tensor:
        """Apply the stored ``(r - mean) / std`` when ``normalize`` is set (serving only)."""
        if not self.config.normalize:
            return rewards
        return (rewards - self.config.reward_mean) / self.config.reward_std

    def set_reward_stats(self, mean: float, std: float, normalize: bool | None = None) -> None:
        """Store held-out reward mean/std (spec section 1) for optional serving-time normalisation."""
        self.config = dataclasses.replace(self.config, reward_mean=float(mean), reward_std=float(std),
                                          normalize=self.config.normalize if normalize is None else normalize)

    def enable_lora(self, lora: Any) -> "RewardModel":
        """Wrap the backbone body with a LoRA adapter; heads stay outside it, fully trainable and saved.

        Args:
            lora: a ``peft.LoraConfig`` or a ``prefopt.core.lora.LoraSettings`` (its ``modules_to_save``
                is ignored: the heads are always saved with the adapter).
        """
        import peft

        if not isinstance(lora, peft.LoraConfig):
            lora = peft.LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                   target_modules=lora.target_modules, bias="none")
        self.model = peft.get_peft_model(self.model, lora)
        self.config = dataclasses.replace(self.config, lora=True)
        for head in self.head_modules().values():
            head.requires_grad_(True)
        return self

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, path: str | Path) -> Path:
        """Save to ``path`` (see :mod:`reward_models.models` docstring for the layout)."""
        return _save(self, Path(path))

    @classmethod
    def load(cls, path: str | Path, *, backbone: nn.Module | None = None, torch_dtype: Any = None,
             device: Any = None) -> "RewardModel":
        """Load a directory written by :meth:`save_pretrained` (or a HF ``*ForSequenceClassification``).

        Args:
            path: checkpoint directory.
            backbone: for LoRA checkpoints, the base model to put the adapter on (default: load
                ``base_model`` from the reward config).
            torch_dtype: dtype for the backbone (default: as saved).
            device: where to move the model.
        """
        model = _load(cls, Path(path), backbone=backbone, torch_dtype=torch_dtype)
        return model.to(device) if device is not None else model

    @classmethod
    def _from_parts(cls, body: nn.Module, config: RewardConfig, heads: dict[str, Tensor],
                    source: Path) -> "RewardModel":
        """Assemble a model from a body, a config and head tensors (missing head -> ModelLoadError)."""
        fields = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("kind", "format_version")}
        model = cls.__new__(cls)
        nn.Module.__init__(model)
        model.model = body
        model.config = RewardConfig(kind=config.kind, **fields)
        model._init_heads(seed=0)
        for name, head in model.head_modules().items():
            key = f"{name}.weight"
            if key not in heads:
                raise ModelLoadError(f"{source}: checkpoint has no '{key}' for the {config.kind} head; "
                                     "refusing to initialise it randomly")
            if tuple(heads[key].shape) != tuple(head.weight.shape):
                raise ModelLoadError(f"{source}: '{key}' has shape {tuple(heads[key].shape)}, "
                                     f"expected {tuple(head.weight.shape)}")
            with torch.no_grad():
                head.weight.copy_(heads[key].to(head.weight.dtype))
        return model


def _head_tensors(model: RewardModel) -> dict[str, Tensor]:
    return {f"{k}.weight": v.weight.detach().cpu().contiguous() for k, v in model.head_modules().items()}


def _save(model: RewardModel, path: Path) -> Path:
    from safetensors.torch import save as st_save

    path.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    if _is_peft(model.model) and cfg.kind == "bt":
        save_seq_cls_adapter(model.model, model.score, path, public_name(cfg))
    elif _is_peft(model.model):
        model.model.save_pretrained(str(path))
        _set_adapter_base(path, public_name(cfg))
        atomic_write_bytes(path / REWARD_HEAD, st_save(_head_tensors(model)))
    elif cfg.kind == "bt":
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


def _load(cls: type[RewardModel], path: Path, *, backbone: nn.Module | None, torch_dtype: Any) -> RewardModel:
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
        if cfg is None or cfg.kind == "bt":
            return _load_seq_cls(cls, path, cfg, kw)
        from transformers import AutoModel

        heads = _read_heads(path)
        body = AutoModel.from_pretrained(str(path), **kw)
        return cls._from_parts(body, cfg, heads, path)
    except ModelLoadError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"{path}: cannot load reward model: {exc}") from exc


def _read_heads(path: Path) -> dict[str, Tensor]:
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
        body, head = load_seq_cls_adapter(_base_model(backbone), path)
        return cls._from_parts(body, cfg, {"score.weight": head}, path)
    heads = _read_heads(path)
    body = peft.PeftModel.from_pretrained(_base_model(backbone), str(path))
    return cls._from_parts(body, cfg, heads, path)
