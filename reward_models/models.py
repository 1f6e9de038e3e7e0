"""``RewardModel``: a transformers backbone (base model, no LM head) + a BT / GPM / POLAR head.

Kinds (docs/reward_models.md):

* ``bt``    - ``score: Linear(d, 1, bias=False)`` on the last real token -> one scalar per row.
* ``gpm``   - ``embed_head: Linear(d, 2k)`` on the last real token (L2-normalised by default) and an
  optional prompt gate ``gate_head: Linear(d, k)`` on the last *prompt* token.
* ``polar`` - ``score: Linear(d, 1, bias=False)`` (zero-init) read at the REWARD token.

Checkpoints: :mod:`reward_models.model_io` (layout there); config: :mod:`reward_models.reward_config`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from prefopt.core.errors import ModelLoadError
from reward_models.heads import (
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
from reward_models.kinds import get_kind, model_kinds
from reward_models.layouts import RMRows
from reward_models.model_io import (
    base_model_of,
    load_backbone,
    load_reward_model,
    public_name,
    save_reward_model,
)
from reward_models.reward_config import REWARD_CONFIG, REWARD_HEAD, RewardConfig

__all__ = ["RewardConfig", "RewardOutput", "RewardModel", "REWARD_CONFIG", "REWARD_HEAD",
           "load_backbone", "public_name"]


@dataclass(frozen=True)
class RewardOutput:
    """Forward result. ``rewards [B]`` for bt/polar; ``embeddings [B, 2k]`` and ``gate [B, k]`` for gpm."""

    rewards: Tensor | None = None
    embeddings: Tensor | None = None
    gate: Tensor | None = None
    index: Tensor | None = None  # position the head read in each row


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
        self.model = base_model_of(backbone)
        bcfg = self.model.config
        text_cfg = bcfg.get_text_config() if hasattr(bcfg, "get_text_config") else bcfg
        config.setdefault("hidden_size", int(text_cfg.hidden_size))
        if kind in model_kinds():  # an unknown kind fails in RewardConfig with the list of kinds
            config.setdefault("head_init", get_kind(kind).head_init)
        if config.get("pad_token_id") is None:
            config["pad_token_id"] = getattr(text_cfg, "pad_token_id", None)
        config.setdefault("base_model", str(getattr(bcfg, "_name_or_path", "") or ""))
        self.config = RewardConfig(kind=kind, **config)
        self._init_heads(seed)

    def _init_heads(self, seed: int | None) -> None:
        c = self.config
        d = c.hidden_size
        self.score = self.embed_head = self.gate_head = None
        if not get_kind(c.kind).pairwise:  # one scalar reward per row (bt, polar)
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
        if not get_kind(self.config.kind).reward_token or tok is None:
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
            prompt_lengths: ``[B]`` prompt token counts; required by a GPM gate (Zhang et al. 2025, arXiv 2410.02197).
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
        if get_kind(self.config.kind).reward_token:
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
        """Store held-out reward mean/std (docs/reward_models.md) for optional serving-time normalisation."""
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
        return save_reward_model(self, Path(path))

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
        model = load_reward_model(cls, Path(path), backbone=backbone, torch_dtype=torch_dtype)
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
