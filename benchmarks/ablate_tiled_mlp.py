"""A/B of the sequence-tiled MLP: our own step with ``model.tiled_mlp_tokens`` and without.

``python -m benchmarks.ablate_tiled_mlp dpo|grpo [prefopt bench options] --tiled-mlp N [--out FILE.json]``
builds two copies of our side from the same model and batches, one untiled and one with the MLP in
tiles of N tokens, and runs them interleaved, in rotated order each round (``benchmarks.common.
interleave``, as ``prefopt bench``). The tiled side does one more MLP forward per layer in the backward;
this measures what that costs. The losses must agree (to the gradients' summation order). TRL is not
run here; ``prefopt bench`` has the side-by-side comparison.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import statistics
import sys
from typing import Any

from benchmarks.cli import _module, parse
from benchmarks.common import interleave, set_threads, write_json


def run(argv: list[str]) -> dict[str, Any]:
    out = None
    if "--out" in argv:
        i = argv.index("--out")
        out, argv = argv[i + 1], argv[:i] + argv[i + 2:]
    args = parse(argv)
    if args.tiled_mlp is None:
        raise SystemExit("benchmarks.ablate_tiled_mlp: give the tile size, --tiled-mlp TOKENS")
    set_threads()
    mod = _module(args.bench)
    env = mod.prepare(args)
    untiled_args = copy.copy(args)
    untiled_args.tiled_mlp = None
    sides = [dataclasses.replace(mod.ours_side(env, a, args.layout), name=name)
             for name, a in (("untiled", untiled_args), ("tiled", args))]
    res = interleave(sides, args.steps, args.warmup)
    times = {s.name: res[s.name]["times"] for s in sides}
    losses = {s.name: res[s.name]["losses"] for s in sides}
    med = {n: statistics.median(t) for n, t in times.items()}
    per_round = [t / u for t, u in zip(times["tiled"], times["untiled"], strict=True)]
    payload = {"command": "python -m benchmarks.ablate_tiled_mlp " + " ".join(argv), "s_per_step": med,
               "s_per_step_all": times, "losses": losses, "tiled_time_ratio": med["tiled"] / med["untiled"],
               "tiled_time_ratio_per_round_median": statistics.median(per_round),
               "max_loss_abs_diff": max(abs(a - b) for a, b in zip(losses["tiled"], losses["untiled"], strict=True)),
               "load_avg_per_round": res["_load_avg"], "load_avg_end": list(os.getloadavg())}
    print(json.dumps({k: payload[k] for k in ("s_per_step", "tiled_time_ratio", "max_loss_abs_diff")}))
    write_json(out, payload)
    print(f"tiled MLP A/B: tiled / untiled s/step {payload['tiled_time_ratio']:.3f}; {out or '(no --out)'}")
    return payload


if __name__ == "__main__":
    run(sys.argv[1:])
