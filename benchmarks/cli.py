"""``prefopt bench dpo|rm|grpo|online [options]``: prefopt vs TRL in one run (see ``benchmarks/README.md``).

Options: ``--steps N`` measured steps per side (after ``--warmup`` steps), ``--batch-size B`` (pairs for
dpo/rm, prompts for grpo/online), ``--max-length L``, ``--precision fp32|bf16``, ``--lora``,
``--layout padded|packed|shared_prompt|all`` (our side; ``all`` times every layout against TRL in the
same interleaved rounds), ``--ref cache|live`` (dpo), ``--generations G`` (grpo, online), ``--no-memory``
(skip the per-side peak-memory subprocesses), ``--model`` (default the embedded SmolLM2-135M),
``--out FILE.json``, ``--profile`` (dpo, rm, grpo: ``--steps`` steps per side under ``torch.profiler``
instead of the timed rounds; time per step grouped as ``benchmarks.profiler_breakdown`` describes).
"""
from __future__ import annotations

import argparse
import gc
import importlib
import json
import sys
import time
from typing import Any, Sequence

from benchmarks.common import (
    EMBEDDED,
    interleave,
    machine,
    matmul_peak,
    print_table,
    set_threads,
    summarize,
    write_json,
)
from benchmarks.memory import probe_memory, probe_tensor_memory, release_memory, run_probe_subprocess

BENCHES = ("dpo", "rm", "grpo", "online")
TARGETS = {"dpo": 1.5, "rm": 1.3, "grpo": 1.5, "online": 3.0}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prefopt bench", description=__doc__.splitlines()[0])
    p.add_argument("bench", choices=BENCHES)
    p.add_argument("--steps", type=int, default=7, help="measured interleaved rounds per side")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=None,
                   help="pairs (dpo, rm: default 4) or prompts (grpo, online: 1)")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--lora", action="store_true")
    p.add_argument("--layout", choices=("padded", "packed", "shared_prompt", "all"), default=None,
                   help="our layout (default: shared_prompt for dpo/grpo, shared_prompt for rm)")
    p.add_argument("--ref", choices=("cache", "live"), default="cache", help="dpo reference log-probs")
    p.add_argument("--generations", type=int, default=8, help="grpo completions per prompt")
    p.add_argument("--completion-length", type=int, default=64, help="grpo max new tokens per rollout")
    p.add_argument("--model", default=EMBEDDED)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-memory", dest="memory", action="store_false")
    p.add_argument("--synthetic", action="store_true",
                   help="seeded random token ids, every sequence exactly --max-length tokens (dpo, rm, grpo)")
    p.add_argument("--sweep", choices=("length", "group"), default=None,
                   help="run once per --sweep-values (max_length or G), then fit log-log slopes and plot")
    p.add_argument("--sweep-values", default=None, help="comma-separated (default length 256,512,1024,2048; "
                   "group 2,4,8,16)")
    p.add_argument("--checkpointing", action="store_true",
                   help="activation checkpointing on both sides (default: off on both; TRL's own default is on)")
    p.add_argument("--tiled-mlp", type=int, default=None, metavar="TOKENS",
                   help="our side only: each decoder layer's MLP in tiles of TOKENS tokens (model.tiled_mlp_tokens; "
                        "TRL has no such option)")
    p.add_argument("--optim-impl", choices=("fused", "forloop"), default="fused",
                   help="the AdamW kernel, the same on both sides (ours optim.impl; TRL adamw_torch_fused / "
                        "adamw_torch). fused: both libraries' default with torch >= 2.8")
    p.add_argument("--profile-sides", choices=("all", "ours"), default="all",
                   help="with --profile: profile both sides or only ours (TRL's DPO and RM steps "
                        "were OOM-killed under the profiler here, above 16 GB)")
    p.add_argument("--profile", action="store_true",
                   help="dpo/rm/grpo: profile --steps steps per side (torch.profiler) and print where the time goes")
    p.add_argument("--out", default=None)
    return p


def parse(argv: Sequence[str]) -> argparse.Namespace:
    args = parser().parse_args(list(argv))
    if args.batch_size is None:
        args.batch_size = 1 if args.bench in ("grpo", "online") else 4
    if args.bench == "online" and args.layout == "packed":
        raise SystemExit("prefopt bench online: --layout must be padded, shared_prompt or all (online.layout)")
    if args.layout is None:
        args.layout = "shared_prompt"
    if args.profile and (args.bench == "online" or args.sweep):
        raise SystemExit("prefopt bench: --profile is for dpo, rm and grpo (without --sweep)")
    return args


def _module(bench: str) -> Any:
    return importlib.import_module(f"benchmarks.{bench}")


def _forward_argv(argv: Sequence[str]) -> list[str]:
    """The run's options for a probe subprocess (without the bench word and ``--out``)."""
    out, skip = [], False
    for a in list(argv)[1:]:
        if skip:
            skip = False
            continue
        if a == "--out":
            skip = True
            continue
        if a.startswith("--out="):
            continue
        out.append(a)
    return out


def run(argv: Sequence[str]) -> dict[str, Any]:
    args = parse(argv)
    if args.sweep:
        from benchmarks.sweep import run_sweep

        return run_sweep(argv, args)
    set_threads()
    mod = _module(args.bench)
    info = machine()
    print(f"prefopt bench {' '.join(argv)}\nmachine: {json.dumps(info)}", flush=True)
    peak0 = matmul_peak(args.precision)
    t0 = time.perf_counter()
    env = mod.prepare(args)
    sides = mod.build_sides(env, args)
    setup_s = time.perf_counter() - t0
    print(f"set-up {setup_s:.1f} s; tokens/step {env['tokens']}; params {env['n_params']}", flush=True)
    if args.profile:
        return _profile_run(argv, args, env, sides, info, peak0)
    raw = interleave(sides, args.steps, args.warmup, log=lambda s: print(s, flush=True))
    peak1 = matmul_peak(args.precision)
    peak = max(peak0, peak1)
    results = summarize(sides, raw, env["tokens"], args.warmup, peak, "trl")
    names = [s.name for s in sides]
    payload_extra = mod.finish(env, args) if hasattr(mod, "finish") else {}
    del sides
    env = {k: env[k] for k in ("tokens", "n_params", "extra") if k in env}
    release_memory()  # the probes below run in fresh processes; give them this process's freed heap
    if args.memory:
        fwd = _forward_argv(argv)
        for name in names:
            print(f"memory probe: {name} ...", flush=True)
            results[name]["memory"] = run_probe_subprocess(args.bench, name, [args.bench, *fwd])
        trl_mem = results["trl"]["memory"].get("peak_step_mb")
        for name in names:
            mine = results[name]["memory"].get("peak_step_mb")
            if name != "trl" and mine is not None and trl_mem:
                results[name]["memory_ratio_vs_trl"] = mine / trl_mem
    payload = {"bench": args.bench, "command": "prefopt bench " + " ".join(argv), "config": vars(args),
               "machine": {**info, "load_avg_end": __import__("os").getloadavg()},
               "matmul_peak_gflops": {"start": peak0, "end": peak1, "used": peak},
               "tokens_per_step": env["tokens"], "n_params": env["n_params"], "setup_s": setup_s,
               "results": results, "target_speedup": TARGETS[args.bench], "load_avg_per_round": raw["_load_avg"],
               **env.get("extra", {}), **payload_extra}
    print_table(f"{args.bench} ({args.precision}{', LoRA' if args.lora else ''}, batch {args.batch_size}, "
                f"matmul peak {peak:.0f} GFLOP/s)", results, "trl")
    write_json(args.out, payload)
    return payload


def _profile_run(argv: Sequence[str], args: argparse.Namespace, env: dict[str, Any], sides: list, info: dict,
                 peak: float) -> dict[str, Any]:
    """``--profile``: each side's step time by group (``benchmarks.profiler_breakdown``); JSON + table."""
    from benchmarks.profiler_breakdown import print_breakdown, run_profile

    vocab = len(env["tok"])  # the LM head's width (a reward model's config has no vocab_size)
    if args.profile_sides == "ours":
        sides = [s for s in sides if s.name != "trl"]
    res = run_profile(sides, args, vocab, peak, log=lambda s: print(s, flush=True))
    payload = {"bench": args.bench, "mode": "profile", "command": "prefopt bench " + " ".join(argv),
               "config": vars(args), "machine": {**info, "load_avg_end": __import__("os").getloadavg()},
               "matmul_peak_gflops": peak, "vocab": vocab, "profile": res}
    print_breakdown(f"{args.bench} profile ({args.precision}, batch {args.batch_size}, {args.steps} steps/side, "
                    f"matmul peak {peak:.0f} GFLOP/s)", res)
    write_json(args.out, payload)
    return payload


def _probe(argv: Sequence[str]) -> int:
    """``_probe BENCH SIDE BENCH [options] [--tensor-memory]``: build one side in this fresh process,
    measure its memory (resident; with ``--tensor-memory`` also its tensors op by op)."""
    bench, side_name, rest = argv[0], argv[1], [a for a in argv[2:] if a != "--tensor-memory"]
    tensors = "--tensor-memory" in argv[2:]
    args = parse(rest)
    args.steps, args.warmup = 1, 0  # one step from a fresh start (AdamW state is allocated in it)
    set_threads()
    mod = _module(bench)
    env = mod.prepare(args)
    (side,) = mod.build_sides(env, args, only=side_name)
    gc.collect()
    mem = probe_tensor_memory(side, steps=1) if tensors else probe_memory(side, steps=1)
    print("PROBE_JSON " + json.dumps(mem), flush=True)
    return 0


def cli_main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "_probe":
        return _probe(argv[1:])
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(cli_main())
