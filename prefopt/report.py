"""``prefopt report --run DIR [--out DIR]``: a run report from what a pipeline's stages wrote.

Reads each stage folder of a ``prefopt run`` output (``pipeline.json`` gives the order) and writes
``report.md`` plus a self-contained ``report.html`` (PNG figures embedded as data URIs):

* data stages (``stats.json``): counts per source, skips by reason, length percentiles;
* training stages (``metrics.jsonl``, ``summary.json``): loss / reward-margin / accuracy curves as PNG
  and first vs final held-out numbers;
* evaluation stages: RewardBench ``results.json`` (section scores), AlpacaEval ``leaderboard.md``,
  any PNG the stage drew, and sample generations (``model_outputs.json``);
* with two or more training stages (``summary.json`` naming an ``algorithm``), a "Method comparison":
  one table of their held-out ``final_eval`` (and ``first_eval``) numbers and a bar chart of the main
  metric (``compare.png`` beside the report).
"""
from __future__ import annotations

import argparse
import base64
import html
import json
import math
import os
from pathlib import Path
from typing import Any

from prefopt.core.io import atomic_write_text
from prefopt.core.logging import read_metrics

# Policy runs log `loss/total`, reward models `loss` and `accuracy`: whichever a run has is drawn.
CURVES = ("loss/total", "loss", "rewards/margins", "rewards/accuracies", "accuracy", "eval/accuracy", "reward",
          "eval/reward")
# Held-out metrics of the method comparison (columns, when any method reports them): offline pairwise /
# listwise accuracy and implicit-reward margin; online greedy reward and oracle win rate vs the reference.
COMPARE = ("eval/accuracy", "eval/margin", "eval/reward", "eval/win_rate_vs_ref")
# The bar chart's metric: the first of these any method reports.
MAIN = ("eval/reward", "eval/accuracy")


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def plot_curves(metrics: list[dict], out: Path, title: str) -> Path | None:
    """One panel per metric in :data:`CURVES` present in ``metrics``; None when nothing to draw."""
    from matplotlib.figure import Figure

    names = [n for n in CURVES if any(n in row and row[n] is not None for row in metrics)]
    if not names:
        return None
    fig = Figure(figsize=(4 * len(names), 3.2))
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    for ax, name in zip(axes, names, strict=False):
        pts = [(r["step"], r[name]) for r in metrics if r.get(name) is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if len(pts) < 30 else None)
        ax.set_title(name)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    return out


def plot_comparison(rows: list[tuple[str, dict]], metric: str, out: Path) -> Path | None:
    """Bars: ``metric`` of each method's ``final_eval``; black ticks: its ``first_eval`` (before training)."""
    from matplotlib.figure import Figure

    final = [(s.get("final_eval") or {}).get(metric) for _, s in rows]
    if not any(_finite(v) for v in final):
        return None
    first = [(s.get("first_eval") or {}).get(metric) for _, s in rows]
    fig = Figure(figsize=(max(4.0, 0.9 * len(rows) + 1.5), 3.4))
    ax = fig.subplots()
    xs = range(len(rows))
    bars = ax.bar(xs, [v if _finite(v) else 0.0 for v in final], color="tab:blue", label="final")
    ax.bar_label(bars, labels=[_fmt(v) for v in final], fontsize=7)
    ax.scatter([x for x, v in enumerate(first) if _finite(v)], [v for v in first if _finite(v)],
               marker="_", s=400, color="black", label="before training", zorder=3)
    ax.set_xticks(list(xs), [n if s.get("algorithm") == n else f"{n}\n({s.get('algorithm')})" for n, s in rows],
                  fontsize=8)
    ax.set_ylabel(metric)
    ax.set_title(f"Method comparison: held-out {metric}")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    return out


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if _finite(v) else "n/a"


def _train_summaries(run_dir: Path, names: list[str]) -> list[tuple[str, dict]]:
    """``(stage, summary.json)`` of the training stages (``prefopt train`` names an ``algorithm``)."""
    found = [(n, _read_json(run_dir / n / "summary.json")) for n in names]
    return [(n, s) for n, s in found if isinstance(s, dict) and "algorithm" in s]


def _compare_section(rows: list[tuple[str, dict]], out_dir: Path, figures: list[Path]) -> list[str]:
    """Markdown table of held-out metrics per training stage + the main metric's bar chart."""
    cols = [m for m in COMPARE if any(m in (s.get("final_eval") or {}) for _, s in rows)]
    head = ["stage", "algorithm", "steps", *cols, *(f"first {m}" for m in cols)]
    lines = ["## Method comparison", "",
             "Held-out metrics of each training stage (`summary.json`): `final_eval` after training, "
             "`first` = `first_eval` before it.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in rows:
        final, first = s.get("final_eval") or {}, s.get("first_eval") or {}
        cells = [name, str(s.get("algorithm", "")), str(s.get("steps", "")),
                 *(_fmt(final.get(m)) for m in cols), *(_fmt(first.get(m)) for m in cols)]
        lines.append("| " + " | ".join(cells) + " |")
    main = next((m for m in MAIN if m in cols), cols[0] if cols else None)
    png = plot_comparison(rows, main, out_dir / "compare.png") if main else None
    if png:
        figures.append(png)
        lines.append(f"\n![method comparison]({png})")
    return lines + [""]


def _data_section(name: str, stats: dict) -> list[str]:
    lines = [f"## {name}: data", "", "| source | read | kept | skipped | train | test |",
             "|---|---|---|---|---|---|"]
    for src, row in stats.get("sources", {}).items():
        skipped = sum(row.get("skipped", {}).values())
        lines.append(f"| {src} | {row.get('records_read', '')} | {row.get('examples', '')} | {skipped} | "
                     f"{row.get('train', '')} | {row.get('test', '')} |")
    lines.append("")
    for key in ("output_kind", "train", "test", "skipped", "dedup_removed", "per_prompt"):
        if key in stats:
            lines.append(f"- **{key}**: `{json.dumps(stats[key])}`")
    for field, pct in stats.get("lengths", {}).items():
        lines.append(f"- **{field} length (chars)**: " + ", ".join(f"{k}={v}" for k, v in pct.items()))
    return lines + [""]


def _train_section(name: str, folder: Path, figures: list[Path]) -> list[str]:
    summary = _read_json(folder / "summary.json") or {}
    lines = [f"## {name}: training", ""]
    for key in ("algorithm", "kind", "steps"):
        if key in summary:
            lines.append(f"- **{key}**: {summary[key]}")
    for key in ("first_eval", "final_eval"):
        if summary.get(key):
            lines.append(f"- **{key}**: " + ", ".join(f"{k}={v:.4g}" for k, v in summary[key].items()
                                                        if isinstance(v, (int, float))))
    png = plot_curves(read_metrics(folder / "metrics.jsonl"), folder / "curves.png", name)
    if png:
        figures.append(png)
        lines.append(f"\n![{name} curves]({png})")
    return lines + [""]


def _eval_section(name: str, folder: Path, figures: list[Path]) -> list[str]:
    lines = [f"## {name}: evaluation", ""]
    results = _read_json(folder / "results.json")
    rows = _rewardbench_rows(results) if isinstance(results, dict) else []
    if rows:
        lines += ["| section | score |", "|---|---|"]
        lines += [f"| {k} | {'n/a' if v is None else f'{100 * v:.1f}'} |" for k, v in rows]
        if results.get("score") is not None:
            lines.append(f"| **overall** | **{100 * results['score']:.1f}** |")
    if isinstance(results, dict) and "win_rate" in results:
        lc = results.get("length_controlled_winrate")
        lines += [f"- **{results.get('benchmark', 'AlpacaEval')}** ({results.get('generator', name)}): "
                  f"win rate {results['win_rate']:.1f} +- {results.get('standard_error', float('nan')):.1f} "
                  f"over {results.get('n_total', '?')} instructions; LC win rate: "
                  + (f"{lc:.1f}" if isinstance(lc, (int, float)) else str(results.get("lc_message", "unavailable")))]
    board = folder / "leaderboard.md"
    if board.is_file():
        lines += ["", board.read_text(encoding="utf-8")]
    for png in sorted(folder.glob("*.png")):
        figures.append(png)
        lines.append(f"\n![{name} {png.stem}]({png})")
    lines += _samples(folder)
    return lines + [""]


def _rewardbench_rows(results: dict) -> list[tuple[str, Any]]:
    """``(name, score)`` rows of a RewardBench ``results.json``: v1 sections, or RewardBench 2 subsets."""
    if "sections" in results:
        return list(results["sections"].items())
    if results.get("benchmark") == "rewardbench-v2":
        return [(k, v.get("score")) for k, v in (results.get("subsets") or {}).items()]
    return []


def _samples(folder: Path, n: int = 3) -> list[str]:
    out = []
    for path in sorted(folder.rglob("model_outputs.json"))[:4]:
        rows = _read_json(path) or []
        out.append(f"\n**Sample generations** ({path.parent.name}):\n")
        for row in rows[:n]:
            out.append(f"> **{row.get('instruction', '')[:200]}**\n>\n> {row.get('output', '')[:400]}\n")
    return out


def _stage_order(run_dir: Path) -> list[str]:
    """Stage names in pipeline order (from the run's resolved config), else folder names sorted."""
    import yaml

    cfg = run_dir / "config.yaml"
    if cfg.is_file():
        stages = (yaml.safe_load(cfg.read_text(encoding="utf-8")) or {}).get("stages") or []
        if stages:
            return [s["name"] for s in stages if isinstance(s, dict) and "name" in s]
    return sorted(p.name for p in run_dir.iterdir() if p.is_dir())


def _is_stage_folder(path: Path) -> bool:
    """A single training / evaluation / data folder (not a pipeline folder of stages)."""
    return any((path / f).is_file() for f in ("metrics.jsonl", "results.json", "stats.json", "summary.json"))


def build_report(run_dir: Path, out_dir: Path) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` for a pipeline folder or a single stage folder."""
    from prefopt.report_headline import headline

    single = _is_stage_folder(run_dir)
    names = [""] if single else _stage_order(run_dir)
    lines, figures = [f"# prefopt report: {run_dir}", ""], []
    lines += headline(run_dir, names)
    cfg = run_dir / "config.yaml"
    out_dir.mkdir(parents=True, exist_ok=True)
    trained = [] if single else _train_summaries(run_dir, names)
    if len(trained) >= 2:
        lines += _compare_section(trained, out_dir, figures)
    for name in names:
        folder = run_dir / name if name else run_dir
        label = name or run_dir.name
        if not folder.is_dir() or folder == out_dir:
            continue
        if (folder / "stats.json").is_file() and (folder / "train.jsonl").is_file():
            lines += _data_section(label, _read_json(folder / "stats.json"))
        elif (folder / "metrics.jsonl").is_file():
            lines += _train_section(label, folder, figures)
        else:
            lines += _eval_section(label, folder, figures)
    if cfg.is_file():
        lines += ["## config", "", "```yaml", cfg.read_text(encoding="utf-8"), "```"]
    md = "\n".join(lines)
    for fig in figures:  # markdown links are relative to the report folder
        md = md.replace(f"]({fig})", f"]({os.path.relpath(fig, out_dir)})")
    atomic_write_text(out_dir / "report.md", md)
    atomic_write_text(out_dir / "report.html", to_html(md, figures, out_dir))
    return out_dir / "report.md", out_dir / "report.html"


STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.45}"
         "table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ccc;padding:.25em .6em}"
         "th{background:#f3f3f3}img{max-width:100%}pre{background:#f6f8fa;padding:.8em;overflow:auto}"
         "blockquote{color:#444;border-left:3px solid #ccc;margin-left:0;padding-left:1em}")


def to_html(md: str, figures: list[Path], out_dir: Path) -> str:
    """A self-contained HTML page: the markdown rendered by the ``markdown`` library (tables, code
    blocks), every figure embedded as a data URI (no external file, no CDN)."""
    import markdown

    body = markdown.markdown(md, extensions=["tables", "fenced_code"], output_format="html")
    for fig in figures:
        rel = html.escape(os.path.relpath(fig, out_dir), quote=True)
        data = base64.b64encode(fig.read_bytes()).decode()
        body = body.replace(f'src="{rel}"', f'src="data:image/png;base64,{data}"')
    return ("<!doctype html><html><head><meta charset='utf-8'><title>prefopt report</title>"
            f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prefopt report", description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="pipeline output folder (from `prefopt run`) or one "
                        "training / evaluation / data folder")
    parser.add_argument("--out", default=None, help="where report.md/html go (default: <run>/report)")
    return parser


def cli_main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    run_dir = Path(args.run)
    md, page = build_report(run_dir, Path(args.out) if args.out else run_dir / "report")
    print(f"report: {md} and {page}")
    return 0
