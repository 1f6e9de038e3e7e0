"""The ``auto`` batch layout of training runs (the default): ``shared_prompt`` wherever it is exact.

The shared-prompt layout (Prefix Grouper, arXiv 2506.05433) encodes each prompt once for all of its
completions under a block mask; log-probs equal the padded rows' to float rounding
(``tests/prefopt/loops/test_offline_layouts.py``, ``test_online_layout.py``). Where it is not exact,
``auto`` falls back to ``padded`` with one console line (:func:`reward_models.layouts.resolve_auto_layout`):

* offline losses that need SparsePO's full-vocabulary logits (``token_kl``): they run their own
  padded full-logit forward;
* listwise (``ranked``) losses: K responses per prompt are batched as padded lists;
* models that cannot take the block mask exactly (``flash_attention_2``, sliding-window attention).
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from reward_models.layouts import resolve_auto_layout, shared_prompt_blockers

if TYPE_CHECKING:
    import torch

    from prefopt.algorithms import AlgorithmSpec
    from prefopt.configs import TrainConfig


def offline_layout(cfg: TrainConfig, spec: AlgorithmSpec, model: torch.nn.Module) -> str:
    """Concrete ``data.layout`` of an offline run of ``spec`` on ``model``."""
    reasons = []
    if "token_kl" in spec.extras:
        reasons.append(f"{spec.name} needs the full-vocabulary logits of padded rows (per-token KL)")
    if spec.schema == "ranked":
        reasons.append(f"{spec.name} is a listwise loss (its K responses are batched as padded lists)")
    reasons += shared_prompt_blockers(model, cfg.model.attn_implementation)
    return resolve_auto_layout(cfg.data.layout, reasons, f"train {spec.name}")


def online_layout(cfg: TrainConfig, layout: str, model: torch.nn.Module) -> str:
    """Concrete ``online.layout`` of an online run on ``model`` (every online loss reads the same
    per-token log-probs, so only the model can stand against the shared prompt)."""
    return resolve_auto_layout(layout, shared_prompt_blockers(model, cfg.model.attn_implementation),
                               f"online {cfg.algorithm}")


def with_offline_layout(cfg: TrainConfig, spec: AlgorithmSpec, model: torch.nn.Module) -> TrainConfig:
    """``cfg`` with its concrete ``data.layout`` (``auto`` resolved), as the run's config.yaml records it."""
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, layout=offline_layout(cfg, spec, model)))


def with_online_layout(cfg: TrainConfig, model: torch.nn.Module) -> TrainConfig:
    """``cfg`` with its concrete ``online.layout`` (``auto`` resolved), as the run's config.yaml records it."""
    from prefopt.loops.online_config import OnlineConfig

    oc = cfg.online if cfg.online is not None else OnlineConfig()
    return dataclasses.replace(cfg, online=dataclasses.replace(oc, layout=online_layout(cfg, oc.layout, model)))
