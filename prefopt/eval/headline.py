"""``prefopt eval headline``: one JSON (and one line) saying what a pipeline showed, with its uncertainty.

Reads the ``results.json`` of a head-to-head evaluation (required) and, when given, of the judge's
agreement, RewardBench and best-of-N runs; writes ``headline.json`` with the keys

``win_rate, ci_low, ci_high, n, judge, judge_agreement`` (the head-to-head result: policy B's win rate
over policy A with its 95 % interval, and the judge's measured agreement with reference labels:
``{agreement, ci_low, ci_high, n, data}`` or ``null`` when unmeasured), ``judge_agreement_in_domain``
(the same against human labels of the evaluation prompts' own distribution), plus ``trained``, ``policy_a``,
``policy_b``, ``significant`` (``ci_low > 0.5``), ``rewardbench`` (score and sections) and ``bon``
(the reward model's best-of-N curve beside random and oracle picks).

Usage (a stage of ``configs/quickstart.yaml``)::

    prefopt eval headline --h2h runs/quickstart/h2h --judge-agreement runs/quickstart/judge_agreement \\
        --rewardbench runs/quickstart/rewardbench --bon runs/quickstart/bon \\
        --trained "DPO (LoRA) on 64 RM-labelled on-policy pairs" --write runs/quickstart/headline.json \\
        --out runs/quickstart/headline
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from prefopt.core.errors import DataError
from prefopt.core.io import atomic_write_json

__all__ = ["build_headline", "cli_main", "headline_text"]


def _results(folder: str | None, what: str) -> dict[str, Any] | None:
    if not folder:
        return None
    path = Path(folder)
    path = path if path.suffix == ".json" else path / "results.json"
    if not path.is_file():
        raise DataError(f"{what} results not found (run that stage first)", file=str(path))
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"not valid JSON: {exc.msg}", file=str(path), line=exc.lineno) from None


def _need(res: dict, keys: Sequence[str], what: str) -> None:
    missing = [k for k in keys if k not in res]
    if missing:
        raise DataError(f"{what} results miss {', '.join(missing)}", field=missing[0])


def _agreement(res: dict | None) -> dict[str, Any] | None:
    if res is None:
        return None
    _need(res, ("agreement", "ci_low", "ci_high", "n"), "judge-agreement")
    return {k: res.get(k) for k in ("agreement", "ci_low", "ci_high", "n", "data", "longer_baseline_agreement",
                                     "longer_pref_judge", "longer_pref_labels")}


def _rewardbench(res: dict | None) -> dict[str, Any] | None:
    if res is None:
        return None
    score = res.get("score", res.get("Score"))
    names = ("Chat", "Chat Hard", "Safety", "Reasoning", "Factuality", "Precise IF", "Math", "Focus", "Ties")
    sections = res.get("sections") or {k: res[k] for k in names if k in res}  # v1 sections or v2 subsets
    return {"score": score, "sections": sections, "n": res.get("n", res.get("num_examples"))}


def _bon(res: dict | None) -> dict[str, Any] | None:
    if res is None:
        return None
    _need(res, ("curve", "ns"), "best-of-N")
    return {"ns": res["ns"], "curve": res["curve"], "n_prompts": res.get("n_prompts"), "data": res.get("data")}


def build_headline(h2h: dict, agreement: dict | None, rewardbench: dict | None, bon: dict | None,
                   trained: str, in_domain: dict | None = None) -> dict[str, Any]:
    """The headline dict (see the module docstring)."""
    _need(h2h, ("win_rate", "ci_low", "ci_high", "n", "judge"), "head-to-head")
    agree = _agreement(agreement) or h2h.get("judge_agreement")
    return {"win_rate": h2h["win_rate"], "ci_low": h2h["ci_low"], "ci_high": h2h["ci_high"], "n": h2h["n"],
            "judge": h2h["judge"], "judge_agreement": agree, "judge_agreement_in_domain": _agreement(in_domain),
            "significant": h2h["ci_low"] > 0.5,
            "trained": trained, "policy_a": h2h.get("name_a"), "policy_b": h2h.get("name_b"),
            "ties": h2h.get("ties"), "interval": h2h.get("interval"),
            "mean_len_a": h2h.get("mean_len_a"), "mean_len_b": h2h.get("mean_len_b"),
            "rewardbench": _rewardbench(rewardbench), "bon": _bon(bon)}


def headline_text(h: dict[str, Any]) -> str:
    """One line: the gain with its interval, and how far the judge can be trusted."""
    a = h["judge_agreement"]
    trust = ("judge UNVALIDATED (agreement not measured)" if a is None else
             f"judge agreement {100 * a['agreement']:.1f}% [{100 * a['ci_low']:.1f}, {100 * a['ci_high']:.1f}] "
             f"(n={a['n']})")
    dom = h.get("judge_agreement_in_domain")
    if dom is not None:
        trust += f"; in-domain {100 * dom['agreement']:.1f}% [{100 * dom['ci_low']:.1f}, {100 * dom['ci_high']:.1f}] (n={dom['n']})"
    verdict = "significant" if h["significant"] else "NOT significant (95% interval includes 50%)"
    return (f"{h['policy_b']} vs {h['policy_a']}: win rate {100 * h['win_rate']:.1f}% "
            f"[{100 * h['ci_low']:.1f}, {100 * h['ci_high']:.1f}] n={h['n']} ({verdict}); judge {h['judge']}; "
            f"{trust}")


def cli_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="prefopt eval headline", description=__doc__.split("\n\n")[0])
    p.add_argument("--h2h", required=True, help="head-to-head folder (or its results.json)")
    p.add_argument("--judge-agreement", help="judge-agreement folder (or results.json)")
    p.add_argument("--judge-agreement-in-domain", help="judge-agreement folder on the evaluation prompts' domain")
    p.add_argument("--rewardbench", help="RewardBench folder (or results.json)")
    p.add_argument("--bon", help="best-of-N folder (or results.json)")
    p.add_argument("--trained", default="", help="what was trained, in words")
    p.add_argument("--write", help="also write the headline here (e.g. runs/quickstart/headline.json)")
    p.add_argument("--out", required=True, help="folder for headline.json")
    args = p.parse_args(list(argv))
    h = build_headline(_results(args.h2h, "head-to-head"), _results(args.judge_agreement, "judge-agreement"),
                       _results(args.rewardbench, "RewardBench"), _results(args.bon, "best-of-N"), args.trained,
                       _results(args.judge_agreement_in_domain, "judge-agreement (in-domain)"))
    from prefopt.core.rundir import run_lock

    out = Path(args.out)
    paths = [out / "headline.json"] + ([Path(args.write)] if args.write else [])
    with run_lock(out, "prefopt eval headline"):
        for path in paths:
            atomic_write_json(path, h)
    print(f"headline: {headline_text(h)} -> {', '.join(map(str, paths))}", file=sys.stdout, flush=True)
    return 0
