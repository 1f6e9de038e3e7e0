"""Reward-model ensembles (Coste et al., ICLR 2024, arXiv 2310.02743).

Reductions over member scores ``R [K, ...]`` (member dimension first) are pure functions:

* ``mean``: ``(1/K) sum_i R_i``
* ``wco`` (worst-case optimisation): ``min_i R_i``
* ``uwo`` (uncertainty-weighted): ``mean - lam * Var_i(R_i)`` with ``Var = (1/(K - ddof)) sum (R_i -
  mean)^2``. The spec (and Coste et al.'s code) penalise the **variance**, not the std; ``penalty="std"``
  gives RewardBench's offline ``mean - lam * std`` convention instead. Default ``ddof = 0``.

Two containers: :class:`EnsembleRewardModel` (K independent :class:`RewardModel` members) and
:class:`SharedBackboneEnsemble` (memory-lean: one backbone, K scalar heads with their own seeds).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from prefopt.core.errors import ModelLoadError
from prefopt.core.io import atomic_write_json
from reward_models.heads import gather_positions, last_token_index, make_linear_head
from reward_models.models import RewardModel

METHODS = ("mean", "wco", "min", "uwo")

__all__ = ["aggregate", "member_variance", "zscore_members", "best_of_n", "EnsembleOutput",
           "EnsembleRewardModel", "SharedBackboneEnsemble", "METHODS"]


def member_variance(scores: Tensor, ddof: int = 0) -> Tensor:
    """Variance over the member dimension 0: ``(1/(K - ddof)) sum_i (R_i - mean)^2``."""
    k = scores.shape[0]
    if k - ddof <= 0:
        raise ValueError(f"variance with ddof={ddof} needs more than {ddof} members, got {k}")
    s = scores.float()
    return ((s - s.mean(0)) ** 2).sum(0) / (k - ddof)


def aggregate(scores: Tensor, method: str = "mean", *, lam: float = 0.5, ddof: int = 0,
              penalty: str = "var") -> tuple[Tensor, Tensor]:
    """Aggregate member scores ``[K, ...]`` -> ``(aggregate [...], variance [...])``.

    Worked example (spec E1): ``R = (0.5, 1.0, 3.0)``: mean 1.5; min 0.5; variance
    ``(1 + 0.25 + 2.25)/3 = 1.1667`` (ddof 0) or ``3.5/2 = 1.75`` (ddof 1); UWO at ``lam = 0.5``:
    ``1.5 - 0.5 * 1.1667 = 0.9167`` (ddof 0) or ``1.5 - 0.875 = 0.625`` (ddof 1).

    Args:
        scores: ``[K, ...]`` member scores.
        method: ``mean``, ``wco`` (alias ``min``) or ``uwo``.
        lam: UWO coefficient (spec: 0.5 for best-of-n/reranking, 0.1 for PPO-style RL).
        ddof: 0 = population variance (default), 1 = unbiased.
        penalty: ``var`` (spec) or ``std`` (RewardBench offline convention).
    """
    if scores.ndim < 1 or scores.shape[0] < 1:
        raise ValueError("aggregate needs member scores with the member dimension first")
    s = scores.float()
    var = member_variance(s, ddof) if s.shape[0] - ddof > 0 else torch.zeros_like(s[0])
    if method == "mean":
        return s.mean(0), var
    if method in ("wco", "min"):
        return s.min(0).values, var
    if method == "uwo":
        if penalty not in ("var", "std"):
            raise ValueError(f"penalty must be 'var' or 'std', got {penalty!r}")
        pen = var if penalty == "var" else var.sqrt()
        return s.mean(0) - lam * pen, var
    raise ValueError(f"ensemble method must be one of {METHODS}, got {method!r}")


def zscore_members(scores: Tensor, means: Sequence[float] | Tensor, stds: Sequence[float] | Tensor) -> Tensor:
    """Z-score each member with its own calibration mean/std (``normalize_members=True``)."""
    m = torch.as_tensor(means, dtype=torch.float32, device=scores.device)
    sd = torch.as_tensor(stds, dtype=torch.float32, device=scores.device)
    shape = (-1,) + (1,) * (scores.ndim - 1)
    return (scores.float() - m.view(shape)) / sd.view(shape)


def best_of_n(scores: Tensor, method: str = "wco", **kw) -> Tensor:
    """Index of the best of n candidates from member scores ``[K, n]`` (spec E4)."""
    agg, _ = aggregate(scores, method, **kw)
    return agg.argmax(-1)


@dataclass(frozen=True)
class EnsembleOutput:
    """``member_rewards [K, B]``, ``rewards [B]`` (aggregate) and ``variance [B]``."""

    member_rewards: Tensor
    rewards: Tensor
    variance: Tensor


class _AggregateMixin:
    method: str
    lam: float
    ddof: int
    penalty: str
    calibration: tuple[list[float], list[float]] | None

    def _aggregate(self, member: Tensor) -> EnsembleOutput:
        if self.calibration is not None:
            member = zscore_members(member, *self.calibration)
        agg, var = aggregate(member, self.method, lam=self.lam, ddof=self.ddof, penalty=self.penalty)
        return EnsembleOutput(member_rewards=member, rewards=agg, variance=var)


class EnsembleRewardModel(_AggregateMixin, nn.Module):
    """K independent scalar reward models (same recipe, different seeds) with an aggregation rule.

    Args:
        members: K >= 2 ``RewardModel`` of kind ``bt`` (or ``polar``).
        method, lam, ddof, penalty: see :func:`aggregate`.
        calibration: optional ``(means, stds)`` per member for ``normalize_members=True``.
    """

    def __init__(self, members: Sequence[RewardModel], method: str = "mean", *, lam: float = 0.5,
                 ddof: int = 0, penalty: str = "var",
                 calibration: tuple[list[float], list[float]] | None = None):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs k >= 2 members, got {len(members)}")
        from reward_models.kinds import get_kind

        if any(get_kind(m.config.kind).pairwise for m in members):
            raise ValueError("ensemble members must be scalar reward models (bt/polar), not gpm")
        self.members = nn.ModuleList(members)
        self.method, self.lam, self.ddof, self.penalty = method, lam, ddof, penalty
        self.calibration = calibration
        aggregate(torch.zeros(len(members), 1), method, lam=lam, ddof=min(ddof, len(members) - 1),
                  penalty=penalty)  # validate the options early

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, **kw) -> EnsembleOutput:
        member = torch.stack([m(input_ids, attention_mask, **kw).rewards for m in self.members])
        return self._aggregate(member)

    def save_pretrained(self, path: str | Path) -> Path:
        """``path/member_{i}`` (each a normal RewardModel checkpoint) + ``path/ensemble.json``."""
        path = Path(path)
        for i, m in enumerate(self.members):
            m.save_pretrained(path / f"member_{i}")
        atomic_write_json(path / "ensemble.json", {
            "kind": "ensemble", "members": [f"member_{i}" for i in range(len(self.members))],
            "method": self.method, "lam": self.lam, "ddof": self.ddof, "penalty": self.penalty,
            "calibration": None if self.calibration is None else [list(map(float, c)) for c in self.calibration]})
        return path

    @classmethod
    def load(cls, path: str | Path, **load_kw: Any) -> "EnsembleRewardModel":
        """Load a directory written by :meth:`save_pretrained` (``load_kw`` go to ``RewardModel.load``)."""
        import json

        path = Path(path)
        try:
            meta = json.loads((path / "ensemble.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{path}: cannot read ensemble.json: {exc}") from None
        members = [RewardModel.load(path / m, **load_kw) for m in meta["members"]]
        cal = meta.get("calibration")
        return cls(members, meta["method"], lam=meta["lam"], ddof=meta["ddof"], penalty=meta["penalty"],
                   calibration=None if cal is None else (cal[0], cal[1]))


class SharedBackboneEnsemble(_AggregateMixin, nn.Module):
    """Memory-lean ensemble: one backbone, K ``Linear(d, 1)`` heads seeded ``seeds[i]``.

    The members share every backbone weight, so only head init / data order differ; cheaper but less
    diverse than independent members.
    """

    def __init__(self, backbone: nn.Module, seeds: Sequence[int], method: str = "mean", *,
                 lam: float = 0.5, ddof: int = 0, penalty: str = "var", head_init: str = "normal",
                 calibration: tuple[list[float], list[float]] | None = None):
        super().__init__()
        if len(seeds) < 2:
            raise ValueError(f"an ensemble needs k >= 2 members, got {len(seeds)}")
        base = RewardModel(backbone, "bt", seed=seeds[0], head_init=head_init)
        self.model = base.model
        self.config = base.config
        d = base.config.hidden_size
        dtype = next(self.model.parameters()).dtype
        self.heads = nn.ModuleList([make_linear_head(d, 1, head_init, s).to(dtype) for s in seeds])
        self.method, self.lam, self.ddof, self.penalty = method, lam, ddof, penalty
        self.calibration = calibration

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None, *,
                rows: Any = None) -> EnsembleOutput:
        """Member rewards of padded rows, or of the sequences of ``rows`` (``RMRows``, any layout)."""
        if rows is not None:
            pooled, _ = rows.read(self.model)
        else:
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            hidden = RewardModel.hidden_states(self, input_ids, attention_mask)  # same body call
            pooled = gather_positions(hidden, last_token_index(attention_mask))
        member = torch.stack([h(pooled.to(h.weight.dtype)).squeeze(-1).float() for h in self.heads])
        return self._aggregate(member)

    def enable_lora(self, lora: Any) -> "SharedBackboneEnsemble":
        """Wrap the shared backbone body with a LoRA adapter (``prefopt.core.lora.LoraSettings``); the K
        heads stay outside it and are saved beside the adapter."""
        import peft

        self.model = peft.get_peft_model(self.model, peft.LoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules))
        self.config = dataclasses.replace(self.config, lora=True)
        return self

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, path: str | Path) -> Path:
        """``path``: the body (AutoModel layout, or the LoRA adapter), ``reward_head.safetensors`` with
        ``heads.{i}.weight``, ``reward_config.json`` and ``ensemble.json`` (``kind: shared_backbone``)."""
        import dataclasses

        from safetensors.torch import save as st_save

        from prefopt.core.io import atomic_write_bytes
        from reward_models.models import REWARD_CONFIG, REWARD_HEAD

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if hasattr(self.model, "peft_config"):
            self.model.save_pretrained(str(path))
        else:
            self.model.save_pretrained(str(path), safe_serialization=True)
        heads = {f"heads.{i}.weight": h.weight.detach().cpu().contiguous() for i, h in enumerate(self.heads)}
        atomic_write_bytes(path / REWARD_HEAD, st_save(heads))
        atomic_write_json(path / REWARD_CONFIG, dataclasses.asdict(self.config))
        atomic_write_json(path / "ensemble.json", {
            "kind": "shared_backbone", "members": len(self.heads), "method": self.method, "lam": self.lam,
            "ddof": self.ddof, "penalty": self.penalty,
            "calibration": None if self.calibration is None else [list(map(float, c)) for c in self.calibration]})
        return path

    @classmethod
    def load(cls, path: str | Path, *, backbone: nn.Module | None = None,
             torch_dtype: Any = None) -> "SharedBackboneEnsemble":
        """Load a directory written by :meth:`save_pretrained`; a missing head raises ``ModelLoadError``.

        Args:
            path: checkpoint directory.
            backbone: base model for a LoRA checkpoint (default: ``base_model`` from the reward config).
            torch_dtype: backbone dtype (default: as saved).
        """
        import json

        from reward_models.model_io import load_backbone, read_heads
        from reward_models.reward_config import REWARD_CONFIG, REWARD_HEAD, RewardConfig

        path = Path(path)
        try:
            meta = json.loads((path / "ensemble.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{path}: cannot read ensemble.json: {exc}") from None
        if meta.get("kind") != "shared_backbone":
            raise ModelLoadError(f"{path}: not a shared-backbone ensemble (kind {meta.get('kind')!r})")
        cfg = RewardConfig.from_json(path / REWARD_CONFIG)
        heads = read_heads(path)
        kw = {} if torch_dtype is None else {"dtype": torch_dtype}
        from transformers import AutoModel

        lora = (path / "adapter_config.json").is_file()
        if not lora:
            backbone = AutoModel.from_pretrained(str(path), **kw)
        elif backbone is None:
            backbone = load_backbone(cfg.base_model, kw)
        cal = meta.get("calibration")
        ens = cls(backbone, list(range(meta["members"])), meta["method"], lam=meta["lam"], ddof=meta["ddof"],
                  penalty=meta["penalty"], calibration=None if cal is None else (cal[0], cal[1]))
        if lora:
            import peft

            ens.model = peft.PeftModel.from_pretrained(ens.model, str(path))
        ens.config = cfg
        for i, h in enumerate(ens.heads):
            key = f"heads.{i}.weight"
            if key not in heads:
                raise ModelLoadError(f"{path}: {REWARD_HEAD} has no '{key}'; refusing to initialise it randomly")
            with torch.no_grad():
                h.weight.copy_(heads[key].to(h.weight.dtype))
        return ens
