"""GRPO policy update on identical rollouts: prefopt's ``grpo`` loss path vs TRL ``GRPOTrainer.compute_loss``.

Rollouts (not timed, identical for both sides): for each of ``batch_size`` hh-rlhf prompts (the prompt
turns of the first pairs), ``generations`` completions sampled once from the starting model
(temperature 1, seed fixed, at most ``completion_length`` new tokens, cut after the first EOS). Rewards
are fixed seeded N(0, 1) draws per completion (the update's cost does not depend on their values);
advantages are group-normalised ``(r - mean) / (std + 1e-4)`` (TRL's ``scale_rewards="group"``) and the
same tensor is given to both sides. Single update per rollout batch (mu = 1), so the old log-probs are
the detached current ones on both sides (TRL's default when ``num_iterations == 1``); beta = 0; DAPO
token normalisation; eps 0.2.

Timed step on both sides: forward with grad, per-token log-probs, clipped surrogate, backward,
clip to 1.0, AdamW (lr 1e-6).

* ours: the online loop's rows (``online_algos.make_batch``) in the measured layout (``shared_prompt``:
  ``RolloutBatch.for_forward`` regroups the G rows of a prompt into one row, the prompt once, under a
  block mask; ``online.layout: shared_prompt``), ``prefopt.logprobs.forward_token_logps`` (LM head on
  completion positions only), ``GROUP_LOSSES.get("grpo")`` with the global token count.
* TRL: ``GRPOTrainer.compute_loss`` (its ``_compute_loss``: fused-LM-head log-probs and entropy of the
  completion tokens, clipped surrogate, DAPO normalisation, metrics) on a batch in the layout
  ``_generate_and_score_completions`` produces (left-padded ``prompt_ids``/``prompt_mask``, right-padded
  ``completion_ids``/``completion_mask``, ``advantages``, ``num_items_in_batch``), then
  ``accelerator.backward``, clip, AdamW. ``training_step`` itself is not called because TRL's
  ``_prepare_inputs`` would generate new rollouts.
"""
from __future__ import annotations

import contextlib
from typing import Any

import torch

from benchmarks.common import (
    Side,
    bench_pairs,
    clone,
    collect_sides,
    count_params,
    enable_checkpointing,
    enable_tiled_mlp,
    is_checkpointing,
    model_tokens,
    our_optim,
    scratch_dir,
    trl_args,
    with_lora,
)

LAYOUTS = ("padded", "packed", "shared_prompt")
LR = 1e-6


def _rollouts(model: Any, tok: Any, prompt: tuple[int, ...], g: int, max_new: int, seed: int) -> list[tuple]:
    eos = tok.eos_token_id
    ids = torch.tensor([list(prompt)])
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=0,
                             top_p=1.0, temperature=1.0, max_new_tokens=max_new, num_return_sequences=g,
                             use_cache=True, pad_token_id=eos)
    comps = []
    for row in out[:, ids.shape[1]:].tolist():
        cut = row.index(eos) + 1 if eos in row else len(row)
        comps.append(tuple(row[:max(cut, 1)]))
    return comps


def prepare(args: Any) -> dict[str, Any]:
    from benchmarks.common import load_base
    from data_pipelines.tokenize import TokenizedList

    base, tok = load_base(args.model, seed=args.seed)
    n_batches = args.warmup + args.steps
    g = args.generations
    pairs = bench_pairs(tok, n_batches * args.batch_size, args.max_length - args.completion_length, args)
    base.eval()
    gen = torch.Generator().manual_seed(args.seed)
    groups = []
    for k, (_, tp) in enumerate(pairs):
        comps = _rollouts(base, tok, tp.prompt_ids, g, args.completion_length, args.seed + k)
        rewards = torch.randn(g, generator=gen)
        groups.append(TokenizedList(tp.prompt_ids, tuple(comps), tuple(float(r) for r in rewards), id=str(k)))
    proto = with_lora(base) if args.lora else base
    batches = [groups[i * args.batch_size:(i + 1) * args.batch_size] for i in range(n_batches)]
    advs = []
    for b in batches:
        r = torch.tensor([s for it in b for s in it.scores]).reshape(len(b), g)
        advs.append(((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)).reshape(-1))
    tokens = [sum(len(it.prompt_ids) * len(it.completion_ids) + sum(len(c) for c in it.completion_ids)
                  for it in b) for b in batches]
    comp_lens = [len(c) for b in batches for it in b for c in it.completion_ids]
    groups = [[(len(it.prompt_ids), [len(c) for c in it.completion_ids]) for it in b] for b in batches]
    return {"proto": proto, "tok": tok, "batches": batches, "advantages": advs, "tokens": tokens, "groups": groups,
            "n_params": count_params(proto),
            "extra": {"rollouts": {"completion_tokens_mean": sum(comp_lens) / len(comp_lens),
                                   "prompt_tokens": [len(it.prompt_ids) for b in batches for it in b],
                                   "generations": g}}}


def _collate(layout: str, items: list, pad: int) -> Any:
    """``padded`` / ``shared_prompt``: the online loop's own rows (``make_batch``; the step regroups
    them with ``RolloutBatch.for_forward`` as ``buffer_loss`` does); ``packed``: ``collate_packed``."""
    from data_pipelines.collate import collate_packed
    from prefopt.loops.online_algos import make_batch

    if layout == "packed":
        return collate_packed(items)
    rows = [(it.prompt_ids, c) for it in items for c in it.completion_ids]
    return make_batch([p for p, _ in rows], [c for _, c in rows], pad)


def ours_side(env: dict[str, Any], args: Any, layout: str) -> Side:
    from prefopt.core.backend import SingleBackend
    from prefopt.core.registry import GROUP_LOSSES
    from prefopt.logprobs import forward_token_logps
    from prefopt.loops.common import autocast
    from prefopt.losses.group import GRPOParams

    policy = enable_tiled_mlp(enable_checkpointing(clone(env["proto"]), args), args)
    policy.train()
    pad = env["tok"].pad_token_id
    batches = [_collate(layout, b, pad) for b in env["batches"]]
    spec, hp = GROUP_LOSSES.get("grpo"), GRPOParams()
    dev = torch.device("cpu")
    backend = SingleBackend(dev, our_optim(LR, args))
    backend.prepare(policy, 1000)

    def step(i: int) -> float:
        batch = batches[i] if layout == "packed" else batches[i].for_forward(layout, pad)
        with autocast(args.precision, dev):
            out = forward_token_logps(policy, batch)
        pol = out.token_logps.float()
        mask = out.completion_mask
        inputs = {"policy_token_logps": pol, "old_token_logps": pol.detach(), "advantages": env["advantages"][i],
                  "completion_mask": mask, "num_tokens": mask.float().sum()}
        loss = spec(inputs, hp).loss.mean()
        backend.backward(loss)
        backend.step()
        return float(loss.detach())

    return Side(f"prefopt[{layout}]", step, 6 * env["n_params"],
                {"layout": layout, "model_tokens": model_tokens(layout, env["groups"]),
                 "activation_checkpointing": is_checkpointing(policy), "tiled_mlp_tokens": getattr(args, "tiled_mlp", None)})


def trl_batch(items: list, adv: torch.Tensor, pad: int) -> dict[str, torch.Tensor]:
    """The tensors ``GRPOTrainer._generate_and_score_completions`` hands to ``compute_loss``."""
    rows = [(it.prompt_ids, c) for it in items for c in it.completion_ids]
    p_len, c_len = max(len(p) for p, _ in rows), max(len(c) for _, c in rows)
    n = len(rows)
    prompt_ids = torch.full((n, p_len), pad, dtype=torch.long)
    prompt_mask = torch.zeros((n, p_len), dtype=torch.long)
    comp_ids = torch.full((n, c_len), pad, dtype=torch.long)
    comp_mask = torch.zeros((n, c_len), dtype=torch.long)
    for i, (p, c) in enumerate(rows):
        prompt_ids[i, p_len - len(p):] = torch.tensor(p)
        prompt_mask[i, p_len - len(p):] = 1
        comp_ids[i, :len(c)] = torch.tensor(c)
        comp_mask[i, :len(c)] = 1
    return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": comp_ids,
            "completion_mask": comp_mask, "advantages": adv.clone(),
            "num_items_in_batch": comp_mask.sum().float()}


def _zero_reward(completions: list, **_: Any) -> list[float]:
    return [0.0] * len(completions)


def trl_side(env: dict[str, Any], args: Any) -> Side:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    policy = clone(env["proto"])
    g = args.generations
    ds = Dataset.from_list([{"prompt": "hello"}] * g)
    cfg = GRPOConfig(output_dir=scratch_dir("bench-trl-grpo-"),
                     per_device_train_batch_size=args.batch_size * g, num_generations=g,
                     max_completion_length=args.completion_length, beta=0.0, loss_type="dapo",
                     epsilon=0.2, learning_rate=LR, lr_scheduler_type="constant", max_grad_norm=1.0,
                     bf16=args.precision == "bf16", use_cpu=True, report_to="none",
                     save_strategy="no", logging_steps=1000, disable_dropout=True, **trl_args(args))
    trainer = GRPOTrainer(model=policy, reward_funcs=_zero_reward, args=cfg, train_dataset=ds,
                          processing_class=env["tok"])
    model = enable_checkpointing(trainer.model, args)
    pad = env["tok"].pad_token_id
    batches = [trl_batch(b, a, pad) for b, a in zip(env["batches"], env["advantages"], strict=False)]
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train(), which we do not call
    trainer.create_optimizer()
    opt = trainer.optimizer
    params = [p for p in model.parameters() if p.requires_grad]
    amp = trainer.accelerator.autocast if args.precision == "bf16" else contextlib.nullcontext
    info = {"activation_checkpointing": is_checkpointing(model), "first_batch_logp_max_abs_diff": _logp_diff(trainer, model, env, batches[0], args)}

    def step(i: int) -> float:
        model.train()
        with amp():
            loss = trainer.compute_loss(model, dict(batches[i]))
        trainer.accelerator.backward(loss)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return Side("trl", step, 6 * env["n_params"], info)


def _logp_diff(trainer: Any, model: Any, env: dict[str, Any], batch: dict, args: Any) -> float:
    """Max |TRL - ours| completion-token log-prob on the first batch (ours: padded layout)."""
    from prefopt.logprobs import forward_token_logps
    from prefopt.loops.common import autocast

    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    att = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    c_len = batch["completion_ids"].shape[1]
    with torch.no_grad():
        theirs, _, _ = trainer._get_per_token_logps_and_entropies(model, ids, att, c_len)
        with autocast(args.precision, torch.device("cpu")):
            ours = forward_token_logps(env["proto"], _collate("padded", env["batches"][0],
                                                              env["tok"].pad_token_id)).token_logps
    diff = 0.0
    for n, (it, c) in enumerate((row, c) for row in env["batches"][0] for c in row.completion_ids):
        p = len(it.prompt_ids)
        a = ours[n, p:p + len(c)].float()
        b = theirs[n, :len(c)].float()
        diff = max(diff, float((a - b).abs().max()))
    return diff


def build_sides(env: dict[str, Any], args: Any, only: str | None = None) -> list[Side]:
    return collect_sides(env, args, (LAYOUTS if args.layout == "all" else [args.layout]), ours_side, trl_side, only)
