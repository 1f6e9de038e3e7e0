"""The report's opening: what was trained, the key results with their uncertainty, the judge's agreement.

Source: ``headline.json`` in the run folder when present (keys ``win_rate, ci_low, ci_high, n, judge,
judge_agreement``, optional ``trained``, ``rewardbench``, ``bon`` and any other extras), else what the
stage folders hold (training summaries' held-out accuracy, RewardBench overall, AlpacaEval win rate).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HEADLINE = "headline.json"
REQUIRED = ("win_rate", "ci_low", "ci_high", "n", "judge", "judge_agreement")


def _num(v: Any, spec: str = ".1f") -> str:
    return format(v, spec) if isinstance(v, (int, float)) else str(v)


def _extra(key: str, value: Any) -> str:
    if isinstance(value, dict):
        inner = ", ".join(f"{k} {_num(v, '.3g')}" for k, v in value.items())
        return f"- **{key}**: {inner}"
    return f"- **{key}**: {_num(value, '.3g')}"


def from_file(data: dict[str, Any], source: Path) -> list[str]:
    """Headline lines from a ``headline.json`` dict (a missing required key is a clear error)."""
    from prefopt.core.errors import DataError

    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise DataError(f"headline.json lacks {missing} (needs {list(REQUIRED)})", file=str(source))
    lines = ["## Headline", ""]
    if data.get("trained"):
        lines.append(f"**Trained:** {data['trained']}")
        lines.append("")
    lines.append(f"**Win rate {_num(data['win_rate'])}%** (95% CI {_num(data['ci_low'])}-{_num(data['ci_high'])}, "
                 f"n = {data['n']}), judged by {data['judge']}; judge agreement {_num(data['judge_agreement'], '.2f')}.")
    lines.append("")
    lines += [_extra(k, v) for k, v in data.items() if k not in (*REQUIRED, "trained")]
    return lines + [""]


def from_stages(run_dir: Path, names: list[str]) -> list[str]:
    """Headline lines gathered from the stage folders (empty when none holds a key result)."""
    found: list[str] = []
    for name in names:
        folder = run_dir / name if name else run_dir
        summary = _read(folder / "summary.json")
        final = (summary or {}).get("final_eval") or {}
        if isinstance(final, dict) and isinstance(final.get("eval/accuracy"), (int, float)):
            what = summary.get("algorithm") or summary.get("kind") or "model"
            found.append(f"- **{name or folder.name}** ({what}, {summary.get('steps', '?')} steps): held-out "
                         f"accuracy {final['eval/accuracy']:.3f}")
        res = _read(folder / "results.json") or {}
        if isinstance(res.get("score"), (int, float)):
            found.append(f"- **{name or folder.name}**: RewardBench overall {100 * res['score']:.1f}")
        if isinstance(res.get("win_rate"), (int, float)):
            found.append(f"- **{name or folder.name}**: win rate {res['win_rate']:.1f}% "
                         f"+- {_num(res.get('standard_error', float('nan')))} (n = {res.get('n_total', '?')})")
    return ["## Headline", "", *found, ""] if found else []


def headline(run_dir: Path, names: list[str]) -> list[str]:
    f = run_dir / HEADLINE
    if f.is_file():
        return from_file(json.loads(f.read_text(encoding="utf-8")), f)
    return from_stages(run_dir, names)


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except json.JSONDecodeError:
        return None
