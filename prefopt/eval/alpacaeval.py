"""``prefopt eval alpacaeval``: generate with a policy, judge against a reference, report win rates.

Usage::

    prefopt eval alpacaeval --policy runs/dpo/final --judge rm --judge-model runs/rm/bt --out runs/ae/dpo
    prefopt eval alpacaeval --policy smollm2-135m-instruct --judge lm --judge-model smollm2-135m-instruct
    prefopt eval alpacaeval --policy P --judge http --judge-base-url https://api.openai.com/v1 \\
        --judge-model gpt-4-1106-preview          # key from $OPENAI_API_KEY (--judge-api-key-env)
    prefopt eval alpacaeval --leaderboard runs/ae/dpo runs/ae/sft --out runs/ae/board

Steps, each resumable (per-example JSONL appended as produced; a rerun skips finished rows):

1. generation (``outputs.jsonl`` -> ``model_outputs.json`` in AlpacaEval's format) with the policy's
   chat template and the configured decoding (greedy by default), or ``--model-outputs FILE``;
2. judging (``annotations.jsonl`` -> ``annotations.json``; output_1 = reference, output_2 = policy);
3. metrics (:mod:`prefopt.eval.alpacaeval_metrics`): win rate, SE, discrete win rate, LC win rate with
   ``--hub-dir`` (else "unavailable"), labelled "AlpacaEval-style" for every non-official judge.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

from prefopt.core.errors import ConfigError, DataError
from prefopt.core.io import atomic_write_json, atomic_write_text
from prefopt.core.logging import progress
from prefopt.eval import alpacaeval_data as D
from prefopt.eval.alpacaeval_metrics import alpacaeval_metrics, leaderboard_table, length_controlled_winrate
from prefopt.eval.resumable import ResultStore

DELAY_ENV = "PREFOPT_EVAL_BATCH_DELAY"  # debug/tests: seconds to sleep after each batch


def _delay() -> None:
    d = float(os.environ.get(DELAY_ENV, "0") or 0)
    if d:
        time.sleep(d)


def _chunks(rows: list[dict], size: int, key=None) -> list[list[dict]]:
    order = sorted(rows, key=key) if key else list(rows)
    return [order[s:s + size] for s in range(0, len(order), size)]


def build_generator(args: argparse.Namespace) -> Any:
    """The policy's generator (``--backend hf`` loads LoRA adapter folders on their base model)."""
    from prefopt.generation import make_generator

    if args.backend == "vllm":
        return make_generator("vllm", model=args.policy, dtype="bfloat16" if args.bf16 else "auto",
                              seed=args.seed)
    from prefopt.eval.scorers import load_policy

    model, tok, _ = load_policy(args.policy, dtype="bfloat16" if args.bf16 else "float32")
    return make_generator("hf", model=model, tokenizer=tok, batch_size=args.gen_batch_size)


def sampling_params(args: argparse.Namespace, seed: int) -> Any:
    from prefopt.generation import SamplingParams

    return SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                          max_new_tokens=args.max_new_tokens, n=1, seed=seed)


def generate_outputs(args: argparse.Namespace, rows: list[dict], out: Path, name: str) -> list[dict]:
    """Generate missing outputs in fixed length-sorted chunks (chunk k seeded with seed + k)."""
    store = ResultStore(out / "outputs.jsonl", key_fields=("index",))
    chunks = _chunks(rows, args.gen_batch_size, key=lambda r: (len(r["instruction"]), r["index"]))
    if store.pending(rows):
        gen = build_generator(args)
        bar = progress(total=len(rows), desc="generate")
        bar.update(len(rows) - len(store.pending(rows)))
        for k, chunk in enumerate(chunks):
            todo = store.pending(chunk)
            if not todo:
                continue
            prompts = [[{"role": "user", "content": r["instruction"]}] for r in todo]
            comps = gen.generate(prompts, sampling_params(args, args.seed + k))
            store.append({"index": r["index"], "instruction": r["instruction"], "output": c[0].text,
                          "generator": name, "dataset": r["dataset"], "finish_reason": c[0].finish_reason,
                          "n_tokens": len(c[0].token_ids)} for r, c in zip(todo, comps, strict=False))
            bar.update(len(todo))
            _delay()
        bar.close()
    done = {r["index"]: r for r in store.rows()}
    return [done[r["index"]] for r in rows]


def build_judge(args: argparse.Namespace) -> Any:
    """The judge named by ``--judge`` from the ``JUDGES`` registry."""
    from prefopt.eval.judges import make_judge

    if args.judge == "http":
        return make_judge("http", base_url=args.judge_base_url, model=(args.judge_model or [""])[0],
                          api_key_env=args.judge_api_key_env, config=args.judge_config, seed=args.seed,
                          timeout=args.judge_timeout, max_retries=args.judge_max_retries,
                          both_orders=getattr(args, "judge_both_orders", False))
    if not args.judge_model:
        raise ConfigError(f"--judge {args.judge} needs --judge-model")
    dtype = "bfloat16" if args.bf16 else "float32"
    if args.judge == "lm":
        return make_judge("lm", model=args.judge_model[0], dtype=dtype, labels=tuple(args.judge_labels.split(",")),
                          batch_size=args.judge_batch_size, max_length=args.max_length, bf16=args.bf16)
    from prefopt.eval.scorers import load_model_scorer, resolve_kind

    kind, members = resolve_kind(getattr(args, "judge_kind", None) or "auto", args.judge_model)
    opts = dict(batch_size=args.judge_batch_size, bf16=args.bf16, max_length=args.max_length)
    from reward_models.kinds import get_kind

    if get_kind(kind).members:
        from reward_models.scorer import EnsembleScorer

        scorer = EnsembleScorer([load_model_scorer(m, **opts) for m in members], method=args.judge_reduce)
    else:
        scorer = load_model_scorer(members[0], **opts)
    names = ",".join(Path(m).name for m in members)
    return make_judge("rm", scorer=scorer, name=f"rm:{kind}:{names}", batch_size=args.judge_batch_size)


def _annotate_into(store: ResultStore, judge: Any, todo: list[dict], outputs: list[dict]) -> None:
    """Judge ``todo`` and append the annotations (judges with ``persist_every`` are asked in pieces of
    that size, so a failure keeps every judgement already made)."""
    step = max(1, int(getattr(judge, "persist_every", len(todo)) or len(todo)))
    for s in range(0, len(todo), step):
        part = todo[s:s + step]
        outs = [outputs[r["index"]]["output"] for r in part]
        ann = judge.annotate([r["instruction"] for r in part], [r["reference"] for r in part], outs,
                             keys=[r["index"] for r in part])
        store.append({"index": r["index"], "instruction": r["instruction"], "dataset": r["dataset"],
                      "output_1": r["reference"], "generator_1": r["reference_generator"], "output_2": o,
                      "generator_2": outputs[r["index"]]["generator"], "annotator": judge.name, **a}
                     for r, o, a in zip(part, outs, ann, strict=True))


def judge_outputs(args: argparse.Namespace, rows: list[dict], outputs: list[dict], out: Path) -> list[dict]:
    """Annotate missing examples in fixed chunks; return all annotations in eval-set order.

    Rows a judge marks ``retry`` (an unparsable answer) are kept in ``annotations.jsonl`` as failures
    and asked again by the next run; while any remain, no results are written.
    """
    store = ResultStore(out / "annotations.jsonl", key_fields=("index",), retry_field="retry")
    if store.pending(rows):
        judge = build_judge(args)
        bar = progress(total=len(rows), desc="judge")
        bar.update(len(rows) - len(store.pending(rows)))
        for chunk in _chunks(rows, args.judge_batch_size):
            todo = store.pending(chunk)
            if not todo:
                continue
            _annotate_into(store, judge, todo, outputs)
            bar.update(len(todo))
            _delay()
        bar.close()
    done = {r["index"]: r for r in store.rows()}
    failed = [done[r["index"]] for r in rows if store.is_retry(done[r["index"]])]
    if failed:
        raise DataError(f"{len(failed)} of {len(rows)} judgements failed (first: {failed[0].get('error')}); "
                        "they are recorded as failures and a rerun of the same command asks the judge again",
                        file=str(store.path), field="preference")
    return [done[r["index"]] for r in rows]


def compute_metrics(annotations: list[dict], hub_dir: str | None) -> dict[str, Any]:
    """Metrics; a hub folder that does not match this eval set makes the LC 'unavailable' (with why)."""
    res = alpacaeval_metrics(annotations, compute_lc=False)
    try:
        res.update(length_controlled_winrate(annotations, hub_dir=hub_dir))
    except DataError as exc:
        res.update(lc_status="unavailable", lc_message=f"length-controlled win rate unavailable: {exc}")
    return res


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Generate (or read) outputs, judge them, write every file and return the metrics."""
    from prefopt.eval.judge_cli import read_agreement

    agreement = read_agreement(args.judge_agreement)  # a bad file fails before any work
    ref_path = D.resolve_reference(args.reference)
    rows = D.attach_references(D.load_eval_set(args.data or ref_path, args.limit), ref_path)
    name = args.generator_name or (Path(args.policy).name if args.policy else None)
    out = Path(args.out or Path("runs") / "eval" / "alpacaeval" / (name or "outputs"))
    out.mkdir(parents=True, exist_ok=True)
    decoding = {"temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k,
                "max_new_tokens": args.max_new_tokens, "seed": args.seed}
    if args.model_outputs:
        outputs = D.validate_model_outputs(args.model_outputs, rows)
        name = outputs[0]["generator"]
    else:
        if not args.policy:
            raise ConfigError("give --policy (to generate) or --model-outputs FILE")
        D.config_check(out / "generation_config.json", {"policy": args.policy, "generator": name,
                       "data": args.data or ref_path, "limit": args.limit, "backend": args.backend,
                       "bf16": args.bf16, **decoding}, "generated outputs")
        outputs = generate_outputs(args, rows, out, name)
    D.write_model_outputs(out / "model_outputs.json", outputs)
    D.config_check(out / "judge_config.json", {"judge": args.judge, "judge_model": args.judge_model,
                   "judge_base_url": args.judge_base_url, "judge_config": args.judge_config,
                   "reference": ref_path, "generator": name, "judge_labels": args.judge_labels}, "annotations")
    annotations = judge_outputs(args, rows, outputs, out)
    atomic_write_text(out / "annotations.json", json.dumps(annotations, indent=2, ensure_ascii=False) + "\n")
    metrics = compute_metrics(annotations, args.hub_dir)
    metrics.update(policy=args.policy, reference=args.reference, decoding=decoding,
                   n_empty_outputs=sum(1 for o in outputs if not o["output"].strip()), judge_agreement=agreement)
    atomic_write_json(out / "results.json", metrics)
    print(leaderboard_table({name: metrics}))
    if metrics.get("lc_status") != "ok":
        print(metrics.get("lc_message"))
    if agreement is None:
        print(f"judge {metrics.get('judge') or args.judge}: agreement not measured (give --judge-agreement "
              "RESULTS_JSON from prefopt eval judge-agreement)")
    print(f"\nresults: {out / 'results.json'}")
    return metrics


def leaderboard(dirs: Sequence[str], out: str | None) -> str:
    """Markdown table + PNG over several result folders (each with ``results.json``)."""
    from prefopt.eval.plots import plot_alpacaeval_leaderboard

    results = {}
    for d in dirs:
        path = Path(d) / "results.json"
        if not path.is_file():
            raise DataError("results.json not found (run the evaluation first)", file=str(path))
        res = json.loads(path.read_text(encoding="utf-8"))
        results[res.get("generator") or Path(d).name] = res
    table = leaderboard_table(results)
    folder = Path(out or "runs/eval/alpacaeval/leaderboard")
    atomic_write_text(folder / "leaderboard.md", table + "\n")
    plot_alpacaeval_leaderboard(results, folder / "leaderboard.png")
    print(table)
    return table


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prefopt eval alpacaeval", description=__doc__.split("\n\n")[0])
    p.add_argument("--policy", help="policy model: name, folder or LoRA adapter folder")
    p.add_argument("--model-outputs", help="judge an existing model_outputs.json instead of generating")
    p.add_argument("--generator-name", help="name recorded as the generator (default: policy folder name)")
    p.add_argument("--judge", default="rm", choices=("rm", "lm", "http"))
    p.add_argument("--judge-model", nargs="+", action="extend", help="rm: RM dir(s); lm: LM; http: model name")
    p.add_argument("--judge-reduce", default="mean", choices=("mean", "wco", "uwo"))
    p.add_argument("--judge-base-url", default=None)
    p.add_argument("--judge-api-key-env", default="OPENAI_API_KEY")
    p.add_argument("--judge-config", default="weighted_alpaca_eval_gpt4_turbo",
                   help="alpaca_eval annotator config whose prompt the http judge uses")
    p.add_argument("--judge-labels", default="A,B")
    p.add_argument("--judge-timeout", type=float, default=60.0, help="http judge: seconds per request")
    p.add_argument("--judge-max-retries", type=int, default=6,
                   help="http judge: retries on network errors, 429 and 5xx (backoff honours Retry-After)")
    p.add_argument("--overwrite", action="store_true",
                   help="move results made with different settings aside instead of refusing")
    p.add_argument("--judge-batch-size", type=int, default=4)
    p.add_argument("--judge-agreement", default=None,
                   help="results.json of prefopt eval judge-agreement: stored and shown beside the win rates")
    p.add_argument("--reference", default="gpt4_turbo", help="gpt4_turbo | text_davinci_003 | FILE")
    p.add_argument("--data", default=None, help="instructions (default: the reference file); hf:tatsu-lab/alpaca_eval")
    p.add_argument("--out", default=None)
    p.add_argument("--limit", type=int, default=None, help="first N instructions only")
    p.add_argument("--backend", default="hf", choices=("hf", "vllm"))
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--gen-batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=2048, help="judge token budget")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hub-dir", default=None, help="folder with df_gamed.csv + instruction_difficulty.csv (LC)")
    p.add_argument("--leaderboard", nargs="+", default=None, metavar="DIR",
                   help="build a leaderboard from result folders instead of evaluating")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Refuse values that would silently evaluate something else than asked."""
    for name in ("limit", "gen_batch_size", "judge_batch_size", "max_new_tokens", "max_length"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    for name in ("temperature", "top_p", "judge_timeout"):
        value = getattr(args, name)
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {value}")


def cli_main(argv: Sequence[str]) -> int:
    """Entry point of ``prefopt eval alpacaeval``."""
    from prefopt.core.rundir import guarded_folder

    args = build_parser().parse_args(list(argv))
    check_args(args)
    if args.leaderboard:
        leaderboard(args.leaderboard, args.out)
        return 0
    name = args.generator_name or (Path(args.policy).name if args.policy else None)
    args.out = str(args.out or Path("runs") / "eval" / "alpacaeval" / (name or "outputs"))
    with guarded_folder(args.out, None, overwrite=args.overwrite, command="prefopt eval alpacaeval"):
        run(args)
    return 0
