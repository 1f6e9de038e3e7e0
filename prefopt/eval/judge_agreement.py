"""``prefopt eval judge-agreement``: how often a judge agrees with labelled pairs (GPT-4 or human labels).

Usage::

    A=../shared/data/alpaca-eval/annotations_weighted_alpaca_eval_gpt4_turbo
    prefopt eval judge-agreement --judge rm --judge-model runs/rm/bt \\
        --data $A/alpaca-7b.jsonl.gz,$A/oasst-sft-pythia-12b.jsonl.gz --limit 200 --out runs/eval/agree/bt
    prefopt eval judge-agreement --judge lm --judge-model smollm2-135m-instruct --data pairs.jsonl --out ...

Data (one or more files, comma-separated): AlpacaEval annotations ``{instruction, output_1, output_2,
preference}`` (label: output_2 preferred iff preference > 1.5; exactly 1.5 is a tie, excluded and
counted), or pairwise files with ``chosen``/``rejected`` (``{prompt, chosen, rejected}`` or raw hh-rlhf
transcripts; label = chosen, shown in a seeded order). ``--limit`` takes a seeded subset stratified by
file (proportional shares). Each pair is judged once (``pairs.jsonl``, appended per batch, so a rerun
only judges the missing pairs); order-sensitive judges (lm, http) are asked in both orders.

``results.json``: ``agreement, ci_low, ci_high, n`` (Wilson 95 %), ``position_consistency`` (Zheng et al.
2023; null for the order-free rm judge), ``longer_pref_judge`` / ``longer_pref_labels`` (share of pairs
of unequal length where the judge / the label picks the longer answer), ``longer_baseline_agreement``
(agreement of "always prefer the longer answer"), ``n_ties_skipped``, ``per_file``; maths in
:mod:`prefopt.eval.agreement`.
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path
from typing import Sequence

from prefopt.core.errors import ConfigError, DataError
from prefopt.core.io import atomic_write_json
from prefopt.eval import agreement as AG
from prefopt.eval.judge_cli import (
    add_judge_args,
    check_judge_name,
    judge_pending,
    judge_settings,
    judgement_fields,
    make_cli_judge,
)
from prefopt.eval.resumable import ResultStore


def _annotation_pair(rec, path: str) -> dict | None:
    """An AlpacaEval annotation row -> pair (None for a tie, ``preference`` exactly 1.5)."""
    d = rec.data
    for f in ("instruction", "output_1", "output_2"):
        if not isinstance(d.get(f), str):
            raise DataError("missing or not text", file=path, line=rec.line, field=f)
    pref = d.get("preference")
    if not isinstance(pref, (int, float)) or isinstance(pref, bool) or not 1.0 <= pref <= 2.0:
        raise DataError(f"expected a number in [1, 2], got {pref!r}", file=path, line=rec.line, field="preference")
    if pref == 1.5:
        return None
    return {"prompt": d["instruction"], "first": d["output_1"], "second": d["output_2"], "label_second": pref > 1.5}


def _read_file(path: str, seed: int) -> tuple[list[dict], int]:
    """``(pairs, ties)`` of one file (format detected from its first record)."""
    from data_pipelines.adapters import adapt
    from data_pipelines.sources import read_records

    recs = list(read_records(path))
    if not recs:
        raise DataError("no records", file=path)
    pairs, ties = [], 0
    if "output_1" in recs[0].data:
        for rec in recs:
            pair = _annotation_pair(rec, path)
            ties += pair is None
            if pair is not None:
                pairs.append({"file": path, "row": rec.line, **pair})
        return pairs, ties
    adapter = "pairwise" if "prompt" in recs[0].data else "hh_rlhf"
    for rec, ex in zip(recs, adapt(adapter, recs, source=path), strict=True):
        swap = random.Random(f"{seed}:{path}:{rec.line}").random() < 0.5  # chosen shown second when swapped
        first, second = (ex.rejected, ex.chosen) if swap else (ex.chosen, ex.rejected)
        pairs.append({"file": path, "row": rec.line, "prompt": [dict(m) for m in ex.prompt], "first": first,
                      "second": second, "label_second": swap})
    return pairs, ties


def stratified_limit(per_file: list[list[dict]], limit: int | None, seed: int) -> list[dict]:
    """Seeded subset of ``limit`` pairs, each file's share proportional to its size (largest remainder)."""
    total = sum(len(p) for p in per_file)
    if limit is None or limit >= total:
        return [x for p in per_file for x in p]
    exact = [limit * len(p) / total for p in per_file]
    share = [int(e) for e in exact]
    for i in sorted(range(len(per_file)), key=lambda i: exact[i] - share[i], reverse=True)[: limit - sum(share)]:
        share[i] += 1
    rng = random.Random(seed)
    out = []
    for pairs, k in zip(per_file, share, strict=True):
        out.extend(sorted(rng.sample(pairs, k), key=lambda x: x["row"]))
    return out


def load_pairs(data: str, limit: int | None, seed: int) -> tuple[list[dict], int]:
    """Labelled pairs of every file in ``data`` (comma-separated), limited; and the number of ties skipped."""
    if limit is not None and limit <= 0:
        raise ConfigError(f"--limit must be >= 1, got {limit}")
    paths = [p for p in data.split(",") if p.strip()]
    for p in paths:
        if not Path(p).is_file():
            raise DataError("file not found", file=p)
    per_file, ties = [], 0
    for p in paths:
        pairs, t = _read_file(p, seed)
        per_file.append(pairs)
        ties += t
    pairs = stratified_limit(per_file, limit, seed)
    if not pairs:
        raise DataError(f"no labelled (non-tie) pairs ({ties} ties skipped)", file=data)
    return pairs, ties


def judge_pairs(args: argparse.Namespace, pairs: list[dict], store: ResultStore) -> None:
    """Judge the pending pairs in batches (each batch appended when done); an unparsable answer (``retry``)
    is kept as a failed attempt and asked again by the next run."""
    judge_pending(store, pairs, lambda: make_cli_judge(args), args.judge_batch_size, "judge-agreement",
                  ask=lambda batch: ([b["prompt"] for b in batch], [b["first"] for b in batch],
                                     [b["second"] for b in batch], [f"{b['file']}:{b['row']}" for b in batch]),
                  to_row=lambda b, a, name: {"file": b["file"], "row": b["row"], "label_second": b["label_second"],
                                             "len_first": len(b["first"]), "len_second": len(b["second"]),
                                             "judge": name, **judgement_fields(a, "second", "first")})


def summarize(rows: list[dict], ties: int) -> dict:
    """Every number of ``results.json`` from the judged rows (rows without a parsable judgement excluded)."""
    ok = [r for r in rows if r["p_second"] is not None]
    if not ok:
        raise DataError("the judge returned no parsable judgement")
    p = [r["p_second"] for r in ok]
    lab = [bool(r["label_second"]) for r in ok]
    l1, l2 = [r["len_first"] for r in ok], [r["len_second"] for r in ok]
    ag = AG.agreement(p, lab)
    both = [r for r in ok if r["p_second_first"] is not None and r["p_first_first"] is not None]
    pc = AG.position_consistency([r["p_second_first"] for r in both], [r["p_first_first"] for r in both]) \
        if both else None
    lj, ll = AG.longer_share([AG.decision(x) for x in p], l1, l2), AG.longer_share([float(x) for x in lab], l1, l2)
    base = AG.longer_baseline(lab, l1, l2)
    per_file = {}
    for f in sorted({r["file"] for r in ok}):
        sub = [r for r in ok if r["file"] == f]
        per_file[f] = AG.agreement([r["p_second"] for r in sub], [bool(r["label_second"]) for r in sub])
    return {"agreement": ag["value"], "ci_low": ag["ci_low"], "ci_high": ag["ci_high"], "n": ag["n"],
            "judge": ok[0]["judge"], "n_ties_skipped": ties, "n_unparsable": len(rows) - len(ok),
            "position_consistency": pc, "longer_pref_judge": lj["value"],
            "longer_pref_judge_ci": [lj["ci_low"], lj["ci_high"]], "longer_pref_labels": ll["value"],
            "longer_pref_labels_ci": [ll["ci_low"], ll["ci_high"]], "n_unequal_length": lj["n"],
            "longer_baseline_agreement": base["value"],
            "longer_baseline_ci": [base["ci_low"], base["ci_high"]], "per_file": per_file,
            "interval": "Wilson 95% (ties and judge ties count 0.5)"}


def run(args: argparse.Namespace) -> dict:
    """Judge, summarize, write ``results.json`` and return it."""
    from prefopt.eval.alpacaeval_data import config_check

    check_judge_name(args.judge)
    pairs, ties = load_pairs(args.data, args.limit, args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config_check(out / "judge_config.json", {**judge_settings(args), "seed": args.seed}, "judgements")
    store = ResultStore(out / "pairs.jsonl", key_fields=("file", "row"), retry_field="retry")
    judge_pairs(args, pairs, store)
    keys = {(p["file"], p["row"]) for p in pairs}
    res = summarize([r for r in store.rows() if (r["file"], r["row"]) in keys], ties)
    res.update(data=args.data, limit=args.limit, seed=args.seed, judge_model=args.judge_model)
    atomic_write_json(out / "results.json", res)
    print(format_summary(res))
    print(f"results: {out / 'results.json'}  pairs: {store.path}")
    return res


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def format_summary(res: dict) -> str:
    """A few lines: agreement with CI, position consistency, length bias and the longer-answer baseline."""
    pc = res["position_consistency"]
    lines = [f"judge {res['judge']}: agreement {_pct(res['agreement'])} [{_pct(res['ci_low'])}, "
             f"{_pct(res['ci_high'])}] (n={res['n']}, {res['n_ties_skipped']} label ties skipped)",
             "position consistency: " + ("n/a (order-free judge)" if pc is None else
                                         f"{_pct(pc['value'])} [{_pct(pc['ci_low'])}, {_pct(pc['ci_high'])}]"),
             f"prefers the longer answer: judge {_pct(res['longer_pref_judge'])}, labels "
             f"{_pct(res['longer_pref_labels'])} (n={res['n_unequal_length']}); "
             f"'always longer' baseline agreement {_pct(res['longer_baseline_agreement'])}"]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prefopt eval judge-agreement", description=__doc__.split("\n\n")[0])
    add_judge_args(p)
    p.add_argument("--data", required=True, help="labelled pair file(s), comma-separated")
    p.add_argument("--limit", type=int, default=None, help="seeded subset of N pairs, stratified by file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    return p


def cli_main(argv: Sequence[str]) -> int:
    """Entry point of ``prefopt eval judge-agreement``."""
    args = build_parser().parse_args(list(argv))
    if args.judge_batch_size < 1:
        raise ConfigError("--judge-batch-size must be >= 1")
    from prefopt.core.rundir import run_lock

    with run_lock(args.out, "prefopt eval judge-agreement"):  # one writer per folder (docs/reliability.md)
        run(args)
    return 0
