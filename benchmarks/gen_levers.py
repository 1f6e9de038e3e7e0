"""Generation levers of the HF generator, timed A/B interleaved: ``python -m benchmarks.gen_levers``.

The rollout part of a GRPO round (``benchmarks/online.py``): ``--prompts`` hh-rlhf prompts (the same chat
prompts ``prefopt bench online`` uses), ``--generations`` samples each (temperature 1, top-k 0, top-p 1,
at most ``--completion-length`` new tokens, stop at EOS), fp32, through
:class:`prefopt.generation.hf.HFGenerator` with each lever's options (``--variants``, names in
:data:`VARIANTS`). Every repeat uses the same prompts with the seed ``repeat``; the variants run in a
rotated order per repeat (after one untimed warm-up call each, which includes any compilation). Reported
per variant: median wall seconds and median process CPU seconds (``time.process_time``: on a core shared
with other jobs, the CPU time the call actually got is much steadier than its wall time), the median
per-repeat ratios ``hf / variant`` of both (>1 = faster than today's path), the mean completion length,
and whether it drew exactly the ``hf`` variant's tokens in every repeat (``same_samples_as_hf``).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any, Sequence

VARIANTS: dict[str, dict[str, Any]] = {
    "hf": {},
    "hf+prealloc": {"kv_cache": "prealloc"},
    "hf+static": {"kv_cache": "static"},
    "hf+static+compile": {"kv_cache": "static", "compile": True},
    "loop": {"decode": "loop"},
    "loop+prealloc": {"decode": "loop", "kv_cache": "prealloc"},
    "loop+prealloc+drop": {"decode": "loop", "kv_cache": "prealloc", "drop_finished": True},
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gen_levers", description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=1)
    p.add_argument("--generations", type=int, default=8)
    p.add_argument("--completion-length", type=int, default=64)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--variants", default="hf,hf+prealloc,loop+prealloc,loop+prealloc+drop",
                   help="comma-separated, from: " + ", ".join(VARIANTS))
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--out", default=None)
    return p


def _rows(outs: list) -> list[list[int]]:
    return [c.token_ids for o in outs for c in o]


def _ratio(times: dict[str, list[float]], n: str) -> float:
    return statistics.median(a / b for a, b in zip(times["hf"], times[n], strict=True))


def _summary(times: dict[str, list[float]], cpu: dict[str, list[float]], toks: dict[str, list],
             names: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n in names:
        lens = [len(r) for rep in toks[n] for r in rep]
        out[n] = {"median_s": statistics.median(times[n]), "all_s": times[n], "x_hf_median_per_repeat": _ratio(times, n),
                  "median_cpu_s": statistics.median(cpu[n]), "all_cpu_s": cpu[n], "x_hf_cpu": _ratio(cpu, n),
                  "completion_tokens_mean": sum(lens) / len(lens),
                  "same_samples_as_hf": all(a == b for a, b in zip(toks[n], toks["hf"], strict=True))}
    return out


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    import torch

    from benchmarks.common import load_base, load_pairs, machine, set_threads, write_json
    from prefopt.generation import SamplingParams
    from prefopt.generation.hf import HFGenerator

    args = parser().parse_args(argv)
    names = args.variants.split(",")
    if "hf" not in names or any(n not in VARIANTS for n in names):
        raise SystemExit(f"--variants must include hf and come from {list(VARIANTS)}, got {names}")
    set_threads()
    model, tok = load_base(args.model)
    model.config.use_cache = True
    max_prompt = args.max_length - args.completion_length
    prompts = [list(ex.prompt) for ex, _ in load_pairs(tok, args.prompts, max_prompt)]
    gens = {n: HFGenerator(model, tok, batch_size=args.prompts, max_prompt_length=max_prompt, **VARIANTS[n])
            for n in names}
    params = lambda seed: SamplingParams(temperature=1.0, top_p=1.0, top_k=0, n=args.generations,  # noqa: E731
                                         max_new_tokens=args.completion_length, seed=seed)
    info, warm = machine(), {}
    for n in names:
        t0 = time.perf_counter()
        gens[n].generate(prompts, params(10_000))
        warm[n] = time.perf_counter() - t0
        print(f"warm-up {n}: {warm[n]:.2f} s", flush=True)
    times: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    toks: dict[str, list] = {n: [] for n in names}
    loads = []
    for r in range(args.repeats):
        loads.append(os.getloadavg()[0])
        for n in names[r % len(names):] + names[:r % len(names)]:
            t0, c0 = time.perf_counter(), time.process_time()
            with torch.no_grad():
                outs = gens[n].generate(prompts, params(r))
            times[n].append(time.perf_counter() - t0)
            cpu[n].append(time.process_time() - c0)
            toks[n].append(_rows(outs))
        print(f"repeat {r}: " + ", ".join(f"{n} {times[n][-1]:.2f}s (cpu {cpu[n][-1]:.2f}s)" for n in names),
              flush=True)
    res = _summary(times, cpu, toks, names)
    for n in names:
        print(f"{n:22s} median {res[n]['median_s']:.2f} s  x hf {res[n]['x_hf_median_per_repeat']:.3f}  "
              f"cpu {res[n]['median_cpu_s']:.2f} s  x hf {res[n]['x_hf_cpu']:.3f}  "
              f"tokens {res[n]['completion_tokens_mean']:.1f}  same samples as hf {res[n]['same_samples_as_hf']}")
    payload = {"bench": "gen_levers", "command": "python -m benchmarks.gen_levers " + " ".join(argv or []),
               "config": vars(args), "machine": {**info, "load_avg_per_repeat": loads,
                                                 "load_avg_end": os.getloadavg()},
               "warmup_s": warm, "variants": {n: VARIANTS[n] for n in names}, "results": res}
    write_json(args.out, payload)
    return payload


if __name__ == "__main__":
    import sys

    run(sys.argv[1:])
