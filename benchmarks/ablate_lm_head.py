"""A/B of the completion-only LM head: our own step with it, and forced onto the model's full logits.

``python -m benchmarks.ablate_lm_head dpo|grpo [prefopt bench options] [--out FILE.json]`` builds two
copies of our side in the given ``--layout`` (default ``padded``) and runs them interleaved (rotated
order each round, like ``prefopt bench``). The ``full`` side runs with
``prefopt.logprobs.split_causal_lm`` replaced by ``lambda model: None``, which is the fallback every
unknown architecture takes. Both sides see the same batches, so their losses must agree (printed).
TRL is not run here; ``prefopt bench`` has the side-by-side comparison.
"""
from __future__ import annotations

import contextlib
import json
import statistics
import sys
import time
from typing import Any, Iterator

import prefopt.logprobs as logprobs
from benchmarks.cli import _module, parse
from benchmarks.common import set_threads, write_json


@contextlib.contextmanager
def lm_head(mode: str) -> Iterator[None]:
    """``completion``: the normal fast path; ``full``: full logits for every model."""
    real = logprobs.split_causal_lm
    if mode == "full":
        logprobs.split_causal_lm = lambda model: None
    try:
        yield
    finally:
        logprobs.split_causal_lm = real


def run(argv: list[str]) -> dict[str, Any]:
    out = None
    if "--out" in argv:
        i = argv.index("--out")
        out, argv = argv[i + 1], argv[:i] + argv[i + 2:]
    if "--layout" not in argv:
        argv = [*argv, "--layout", "padded"]
    args = parse(argv)
    set_threads()
    mod = _module(args.bench)
    env = mod.prepare(args)
    sides = {m: mod.ours_side(env, args, args.layout) for m in ("completion", "full")}
    times: dict[str, list[float]] = {m: [] for m in sides}
    losses: dict[str, list[float]] = {m: [] for m in sides}
    order = list(sides)
    for i in range(args.warmup + args.steps):
        for m in order[i % 2:] + order[:i % 2]:
            with lm_head(m):
                t0 = time.perf_counter()
                losses[m].append(sides[m].step(i))
                dt = time.perf_counter() - t0
            if i >= args.warmup:
                times[m].append(dt)
            print(f"  step {i} lm_head={m}: {dt:.2f} s, loss {losses[m][-1]:.6f}", flush=True)
    med = {m: statistics.median(t) for m, t in times.items()}
    payload = {"command": "python -m benchmarks.ablate_lm_head " + " ".join(argv), "s_per_step": med,
               "s_per_step_all": times, "losses": losses, "speedup_completion_head": med["full"] / med["completion"],
               "max_loss_abs_diff": max(abs(a - b) for a, b in zip(losses["completion"], losses["full"], strict=False))}
    print(json.dumps({k: payload[k] for k in ("s_per_step", "speedup_completion_head", "max_loss_abs_diff")}))
    write_json(out, payload)
    return payload


if __name__ == "__main__":
    run(sys.argv[1:])
