"""Whole GRPO rounds: prefopt's online loop vs TRL ``GRPOTrainer``'s training step, generation included.

One round, both sides: ``batch_size`` hh-rlhf prompts (chat messages), ``generations`` samples each
(temperature 1, top-k 0, top-p 1, at most ``completion_length`` new tokens, stop at EOS), scored by
the same rule-based reward function (``char_fraction``: the fraction of digits, graded so every group
has advantages), group-normalised advantages, one policy update (mu = 1, beta 0, DAPO normalisation,
eps 0.2, clip 1.0, AdamW lr 1e-6). Round ``i`` uses the same prompts on both sides; sampling is seeded
per round on both sides (the samples differ: each side samples with its own code).

* ours: :func:`prefopt.loops.online.run_round` on a context from ``build_context`` (the loop's own
  HF generator: each prompt prefilled once for its G samples; the reward source; ``collect_group``;
  the update in the measured ``online.layout``, default ``shared_prompt``).
* TRL: ``GRPOTrainer.training_step`` on the round's rows (each prompt repeated G times, as its
  ``RepeatSampler`` gives them): ``_prepare_inputs`` generates (transformers ``generate``), scores,
  computes advantages; then ``compute_loss`` and backward; then clip + AdamW as ``trl_train_step``.

Time split per round (both sides, by wrapping the sides' own methods): ``generate`` (ours:
``generator.generate``; TRL: ``_generate``), ``score`` (ours: the reward source; TRL:
``_calculate_rewards``), ``collect_other`` (advantages, batching, TRL's bookkeeping) and ``update``.

Update on identical samples (fp32 check): the first round's prefopt rollouts and advantages are
replayed through ``benchmarks.grpo``'s two update steps (ours in the measured layout; TRL's
``compute_loss``) from the same start; the JSON records both losses and their difference.
"""
from __future__ import annotations

import contextlib
import time
from typing import Any, Callable

import torch

from benchmarks.common import (
    Side,
    clone,
    count_params,
    enable_checkpointing,
    is_checkpointing,
    load_pairs,
    our_optim,
    scratch_dir,
    trl_args,
)

LR = 1e-6
REWARD = "char_fraction"


def prepare(args: Any) -> dict[str, Any]:
    from benchmarks.common import load_base
    from data_pipelines.schemas import PromptExample
    from prefopt.generation.hf import encode_prompt_ids

    base, tok = load_base(args.model, seed=args.seed)
    n_rounds = args.warmup + args.steps
    pairs = load_pairs(tok, n_rounds * args.batch_size, args.max_length - args.completion_length)
    examples = [PromptExample(prompt=list(ex.prompt), id=str(k)) for k, (ex, _) in enumerate(pairs)]
    rounds = [examples[i * args.batch_size:(i + 1) * args.batch_size] for i in range(n_rounds)]
    ours_ids = [encode_prompt_ids(tok, ex.prompt) for ex in examples]
    trl_ids = [list(tok.apply_chat_template([dict(m) for m in ex.prompt], add_generation_prompt=True,
                                            tokenize=True, return_dict=True)["input_ids"]) for ex in examples]
    tokens = [sum(len(ours_ids[i * args.batch_size + j]) for j in range(args.batch_size)) * args.generations
              for i in range(n_rounds)]
    return {"proto": base, "tok": tok, "rounds": rounds, "tokens": tokens, "n_params": count_params(base),
            "timing": {}, "captured": {}, "completion_length_mean": {},
            "extra": {"prompt_ids_equal_both_sides": ours_ids == trl_ids, "reward_function": REWARD,
                      "prompt_tokens": [len(p) for p in ours_ids]}}


class _Clock:
    """Accumulates the wall time of wrapped calls under a name (one dict per round)."""

    def __init__(self) -> None:
        self.current: dict[str, float] = {}

    def wrap(self, name: str, fn: Callable, after: Callable | None = None) -> Callable:
        def timed(*a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            out = fn(*a, **kw)
            self.current[name] = self.current.get(name, 0.0) + time.perf_counter() - t0
            if after is not None:
                after(out)
            return out

        return timed


def _ours_cfg(args: Any, layout: str) -> Any:
    from prefopt.configs import TrainConfig
    from prefopt.core.config import from_dict

    return from_dict(TrainConfig, {
        "algorithm": "grpo", "loss": {"beta": 0.0, "loss_type": "dapo", "epsilon_low": 0.2, "epsilon_high": 0.2},
        "model": {"name": args.model}, "precision": args.precision,
        "optim": {"lr": LR, "warmup_ratio": 0.0, "scheduler": "constant", "max_grad_norm": 1.0, "impl": args.optim_impl},
        "run": {"output_dir": scratch_dir("bench-online-"), "seed": args.seed, "report_to": []},
        "online": {"prompts_per_round": args.batch_size, "num_generations": args.generations,
                   "max_new_tokens": args.completion_length, "temperature": 1.0, "top_p": 1.0, "top_k": 0,
                   "layout": layout, "generation_batch_size": args.batch_size,
                   "max_prompt_length": args.max_length - args.completion_length,
                   "reward": {"functions": [{"name": REWARD}]}}})


def ours_side(env: dict[str, Any], args: Any, layout: str) -> Side:
    from prefopt.algorithms import get_algorithm
    from prefopt.core.backend import SingleBackend
    from prefopt.loops.online import build_context, run_round

    cfg = _ours_cfg(args, layout)
    policy = enable_checkpointing(clone(env["proto"]), args)
    backend = SingleBackend(torch.device("cpu"), our_optim(LR, args))
    backend.prepare(policy, 1000)
    ctx = build_context(cfg, get_algorithm("grpo"), backend, policy, env["tok"])
    clock, name = _Clock(), f"prefopt[{layout}]"
    captured, lengths = env["captured"].setdefault(name, {}), env["completion_length_mean"].setdefault(name, [])

    def seen(outs: list) -> None:
        captured.setdefault("outs", outs)
        lens = [len(c.token_ids) for o in outs for c in o]
        lengths.append(sum(lens) / len(lens))

    ctx.generator.generate = clock.wrap("generate", ctx.generator.generate, seen)
    ctx.source.score = clock.wrap("score", ctx.source.score,
                                  lambda out: captured.setdefault("rewards", out.total))
    from dataclasses import replace

    from prefopt.loops.online_drivers import ONLINE_DRIVERS

    group = ONLINE_DRIVERS.get("group")
    times = env["timing"].setdefault(name, [])

    def step(i: int) -> float:
        clock.current = {}
        ONLINE_DRIVERS._items["group"] = replace(group, collect=clock.wrap("collect", group.collect))
        try:
            t0 = time.perf_counter()
            out = list(run_round(ctx, env["rounds"][i], i, i))
            total = time.perf_counter() - t0
        finally:
            ONLINE_DRIVERS._items["group"] = group
        times.append(_split(clock.current, total))
        return float(out[-1][1]["loss"])

    return Side(name, step, 6 * env["n_params"], {"layout": layout, "activation_checkpointing": is_checkpointing(policy)})


def _split(c: dict[str, float], total: float) -> dict[str, float]:
    gen, score, collect = c.get("generate", 0.0), c.get("score", 0.0), c.get("collect", 0.0)
    return {"total": total, "generate": gen, "score": score, "collect_other": collect - gen - score,
            "update": total - collect}


def _trl_reward(prompts: list, completions: list, **kw: Any) -> list[float]:
    """The same registered reward function, on TRL's conversational completions (message lists)."""
    from prefopt.core.registry import REWARD_FNS

    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return list(REWARD_FNS.get(REWARD)(prompts, texts))


def trl_side(env: dict[str, Any], args: Any) -> Side:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    import prefopt.rewards  # noqa: F401  (registers the reward functions)

    policy, g = clone(env["proto"]), args.generations
    ds = Dataset.from_list([{"prompt": [dict(m) for m in ex.prompt]} for r in env["rounds"] for ex in r])
    cfg = GRPOConfig(output_dir=scratch_dir("bench-trl-online-"), per_device_train_batch_size=args.batch_size * g,
                     num_generations=g, max_completion_length=args.completion_length, beta=0.0, loss_type="dapo",
                     epsilon=0.2, learning_rate=LR, lr_scheduler_type="constant", max_grad_norm=1.0,
                     temperature=1.0, top_p=1.0, top_k=0, bf16=args.precision == "bf16", use_cpu=True,
                     report_to="none", save_strategy="no", logging_steps=1000,
                     disable_dropout=True, seed=args.seed, log_completions=False, **trl_args(args))
    trainer = GRPOTrainer(model=policy, reward_funcs=_trl_reward, args=cfg, train_dataset=ds,
                          processing_class=env["tok"])
    model = enable_checkpointing(trainer.model, args)
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train(), which we do not call
    trainer.create_optimizer()
    opt, params = trainer.optimizer, [p for p in model.parameters() if p.requires_grad]
    amp = trainer.accelerator.autocast if args.precision == "bf16" else contextlib.nullcontext
    clock = _Clock()
    trainer._generate = clock.wrap("generate", trainer._generate)
    trainer._calculate_rewards = clock.wrap("score", trainer._calculate_rewards)
    trainer._prepare_inputs = clock.wrap("collect", trainer._prepare_inputs)
    times = env["timing"].setdefault("trl", [])

    def step(i: int) -> float:
        clock.current = {}
        rows = [{"prompt": [dict(m) for m in ex.prompt]} for ex in env["rounds"][i] for _ in range(g)]
        torch.manual_seed(args.seed * 1_000_003 + i * 1009)
        t0 = time.perf_counter()
        model.train()
        with amp():
            loss = trainer.training_step(model, rows, None)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(_split(clock.current, time.perf_counter() - t0))
        env["completion_length_mean"].setdefault("trl", []).append(
            trainer._metrics["train"]["completions/mean_length"][-1])
        return float(loss.detach())

    return Side("trl", step, 6 * env["n_params"], {"activation_checkpointing": is_checkpointing(model)})


def build_sides(env: dict[str, Any], args: Any, only: str | None = None) -> list[Side]:
    from benchmarks.common import collect_sides

    layouts = ("padded", "shared_prompt") if args.layout == "all" else (args.layout,)
    return collect_sides(env, args, layouts, ours_side, trl_side, only)


def replay_update(env: dict[str, Any], args: Any, layout: str) -> dict[str, Any]:
    """The first round's prefopt rollouts and rewards through ``benchmarks.grpo``'s two update steps
    (ours in ``layout``, TRL's ``compute_loss``), fp32, from the same start: both losses and their diff."""
    import argparse

    from benchmarks import grpo
    from data_pipelines.tokenize import TokenizedList

    cap = env["captured"].get(f"prefopt[{layout}]", {})
    if "outs" not in cap:
        return {"error": "no captured rollouts"}
    g = args.generations
    items = [TokenizedList(tuple(o[0].prompt_ids), tuple(tuple(c.token_ids) for c in o), tuple([0.0] * g), id=str(k))
             for k, o in enumerate(cap["outs"])]
    r = torch.nan_to_num(torch.as_tensor(cap["rewards"], dtype=torch.float32)).reshape(len(items), g)
    adv = ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)).reshape(-1)
    groups = [[(len(it.prompt_ids), [len(c) for c in it.completion_ids]) for it in items]]
    sub = {"proto": env["proto"], "tok": env["tok"], "batches": [items], "advantages": [adv], "groups": groups,
           "tokens": [0], "n_params": env["n_params"]}
    a = argparse.Namespace(generations=g, batch_size=len(items), completion_length=args.completion_length,
                           precision="fp32", lora=False, checkpointing=getattr(args, "checkpointing", False))
    ours = grpo.ours_side(sub, a, layout).step(0)
    trl = grpo.trl_side(sub, a)
    theirs = trl.step(0)
    return {"samples": "round 0 of prefopt[" + layout + "]", "precision": "fp32", "loss_ours": ours,
            "loss_trl": theirs, "loss_abs_diff": abs(ours - theirs),
            "logp_max_abs_diff": trl.info["first_batch_logp_max_abs_diff"]}


def finish(env: dict[str, Any], args: Any) -> dict[str, Any]:
    """Per side: median seconds of each part of a round (measured rounds), completion lengths; replay."""
    import statistics

    split = {}
    for name, rows in env["timing"].items():
        measured = rows[args.warmup:]
        split[name] = {k: statistics.median(r[k] for r in measured) for k in measured[0]} if measured else {}
        split[name]["per_round"] = rows
    layout = "shared_prompt" if args.layout == "all" else args.layout
    return {"round_split_s": split, "completion_length_mean": env["completion_length_mean"],
            "update_on_identical_samples": replay_update(env, args, layout)}
