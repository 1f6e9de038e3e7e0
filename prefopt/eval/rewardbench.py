"""``prefopt eval rewardbench``: score every RewardBench prompt/chosen/rejected row, resumably.

Usage::

    prefopt eval rewardbench --model runs/rm/bt --data ../shared/data/reward-bench/x.jsonl --out runs/rb
    prefopt eval rewardbench --model m1 m2 m3 --kind ensemble --reduce uwo
    prefopt eval rewardbench --model runs/dpo/lora_adapter --kind dpo          # ref = base without adapter
    prefopt eval rewardbench --model runs/rm/polar --polar-reference generate:smollm2-135m-instruct
    prefopt eval rewardbench --model smollm2-135m-instruct --kind judge
    prefopt eval rewardbench --benchmark v2 --model runs/rm/bt   # RewardBench 2: prefopt.eval.rewardbench_v2

Outputs in ``--out``: ``per_example.jsonl`` (the official columns ``id, subset, scores_chosen,
scores_rejected, results``), ``scores.jsonl`` (one row per example keyed by ``(id, subset)``, appended per
batch: a rerun skips finished rows, a killed run loses nothing), ``results.json`` (per-subset and
per-section numbers, :mod:`prefopt.eval.rewardbench_metrics`), ``rewardbench.png`` and
``run_config.json`` (a rerun with different scoring settings into the same folder is refused).
Rows are sorted by length and cut into fixed batches, so a resumed run computes exactly the batches an
uninterrupted run would.

POLAR needs a reference answer per prompt; ``--polar-reference`` takes ``FILE.jsonl`` (rows
``{id, subset, reference}``), ``field:NAME`` (a field of the data rows) or ``generate:MODEL`` (greedy
answers of MODEL, generated once and cached in ``polar_references.jsonl``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from prefopt.core.errors import ConfigError, DataError
from prefopt.core.io import atomic_write_json, atomic_write_text
from prefopt.core.logging import progress
from prefopt.eval import rewardbench_metrics as M
from prefopt.eval.plots import plot_rewardbench
from prefopt.eval.resumable import ResultStore
from prefopt.eval.scorers import KINDS, build_pair_scorer, resolve_kind

DEFAULT_DATA = "hf:allenai/reward-bench@filtered"
DELAY_ENV = "PREFOPT_EVAL_BATCH_DELAY"  # debug/tests: seconds to sleep after each batch


_V1_OFFLINE_HINT = "RewardBench, e.g. ../shared/data/reward-bench/reward_bench_filtered.dev10per_subset.jsonl"


def _read_hub_or_file(data: str, offline_hint: str = _V1_OFFLINE_HINT) -> list:
    from data_pipelines.sources import read_records

    if not data.startswith("hf:"):
        return list(read_records(data))
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
    try:
        return list(read_records(data))
    except Exception as exc:  # datasets/hub raise many types (ConnectionError, OfflineModeIsEnabled, ...)
        where = "offline (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set)" if offline else "from the hub"
        raise DataError(f"cannot load {data} {where}: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}. "
                        f"Offline options: pass --data FILE (a local .jsonl/.json/.parquet copy of {offline_hint}), "
                        "or download it once online so the HF cache holds it") from None


def load_rows(data: str, limit_per_subset: int | None = None) -> list[dict]:
    """Validated rows ``{id, subset, prompt (messages), chosen, rejected, raw}`` from a file or ``hf:`` spec.

    Raises:
        DataError: a missing/empty field, unknown subset or duplicate (id, subset), naming file and line;
            a hub spec that cannot be loaded (the message names the offline options).
    """
    from data_pipelines.adapters import adapt

    records = _read_hub_or_file(data)
    rows, per_subset = [], {}
    for rec, ex in zip(records, adapt("rewardbench", records, source=data), strict=False):
        subset = ex.meta["subset"]
        if subset not in M.SUBSET_TO_SECTION and subset not in M.PRIOR_SETS:
            raise DataError(f"unknown RewardBench subset {subset!r}", file=rec.file, line=rec.line, field="subset")
        per_subset[subset] = per_subset.get(subset, 0) + 1
        if limit_per_subset is not None and per_subset[subset] > limit_per_subset:
            continue
        rows.append({"id": ex.meta["id"], "subset": subset, "prompt": [dict(m) for m in ex.prompt],
                     "chosen": ex.chosen, "rejected": ex.rejected, "raw": rec.data, "line": rec.line})
    if not rows:
        raise DataError("no rows", file=data)
    return rows


def _length(row: dict) -> int:
    return sum(len(m["content"]) for m in row["prompt"]) + max(len(row["chosen"]), len(row["rejected"]))


def polar_references(spec: str | None, rows: list[dict], out: Path, *, max_new_tokens: int = 256,
                     batch_size: int = 8) -> Callable[[dict], str] | None:
    """Resolve ``--polar-reference`` to ``row -> reference text`` (see module docstring)."""
    if spec is None:
        return None
    if spec.startswith("field:"):
        return _field_references(spec[len("field:"):], rows)
    if spec.startswith("generate:"):
        return _generated_references(spec[len("generate:"):], rows, out, max_new_tokens, batch_size)
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"--polar-reference {spec!r}: not a file, field:NAME or generate:MODEL")
    refs = {}
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            obj = json.loads(line)
            for f in ("id", "subset", "reference"):
                if f not in obj:
                    raise DataError("missing", file=str(path), line=i, field=f)
            refs[(obj["id"], obj["subset"])] = obj["reference"]
    for r in rows:
        if (r["id"], r["subset"]) not in refs:
            raise DataError(f"no reference for id={r['id']!r} subset={r['subset']!r}", file=str(path), field="id")
    return lambda r: refs[(r["id"], r["subset"])]


def _field_references(name: str, rows: list[dict]) -> Callable[[dict], str]:
    """``field:NAME``: a field of each data row; the pair's own answers are refused (spec
    reward_models.md section 3: the reference must not leak the label)."""
    if name in ("chosen", "rejected"):
        raise ConfigError(f"--polar-reference field:{name} would score each answer against the {name} "
                          "answer itself (the label leaks into the reference); give a reference that is "
                          "neither answer: FILE.jsonl, field:OTHER_FIELD or generate:MODEL")
    for r in rows:
        if not isinstance(r["raw"].get(name), str) or not r["raw"][name].strip():
            raise DataError("missing or empty reference text", line=r["line"], field=name)
    return lambda r: r["raw"][name]


def _generated_references(model: str, rows: list[dict], out: Path, max_new_tokens: int,
                          batch_size: int) -> Callable[[dict], str]:
    from prefopt.generation import SamplingParams, make_generator

    store = ResultStore(out / "polar_references.jsonl", key_fields=("id", "subset"))
    todo = store.pending(rows)
    if todo:
        gen = make_generator("hf", model=model, batch_size=batch_size)
        params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)
        for s in progress(range(0, len(todo), batch_size), desc="polar references"):
            chunk = todo[s:s + batch_size]
            outs = gen.generate([r["prompt"] for r in chunk], params)
            store.append({"id": r["id"], "subset": r["subset"], "reference": o[0].text} for r, o in zip(chunk, outs, strict=False))
    refs = {(r["id"], r["subset"]): r["reference"] for r in store.rows()}
    return lambda r: refs[(r["id"], r["subset"])]


def check_run_config(out: Path, config: dict) -> None:
    """Write ``run_config.json``; refuse to resume a folder scored with different settings."""
    path = out / "run_config.json"
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
        if diff:
            raise ConfigError(f"{out} holds results of a different run (differs in: {', '.join(diff)}); "
                              "use another --out, or pass --overwrite to move the old results aside")
        return
    atomic_write_json(path, config)


def score_rows(pair_scorer: Any, rows: list[dict], store: ResultStore, batch_size: int) -> None:
    """Score pending rows in fixed, length-sorted batches; append each batch to ``store`` when done."""
    order = sorted(rows, key=_length)
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    delay = float(os.environ.get(DELAY_ENV, "0") or 0)
    bar = progress(total=len(rows), desc="rewardbench")
    bar.update(len(rows) - len(store.pending(rows)))
    for batch in batches:
        todo = store.pending(batch)
        if not todo:
            continue
        fields = pair_scorer([r["prompt"] for r in todo], [r["chosen"] for r in todo],
                             [r["rejected"] for r in todo], todo)
        store.append({"id": r["id"], "subset": r["subset"], **f} for r, f in zip(todo, fields, strict=False))
        bar.update(len(todo))
        if delay:
            time.sleep(delay)
    bar.close()


def run_settings(args: argparse.Namespace) -> dict:
    """The settings a results folder is scored with (``run_config.json``; a rerun with others is refused)."""
    return {"model": list(args.model), "kind": args.kind, "reduce": args.reduce, "data": args.data,
            "max_length": args.max_length, "bf16": args.bf16, "ref_model": args.ref_model, "beta": args.beta,
            "polar_reference": args.polar_reference, "judge_labels": args.judge_labels,
            "limit_per_subset": args.limit_per_subset}


def scorer_for(args: argparse.Namespace, rows: list[dict], out: Path) -> tuple[str, Any]:
    """``(resolved kind, pair scorer)`` from the CLI arguments (POLAR references generated first)."""
    refs = polar_references(args.polar_reference, rows, out, max_new_tokens=args.polar_max_new_tokens,
                            batch_size=args.batch_size)
    return build_pair_scorer(
        args.kind, args.model, batch_size=args.batch_size, bf16=args.bf16, max_length=args.max_length,
        reduce=args.reduce, ref_model=args.ref_model, beta=args.beta, polar_reference=refs,
        judge_labels=tuple(args.judge_labels.split(",")), device=args.device)


def stored_rows(store: ResultStore, rows: list[dict]) -> list[dict]:
    """The stored results of ``rows`` (a folder may hold more), in store order."""
    keys = {(r["id"], r["subset"]) for r in rows}
    return [r for r in store.rows() if (r["id"], r["subset"]) in keys]


def run(args: argparse.Namespace) -> M.RewardBenchResult:
    """Evaluate, write every output, return the result."""
    rows = load_rows(args.data, args.limit_per_subset)
    out = Path(args.out or Path("runs") / "eval" / "rewardbench" / Path(args.model[0]).name)
    out.mkdir(parents=True, exist_ok=True)
    check_run_config(out, run_settings(args))
    store = ResultStore(out / "scores.jsonl", key_fields=("id", "subset"))
    start = time.perf_counter()
    if store.pending(rows):
        score_rows(scorer_for(args, rows, out)[1], rows, store, args.batch_size)
    scored = stored_rows(store, rows)
    meta = {"model": ",".join(args.model), "model_type": resolve_kind(args.kind, args.model)[0], "chat_template": "tokenizer",
            "dtype": "bfloat16" if args.bf16 else "float32", "max_length": args.max_length,
            "batch_size": args.batch_size, "seed": args.seed, "data": args.data}
    result = M.score_rewardbench(scored, metadata=meta, source=str(store.path))
    M.write_results_json(out / "results.json", result)
    atomic_write_text(out / "per_example.jsonl", "".join(json.dumps(M.official_example_row(r)) + "\n"
                                                         for r in scored))
    plot_rewardbench(result, out / "rewardbench.png")
    atomic_write_json(out / "timing.json", {"seconds": round(time.perf_counter() - start, 2), "rows": len(rows)})
    print(M.format_table(result))
    print(f"\nresults: {out / 'results.json'}")
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prefopt eval rewardbench", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", nargs="+", action="extend", required=True,
                   help="reward model dir(s), a folder of ensemble members, a policy/LoRA dir (dpo) or an LM (judge)")
    p.add_argument("--kind", default="auto", choices=KINDS)
    p.add_argument("--reduce", default="mean", choices=("mean", "wco", "uwo"), help="ensemble aggregation")
    p.add_argument("--benchmark", default="v1", choices=tuple(BENCHMARKS),
                   help="v1: RewardBench (pairs); v2: RewardBench 2 (best-of-4 and Ties)")
    p.add_argument("--data", default=None, help="JSONL/JSON/parquet file or hf:NAME@SPLIT (default: "
                   f"{DEFAULT_DATA} for v1, hf:allenai/reward-bench-2@test for v2)")
    p.add_argument("--out", default=None, help="output folder (default runs/eval/rewardbench[2]/<model>)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--max-length", type=int, default=2048)
    p.add_argument("--ref-model", default=None, help="dpo reference (default: LoRA base; 'none' = ref-free)")
    p.add_argument("--beta", type=float, default=0.1, help="dpo beta")
    p.add_argument("--polar-reference", "--reference", dest="polar_reference", default=None,
                   help="FILE.jsonl | field:NAME | generate:MODEL")
    p.add_argument("--polar-max-new-tokens", type=int, default=256)
    p.add_argument("--judge-labels", default="A,B", help="judge answer labels, e.g. A,B or 1,2")
    p.add_argument("--limit-per-subset", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true",
                   help="move results of a different run in --out aside instead of refusing")
    return p


def cli_main(argv: Sequence[str]) -> int:
    """Entry point of ``prefopt eval rewardbench``."""
    from prefopt.core.rundir import guarded_folder

    args = build_parser().parse_args(list(argv))
    if args.batch_size < 1 or args.max_length < 16:
        raise ConfigError("--batch-size must be >= 1 and --max-length >= 16")
    if args.limit_per_subset is not None and args.limit_per_subset < 1:
        raise ConfigError(f"--limit-per-subset must be >= 1, got {args.limit_per_subset}")
    if not math.isfinite(args.beta) or args.beta <= 0:
        raise ConfigError(f"--beta must be a finite number > 0, got {args.beta}")
    runner, default_data, folder = BENCHMARKS[args.benchmark]
    args.data = args.data or default_data
    args.out = str(args.out or Path("runs") / "eval" / folder / Path(args.model[0]).name)
    with guarded_folder(args.out, None, overwrite=args.overwrite, command="prefopt eval rewardbench"):
        runner()(args)
    return 0


def _v2_run() -> Callable[[argparse.Namespace], Any]:
    from prefopt.eval.rewardbench_v2 import run as run_v2

    return run_v2


#: ``--benchmark`` -> (runner factory, default data, default output folder under runs/eval).
BENCHMARKS: dict[str, tuple[Callable[[], Callable[[argparse.Namespace], Any]], str, str]] = {
    "v1": (lambda: run, DEFAULT_DATA, "rewardbench"),
    "v2": (_v2_run, "hf:allenai/reward-bench-2@test", "rewardbench2"),
}
