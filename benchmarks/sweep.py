"""``prefopt bench dpo|rm|grpo --sweep length|group``: cost as the work grows, both sides.

One ordinary benchmark run (``benchmarks.cli.run``: interleaved rounds, per-side memory probes unless
``--no-memory``) per value of the swept quantity: ``length`` sets ``--max-length`` (with ``--synthetic``
token ids every sequence is exactly that long; real hh-rlhf pairs are mostly shorter than the lengths
swept, so a length sweep without it measures the data, not the length), ``group`` sets
``--generations`` (grpo). Per side it reports s/step and peak step memory per value, the slope of
each on a log-log scale (least squares of log y on log x: 1 = linear, 2 = quadratic growth) and
draws both curves into one PNG beside the JSON.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

DEFAULTS = {"length": (256, 512, 1024, 2048), "group": (2, 4, 8, 16)}
FLAG = {"length": "--max-length", "group": "--generations"}


def values(args: Any) -> list[int]:
    if args.sweep == "group" and args.bench != "grpo":
        raise SystemExit("prefopt bench --sweep group: only grpo has a group size (--generations)")
    if args.sweep_values:
        return [int(v) for v in str(args.sweep_values).split(",") if v.strip()]
    return list(DEFAULTS[args.sweep])


def _strip(argv: Sequence[str], drop: set[str], with_value: set[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        key = a.split("=", 1)[0]
        if key in with_value:
            skip = "=" not in a
            continue
        if key not in drop:
            out.append(a)
    return out


def slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Least-squares slope of ``log y`` on ``log x`` (None with fewer than two positive points)."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys, strict=True) if x > 0 and y and y > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    den = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / den if den else None


def finished_point(path: str, sub: Sequence[str]) -> dict[str, Any] | None:
    """A point's JSON from an earlier, interrupted run of the same sweep (same command, memory probed).

    Sweeps take hours on small machines; rerunning the same command measures only the missing points.
    """
    p = Path(path)
    if not p.is_file():
        return None
    payload = json.loads(p.read_text())
    if payload.get("command") != "prefopt bench " + " ".join(sub):
        return None
    if payload["config"].get("memory") and any("memory" not in r for r in payload["results"].values()):
        return None
    print(f"reusing the finished point {path} (same command)", flush=True)
    return payload


def run_sweep(argv: Sequence[str], args: Any) -> dict[str, Any]:
    from benchmarks.cli import run
    from benchmarks.common import write_json

    vals = values(args)
    base = _strip(argv, {"--sweep"}, {"--sweep", "--sweep-values", "--out", FLAG[args.sweep]})
    stem = Path(args.out).with_suffix("") if args.out else Path(f"benchmarks/results/{args.bench}_sweep_{args.sweep}")
    runs = []
    for v in vals:
        sub = [*base, FLAG[args.sweep], str(v), "--out", f"{stem}_{v}.json"]
        done = finished_point(f"{stem}_{v}.json", sub)
        runs.append(done if done is not None else run(sub))
    curves: dict[str, dict[str, list]] = {}
    for payload in runs:
        for name, r in payload["results"].items():
            c = curves.setdefault(name, {"s_per_step": [], "peak_step_mb": []})
            c["s_per_step"].append(r["s_per_step"])
            c["peak_step_mb"].append((r.get("memory") or {}).get("peak_step_mb"))
    summary = {"bench": args.bench, "sweep": args.sweep, "values": vals, "command": "prefopt bench " + " ".join(argv),
               "runs": [f"{stem}_{v}.json" for v in vals], "curves": curves,
               "slopes": {name: {k: slope(vals, ys) for k, ys in c.items()} for name, c in curves.items()},
               "load_avg_per_run": [p["machine"]["load_avg_start"][0] for p in runs]}
    summary["plot"] = plot(summary, f"{stem}.png")
    write_json(f"{stem}.json", summary)
    print(json.dumps(summary["slopes"], indent=1))
    return summary


def plot(summary: dict[str, Any], path: str) -> str:
    """Log-log curves of s/step and peak step memory per side (matplotlib, no display needed)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6))
    xs = summary["values"]
    for k, (key, label) in enumerate((("s_per_step", "s / step"), ("peak_step_mb", "peak step MB"))):
        ax = fig.add_subplot(1, 2, k + 1)
        for name, c in summary["curves"].items():
            pts = [(x, y) for x, y in zip(xs, c[key], strict=True) if y]
            if pts:
                s = summary["slopes"][name][key]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                        label=f"{name} (slope {s:.2f})" if s is not None else name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(summary["sweep"])
        ax.set_ylabel(label)
        if ax.get_lines():
            ax.legend(fontsize=7)
    fig.suptitle(f"prefopt bench {summary['bench']} --sweep {summary['sweep']}")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
