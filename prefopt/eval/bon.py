"""``prefopt eval bon``: best-of-N evaluation of any scorer against gold scores.

Usage::

    prefopt eval bon --data ../shared/data/alpaca-eval-bon16/tulu-2-dpo-13b_bon16.dev50.jsonl.gz \\
        --model runs/rm/bt --out runs/eval/bon/bt
    prefopt eval bon --data labelled.jsonl --model runs/rm/gpm --kind gpm --n 1,2,4 --win-threshold 0.5

Every scored candidate of a prompt is scored once (``scores.jsonl``, one row per prompt, appended as
done: a rerun skips finished prompts). A scalar scorer (bt, polar, ensemble, dpo) picks the highest
score; a pairwise one (gpm, judge) stores its K x K preference matrix and picks the Copeland winner of
each subset. For N = 1, 2, 4, ... the expected gold of the pick over all N-subsets is computed exactly
(:mod:`prefopt.eval.bon_metrics`), beside the random pick (mean gold) and the oracle pick (expected max),
with the SE over prompts. "Gold win" = gold > ``--win-threshold`` (default 1.5 for the AlpacaEval
best-of-16 data: the GPT-4-Turbo judge prefers the candidate to the reference). Writes ``results.json``,
``bon_curve.png`` and ``run_config.json``. (Gao et al. 2023; RewardBench's best-of-N evaluation.)
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from prefopt.core.errors import ConfigError, DataError
from prefopt.core.io import atomic_write_json
from prefopt.core.logging import progress
from prefopt.core.registry import registry
from prefopt.eval import bon_metrics as BM
from prefopt.eval.bon_data import load_bon
from prefopt.eval.resumable import ResultStore
from prefopt.eval.scorers import KINDS, build_pair_scorer

if TYPE_CHECKING:
    from prefopt.eval.scorers import DPOPairs, GPMPairs, JudgePairs, ScorePairs

# resolved scorer kind -> fn(pair_scorer, prompt row) -> {"scores": [...]} or {"matrix": [[...]]}
BON_SCORERS = registry("bon_scorer")
DEFAULT_THRESHOLDS = {"alpacaeval_bon": 1.5}


def _scalar(pair_scorer: ScorePairs, row: dict) -> dict:
    k = len(row["candidates"])
    return {"scores": pair_scorer.scorer.score([row["prompt"]] * k, row["candidates"]).float().tolist()}


def _polar(pair_scorer: ScorePairs, row: dict) -> dict:
    if not isinstance(row.get("reference"), str) or not row["reference"].strip():
        raise DataError("POLAR scores against a reference answer: none in this record", line=row["line"],
                        field="reference")
    k = len(row["candidates"])
    s = pair_scorer.scorer.score([row["prompt"]] * k, row["candidates"], references=[row["reference"]] * k)
    return {"scores": s.float().tolist()}


def _dpo(pair_scorer: DPOPairs, row: dict) -> dict:
    return {"scores": pair_scorer.rewards([row["prompt"]] * len(row["candidates"]), row["candidates"]).tolist()}


def _gpm(pair_scorer: GPMPairs, row: dict) -> dict:
    return {"matrix": pair_scorer.scorer.score_matrix(row["prompt"], row["candidates"]).float().tolist()}


def _judge(pair_scorer: JudgePairs, row: dict) -> dict:
    """Both-orders LM judge on every pair: ``m[i][j] = P(i better than j) - 0.5`` (antisymmetric)."""
    c, k = row["candidates"], len(row["candidates"])
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    pi, pj = pair_scorer.judge.both_orders([row["prompt"]] * len(pairs), [c[i] for i, _ in pairs],
                                           [c[j] for _, j in pairs])
    m = [[0.0] * k for _ in range(k)]
    for (i, j), a, b in zip(pairs, pi.tolist(), pj.tolist(), strict=True):
        m[i][j] = (a + 1.0 - b) / 2 - 0.5
        m[j][i] = -m[i][j]
    return {"matrix": m}


for _name, _fn in (("bt", _scalar), ("ensemble", _scalar), ("polar", _polar), ("dpo", _dpo), ("gpm", _gpm),
                   ("judge", _judge)):
    if _name not in BON_SCORERS:
        BON_SCORERS.register(_name, _fn)


def parse_ns(spec: str | None, rows: list[dict]) -> list[int]:
    """``--n 1,2,4`` (each 1 <= N <= the fewest scored candidates of a prompt) or the default doubling list."""
    m = min(len(r["candidates"]) for r in rows)
    if spec is None:
        return BM.default_ns(m)
    try:
        ns = sorted({int(x) for x in spec.split(",") if x.strip()})
    except ValueError:
        raise ConfigError(f"--n expects comma-separated integers, got {spec!r}") from None
    small = next((r for r in rows if len(r["candidates"]) < ns[-1]), None) if ns else None
    if not ns or ns[0] < 1 or small is not None:
        where = f" (prompt id {small['id']!r} has {len(small['candidates'])} scored candidates)" if small else ""
        raise ConfigError(f"--n {spec}: every N must be in 1..{m}{where}")
    return ns


def score_prompts(args: argparse.Namespace, rows: list[dict], store: ResultStore) -> str:
    """Score the pending prompts one at a time (each appended when done); return the resolved kind."""
    from prefopt.eval.scorers import resolve_kind

    kind = resolve_kind(args.kind, args.model)[0]
    todo = store.pending(rows)
    if not todo:
        return kind
    kind, pair_scorer = build_pair_scorer(
        args.kind, args.model, batch_size=args.batch_size, max_length=args.max_length, bf16=args.bf16,
        reduce=args.reduce, ref_model=args.ref_model, polar_reference=lambda r: r.get("reference"))
    from reward_models.kinds import serving_kind

    fn = BON_SCORERS.get(serving_kind(kind))
    bar = progress(total=len(rows), desc="bon score")
    bar.update(len(rows) - len(todo))
    for row in todo:
        store.append([{"id": row["id"], "gold": row["gold"], **fn(pair_scorer, row)}])
        bar.update(1)
    bar.close()
    return kind


def curves(scored: list[dict], ns: Sequence[int], threshold: float | None, draws: int, seed: int) -> list[dict]:
    """Per-prompt curves (exact) -> mean and SE per N."""
    per_prompt = [BM.prompt_curve(r["gold"], ns, scores=r.get("scores"), matrix=r.get("matrix"),
                                  threshold=threshold, max_subsets=draws, seed=seed) for r in scored]
    return BM.aggregate_curves(per_prompt, ns)


def run(args: argparse.Namespace) -> dict:
    """Score, compute the curve, write every output and return the results."""
    rows, fmt = load_bon(args.data, args.limit)
    ns = parse_ns(args.n, rows)
    threshold = args.win_threshold if args.win_threshold is not None else DEFAULT_THRESHOLDS.get(fmt)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from prefopt.eval.rewardbench import check_run_config

    check_run_config(out, {"model": list(args.model), "kind": args.kind, "reduce": args.reduce,
                           "data": args.data, "max_length": args.max_length, "bf16": args.bf16,
                           "ref_model": args.ref_model})
    start = time.perf_counter()
    store = ResultStore(out / "scores.jsonl", key_fields=("id",))
    kind = score_prompts(args, rows, store)
    done = {r["id"]: r for r in store.rows()}
    scored = [done[r["id"]] for r in rows]
    pairwise = any("matrix" in r for r in scored)
    m = max(len(r["gold"]) for r in scored)
    method = "exact: closed form over all C(M,N) subsets (order statistics)"
    if pairwise:
        sampled = any(math.comb(m, n) > args.draws for n in ns)
        method = ("Copeland winner in each subset; exact enumeration of all C(M,N) subsets"
                  + (f" (seeded {args.draws} draws where C(M,N) > {args.draws})" if sampled else ""))
    res = {"model": list(args.model), "kind": kind, "data": args.data, "format": fmt, "n_prompts": len(scored),
           "candidates_per_prompt": sorted({len(r["gold"]) for r in scored}), "ns": ns, "method": method,
           "win_threshold": threshold,
           "win_definition": None if threshold is None else f"gold > {threshold}",
           "uncertainty": "SE over prompts (std ddof=1 / sqrt(n_prompts)); per-prompt values are exact",
           "curve": curves(scored, ns, threshold, args.draws, args.seed), "seed": args.seed,
           "seconds": round(time.perf_counter() - start, 2)}
    atomic_write_json(out / "results.json", res)
    from prefopt.eval.plots import plot_bon_curve

    plot_bon_curve(res, out / "bon_curve.png")
    print(format_table(res))
    print(f"\nresults: {out / 'results.json'}  curve: {out / 'bon_curve.png'}  scores: {store.path}")
    return res


def _cell(v: float | None, se: float | None) -> str:
    return "-" if v is None else f"{v:.3f} ± {se:.3f}"


def format_table(res: dict) -> str:
    """Markdown table: N, the scorer's / random / oracle expected gold and win rate (± SE), and the
    scorer's paired gain over a random pick."""
    lines = [f"best-of-N, scorer {res['kind']} ({', '.join(res['model'])}), {res['n_prompts']} prompts; "
             f"win = {res['win_definition'] or 'not defined (give --win-threshold)'}",
             "| N | scorer gold | random gold | oracle gold | scorer win | random win | oracle win | "
             "scorer - random gold (paired) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in res["curve"]:
        cells = [_cell(r[k], r[k + "_se"]) for k in ("scorer_gold", "random_gold", "oracle_gold", "scorer_win",
                                                     "random_win", "oracle_win", "gain_gold")]
        lines.append(f"| {r['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prefopt eval bon", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="best-of-16 jsonl.gz, generic {prompt, candidates} or ranked jsonl")
    p.add_argument("--model", nargs="+", action="extend", required=True, help="scorer dir(s), as for rewardbench")
    p.add_argument("--kind", default="auto", choices=KINDS)
    p.add_argument("--reduce", default="mean", choices=("mean", "wco", "uwo"), help="ensemble aggregation")
    p.add_argument("--ref-model", default=None, help="dpo reference (default: LoRA base; 'none' = ref-free)")
    p.add_argument("--n", default=None, help="comma-separated N values (default 1,2,4,... up to K)")
    p.add_argument("--limit", type=int, default=None, help="first K prompts")
    p.add_argument("--max-length", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--draws", type=int, default=20000,
                   help="pairwise scorers: enumerate subsets while C(M,N) <= this, else this many seeded draws")
    p.add_argument("--win-threshold", type=float, default=None, help="gold win = gold > this (bon16: 1.5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    return p


def cli_main(argv: Sequence[str]) -> int:
    """Entry point of ``prefopt eval bon``."""
    args = build_parser().parse_args(list(argv))
    if args.batch_size < 1 or args.draws < 1:
        raise ConfigError("--batch-size and --draws must be >= 1")
    from prefopt.core.rundir import run_lock

    with run_lock(args.out, "prefopt eval bon"):  # one writer per folder (docs/reliability.md)
        run(args)
    return 0
