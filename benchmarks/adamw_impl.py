"""torch ``AdamW`` implementations on this machine: ``python -m benchmarks.adamw_impl``.

The parameters of ``--model`` (default the embedded SmolLM2-135M, fp32) with seeded random gradients;
each implementation (``forloop``: ``foreach=False, fused=False``, what ``prefopt.core.backend`` builds on CPU
by default; ``foreach``; ``fused``) starts from the same weights and runs the same ``--steps`` steps (lr
1e-6, the benchmarks' setting, then lr 1e-3 for a visible update), interleaved in rotated order per step.
Reported: median seconds per ``step()`` and the largest absolute parameter difference from ``forloop``
after all steps (0.0 = bit-identical).
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Sequence

import torch

IMPLS = {"forloop": {"foreach": False, "fused": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from benchmarks.common import load_base, machine, set_threads, write_json

    p = argparse.ArgumentParser(prog="python -m benchmarks.adamw_impl", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--steps", type=int, default=7)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    set_threads()
    model, _ = load_base(args.model)
    base = [q.detach().clone() for q in model.parameters()]
    gen = torch.Generator().manual_seed(0)
    grads = [[torch.randn(q.shape, generator=gen) * 1e-3 for q in base] for _ in range(2)]
    params, opts = {}, {}
    for name, kw in IMPLS.items():
        params[name] = [torch.nn.Parameter(q.clone()) for q in base]
        opts[name] = torch.optim.AdamW(params[name], lr=1e-6, **kw)
    times: dict[str, list[float]] = {n: [] for n in IMPLS}
    names = list(IMPLS)
    for i in range(args.steps):
        for name in names[i % 3:] + names[:i % 3]:
            for q, g in zip(params[name], grads[i % 2], strict=True):
                q.grad = g.clone()
            if i == args.steps - 1:
                opts[name].param_groups[0]["lr"] = 1e-3
            t0 = time.perf_counter()
            opts[name].step()
            times[name].append(time.perf_counter() - t0)
    res = {n: {"median_step_s": statistics.median(times[n][1:]), "all_s": times[n],
               "max_abs_diff_vs_forloop": max(float((a - b).abs().max()) for a, b in
                                              zip(params[n], params["forloop"], strict=True))} for n in IMPLS}
    for n, r in res.items():
        print(f"{n:8s} median step {r['median_step_s']:.4f} s   max |diff| vs forloop {r['max_abs_diff_vs_forloop']:.3g}")
    payload = {"bench": "adamw_impl", "command": "python -m benchmarks.adamw_impl " + " ".join(argv or []),
               "machine": machine(), "torch": torch.__version__, "config": vars(args), "results": res}
    write_json(args.out, payload)
    return payload


if __name__ == "__main__":
    import sys

    run(sys.argv[1:])
