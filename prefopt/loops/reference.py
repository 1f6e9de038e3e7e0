"""Reference models for KL-regularised losses (one place for every mode).

* ``adapter_disabled``: the LoRA policy with its adapters switched off - no second copy in memory.
* ``copy``: a frozen deep copy of the starting policy (full fine-tuning).
* ``precompute``: sequence log-probs computed once before training and cached on disk
  (``ref_logps.safetensors`` keyed by a fingerprint of the data and model), then no reference forward.
  No copy is made: before the first optimizer step the policy *is* the reference (LoRA: adapters
  disabled), so the cache is filled from it and the reference is then released.

TR-DPO (Gorbatovski et al. 2024, "Learn Your Reference Model for Real Good Alignment") updates the
frozen copy during training with :meth:`Reference.soft_sync`: ``ref <- alpha * policy + (1 - alpha) * ref``.

Curry-DPO's iterative mode calls :func:`refresh_reference` between stages: the policy at the end of
stage s becomes the frozen reference of stage s+1 (for LoRA: adapters merged into the base weights,
then fresh adapters).
"""
from __future__ import annotations

import contextlib
import copy
from typing import Any, Callable

import torch


def is_peft(model: torch.nn.Module) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def resolve_mode(mode: str, model: torch.nn.Module, needs_ref: bool) -> str:
    """Concrete reference mode for ``auto`` (adapter-disabled under LoRA, else a copy)."""
    if not needs_ref:
        return "none"
    if mode == "auto":
        return "adapter_disabled" if is_peft(model) else "copy"
    if mode == "adapter_disabled" and not is_peft(model):
        from prefopt.core.errors import ConfigError

        raise ConfigError("reference.mode=adapter_disabled needs LoRA (model.lora) to be set")
    return mode


class Reference:
    """Runs the reference forward: ``ref(fn)`` calls ``fn(model)`` with the reference weights active."""

    def __init__(self, mode: str, policy: torch.nn.Module):
        self.mode = mode
        self.frozen: torch.nn.Module | None = None
        self.released = False
        if mode == "copy" and not is_peft(policy):
            self.frozen = _frozen_copy(policy)

    def run(self, policy: torch.nn.Module, fn: Callable[[torch.nn.Module], Any]) -> Any:
        if self.released:
            raise RuntimeError("the reference was released after precomputing its log-probs; "
                               "no reference forward is possible (reference.mode=precompute)")
        with torch.no_grad():
            if self.frozen is not None:
                return fn(self.frozen)
            if is_peft(policy):
                with policy.disable_adapter():
                    return fn(policy)
            if self.mode == "precompute":  # untrained policy == reference (see module docstring)
                with eval_mode(policy):
                    return fn(policy)
            raise RuntimeError(f"reference mode {self.mode} has no model")

    def to(self, device: torch.device) -> "Reference":
        if self.frozen is not None:
            self.frozen.to(device)
        return self

    def soft_sync(self, policy: torch.nn.Module, alpha: float) -> None:
        """TR-DPO soft update of the frozen copy, in place: ``ref <- alpha * policy + (1 - alpha) * ref``.

        Applied to every parameter and every floating-point buffer, matched by name (``alpha = 1``
        copies the policy exactly). Buffers the policy holds unchanged (e.g. rotary frequencies) are
        left bit-identical instead of being re-rounded. Raises when there is no frozen copy
        (adapter-disabled or precomputed references).
        """
        if self.frozen is None:
            raise RuntimeError(f"reference soft sync needs a frozen reference copy; reference mode "
                               f"{self.mode!r}{' (released)' if self.released else ''} has none")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"sync alpha must be in (0, 1], got {alpha}")
        ref_params, pol_params = dict(self.frozen.named_parameters()), dict(policy.named_parameters())
        if ref_params.keys() != pol_params.keys():
            missing = sorted(ref_params.keys() - pol_params.keys())[:3]
            extra = sorted(pol_params.keys() - ref_params.keys())[:3]
            raise RuntimeError(f"policy parameters do not match the reference copy (missing {missing}, "
                               f"unexpected {extra})")
        pol_buffers = dict(policy.named_buffers())
        with torch.no_grad():
            for name, ref_p in ref_params.items():
                _mix(ref_p, pol_params[name], alpha)
            for name, ref_b in self.frozen.named_buffers():
                pol_b = pol_buffers.get(name)
                if (pol_b is None or not ref_b.is_floating_point() or pol_b.shape != ref_b.shape
                        or torch.equal(ref_b, pol_b.to(ref_b.device, ref_b.dtype))):
                    continue
                _mix(ref_b, pol_b, alpha)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The frozen copy's parameters and floating-point buffers (what :meth:`soft_sync` changes), on
        CPU, for checkpoints; ``{}`` when there is no frozen copy."""
        if self.frozen is None:
            return {}
        out = {f"param.{n}": p.detach().cpu().contiguous() for n, p in self.frozen.named_parameters()}
        out.update({f"buffer.{n}": b.detach().cpu().contiguous()
                    for n, b in self.frozen.named_buffers() if b.is_floating_point()})
        return out

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`state_tensors` (the names must match exactly)."""
        if self.frozen is None:
            raise RuntimeError(f"reference mode {self.mode!r} has no frozen copy to restore into")
        targets = {f"param.{n}": p for n, p in self.frozen.named_parameters()}
        targets.update({f"buffer.{n}": b for n, b in self.frozen.named_buffers() if b.is_floating_point()})
        if tensors.keys() != targets.keys():
            missing = sorted(targets.keys() - tensors.keys())[:3]
            extra = sorted(tensors.keys() - targets.keys())[:3]
            raise RuntimeError(f"saved reference state does not fit the reference model (missing {missing}, "
                               f"unexpected {extra})")
        with torch.no_grad():
            for name, value in tensors.items():
                targets[name].copy_(value.to(targets[name].device, targets[name].dtype))

    def release(self) -> None:
        """Drop the reference once precomputed log-probs are cached (later ``run`` calls raise)."""
        self.frozen = None
        self.released = True


def _mix(ref: torch.Tensor, policy: torch.Tensor, alpha: float) -> None:
    src = policy.detach().to(ref.device, ref.dtype)
    if alpha == 1.0:
        ref.copy_(src)
    else:
        ref.mul_(1.0 - alpha).add_(src, alpha=alpha)


def _frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    ref = copy.deepcopy(model)
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def refresh_reference(policy: torch.nn.Module, reference: Reference, lora: Any) -> tuple[torch.nn.Module, Reference]:
    """Curry-DPO iterative mode: the current policy becomes the new frozen reference.

    Full fine-tuning: a fresh frozen copy of the policy. LoRA: adapters are merged into the base
    weights (the merged model is the new reference with adapters disabled) and new adapters start.
    """
    if is_peft(policy):
        from prefopt.core.models import apply_lora_settings

        merged = policy.merge_and_unload()
        new_policy = apply_lora_settings(merged, lora)
        return new_policy, Reference("adapter_disabled", new_policy)
    return policy, Reference("copy", policy)


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)
