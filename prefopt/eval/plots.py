"""PNG charts for RewardBench and AlpacaEval results.

Uses matplotlib's object API with the Agg canvas (no pyplot, no global backend switch, no display), so it
runs headless and does not disturb other code that uses pyplot in the same process.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from prefopt.eval.rewardbench_metrics import SECTIONS, SUBSET_MAPPING, RewardBenchResult

_COLORS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3")


def _save(fig, path: str | os.PathLike) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    os.replace(tmp, path)  # a reader never sees a half-written PNG
    return path


def plot_rewardbench(result: RewardBenchResult, path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Two panels: section scores (official weights; slice-weighted as hatched bars) and per-subset
    accuracies grouped and coloured by section. Values in %. Returns the PNG path."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.5))
    ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 3]})
    xs = range(len(SECTIONS))
    off = [100 * (result.sections[s] or 0.0) for s in SECTIONS]
    sli = [100 * (result.sections_slice_weighted[s] or 0.0) for s in SECTIONS]
    ax1.bar([x - 0.2 for x in xs], off, 0.4, color=_COLORS[:4], label="official weights")
    ax1.bar([x + 0.2 for x in xs], sli, 0.4, color=_COLORS[:4], alpha=0.45, hatch="//", label="slice weights")
    for x, v in zip(xs, off, strict=False):
        ax1.text(x - 0.2, v + 1, f"{v:.1f}", ha="center", fontsize=7)
    ax1.set_xticks(list(xs), [s.replace(" ", "\n") for s in SECTIONS], fontsize=8)
    ax1.set_ylim(0, 105)
    ax1.set_ylabel("accuracy (%)")
    score = "n/a" if result.score is None else f"{100 * result.score:.2f}"
    ax1.set_title(f"sections (score {score})", fontsize=9)
    ax1.legend(fontsize=7, loc="upper right")
    names, vals, cols = [], [], []
    for i, sec in enumerate(SECTIONS):
        for s in SUBSET_MAPPING[sec]:
            if s in result.subsets:
                names.append(s)
                vals.append(100 * result.subsets[s]["accuracy"])
                cols.append(_COLORS[i])
    ax2.bar(range(len(names)), vals, color=cols)
    ax2.set_xticks(range(len(names)), names, rotation=70, ha="right", fontsize=7)
    ax2.set_ylim(0, 105)
    ax2.set_title("subsets (colour = section)", fontsize=9)
    model = result.metadata.get("model")
    fig.suptitle(title or f"RewardBench v1{f' - {model}' if model else ''} (n={result.n_examples})", fontsize=10)
    return _save(fig, path)


def plot_alpacaeval_leaderboard(results: Mapping[str, Mapping[str, Any]], path: str | os.PathLike, *,
                                title: str | None = None) -> Path:
    """Win rate +- standard error per policy (and the LC win rate +- its SE where available), in %.

    Policies judged by a non-official judge are marked with ``*`` on the axis.

    ``results`` maps a policy name to an :func:`~prefopt.eval.alpacaeval_metrics.alpacaeval_metrics` dict.
    The title carries the benchmark label(s) so AlpacaEval-style runs are never shown as the official one.
    """
    from matplotlib.figure import Figure

    names = sorted(results, key=lambda n: results[n].get("win_rate") or 0.0, reverse=True)
    fig = Figure(figsize=(max(5.0, 1.1 * len(names) + 2), 4))
    ax = fig.subplots()
    xs = range(len(names))
    wr = [results[n].get("win_rate") or 0.0 for n in names]
    se = [results[n].get("standard_error") or 0.0 for n in names]
    ax.bar([x - 0.2 for x in xs], wr, 0.4, yerr=se, capsize=3, color=_COLORS[0], label="win rate")
    lc = [results[n].get("length_controlled_winrate") for n in names]
    if any(v is not None for v in lc):
        lc_se = [results[n].get("lc_standard_error") or 0.0 for n in names]
        ax.bar([x + 0.2 for x in xs], [v or 0.0 for v in lc], 0.4, yerr=lc_se, capsize=3, color=_COLORS[1],
               label="length-controlled")
        for x, v in zip(xs, lc, strict=False):
            if v is None:
                ax.text(x + 0.2, 1, "n/a", ha="center", fontsize=7)
    style = [results[n].get("benchmark", "AlpacaEval-style") == "AlpacaEval-style" for n in names]
    ax.set_xticks(list(xs), [f"{n} *" if st else n for n, st in zip(names, style, strict=False)], rotation=30, ha="right",
                  fontsize=8)
    ax.set_ylabel("win rate vs baseline (%)")
    top = max([10.0] + [w + s + 5 for w, s in zip(wr, se, strict=False)] + [(v or 0.0) + 5 for v in lc])
    ax.set_ylim(0, min(105.0, top))
    ax.axhline(50, color="grey", lw=0.8, ls="--")
    labels = sorted({str(results[n].get("benchmark", "AlpacaEval-style")) for n in names})
    note = "  (* = AlpacaEval-style: not the official judge)" if any(style) else ""
    ax.set_title((title or " / ".join(labels)) + note, fontsize=9)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_bon_curve(res: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Best-of-N curve: expected gold (and gold win rate when defined) of the scorer's, the random and
    the oracle pick against N (log2 axis), error bars = SE over prompts. Returns the PNG path."""
    from matplotlib.figure import Figure

    rows = res["curve"]
    panels = [("gold", "expected gold score")] + ([("win", "gold win rate")] if rows[0]["scorer_win"] is not None
                                                  else [])
    fig = Figure(figsize=(5.5 * len(panels), 4))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    ns = [r["n"] for r in rows]
    for ax, (metric, label) in zip(axes, panels, strict=True):
        for who, color in (("scorer", _COLORS[0]), ("random", _COLORS[1]), ("oracle", _COLORS[2])):
            ax.errorbar(ns, [r[f"{who}_{metric}"] for r in rows], yerr=[r[f"{who}_{metric}_se"] for r in rows],
                        marker="o", color=color, capsize=3, label=res["kind"] if who == "scorer" else who)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.set_xlabel("N (candidates the scorer chooses from)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"best-of-N, {res['n_prompts']} prompts ({Path(str(res['data'])).name})", fontsize=10)
    return _save(fig, path)
