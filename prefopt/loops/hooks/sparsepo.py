"""SparsePO's loss inputs (Christopoulou et al. 2024, SparsePO, arXiv 2410.05102): token log-ratios, the
per-token KL from both full logits and the token masks, from one policy and one reference forward.

Mask providers (``sparsepo.provider``): ``learned`` (variant B) reads the reference's per-layer residual
hidden states through :class:`prefopt.losses.sparsepo.LearnedMaskHead`, trained in its own optimizer
group and kept in checkpoints (``mask_head``); ``activation`` (variant A) averages z-normalised, min-max
rescaled maps of the reference's MLP outputs, attention outputs, residual stream per layer and final
logits, all taken with forward hooks in the same reference forward and shifted onto the label positions;
``ones`` / ``zeros`` / ``random`` are ablations. The loss itself is :func:`prefopt.losses.sparsepo.sparsepo`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from data_pipelines.collate import collate_pairwise
from prefopt.core.errors import ConfigError
from prefopt.core.loop import autocast
from prefopt.core.registry import OFFLINE_HOOKS
from prefopt.logprobs import token_logps
from prefopt.loops.hooks.base import OfflineHook
from prefopt.loops.offline_step import StepInputs, policy_forward
from prefopt.losses.base import pair_inputs
from prefopt.losses.kl import token_kl
from prefopt.losses.sparsepo import MASK_PROVIDERS, LearnedMaskHead


def _shift(x: Tensor) -> Tensor:
    """Align a per-position activation with the token it predicts: ``out[:, t] = x[:, t - 1]``."""
    x = x[:, :-1]
    return torch.cat([x.new_zeros((x.shape[0], 1) + tuple(x.shape[2:])), x], dim=1)


def _hooked_reference_forward(model: Any, kw: dict, collect: bool) -> tuple[Any, dict[str, list[Tensor]]]:
    """Reference forward with hidden states; with ``collect`` also the per-layer MLP and attention
    outputs via forward hooks (modules whose name ends in ``.mlp`` / ``.self_attn``)."""
    acts: dict[str, list[Tensor]] = {"mlp": [], "attn": []}
    handles = []
    if collect:
        for name, mod in model.named_modules():
            kind = "mlp" if name.endswith(".mlp") else "attn" if name.endswith(".self_attn") else None
            if kind is None:
                continue

            def hook(_m: Any, _inp: Any, out: Any, kind: str = kind) -> None:
                acts[kind].append((out[0] if isinstance(out, tuple) else out).detach())

            handles.append(mod.register_forward_hook(hook))
    try:
        out = model(**kw, output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    return out, {k: v for k, v in acts.items() if v}


class SparsePOMasks(OfflineHook):
    """Builds SparsePO's token-level loss inputs; owns the learned mask head (if any)."""

    def __init__(self, section: Any):
        self.section = section  # prefopt.losses.sparsepo.SparsePOMaskConfig
        self.provider = section.provider
        self.head: LearnedMaskHead | None = None

    def check(self, backend: Any) -> None:
        if getattr(backend, "zero_stage", 0) == 3 and self.provider == "learned":
            raise ConfigError("SparsePO's learned mask head is not sharded by ZeRO-3; use backend.zero_stage=2 "
                              "or sparsepo.provider=activation")

    def on_start(self, ctx: Any, model: torch.nn.Module, backend: Any) -> None:
        if self.provider == "learned":
            self.head = LearnedMaskHead(model.config.hidden_size, model.config.num_hidden_layers,
                                        self.section.dropout).to(backend.device)

    def optimizer_groups(self) -> list[dict[str, Any]]:
        if self.head is None:
            return []
        return [{"params": list(self.head.parameters()), "weight_decay": self.section.weight_decay}]

    def forward(self, ctx: Any, policy: Any, items: list) -> StepInputs:
        batch = collate_pairwise([it.tok for it in items], ctx.pad_id)
        kw = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
              "position_ids": batch.position_ids, "use_cache": False}
        collect = self.provider == "activation"
        with autocast(ctx.precision, ctx.device):
            out, stats, pol_logits = policy_forward(policy, batch, need_logits=True)
            ref_out, acts = ctx.reference.run(policy, lambda m: _hooked_reference_forward(m, kw, collect))
        pol = out.token_logps.float()
        ref = token_logps(ref_out.logits, batch.input_ids).float()
        # token t's distribution comes from logits at t-1: shift KL onto the label positions
        kl = token_kl(pol_logits[:, :-1].float(), ref_out.logits[:, :-1].float())
        kl = torch.cat([kl.new_zeros(kl.shape[0], 1), kl], dim=1)
        mask = batch.completion_mask
        m_u = self._mask(ref_out, acts, mask)
        inputs = {"policy_token_logps": pol, "ref_token_logps": ref, "completion_mask": mask,
                  "token_kl": kl, "mask_u": m_u}
        return StepInputs(inputs, mask, stats, seq=pair_inputs(pol, mask, ref))

    def _mask(self, ref_out: Any, acts: dict[str, list[Tensor]], mask: Tensor) -> Tensor:
        hidden = [_shift(h) for h in ref_out.hidden_states[1:]]
        if self.head is not None:
            return self.head(hidden, mask)
        if self.provider == "activation":
            acts = {k: [_shift(a) for a in v] for k, v in acts.items()}
            acts.update({"residual": hidden, "logits": [_shift(ref_out.logits.detach())]})
            return MASK_PROVIDERS.get("activation")(acts, mask)
        return MASK_PROVIDERS.get(self.provider)(mask)

    def state_dict(self) -> dict[str, Any]:
        if self.head is None:
            return {}
        return {"mask_head": {k: v.detach().cpu().flatten().tolist() for k, v in self.head.state_dict().items()}}

    def load_state(self, ctx: Any, state: dict[str, Any], ckpt: Path) -> None:
        if self.head is None or "mask_head" not in state:
            return
        with torch.no_grad():
            for k, v in self.head.state_dict().items():
                v.copy_(torch.tensor(state["mask_head"][k], dtype=v.dtype).reshape(v.shape))


OFFLINE_HOOKS.register("sparsepo_masks", lambda cfg, spec: SparsePOMasks(cfg.sparsepo))
