"""The extragradient update: the one implementation (EGPO's online loop and the toy games both call it).

Extragradient (Korpelevich 1976) as used by EGPO (Zhou, Fazel, Du 2025, arXiv 2503.08942, the
extragradient update): from θ_t,

1. back up θ_t (the trainable parameters) and the optimizer (+ scheduler) state;
2. half step on a batch drawn at θ_t → θ_{t+½};
3. draw a new batch at θ_{t+½} (EGPO: y, y', y'' sampled there);
4. restore θ_t and its optimizer state, then take the real step on the new batch → θ_{t+1}.

:func:`extragradient_update` is that sequence over any ``step(batch)`` (the online loop's micro-batched
backend step) and anything with ``state_dict`` / ``load_state_dict`` (a torch optimizer, or the
single-process backend, whose state is the optimizer, the scheduler and the micro-step counter).
:func:`extragradient_step` adapts it to a plain torch optimizer and loss closures (the toy games).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Generic, Protocol, TypeVar

import torch

__all__ = ["Stateful", "Snapshot", "ExtragradientResult", "take_snapshot", "restore_snapshot",
           "extragradient_update", "extragradient_step"]

B = TypeVar("B")
R = TypeVar("R")


class Stateful(Protocol):
    """What holds the optimizer state the update backs up (a torch optimizer, the single backend)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class Snapshot:
    """θ_t (copies of the trainable parameters) and a deep copy of the optimizer state at θ_t."""

    params: dict[str, torch.Tensor]
    state: dict[str, Any]


@dataclass
class ExtragradientResult(Generic[B, R]):
    """What one update did: the two steps' results and the batches they were taken on."""

    half: R
    full: R
    half_batch: B
    full_batch: B


def _to(obj: Any, device: torch.device | str) -> Any:
    """``obj`` with every tensor inside (dicts, lists, tuples) moved to ``device``."""
    if torch.is_tensor(obj):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to(v, device) for v in obj)
    return obj


def take_snapshot(model: torch.nn.Module, stateful: Stateful, *,
                  device: torch.device | str | None = None) -> Snapshot:
    """Back up the trainable parameters (``requires_grad``; LoRA-friendly) and a deep copy of
    ``stateful.state_dict()``, both on ``device`` when given (e.g. ``"cpu"``)."""
    if not callable(getattr(stateful, "state_dict", None)):
        raise TypeError(f"the extragradient update backs up the optimizer state; {type(stateful).__name__} "
                        "has no state_dict (EGPO needs backend.kind=single)")
    params = {n: p.detach().to(device or p.device, copy=True)
              for n, p in model.named_parameters() if p.requires_grad}
    state = copy.deepcopy(stateful.state_dict())
    return Snapshot(params, _to(state, device) if device is not None else state)


@torch.no_grad()
def restore_snapshot(model: torch.nn.Module, stateful: Stateful, snap: Snapshot) -> None:
    """Copy the saved parameters back in place and reload (a copy of) the saved optimizer state."""
    named = dict(model.named_parameters())
    for name, value in snap.params.items():
        named[name].copy_(value)
    stateful.load_state_dict(copy.deepcopy(snap.state))


def extragradient_update(model: torch.nn.Module, stateful: Stateful, *, half: Callable[[], B],
                         full: Callable[[], B], step: Callable[[B], R],
                         snapshot_device: torch.device | str | None = None) -> ExtragradientResult[B, R]:
    """One extragradient update θ_t → θ_{t+1} (steps 1-4 of the module docstring).

    ``half()`` draws the batch of the half step at θ_t, ``full()`` the batch of the real step at
    θ_{t+½} (both without grad); ``step(batch)`` runs the forward/backward and one optimizer step.
    """
    snap = take_snapshot(model, stateful, device=snapshot_device)
    with torch.no_grad():
        half_batch = half()
    half_out = step(half_batch)
    with torch.no_grad():
        full_batch = full()
    restore_snapshot(model, stateful, snap)
    return ExtragradientResult(half_out, step(full_batch), half_batch, full_batch)


def extragradient_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, *,
                       half_loss: Callable[[], torch.Tensor], sample_opponent: Callable[[], Any],
                       full_loss: Callable[[Any], torch.Tensor], grad_clip: float | None = None,
                       snapshot_device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`extragradient_update` with a plain torch optimizer and loss closures: the half step on
    ``half_loss()``, ``sample_opponent()`` at θ_{t+½}, the real step on ``full_loss(opponent)`` at θ_t.

    Returns ``(half_loss_value, full_loss_value)`` detached.
    """
    params = [p for p in model.parameters() if p.requires_grad]

    def step(loss_fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        return loss.detach()

    def full() -> Callable[[], torch.Tensor]:
        opponent = sample_opponent()  # drawn now, at θ_{t+½}; the loss is evaluated after the restore
        return lambda: full_loss(opponent)

    out = extragradient_update(model, optimizer, half=lambda: half_loss, full=full, step=step,
                               snapshot_device=snapshot_device)
    optimizer.zero_grad(set_to_none=True)
    return out.half, out.full
