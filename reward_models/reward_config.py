"""``RewardConfig``: what ``reward_config.json`` stores beside a reward model's weights.

Kinds: ``bt`` (Bradley-Terry scalar head; Ouyang et al. 2022), ``gpm`` (general preference embeddings;
Zhang et al. 2025, arXiv 2410.02197), ``polar`` (policy discriminative reward; Dou et al. 2025, arXiv
2507.05197). The checkpoint layout is described in :mod:`reward_models.model_io`.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from prefopt.core.errors import ConfigError, ModelLoadError
from reward_models.heads import GATES, HEAD_INITS
from reward_models.hf_layout import INPUT_CONVENTION

REWARD_CONFIG = "reward_config.json"
REWARD_HEAD = "reward_head.safetensors"
FORMAT_VERSION = 1

__all__ = ["RewardConfig", "REWARD_CONFIG", "REWARD_HEAD", "FORMAT_VERSION"]


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
        from reward_models.kinds import get_kind, model_kinds

        if self.kind not in model_kinds():
            raise ConfigError(f"reward model kind must be one of {list(model_kinds())}, got {self.kind!r}")
        if get_kind(self.kind).pairwise and (self.embed_dim < 2 or self.embed_dim % 2):
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
