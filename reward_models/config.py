"""Typed config for ``prefopt rm train`` (YAML ``kind: rm``). Defaults live here and only here.

A reward-model YAML looks like::

    kind: rm
    rm: {kind: bt}                          # bt | gpm | polar | ensemble | rao_kupper
    model: {name: smollm2-135m-instruct, lora: {r: 16}}
    data: {path: runs/data/hh_rlhf_helpful_pairs, max_length: 256, overlong: truncate_left}
    optim: {lr: 1.0e-5, betas: [0.9, 0.95]}
    run: {output_dir: runs/rm/bt}

Only ``prefopt.core`` is imported from prefopt (import rule in CONTRIBUTING.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from prefopt.core.backend import BackendConfig, OptimConfig
from prefopt.core.models import ModelConfig
from prefopt.core.registry import CONFIG_KINDS
from prefopt.core.sections import DataSectionBase, RunSectionBase, resolve_sections
from prefopt.core.tiled_mlp import check_tiled_mlp_backend
from reward_models.kinds import get_kind, kind_names
from reward_models.rao_kupper import RaoKupperSection


@dataclass(frozen=True)
class RMRunSection(RunSectionBase):
    """``run:`` of a ``kind: rm`` YAML: :class:`prefopt.core.sections.RunSectionBase` plus ``eval_at_start``."""

    output_dir: str = "runs/rm"
    # Evaluate before the first step too (skip it to save time on slow machines).
    eval_at_start: bool = True


@dataclass(frozen=True)
class RMDataConfig(DataSectionBase):
    """``data:`` of a ``kind: rm`` YAML (pairwise or ranked records; POLAR triples):
    :class:`prefopt.core.sections.DataSectionBase` plus ``use_margin``; POLAR reads the layout as padded."""

    max_prompt_length: int = 384
    # Use each pair's `margin` field in the BT loss.
    use_margin: bool = False


@dataclass(frozen=True)
class BTSection:
    """Bradley-Terry loss options (Bradley & Terry 1952; Ouyang et al. 2022 eq. 1; see losses.bt_loss)."""

    tau: float = 1.0
    center_coef: float = 0.0
    l2_coef: float = 0.0
    barrier_coef: float = 0.0
    focal: bool = False
    # Ranked data (lists of K responses): listwise_bt (all ordered pairs) or plackett_luce.
    listwise_loss: Literal["listwise_bt", "plackett_luce"] = "listwise_bt"


@dataclass(frozen=True)
class GPMSection:
    """GPM heads (Zhang et al. 2025, arXiv 2410.02197)."""

    embed_dim: int = 6
    beta: float = 0.1
    l2_normalize: bool = True
    gate: Literal["scaled_softmax", "softmax", "softplus"] | None = "scaled_softmax"

    def __post_init__(self) -> None:
        if self.embed_dim < 2 or self.embed_dim % 2:
            raise ValueError(f"rm.gpm.embed_dim must be even and >= 2, got {self.embed_dim}")


@dataclass(frozen=True)
class POLARSection:
    """POLAR template (Dou et al. 2025, arXiv 2507.05197). Tokens missing from the vocab are added (full fine-tune only)."""

    split_token: str = "<|split|>"
    reward_token: str = "<|reward|>"
    wrapper: Literal["sft", "pretrain"] = "sft"
    max_response_len: int = 4096
    # Ranked records become (ref = best, chosen, rejected) triples; pairs per prompt.
    triples_per_prompt: int = 1


@dataclass(frozen=True)
class EnsembleSection:
    """K BT members differing by seed (Coste et al. 2024, arXiv 2310.02743)."""

    members: int = 3
    # Member i uses seed run.seed + i (head init + data order); "bootstrap" resamples its data too.
    bootstrap: bool = False
    # One backbone with K heads (memory-lean; members share every backbone weight).
    shared_backbone: bool = False
    method: Literal["mean", "wco", "uwo"] = "mean"
    lam: float = 0.5

    def __post_init__(self) -> None:
        if self.members < 2:
            raise ValueError(f"ensemble.members must be >= 2, got {self.members}")


@dataclass(frozen=True)
class RMSection:
    """Which reward model to train and its head settings."""

    # A registered kind (reward_models.kinds): bt | gpm | polar | ensemble | rao_kupper. Only the sections
    # below that it reads are written to the run's config.yaml (set others and the config is refused).
    kind: str = "bt"
    head_init: Literal["normal", "zeros"] = "normal"
    # Pad id for batching and the saved config; None = the tokenizer's, unless it equals EOS, then
    # "<|endoftext|>" when the vocab has it (HF sequence-classification pooling needs pad != EOS).
    pad_token_id: int | None = None
    # Reward mean/std stored for serving-time normalisation: over N training rows, the final eval, or none.
    reward_stats: Literal["train", "eval", "none"] = "train"
    reward_stats_examples: int = 256
    # Store normalize=True in reward_config.json (serving applies (r - mean) / std).
    normalize: bool = False
    bt: BTSection = field(default_factory=BTSection)
    gpm: GPMSection = field(default_factory=GPMSection)
    polar: POLARSection = field(default_factory=POLARSection)
    ensemble: EnsembleSection = field(default_factory=EnsembleSection)
    rao_kupper: RaoKupperSection = field(default_factory=RaoKupperSection)

    def __post_init__(self) -> None:
        if self.kind not in kind_names():
            raise ValueError(f"rm.kind: {self.kind!r} is not one of {list(kind_names())}")
        if self.reward_stats_examples < 1:
            raise ValueError("rm.reward_stats_examples must be >= 1")
        resolve_sections(self, f"rm.kind {self.kind}")

    def unused_keys(self) -> tuple[str, ...]:
        """The kind sections ``rm.kind`` does not read (:attr:`reward_models.kinds.RMKind.sections`); left out
        of the run's config.yaml."""
        every = dict.fromkeys(s for k in kind_names() for s in get_kind(k).sections)
        kind = get_kind(self.kind)
        # a preference-embedding kind (GPM) has no scalar reward to keep statistics of
        scalar = ("reward_stats", "reward_stats_examples") if kind.pairwise else ()
        return tuple(s for s in every if s not in kind.sections) + scalar


@dataclass(frozen=True)
class RMTrainConfig:
    """Root of a ``kind: rm`` YAML (``prefopt rm train CFG``)."""

    rm: RMSection = field(default_factory=RMSection)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: RMDataConfig = field(default_factory=RMDataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-5, betas=(0.9, 0.95),
                                                                  warmup_ratio=0.03))
    backend: BackendConfig = field(default_factory=BackendConfig)
    run: RMRunSection = field(default_factory=RMRunSection)
    # Pairs (or ranked lists / triples) per micro-batch per process.
    batch_size: int = 8
    epochs: float = 1.0
    # Stop after this many optimizer steps (0 = run the epochs; data repeats if needed).
    max_steps: int = 0
    # "bf16" runs forward passes under bfloat16 autocast; the loss maths stay float32.
    precision: Literal["fp32", "bf16"] = "fp32"

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise ValueError("set epochs > 0 or max_steps > 0")
        if self.max_steps < 0:
            raise ValueError(f"max_steps must be >= 0, got {self.max_steps}")
        if self.data.layout in ("packed", "shared_prompt") and get_kind(self.rm.kind).reward_token:
            raise ValueError("data.layout must be 'padded' for POLAR (the reward is read at its REWARD token)")
        if self.data.layout == "shared_prompt" and self.model.attn_implementation == "flash_attention_2":
            raise ValueError("data.layout 'shared_prompt' needs a 4-D attention mask (sdpa or eager); "
                             "use 'packed' with flash_attention_2")
        resolve_sections(self, f"rm.kind {self.rm.kind}")
        check_tiled_mlp_backend(self.model, self.backend)

    def unused_keys(self) -> tuple[str, ...]:
        """``data.use_margin`` when the kind's loss reads no pair margin (POLAR, ensemble, Rao-Kupper)."""
        return () if get_kind(self.rm.kind).reads_margin else ("data.use_margin",)


if "rm" not in CONFIG_KINDS:
    CONFIG_KINDS.register("rm", RMTrainConfig)
