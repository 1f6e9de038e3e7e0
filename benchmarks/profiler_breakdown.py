"""``prefopt bench dpo|rm|grpo --profile``: where one training step's time goes, both sides, ``torch.profiler``.

After the warm-up, ``--steps`` steps of each side run under ``torch.profiler`` (CPU activities, shapes and
FLOPs recorded). Every ``aten::`` op's *self* time is put in one group:

* ``attention``: scaled-dot-product attention (forward and backward kernels), the attention mask
  build (ops called inside transformers' ``create_causal_mask`` or prefopt's block-mask
  ``additive_mask``) and the gathers of prefopt's segment attention (``_row_attention``), labelled with
  ``record_function`` for the run;
* ``lm_head``: ops inside the chunked LM heads (prefopt's ``head_logps``, TRL's ``_ChunkedLogProbFunction``
  forward and backward, labelled likewise), matmuls with the vocabulary as a dimension, and every other
  op on a logits-shaped input (vocabulary as the last dimension: log-softmax, entropy, ...);
* ``matmul``: all other matmuls (the linear layers, forward and backward);
* ``optimizer``: ops inside ``Optimizer.step`` (AdamW; torch labels it);
* ``other_aten``: every other ``aten::`` op (elementwise, norms, copies, grad clipping, ...);
* ``overhead``: wall time minus the sum of all ``aten::`` self times (Python, autograd bookkeeping,
  the frameworks' own code).

Per side: seconds per step and share of each group, and the MFU of the matmul part alone (profiler
FLOPs of ``mm``/``addmm``/``bmm`` over their self time, against the run's matmul peak). The profiler's own
per-op cost inflates ``overhead`` somewhat, equally on both sides.
"""
from __future__ import annotations

import contextlib
import sys
import time
from typing import Any, Callable, Iterator

import torch

GROUPS = ("attention", "lm_head", "matmul", "optimizer", "other_aten", "overhead")
MATMULS = {"aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm", "aten::addbmm"}
MASK_LABEL, HEAD_LABEL = "bench::attention_mask", "bench::lm_head"


def _wrap(fn: Callable, label: str, static: bool = False) -> Callable:
    def labelled(*a: Any, **kw: Any) -> Any:
        with torch.profiler.record_function(label):
            return fn(*a, **kw)

    labelled.__wrapped__ = fn  # type: ignore[attr-defined]
    return staticmethod(labelled) if static else labelled


def _targets(name: str) -> list[tuple[str, str, bool]]:
    """(attribute, label, is a staticmethod) to label in module ``name``."""
    if name.startswith("transformers.models."):
        return [("create_causal_mask", MASK_LABEL, False)]
    return {"data_pipelines.collate": [("additive_mask", MASK_LABEL, False)],
            "reward_models.segment_attention": [("_row_attention", MASK_LABEL, False)],
            "prefopt.lm_head": [("head_logps", HEAD_LABEL, False)]}.get(name, [])


@contextlib.contextmanager
def labels() -> Iterator[None]:
    """For the profiled steps, label the attention-mask builders (transformers' ``create_causal_mask`` as the
    model modules bound it, prefopt's ``additive_mask``) with :data:`MASK_LABEL`, and the chunked LM heads
    (prefopt's ``head_logps``; TRL's ``_ChunkedLogProbFunction`` forward and backward) with :data:`HEAD_LABEL`."""
    patched = []
    for name, mod in list(sys.modules.items()):
        for attr, label, static in _targets(name) if mod is not None else []:
            if callable(getattr(mod, attr, None)):
                patched.append((mod, attr, mod.__dict__[attr]))
                setattr(mod, attr, _wrap(getattr(mod, attr), label, static))
    trl_utils = sys.modules.get("trl.trainer.utils")
    fn_cls = getattr(trl_utils, "_ChunkedLogProbFunction", None)
    for attr in ("forward", "backward") if fn_cls is not None else ():
        patched.append((fn_cls, attr, fn_cls.__dict__[attr]))
        setattr(fn_cls, attr, _wrap(getattr(fn_cls, attr), HEAD_LABEL, static=True))
    try:
        yield
    finally:
        for owner, attr, fn in reversed(patched):
            setattr(owner, attr, fn)


def _ancestors(ev: Any) -> Iterator[str]:
    p = ev.cpu_parent
    while p is not None:
        yield p.name
        p = p.cpu_parent


def classify(ev: Any, vocab: int) -> str:
    """The group of one ``aten::`` event (see the module docstring)."""
    names = list(_ancestors(ev))
    if any(n.startswith("Optimizer.step") for n in names):
        return "optimizer"
    if MASK_LABEL in names or "scaled_dot_product" in ev.name or "flash_attention" in ev.name:
        return "attention"
    if HEAD_LABEL in names:
        return "lm_head"
    shapes = [list(s) for s in (getattr(ev, "input_shapes", None) or []) if isinstance(s, (list, tuple)) and s]
    if ev.name in MATMULS:
        return "lm_head" if any(vocab in s for s in shapes) else "matmul"
    if any(s[-1] == vocab and len(s) >= 2 for s in shapes):  # logits-shaped: log-softmax, entropy, ...
        return "lm_head"
    return "other_aten"


def breakdown(events: list, wall_s: float, steps: int, vocab: int, peak_gflops: float) -> dict[str, Any]:
    """Seconds per step and share per group, matmul-only MFU, from profiler events of ``steps`` steps."""
    sec = dict.fromkeys(GROUPS, 0.0)
    ops: dict[str, dict[str, float]] = {g: {} for g in GROUPS}
    mm_flops = mm_s = 0.0
    for ev in events:
        if not ev.name.startswith("aten::"):
            continue
        s = ev.self_cpu_time_total / 1e6
        group = classify(ev, vocab)
        sec[group] += s
        ops[group][ev.name] = ops[group].get(ev.name, 0.0) + s
        if ev.name in MATMULS:
            mm_flops += float(getattr(ev, "flops", 0) or 0)
            mm_s += s
    sec["overhead"] = max(wall_s - sum(sec.values()), 0.0)
    per_step = {g: v / steps for g, v in sec.items()}
    return {"wall_s_per_step": wall_s / steps, "s_per_step": per_step,
            "share": {g: v / wall_s for g, v in sec.items()},
            "top_ops_s_per_step": {g: {k: v / steps for k, v in sorted(o.items(), key=lambda kv: -kv[1])[:6]}
                                   for g, o in ops.items() if o},
            "matmul_gflops_per_s": mm_flops / mm_s / 1e9 if mm_s else 0.0,
            "matmul_mfu": (mm_flops / mm_s / 1e9 / peak_gflops) if mm_s and peak_gflops else 0.0}


def profile_side(side: Any, first: int, steps: int, vocab: int, peak_gflops: float) -> dict[str, Any]:
    """Run ``side.step(first .. first + steps - 1)`` under the profiler; the side's breakdown."""
    acts = [torch.profiler.ProfilerActivity.CPU]
    with labels(), torch.profiler.profile(activities=acts, record_shapes=True, with_flops=True) as prof:
        t0 = time.perf_counter()
        for i in range(first, first + steps):
            side.step(i)
        wall = time.perf_counter() - t0
    return breakdown(list(prof.events()), wall, steps, vocab, peak_gflops)


def run_profile(sides: list, args: Any, vocab: int, peak_gflops: float,
                log: Callable[[str], None] = print) -> dict[str, Any]:
    """Warm-up steps per side (not profiled), then ``args.steps`` profiled steps per side, in turn."""
    for s in sides:
        for i in range(args.warmup):
            s.step(i)
    out = {}
    for s in sides:
        out[s.name] = profile_side(s, args.warmup, args.steps, vocab, peak_gflops)
        log(f"  profiled {s.name}: {out[s.name]['wall_s_per_step']:.3f} s/step (under the profiler)")
    return out


def print_breakdown(title: str, res: dict[str, Any]) -> None:
    names = list(res)
    print(f"\n{title}\n| group | " + " | ".join(f"{n} s/step (share)" for n in names) + " |")
    print("|---|" + "---|" * len(names))
    for g in GROUPS:
        cells = [f"{res[n]['s_per_step'][g]:.4f} ({100 * res[n]['share'][g]:.1f} %)" for n in names]
        print(f"| {g} | " + " | ".join(cells) + " |")
    print("| total (wall) | " + " | ".join(f"{res[n]['wall_s_per_step']:.4f}" for n in names) + " |")
    print("| matmul MFU | " + " | ".join(f"{100 * res[n]['matmul_mfu']:.1f} %" for n in names) + " |")
