"""Typed configs for ``prefopt train`` (kind ``train``). Defaults live here and only here.

A training YAML looks like::

    kind: train
    algorithm: dpo            # any name from `prefopt ls algorithms`
    loss: {beta: 0.1}         # the algorithm's hyper-parameters (its dataclass; unknown keys fail)
    model: {name: smollm2-135m-instruct, lora: {r: 16}}
    data: {path: runs/data/hh_rlhf_helpful}
    optim: {lr: 5.0e-6}
    run: {output_dir: runs/dpo}
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from prefopt.core.backend import BackendConfig, OptimConfig
from prefopt.core.models import ModelConfig
from prefopt.core.registry import CONFIG_KINDS
from prefopt.core.sections import DataSectionBase, RunSectionBase, resolve_sections
from prefopt.core.tiled_mlp import check_tiled_mlp_backend
from prefopt.loops.online_config import OnlineConfig
from prefopt.losses.sparsepo import SparsePOMaskConfig


@dataclass(frozen=True)
class RunSection(RunSectionBase):
    """``run:`` of a ``kind: train`` YAML; every field is :class:`prefopt.core.sections.RunSectionBase`'s."""


@dataclass(frozen=True)
class TrainDataConfig(DataSectionBase):
    """``data:`` of an offline ``kind: train`` YAML; every field is :class:`prefopt.core.sections.DataSectionBase`'s."""


@dataclass(frozen=True)
class ReferenceConfig:
    """Reference model for KL-regularised losses.

    ``auto``: base model with LoRA adapters disabled when LoRA is on (no second copy), else a frozen copy.
    ``precompute``: reference sequence log-probs computed once before training and cached on disk.
    """

    mode: Literal["auto", "copy", "adapter_disabled", "precompute"] = "auto"
    # Where precomputed reference log-probs are cached (default: <output_dir>/ref_cache).
    cache_dir: str | None = None
    # TR-DPO soft reference sync (Gorbatovski et al. 2024): every `sync_every` optimizer steps
    # ref <- sync_alpha * policy + (1 - sync_alpha) * ref. 0 = off (fixed reference). Needs a frozen
    # reference copy (full fine-tune, reference.mode auto/copy); TRL: ref_model_sync_steps.
    sync_every: int = 0
    # Weight of the policy in the soft update, in (0, 1]; 1 = hard copy. TRL: ref_model_mixup_alpha.
    sync_alpha: float = 0.6

    def __post_init__(self) -> None:
        if self.sync_every < 0:
            raise ValueError(f"reference.sync_every must be >= 0 (0 = off), got {self.sync_every}")
        if not 0.0 < self.sync_alpha <= 1.0:
            raise ValueError(f"reference.sync_alpha must be in (0, 1], got {self.sync_alpha}")
        if self.sync_every and self.mode in ("precompute", "adapter_disabled"):
            raise ValueError(f"reference.sync_every needs a frozen reference copy to update; "
                             f"reference.mode={self.mode} has none (use auto or copy with full fine-tuning)")


@dataclass(frozen=True)
class TrainConfig:
    """Root of a ``kind: train`` YAML (offline algorithms; online ones add the ``online`` section)."""

    algorithm: str = "dpo"
    # Hyper-parameters of the algorithm's loss: a mapping in YAML, typed here (once) as the loss's own
    # dataclass (e.g. dpo: BetaHParams; `prefopt ls algorithms`). Unknown keys fail; the run's config.yaml
    # holds every resolved value. Loops read it as is.
    loss: Any = None
    run: RunSection = field(default_factory=RunSection)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: TrainDataConfig = field(default_factory=TrainDataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    # Pairs (or ranked lists) per micro-batch per process.
    batch_size: int = 4
    epochs: float = 1.0
    # Stop after this many optimizer steps (0 = run the epochs).
    max_steps: int = 0
    # "bf16" runs forward passes under bfloat16 autocast (CPU and GPU); loss maths stay float32.
    precision: Literal["fp32", "bf16"] = "fp32"
    # Curriculum (Curry-DPO): "iterative" refreshes the reference between stages; "ordered" keeps it.
    curriculum: Literal["iterative", "ordered", "shuffled"] = "iterative"
    # SparsePO mask source (provider: learned | activation | ones | zeros | random). Only algorithms with
    # SparsePO masks read it (then it defaults to SparsePOMaskConfig()); elsewhere it is absent.
    sparsepo: SparsePOMaskConfig | None = None
    # Online algorithms (loop: online): prompts, rewards, rollouts, schedule (prefopt.loops.online_config);
    # filled with its defaults for them, absent for offline ones.
    online: OnlineConfig | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise ValueError("set epochs > 0 or max_steps > 0")
        from prefopt.algorithms import get_algorithm

        spec = get_algorithm(self.algorithm)
        object.__setattr__(self, "loss", spec.build_hparams(self.loss))
        resolve_sections(self, f"this run (algorithm {self.algorithm})")
        spec.check(self)
        check_tiled_mlp_backend(self.model, self.backend)
        online_layout = self.online.layout if self.online is not None else None
        flash = self.model.attn_implementation == "flash_attention_2"
        if flash and "shared_prompt" in (self.data.layout, online_layout):
            raise ValueError("the shared_prompt layout needs a 4-D attention mask (sdpa or eager attention); "
                             "flash_attention_2 cannot take one")

    def unused_keys(self) -> tuple[str, ...]:
        """Keys this run does not read, left out of its config.yaml: the optional sections its algorithm
        does not read (:meth:`prefopt.algorithms.AlgorithmSpec.reads`), and ``online.vllm`` unless
        ``online.generator`` is vllm."""
        from prefopt.algorithms import OPTIONAL_SECTIONS, get_algorithm

        reads = get_algorithm(self.algorithm).reads(self.loss)
        keys = tuple(k for k in OPTIONAL_SECTIONS if k not in reads)
        return keys + (("online.vllm",) if self.online is not None and self.online.generator != "vllm" else ())


CONFIG_KINDS.register("train", TrainConfig)
