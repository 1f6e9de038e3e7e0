"""``prefopt eval head2head``: policy B against policy A on the same prompts, judged pair by pair.

Usage::

    prefopt eval head2head --policy-a smollm2-135m-instruct --policy-b runs/dpo/final \\
        --prompts ../shared/data/alpaca-eval/reference_gpt4_turbo_gpt4_1106_preview.dev50.jsonl \\
        --judge rm --judge-model runs/rm/gpm --judge-agreement runs/eval/agree/gpm/results.json \\
        --max-new-tokens 128 --out runs/eval/h2h/dpo_vs_base
    prefopt eval head2head --outputs-a a/model_outputs.json --outputs-b b/model_outputs.json ...

Both policies answer every prompt (``outputs_a.jsonl``/``outputs_b.jsonl``, appended per batch; greedy by
default, chunk k sampled with seed + k), or their answers are read from AlpacaEval ``model_outputs.json``
files (matched by instruction). The judge gives P(B beats A) per prompt (``judgements.jsonl``): an RM
judge is order-free; lm/http judges are asked in both orders and averaged (their position consistency is
reported, Zheng et al. 2023). B's win rate counts a tie (P = 0.5 exactly, e.g. identical answers) as
half a win; the 95 % CI is Wilson's (1927) over the n prompts. Every step resumes where it stopped.
Against a strong reference (GPT-4 Turbo) small models' win probabilities crowd near 0, so A vs B is the
sensitive comparison.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from prefopt.core.errors import ConfigError, DataError
from prefopt.core.io import atomic_write_json
from prefopt.core.logging import progress
from prefopt.eval import agreement as AG
from prefopt.eval.head2head_data import load_prompts, read_outputs
from prefopt.eval.judge_cli import (
    add_judge_args,
    agreement_text,
    check_judge_name,
    judge_pending,
    judge_settings,
    judgement_fields,
    make_cli_judge,
    read_agreement,
)
from prefopt.eval.resumable import ResultStore


def _gen_args(args: argparse.Namespace, policy: str) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), "policy": policy})


def generate(args: argparse.Namespace, rows: list[dict], out: Path, side: str, policy: str) -> list[dict]:
    """Answers of ``policy`` to every row (missing ones generated in fixed length-sorted chunks)."""
    from prefopt.eval.alpacaeval import build_generator, sampling_params
    from prefopt.eval.alpacaeval_data import config_check

    config_check(out / f"generation_config_{side}.json", {
        "policy": policy, "prompts": args.prompts, "limit": args.limit, "backend": args.backend, "bf16": args.bf16,
        "temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k,
        "max_new_tokens": args.max_new_tokens, "seed": args.seed}, f"outputs of policy {side.upper()}")
    store = ResultStore(out / f"outputs_{side}.jsonl", key_fields=("index",))
    order = sorted(rows, key=lambda r: (len(r["instruction"]), r["index"]))
    chunks = [order[s:s + args.gen_batch_size] for s in range(0, len(order), args.gen_batch_size)]
    if store.pending(rows):
        gen = build_generator(_gen_args(args, policy))
        bar = progress(total=len(rows), desc=f"generate {side.upper()}")
        bar.update(len(rows) - len(store.pending(rows)))
        for k, chunk in enumerate(chunks):
            todo = store.pending(chunk)
            if todo:
                comps = gen.generate([r["prompt"] for r in todo], sampling_params(args, args.seed + k))
                store.append({"index": r["index"], "output": c[0].text, "finish_reason": c[0].finish_reason}
                             for r, c in zip(todo, comps, strict=True))
                bar.update(len(todo))
        bar.close()
        del gen
    done = {r["index"]: r for r in store.rows()}
    outs = [done[r["index"]] for r in rows]
    empty = [o["index"] for o in outs if not o["output"].strip()]
    if empty and not args.allow_empty:
        raise DataError(f"policy {side.upper()} ({policy}) returned empty text for {len(empty)} prompt(s) "
                        f"(indices {empty[:10]}); kept in the file - rerun with --allow-empty to judge them as they "
                        "are", file=str(store.path), field="output")
    return outs


def answers(args: argparse.Namespace, rows: list[dict], out: Path, side: str) -> list[dict]:
    """Policy ``side``'s answers: read from ``--outputs-{side}`` or generated with ``--policy-{side}``."""
    path, policy = getattr(args, f"outputs_{side}"), getattr(args, f"policy_{side}")
    if path:
        return read_outputs(path, rows)
    if not policy:
        raise ConfigError(f"give --policy-{side} (to generate) or --outputs-{side} FILE")
    return generate(args, rows, out, side, policy)


def judge_all(args: argparse.Namespace, rows: list[dict], a: list[dict], b: list[dict], out: Path) -> list[dict]:
    """P(B beats A) per prompt, judged in batches (each appended when done); all rows in prompt order.

    An unparsable judge answer (``retry``) is kept as a failed attempt and asked again by the next run.
    """
    store = ResultStore(out / "judgements.jsonl", key_fields=("index",), retry_field="retry")
    judge_pending(store, rows, lambda: make_cli_judge(args), args.judge_batch_size, "judge",
                  ask=lambda batch: ([r["prompt"] for r in batch], [a[r["index"]]["output"] for r in batch],
                                     [b[r["index"]]["output"] for r in batch], [r["index"] for r in batch]),
                  to_row=lambda r, x, name: {"index": r["index"], "judge": name, **judgement_fields(x, "b", "a")})
    done = {r["index"]: r for r in store.rows()}
    return [done[r["index"]] for r in rows]


def length_split(ok: list[dict], a: list[dict], b: list[dict]) -> dict:
    """B's win rate (Wilson 95 %) where B's answer is longer than A's and where it is not (characters):
    a gain that holds where B is not longer is not only a length preference of the judge."""
    out = {}
    for name, longer in (("b_longer", True), ("b_not_longer", False)):
        sub = [j["p_b"] for j in ok if (len(b[j["index"]]["output"]) > len(a[j["index"]]["output"])) == longer]
        wr = AG.win_rate(sub) if sub else {"win_rate": None, "ci_low": None, "ci_high": None, "n": 0}
        out[name] = {k: wr[k] for k in ("win_rate", "ci_low", "ci_high", "n")}
    return out


def _not_longer_text(split: dict) -> str:
    nl = split["b_not_longer"]
    if not nl["n"]:
        return ""
    return f" (where B is not longer: {100 * nl['win_rate']:.1f}% [{100 * nl['ci_low']:.1f}, {100 * nl['ci_high']:.1f}] n={nl['n']})"


def summarize(args: argparse.Namespace, judged: list[dict], a: list[dict], b: list[dict]) -> dict:
    """``results.json``: win rate with CI, ties, judge, the judge's agreement, mean lengths."""
    ok = [j for j in judged if j["p_b"] is not None]
    if not ok:
        raise DataError("the judge returned no parsable judgement")
    res = AG.win_rate([j["p_b"] for j in ok])
    both = [j for j in ok if j["p_b_first"] is not None and j["p_a_first"] is not None]
    res.update(interval="Wilson 95% over prompts (a tie counts 0.5)", judge=ok[0]["judge"],
               judge_agreement=read_agreement(args.judge_agreement),
               position_consistency=AG.position_consistency([j["p_b_first"] for j in both],
                                                            [j["p_a_first"] for j in both]) if both else None,
               n_unparsable=len(judged) - len(ok), name_a=args.name_a, name_b=args.name_b,
               mean_len_a=sum(len(o["output"]) for o in a) / len(a), mean_len_b=sum(len(o["output"]) for o in b) / len(b),
               length_unit="characters", by_length=length_split(ok, a, b), n_empty_a=sum(not o["output"].strip() for o in a),
               n_empty_b=sum(not o["output"].strip() for o in b), prompts=args.prompts, limit=args.limit,
               decoding={"temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k,
                         "max_new_tokens": args.max_new_tokens, "seed": args.seed})
    return res


def run(args: argparse.Namespace) -> dict:
    """Answers -> judgements -> ``results.json``; prints the one-line summary."""
    from prefopt.eval.alpacaeval_data import config_check

    check_judge_name(args.judge)
    agreement = read_agreement(args.judge_agreement)  # fail early on a bad file
    rows = load_prompts(args.prompts, args.limit)
    args.name_a = args.name_a or Path(args.policy_a or args.outputs_a or "A").name
    args.name_b = args.name_b or Path(args.policy_b or args.outputs_b or "B").name
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    a, b = answers(args, rows, out, "a"), answers(args, rows, out, "b")
    config_check(out / "judge_config.json", {**judge_settings(args), "outputs_a": args.outputs_a,
                 "outputs_b": args.outputs_b, "policy_a": args.policy_a, "policy_b": args.policy_b}, "judgements")
    res = summarize(args, judge_all(args, rows, a, b, out), a, b)
    atomic_write_json(out / "results.json", res)
    if agreement is None:
        print(f"warning: judge {res['judge']} is unvalidated (no --judge-agreement); its win rates are not "
              "known to track GPT-4 or human labels", file=sys.stderr)
    print(f"head2head {res['name_b']} vs {res['name_a']}: win rate {100 * res['win_rate']:.1f}% "
          f"[{100 * res['ci_low']:.1f}, {100 * res['ci_high']:.1f}] (n={res['n']}, ties={res['ties']}), "
          f"judge {res['judge']}, {agreement_text(agreement)}; mean length {res['mean_len_b']:.0f} vs "
          f"{res['mean_len_a']:.0f} chars{_not_longer_text(res['by_length'])}; results: {out / 'results.json'}, "
          f"judgements: {out / 'judgements.jsonl'}")
    return res


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prefopt eval head2head", description=__doc__.split("\n\n")[0])
    for side in ("a", "b"):
        p.add_argument(f"--policy-{side}", help="name, folder or LoRA adapter folder")
        p.add_argument(f"--name-{side}", default=None)
        p.add_argument(f"--outputs-{side}", default=None, help="AlpacaEval model_outputs.json instead of generating")
    p.add_argument("--prompts", required=True, help="AlpacaEval jsonl, hh-rlhf jsonl(.gz) or jsonl of {prompt}")
    p.add_argument("--limit", type=int, default=None, help="first N prompts")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--gen-batch-size", type=int, default=4)
    p.add_argument("--backend", default="hf", choices=("hf", "vllm"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--allow-empty", action="store_true", help="judge empty answers instead of stopping")
    p.add_argument("--judge-agreement", default=None, help="results.json of prefopt eval judge-agreement")
    add_judge_args(p)
    p.add_argument("--out", required=True)
    return p


def cli_main(argv: Sequence[str]) -> int:
    """Entry point of ``prefopt eval head2head``."""
    args = build_parser().parse_args(list(argv))
    if args.judge_batch_size < 1 or args.gen_batch_size < 1:
        raise ConfigError("--judge-batch-size and --gen-batch-size must be >= 1")
    from prefopt.core.rundir import run_lock

    with run_lock(args.out, "prefopt eval head2head"):  # one writer per folder (docs/reliability.md)
        run(args)
    return 0
