"""Judge options shared by ``eval judge-agreement`` and ``eval head2head`` (the judge from the registry)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from prefopt.core.errors import ConfigError, DataError
from reward_models.kinds import kind_names

RM_KINDS = ("auto", *kind_names())  # every registered reward-model kind


def add_judge_args(p: argparse.ArgumentParser) -> None:
    """``--judge`` (a name in the judge registry: rm | lm | http) and its options."""
    p.add_argument("--judge", required=True, help="rm | lm | http (prefopt ls judges)")
    p.add_argument("--judge-model", nargs="+", action="extend", help="rm: RM dir(s); lm: LM; http: model name")
    p.add_argument("--kind", dest="judge_kind", default="auto", choices=RM_KINDS, help="rm judge kind")
    p.add_argument("--judge-reduce", default="mean", choices=("mean", "wco", "uwo"))
    p.add_argument("--judge-base-url", default=None)
    p.add_argument("--judge-api-key-env", default="OPENAI_API_KEY")
    p.add_argument("--judge-config", default="weighted_alpaca_eval_gpt4_turbo")
    p.add_argument("--judge-labels", default="A,B")
    p.add_argument("--judge-batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=2048, help="judge token budget")
    p.add_argument("--bf16", action="store_true")


def check_judge_name(name: str) -> None:
    """Raise (listing the known judges) for a name that is not in the judge registry."""
    from prefopt.core.registry import JUDGES
    from prefopt.eval import judges  # noqa: F401  (fills the registry)

    JUDGES.get(name)


def make_cli_judge(args: argparse.Namespace) -> Any:
    """The judge, asked in both orders when it is order-sensitive (the http judge; the lm judge always is)."""
    from prefopt.eval.alpacaeval import build_judge

    check_judge_name(args.judge)
    args.judge_both_orders = True
    return build_judge(args)


def judge_settings(args: argparse.Namespace) -> dict:
    """What identifies the judge's annotations (a rerun with other settings is refused)."""
    return {"judge": args.judge, "judge_model": args.judge_model, "judge_kind": args.judge_kind,
            "judge_reduce": args.judge_reduce, "judge_base_url": args.judge_base_url,
            "judge_config": args.judge_config, "judge_labels": args.judge_labels, "max_length": args.max_length}


def read_agreement(path: str | None) -> dict | None:
    """``{agreement, ci_low, ci_high, n, judge}`` from a judge-agreement ``results.json`` (None without one)."""
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        raise DataError("judge-agreement results not found (run prefopt eval judge-agreement)", file=str(p))
    try:
        res = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"not JSON: {exc.msg}", file=str(p)) from None
    for key in ("agreement", "ci_low", "ci_high", "n"):
        if key not in res:
            raise DataError("missing (not a judge-agreement results.json?)", file=str(p), field=key)
    if not isinstance(res["n"], int) or res["n"] < 1:
        raise ConfigError(f"{p}: judge agreement measured on n={res['n']} pairs")
    return {k: res.get(k) for k in ("agreement", "ci_low", "ci_high", "n", "judge")}


def agreement_text(agr: dict | None) -> str:
    """``judge agreement 71.0% [65.2, 76.1] n=300`` or ``agreement not measured``."""
    from prefopt.eval.alpacaeval_metrics import agreement_cell

    return agreement_cell(agr) if not agr else "judge agreement " + agreement_cell(agr)


def judge_pending(store: Any, items: list[dict], new_judge: Any, batch_size: int, desc: str,
                  ask: Any, to_row: Any) -> None:
    """Judge the items ``store`` does not hold yet, in batches, each batch appended when done.

    ``new_judge()`` builds the judge (only when something is pending); ``ask(batch)`` gives
    ``(instructions, first answers, second answers, keys)``; ``to_row(item, annotation, judge name)`` the
    stored row. A resumed run starts where the last stopped; failed attempts (``retry``) are asked again.
    """
    todo = store.pending(items)
    if not todo:
        return
    from prefopt.core.logging import progress

    judge = new_judge()
    bar = progress(total=len(items), desc=desc)
    bar.update(len(items) - len(todo))
    for s in range(0, len(todo), batch_size):
        batch = todo[s:s + batch_size]
        instructions, firsts, seconds, keys = ask(batch)
        ann = judge.annotate(instructions, firsts, seconds, keys=keys)
        store.append(to_row(item, a, judge.name) for item, a in zip(batch, ann, strict=True))
        bar.update(len(batch))
    bar.close()


def judgement_fields(a: dict, second: str, first: str) -> dict:
    """The judged fields of one annotation: P(second answer wins) as ``p_<second>`` (None if
    unparsable), the per-order probabilities of an order-sensitive judge, and the retry marker."""
    return {f"p_{second}": None if a.get("preference") is None else a["preference"] - 1.0,
            f"p_{second}_first": a.get("p_output_first"), f"p_{first}_first": a.get("p_reference_first"),
            "retry": bool(a.get("retry")), "error": a.get("error")}
