"""The longest sequence each side can train in a memory budget: probe, fit, extrapolate.

``python -m benchmarks.longest --bench dpo --lengths 1024,2048,4096 --checkpointing --budget-gib 24``

For every side and length it runs one memory probe (``python -m benchmarks.cli _probe ...``: a fresh
process builds that side alone on ``--synthetic`` ids of exactly that length, one pair, fp32, and
records its peak resident memory over two steps), saving each probe as ``<points-dir>/<side>_<L>.json``
and reusing a saved one on a rerun. It then fits ``peak_total_mb = a + b L + c L^2`` per side (least
squares; exact through three points) and solves for the length where the fit meets the budget; a
concave fit falls back to the straight line through the two longest probes (:func:`extrapolate`). That
length is an extrapolation beyond the probed lengths, reported as such; activations with checkpointing
grow linearly and attention scores or masks quadratically, which is why the quadratic term is in the model.

``--tensor-memory`` counts each probe's tensors op by op instead (:mod:`benchmarks.tensor_memory`): no
allocator free lists or heap fragmentation, and the step split into its phases (forward and the head's
backward, the layers' backward, the optimizer step). Each phase is fitted on its own, and in a steady
step (after the first) the optimizer's state is alive through the first two phases, so the budget is met
at the shortest length where ``setup + state + phase(L)`` reaches it (:func:`steady_phases`). ``--tiled-mlp
TOKENS`` probes our side with the tiled MLP (``model.tiled_mlp_tokens``).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any, Sequence

from benchmarks.memory import run_probe_subprocess

SIDES = {"dpo": ("prefopt[shared_prompt]", "trl"), "rm": ("prefopt[shared_prompt]", "trl")}


def probe_argv(bench: str, length: int, checkpointing: bool, extra: Sequence[str] = ()) -> list[str]:
    argv = [bench, "--synthetic", "--batch-size", "1", "--precision", "fp32", "--layout", "shared_prompt",
            "--max-length", str(length)]
    return argv + (["--checkpointing"] if checkpointing else []) + list(extra)


def steady_phases(point: dict[str, Any], setup: float) -> dict[str, float]:
    """MB of each phase of a steady step from a ``--tensor-memory`` probe of a first step: ``setup`` (the
    resident memory after set-up: parameters, libraries) plus the phase's tensor peak, plus, for the
    forward and backward phases, the optimizer state left at the end of the step (absent in a first
    step's forward, present in every later one). The optimizer-step phase already holds it."""
    state = point["tensor_end_of_step_mb"]
    return {phase: setup + v["peak_mb"] + (0.0 if phase == "optimizer_step" else state)
            for phase, v in point["tensor_phases"].items()}


def fit_quadratic(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float, float]:
    """Least-squares ``y = a + b x + c x^2`` (normal equations; exact through three distinct points)."""
    import numpy as np

    coef = np.polyfit(np.asarray(xs, dtype=float), np.asarray(ys, dtype=float), deg=min(2, len(xs) - 1))
    c, b, a = ([0.0] * (3 - len(coef)) + list(coef))
    return float(a), float(b), float(c)


def solve_length(a: float, b: float, c: float, budget: float) -> float | None:
    """The positive ``L`` where ``a + b L + c L^2 = budget`` (None when the fit never reaches it)."""
    if abs(c) < 1e-12:  # a line; growth under 1 byte per token is float noise on a flat curve
        return (budget - a) / b if b > 1e-6 else None
    disc = b * b - 4 * c * (a - budget)
    if disc < 0:
        return None
    roots = [(-b + s * math.sqrt(disc)) / (2 * c) for s in (1, -1)]
    pos = [r for r in roots if r > 0]
    return min(pos) if pos else None


def extrapolate(lengths: Sequence[int], totals: Sequence[float], budget: float) -> dict[str, Any]:
    """The length where the memory curve meets ``budget``.

    A convex (or straight) quadratic through all probes is solved as is. A concave one means the short
    probes sit on a plateau of fixed costs (a step's peak is the larger of the optimizer-state phase and
    the activation phase, not their sum); then the straight line through the two longest probes is used,
    if memory grows between them. Either way it is an extrapolation beyond the longest probe."""
    a, b, c = fit_quadratic(lengths, totals)
    if c >= 0:
        return {"fit_mb": {"a": a, "b_per_token": b, "c_per_token2": c}, "longest_extrapolated": solve_length(a, b, c, budget),
                "note": "quadratic through all probes"}
    (x1, y1), (x2, y2) = sorted(zip(lengths, totals, strict=True))[-2:]
    slope = (y2 - y1) / (x2 - x1)
    fit = {"a": y2 - slope * x2, "b_per_token": slope, "c_per_token2": 0.0}
    if slope <= 0:
        return {"fit_mb": fit, "longest_extrapolated": None,
                "note": "concave over all probes and no growth between the two longest: cannot be extrapolated"}
    return {"fit_mb": fit, "longest_extrapolated": x2 + (budget - y2) / slope,
            "note": f"concave over all probes (fixed-cost plateau); straight line through L = {x1} and {x2}"}


def measure(bench: str, side: str, length: int, checkpointing: bool, points: Path,
            timeout: float = 3600, extra: Sequence[str] = ()) -> dict[str, Any]:
    path = points / f"{side}_{length}.json"
    if path.is_file():
        return json.loads(path.read_text())
    argv = probe_argv(bench, length, checkpointing, extra)
    mem = run_probe_subprocess(bench, side, argv, timeout=timeout)
    point = {"command": f"prefopt bench _probe {bench} '{side}' " + " ".join(argv), **mem}
    points.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(point, indent=1) + "\n")
    return point


def fit_side(got: list[dict[str, Any]], lengths: list[int], budget: float, tensors: bool) -> dict[str, Any]:
    """One side's fit: resident totals (:func:`extrapolate`), or with ``tensors`` every steady phase
    (:func:`steady_phases`) and the shortest length where one of them meets the budget."""
    key = "tensor_phases" if tensors else "peak_total_mb"
    if any(key not in g for g in got):
        return {"points": got, "error": "a probe failed (see points)"}
    if not tensors:
        totals = [g["peak_total_mb"] for g in got]
        return {"peak_total_mb": totals, "peak_step_mb": [g["peak_step_mb"] for g in got],
                **extrapolate(lengths, totals, budget)}
    # The set-up does not grow with L, but its RSS varies from probe to probe (by ~100 MB here), which
    # would enter the slopes: every probe of a side uses the median set-up.
    setup = float(statistics.median(g["setup_rss_mb"] for g in got))
    phases = [steady_phases(g, setup) for g in got]
    fits = {ph: {"steady_mb": [p[ph] for p in phases], **extrapolate(lengths, [p[ph] for p in phases], budget)}
            for ph in phases[0]}
    bound = [(f["longest_extrapolated"], ph) for ph, f in fits.items() if f["longest_extrapolated"]]
    longest, phase = min(bound) if bound else (None, None)
    return {"phases": fits, "longest_extrapolated": longest, "bounding_phase": phase, "setup_rss_mb": setup,
            "peak_total_mb": [g["peak_total_mb"] for g in got]}


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.longest", description=__doc__.split("\n")[0])
    p.add_argument("--bench", choices=sorted(SIDES), default="dpo")
    p.add_argument("--lengths", default="1024,2048,4096")
    p.add_argument("--checkpointing", action="store_true")
    p.add_argument("--budget-gib", type=float, default=24.0)
    p.add_argument("--points-dir", default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--probe-timeout", type=float, default=3600, help="seconds per probe")
    p.add_argument("--tensor-memory", action="store_true", help="count tensors op by op, fit each phase")
    p.add_argument("--tiled-mlp", type=int, default=None, metavar="TOKENS", help="our side's MLP in tiles")
    args = p.parse_args(argv)
    lengths = [int(v) for v in args.lengths.split(",")]
    stem = (f"{args.bench}_longest{'_ckpt' if args.checkpointing else ''}{'_tensor' if args.tensor_memory else ''}"
            f"{f'_tiled{args.tiled_mlp}' if args.tiled_mlp else ''}")
    points = Path(args.points_dir or f"benchmarks/results/{stem}")
    budget = args.budget_gib * 1024
    result: dict[str, Any] = {"bench": args.bench, "lengths": lengths, "budget_mb": budget,
                              "checkpointing": args.checkpointing, "tensor_memory": args.tensor_memory,
                              "tiled_mlp": args.tiled_mlp, "sides": {}}
    for side in SIDES[args.bench]:
        extra = (["--tensor-memory"] if args.tensor_memory else []) + (
            ["--tiled-mlp", str(args.tiled_mlp)] if args.tiled_mlp and side != "trl" else [])
        got = [measure(args.bench, side, n, args.checkpointing, points, args.probe_timeout, extra) for n in lengths]
        result["sides"][side] = fit_side(got, lengths, budget, args.tensor_memory)
    longest = {s: r.get("longest_extrapolated") for s, r in result["sides"].items()}
    if all(longest.values()):
        result["ratio_vs_trl"] = longest["prefopt[shared_prompt]"] / longest["trl"]
    out = Path(args.out or f"benchmarks/results/{stem}.json")
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({s: round(v) if v else v for s, v in longest.items()}), f"ratio {result.get('ratio_vs_trl')}")
    print(f"longest {args.bench} length in {args.budget_gib:g} GiB (extrapolated): {out}")
    return result


if __name__ == "__main__":
    run()
