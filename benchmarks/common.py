"""Shared benchmark machinery: data, models, interleaved timing, matmul peak, MFU, peak memory.

Method (every benchmark):

* **Same data**: the first pairs of ``/work/shared/data/hh-rlhf/helpful-base.train.sample.jsonl.gz``
  (through the project's ``hh_rlhf`` adapter and chat-template tokeniser, over-length pairs dropped), fed
  as the *same token ids* to both sides (TRL's own collators are called on our ids, so tokenisation
  differences cannot change the comparison).
* **Same model and start**: one load of the model; every side gets a deep copy of the same weights.
* **Interleaved timing**: after one warm-up step per side, rounds run ``A, B, A, B, ...`` (the side order
  alternates every round) so both sides see the same machine contention; we report per-side medians and
  the ratio of medians, plus the median of the per-round ratios.
* **tokens/s** counts the real (non-padding) tokens of the batch in the plain padded layout, i.e. the
  same numerator for both sides: a layout that skips repeated prompt tokens gets credit as speed.
* **MFU** = model FLOPs/s / matmul peak measured in the same run at the same precision, with model
  FLOPs = 6 N tokens per training forward+backward and 2 N tokens per no-grad forward (N = all
  parameters, embeddings included), counting the tokens each side actually feeds the model
  (``Side.info["model_tokens"]``: a shared prompt once; padding not counted), so MFU is hardware
  efficiency and tokens/s is useful throughput.
* **Peak memory**: one fresh subprocess per side (``python -m benchmarks.cli _probe ...``) builds only that
  side, records its resident set size (RSS) after set-up, then runs the warm-up and one step while a
  thread samples ``/proc/self/statm`` every 2 ms. ``peak_step_mb`` = max sampled RSS minus the post-set-up
  RSS (activations, gradients, optimizer state, allocator growth); ``peak_total_mb`` = max sampled RSS
  during the steps; ``ru_maxrss_mb`` = the process high-water mark (set-up included, e.g. data loading).
"""
from __future__ import annotations

import atexit
import copy
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

SHARED_DATA = Path(os.environ.get("PREFOPT_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
HH_PATH = str(SHARED_DATA / "hh-rlhf" / "helpful-base.train.sample.jsonl.gz")
EMBEDDED = "smollm2-135m-instruct"


# ----------------------------------------------------------------------------------------------- data

def load_pairs(tok: Any, n: int, max_length: int, path: str = HH_PATH, skip: int = 0) -> list:
    """The first ``n`` hh-rlhf pairs (after ``skip`` kept pairs) that fit ``max_length`` tokens.

    Returns ``(PairwiseExample, TokenizedPair)`` tuples in file order.
    """
    from data_pipelines.adapters import adapt
    from data_pipelines.errors import Issues
    from data_pipelines.sources import read_records
    from data_pipelines.tokenize import LengthPolicy, TokenizeStats, tokenize_pairwise

    policy = LengthPolicy(max_length=max_length, max_prompt_length=max_length - 8, overlong="drop")
    stats = TokenizeStats()
    out = []
    for ex in adapt("hh_rlhf", read_records(path), issues=Issues("skip"), source="hh-rlhf"):
        tp = tokenize_pairwise(ex, tok, policy, stats)
        if tp is None:
            continue
        if skip:
            skip -= 1
            continue
        out.append((ex, tp))
        if len(out) >= n:
            break
    if len(out) < n:
        raise RuntimeError(f"only {len(out)} hh-rlhf pairs fit max_length={max_length}; need {n}")
    return out


def synthetic_pairs(n: int, length: int, seed: int = 0, vocab: int = 49152, eos: int = 2,
                    prompt_only: bool = False) -> list:
    """``n`` pairs of seeded random token ids, every sequence exactly ``length`` tokens: a prompt of
    ``length // 2`` and two completions of the rest (ending with EOS); ``prompt_only`` (GRPO, whose
    completions are sampled): a prompt of ``length`` tokens. For cost-vs-length sweeps
    (``--synthetic``), where real pairs are shorter than the lengths swept. ``(None, TokenizedPair)``."""
    from data_pipelines.tokenize import TokenizedPair

    gen = torch.Generator().manual_seed(seed)
    ids = lambda k: tuple(int(t) for t in torch.randint(3, vocab, (k,), generator=gen))  # noqa: E731
    p = length if prompt_only else length // 2
    c = max(length - p, 2)
    return [(None, TokenizedPair(ids(p), ids(c - 1) + (eos,), ids(c - 1) + (eos,), id=str(i))) for i in range(n)]


def bench_pairs(tok: Any, n: int, max_length: int, args: Any) -> list:
    """The benchmark's pairs: real hh-rlhf (:func:`load_pairs`) or, with ``--synthetic``, :func:`synthetic_pairs`
    of exactly ``max_length`` tokens per sequence."""
    if getattr(args, "synthetic", False):
        return synthetic_pairs(n, max_length, getattr(args, "seed", 0), len(tok), tok.eos_token_id,
                               prompt_only=getattr(args, "bench", "") == "grpo")
    return load_pairs(tok, n, max_length)


def padded_tokens(seqs: list[tuple[int, int]]) -> int:
    """Real tokens of a batch in the padded layout: sum of prompt + completion lengths."""
    return int(sum(p + c for p, c in seqs))


def shared_tokens(groups: list[tuple[int, list[int]]]) -> int:
    """Real tokens of a batch in the shared-prompt layout: each prompt once plus every completion."""
    return int(sum(p + sum(cs) for p, cs in groups))


def model_tokens(layout: str, groups_per_batch: list[list[tuple[int, list[int]]]]) -> list[int]:
    """Tokens a layout runs through the model per batch (``groups``: (prompt length, completion lengths))."""
    if layout == "shared_prompt":
        return [shared_tokens(g) for g in groups_per_batch]
    return [padded_tokens([(p, c) for p, cs in g for c in cs]) for g in groups_per_batch]


def pair_seq_lengths(tps: list) -> list[tuple[int, int]]:
    return ([(len(t.prompt_ids), len(t.chosen_ids)) for t in tps]
            + [(len(t.prompt_ids), len(t.rejected_ids)) for t in tps])


# ----------------------------------------------------------------------------------------------- models

def load_base(name: str, seed: int = 0) -> tuple[Any, Any]:
    """``(model, tokenizer)``: fp32 weights (bf16 runs use autocast on both sides), sdpa attention."""
    from prefopt.core.models import load_causal_lm

    model, tok = load_causal_lm(name, dtype="float32", seed=seed, attn_implementation="sdpa")
    model.config.use_cache = False
    return model, tok


def with_lora(model: Any) -> Any:
    """Both sides' LoRA: r 16, alpha 32, all linear layers, dropout 0 (TRL disables dropout too)."""
    from prefopt.core.lora import apply_lora

    return apply_lora(model, r=16, alpha=32.0, dropout=0.0, target_modules="all-linear")


def clone(model: Any) -> Any:
    return copy.deepcopy(model)


def checkpointing(args: Any) -> bool:
    """``--checkpointing``: activation checkpointing on both sides (default off on both)."""
    return bool(getattr(args, "checkpointing", False))


def trl_args(args: Any) -> dict[str, Any]:
    """TRL config keywords every side sets. TRL 1.16's configs default ``gradient_checkpointing`` to
    True, but only ``Trainer.train()`` (never called here) acts on it; it is set to match, and
    :func:`enable_checkpointing` turns checkpointing on the model itself on both sides."""
    return {"gradient_checkpointing": checkpointing(args),
            "optim": "adamw_torch" if getattr(args, "optim_impl", "fused") == "forloop" else "adamw_torch_fused"}


def our_optim(lr: float, args: Any) -> Any:
    """Our side's optimizer settings: AdamW at ``lr``, constant, clip 1.0, the kernel of ``--optim-impl``."""
    from prefopt.core.backend import OptimConfig

    return OptimConfig(lr=lr, warmup_ratio=0.0, scheduler="constant", max_grad_norm=1.0,
                       impl=getattr(args, "optim_impl", "fused"))


def enable_checkpointing(model: Any, args: Any) -> Any:
    """Activation checkpointing (transformers' own, non-reentrant) on ``model`` when ``--checkpointing``;
    called on both sides' models."""
    if checkpointing(args):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def enable_tiled_mlp(model: Any, args: Any) -> Any:
    """``--tiled-mlp TOKENS`` (our side only): :func:`prefopt.core.tiled_mlp.enable_tiled_mlp`."""
    tokens = getattr(args, "tiled_mlp", None)
    if tokens is not None:
        from prefopt.core.tiled_mlp import enable_tiled_mlp as enable

        enable(model, tokens)
    return model


def count_params(model: Any) -> int:
    """All distinct parameters (tied embeddings counted once; LoRA adapters included)."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def set_threads() -> None:
    n = int(os.environ.get("PREFOPT_BENCH_THREADS", "0") or 0)
    if n > 0:
        torch.set_num_threads(n)


# ----------------------------------------------------------------------------------------------- timing

def matmul_peak(precision: str, size: int = 1536, reps: int = 6) -> float:
    """Best-of-``reps`` dense matmul throughput in GFLOP/s (``size``^3 GEMM, bf16 or fp32)."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    torch.matmul(a, b)
    best = 0.0
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        dt = time.perf_counter() - t0
        best = max(best, 2 * size ** 3 / dt / 1e9)
    return best


@dataclass
class Side:
    """One contender: ``step(i)`` runs one optimizer step on batch ``i`` and returns its loss (float)."""

    name: str
    step: Callable[[int], float]
    flops_per_token: float      # model FLOPs per padded-layout token for one step (6N or 8N ...)
    info: dict[str, Any] = field(default_factory=dict)


def interleave(sides: list[Side], steps: int, warmup: int = 1,
               log: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Warm-up then ``steps`` rounds; round r runs the sides in rotated order. Batch ``i`` is step ``i``.

    Returns per side: ``times`` (s, measured rounds), ``losses`` (all steps), ``first_loss``.
    """
    res: dict[str, Any] = {s.name: {"times": [], "losses": []} for s in sides}
    res["_load_avg"] = []  # 1-minute load average before each round (machine load, recorded)
    for i in range(warmup + steps):
        res["_load_avg"].append(os.getloadavg()[0])
        k = i % len(sides)
        for s in sides[k:] + sides[:k]:
            t0 = time.perf_counter()
            loss = s.step(i)
            dt = time.perf_counter() - t0
            res[s.name]["losses"].append(loss)
            if i >= warmup:
                res[s.name]["times"].append(dt)
            log(f"  step {i}{' (warm-up)' if i < warmup else ''} {s.name}: {dt:.2f} s, loss {loss:.6f}")
    for s in sides:
        res[s.name]["first_loss"] = res[s.name]["losses"][0]
    return res


def summarize(sides: list[Side], raw: dict, tokens: list[int], warmup: int, peak_gflops: float,
              baseline: str) -> dict[str, Any]:
    """Per side: s/step (median), tokens/s, MFU; ratios vs ``baseline`` (ratio of medians and median of
    per-round ratios)."""
    n_measured = len(raw[sides[0].name]["times"])
    measured_tokens = tokens[warmup:warmup + n_measured]
    out: dict[str, Any] = {}
    for s in sides:
        times = raw[s.name]["times"]
        med = statistics.median(times)
        tps = statistics.median([t / dt for t, dt in zip(measured_tokens, times, strict=False)])
        # MFU counts the tokens this side really runs through the model (a shared prompt once)
        run_tokens = s.info.get("model_tokens", tokens)[warmup:warmup + n_measured]
        flops = statistics.median([s.flops_per_token * t / dt for t, dt in zip(run_tokens, times, strict=False)])
        out[s.name] = {"s_per_step": med, "s_per_step_all": times, "tokens_per_s": tps,
                       "model_gflops_per_s": flops / 1e9, "mfu": flops / 1e9 / peak_gflops,
                       "first_batch_loss": raw[s.name]["first_loss"], "losses": raw[s.name]["losses"],
                       **s.info}
    base = raw[baseline]["times"]
    for s in sides:
        if s.name == baseline:
            continue
        mine = raw[s.name]["times"]
        out[s.name]["speedup_vs_" + baseline] = statistics.median(base) / statistics.median(mine)
        out[s.name]["speedup_per_round_median"] = statistics.median([b / m for b, m in zip(base, mine, strict=False)])
        out[s.name]["first_loss_abs_diff"] = abs(raw[s.name]["first_loss"] - raw[baseline]["first_loss"])
    return out


# ----------------------------------------------------------------------------------------------- report

def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import transformers
    import trl

    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
            "load_avg_start": os.getloadavg(), "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def print_table(title: str, results: dict[str, Any], baseline: str) -> None:
    print(f"\n== {title} ==")
    print(f"{'side':<26}{'s/step':>9}{'tok/s':>9}{'MFU':>8}{'peak MB':>9}{'first loss':>13}{'x ' + baseline:>10}")
    for name, r in results.items():
        mem = r.get("memory", {}).get("peak_step_mb")
        spd = r.get("speedup_vs_" + baseline)
        print(f"{name:<26}{r['s_per_step']:>9.2f}{r['tokens_per_s']:>9.1f}{100 * r['mfu']:>7.1f}%"
              f"{(f'{mem:.0f}' if mem is not None else '-'):>9}{r['first_batch_loss']:>13.6f}"
              f"{(f'{spd:.2f}' if spd is not None else '-'):>10}")


def write_json(path: str | None, payload: dict[str, Any]) -> None:
    if not path:
        return
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=float))
    os.replace(tmp, p)


def is_checkpointing(model: Any) -> bool:
    """Whether activation checkpointing is on for ``model`` (recorded in each side's JSON)."""
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


def trl_train_step(trainer: Any, model: torch.nn.Module, batches: list, amp: Callable[[], Any]) -> Callable[[int], float]:
    """One TRL optimizer step on ``batches[i]``: its own ``training_step``, clip at 1.0, AdamW step."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = trainer.optimizer

    def step(i: int) -> float:
        model.train()
        with amp():
            loss = trainer.training_step(model, dict(batches[i]), None)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def collect_sides(env: dict[str, Any], args: Any, layouts: Any, ours: Callable, trl: Callable,
                  only: str | None = None) -> list[Side]:
    """Our side per layout then TRL's, or just the one named by ``only`` (memory probes)."""
    sides = [ours(env, args, layout) for layout in layouts if only in (None, f"prefopt[{layout}]")]
    if only in (None, "trl"):
        sides.append(trl(env, args))
    return sides


def scratch_dir(prefix: str) -> str:
    """A temporary folder for a TRL trainer's ``output_dir``, removed when the process exits."""
    import shutil
    import tempfile

    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, True)
    return path
