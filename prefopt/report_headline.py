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
    if isinstance(v, bool):
        return "yes" if v else "no"
    return format(v, spec) if isinstance(v, (int, float)) else str(v)


def _pct(v: Any) -> str:
    """Percent: a fraction in [0, 1] is scaled by 100 (quickstart writes fractions), larger values kept."""
    return _num(100 * v if isinstance(v, (int, float)) and abs(v) <= 1 else v)


def _scalars(d: dict[str, Any]) -> str:
    parts = []
    for k, v in d.items():
        if isinstance(v, dict):
            inner = _scalars(v)
            if inner:
                parts.append(f"{k} ({inner})")
        elif isinstance(v, (int, float, str)) and not isinstance(v, bool) and len(str(v)) < 60:
            parts.append(f"{k} {_num(v, '.3g')}")
    return ", ".join(parts)


def _extra(key: str, value: Any) -> str | None:
    if isinstance(value, dict):
        inner = _scalars(value)
        return f"- **{key}**: {inner}" if inner else None
    if isinstance(value, list):
        return None
    return f"- **{key}**: {_num(value, '.3g')}"


def _agreement(value: Any) -> str:
    if isinstance(value, dict):
        agree = value.get("agreement")
        ci = (f" (95% CI {_num(value['ci_low'], '.2f')}-{_num(value['ci_high'], '.2f')}, n = {value.get('n', '?')})"
              if "ci_low" in value and "ci_high" in value else "")
        return f"{_num(agree, '.2f')}{ci}"
    return _num(value, ".2f")


def from_file(data: dict[str, Any], source: Path) -> list[str]:
    """Headline lines from a ``headline.json`` dict (a missing required key is a clear error)."""
    from prefopt.core.errors import DataError

    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise DataError(f"headline.json lacks {missing} (needs {list(REQUIRED)})", file=str(source))
    lines = ["## Headline", ""]
    if data.get("trained"):
        lines += [f"**Trained:** {data['trained']}", ""]
    lines.append(f"**Win rate {_pct(data['win_rate'])}%** (95% CI {_pct(data['ci_low'])}-{_pct(data['ci_high'])}, "
                 f"n = {data['n']}), judged by {data['judge']}; judge agreement with the reference "
                 f"labels {_agreement(data['judge_agreement'])}.")
    lines.append("")
    extras = [_extra(k, v) for k, v in data.items() if k not in (*REQUIRED, "trained")]
    return lines + [e for e in extras if e] + [""]


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
