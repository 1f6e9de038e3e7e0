"""Tensor memory of one training step, counted op by op: the peak of each phase and what is alive at it.

Resident memory (:mod:`benchmarks.memory`) is what a machine must have, but it also holds the allocator's
free lists and heap fragmentation, which differ between runs of the same step (glibc's defaults against a
1 MiB mmap threshold moved one of our probes from 6.4 GB to 1.7 GB). :class:`TensorMemory` counts only
tensor storages: a ``TorchDispatchMode`` sees every tensor an op returns (forward, backward and the
optimizer step), keeps a weak reference to its storage, and adds its bytes until the storage is freed.
Views and in-place results share a storage already counted (or made outside the context, like the
parameters, which the caller reports apart).

A step has up to three phases: the forward and the backward through the head (``forward_backward``);
with ``split_at`` modules (the decoder layers), the backward through the layers, from the first of them
reached (``layers_backward``: the recomputation under activation checkpointing); then the optimizer step
(the gradients and the optimizer's state). Module backward pre-hooks and global optimizer hooks mark the
switches and label the gradients' and the state's storages, and the peak of each phase is kept with a
snapshot of what is alive at it, grouped by the op that made it and its shape: the memory profile that
says which tensors bound the longest sequence, since only the first two phases grow with the sequence.
"""
from __future__ import annotations

import itertools
import weakref
from collections import Counter
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

SNAPSHOT_EVERY = 0.005  # re-take a phase's snapshot when its peak has grown by 0.5 % since the last one
Entry = tuple[int, str, tuple[int, ...]]  # bytes, op, shape


class TensorMemory(TorchDispatchMode):
    """Live bytes of the tensor storages created in the context; per phase, the peak and a snapshot."""

    def __init__(self, split_at: Any = ()) -> None:
        super().__init__()
        self._split_at = list(split_at)
        self.live: dict[int, Entry] = {}  # serial -> entry
        self.serial: dict[int, int] = {}  # live storage address -> serial (an address is reused after a free)
        self._count = itertools.count()
        self.current = 0
        self.phase = "forward_backward"
        self.peaks: dict[str, int] = {self.phase: 0}
        self.snapshots: dict[str, dict[int, Entry]] = {self.phase: {}}
        self._snap_peak = 0
        self.labels: dict[int, str] = {}  # serial -> "gradients" | "optimizer_state"
        self._hooks: list[Any] = []

    @property
    def peak(self) -> int:
        return max(self.peaks.values())

    def _freed(self, addr: int, key: int) -> None:
        nbytes, _, _ = self.live.pop(key, (0, "", ()))
        if self.serial.get(addr) == key:
            del self.serial[addr]
        self.current -= nbytes

    def _track(self, t: torch.Tensor, op: str) -> None:
        st = t.untyped_storage()
        addr = st._cdata
        if addr in self.serial or t.device.type == "meta":
            return
        key = self.serial[addr] = next(self._count)
        self.live[key] = (st.nbytes(), op, tuple(t.shape))
        weakref.finalize(st, self._freed, addr, key)
        self.current += st.nbytes()
        if self.current > self.peaks[self.phase]:
            self.peaks[self.phase] = self.current
            if self.current > self._snap_peak * (1 + SNAPSHOT_EVERY):
                self._snap_peak, self.snapshots[self.phase] = self.current, dict(self.live)

    def _label(self, tensors: Any, label: str) -> None:
        for t in tensors:
            key = self.serial.get(t.untyped_storage()._cdata) if isinstance(t, torch.Tensor) else None
            if key is not None:
                self.labels[key] = label

    def _switch(self, phase: str) -> None:
        if phase not in self.peaks:
            self.phase, self._snap_peak = phase, self.current
            self.peaks[phase], self.snapshots[phase] = self.current, dict(self.live)

    def _enter_layers(self, *_: Any) -> None:
        if self.phase == "forward_backward":
            self._switch("layers_backward")

    def _enter_optimizer(self, opt: torch.optim.Optimizer, *_: Any) -> None:
        self._label((p.grad for g in opt.param_groups for p in g["params"]), "gradients")
        self._switch("optimizer_step")

    def _leave_optimizer(self, opt: torch.optim.Optimizer, *_: Any) -> None:
        self._label((v for s in opt.state.values() for v in s.values()), "optimizer_state")

    def __enter__(self) -> "TensorMemory":
        self._hooks = [register_optimizer_step_pre_hook(self._enter_optimizer),
                       register_optimizer_step_post_hook(self._leave_optimizer),
                       *(m.register_full_backward_pre_hook(self._enter_layers) for m in self._split_at)]
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        for h in self._hooks:
            h.remove()
        super().__exit__(*exc)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        rets = func._schema.returns
        per_return = out if len(rets) > 1 else (out,)
        for ret, value in zip(rets, per_return, strict=False):  # an op with no return has none
            if ret.alias_info is not None:  # a view (also each tensor of a list of views) or an in-place result
                continue
            for t in tree_flatten(value)[0]:
                if isinstance(t, torch.Tensor):
                    self._track(t, func.__name__.split(".")[0])
        return out

    def report(self, top: int = 12) -> dict[str, Any]:
        """Per phase: the peak (MB), and at it the MB by kind and the largest (op, shape) groups of the rest."""
        mb = 2**20
        out: dict[str, Any] = {}
        for phase, snap in self.snapshots.items():
            kinds: Counter = Counter()
            groups: Counter = Counter()
            for key, (nbytes, op, shape) in snap.items():
                kind = self.labels.get(key, "activations_and_temporaries")
                kinds[kind] += nbytes
                if kind == "activations_and_temporaries":
                    groups[f"{op} {list(shape)}"] += nbytes
            out[phase] = {"peak_mb": self.peaks[phase] / mb, "snapshot_mb": sum(kinds.values()) / mb,
                          "by_kind_mb": {k: v / mb for k, v in sorted(kinds.items())},
                          "largest_activation_groups_mb": {k: v / mb for k, v in groups.most_common(top)}}
        return out
