"""DPO: prefopt's offline step (``pairwise_loss``) vs TRL's ``DPOTrainer`` step on identical batches.

What one step is, on both sides: loss on ``batch_size`` pairs (forward + backward of the policy; with
``--ref live`` also a no-grad reference forward), gradient clipping to 1.0, one AdamW step (lr 1e-6,
constant). With ``--ref cache`` (default) the reference sequence log-probs of the benchmark batches are
computed once before timing on both sides (ours: the project's cached-reference path, ``ctx.ref_cache``;
TRL: ``precompute_ref_log_probs=True`` and its own ``compute_ref_log_probs`` on the same batches).

* ours: ``prefopt.loops.offline_step.pairwise_loss`` with a hand-built :class:`StepContext` in the measured
  layout (``padded`` | ``packed`` | ``shared_prompt``), ``SingleBackend`` for backward/clip/AdamW.
* TRL: ``DPOTrainer.training_step`` (its loss, fused LM head, metrics, ``accelerator.backward``) on
  batches from its own ``DataCollatorForPreference`` fed our token ids, then clip + AdamW step.
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
    padded_tokens,
    pair_seq_lengths,
    scratch_dir,
    trl_args,
    trl_train_step,
    with_lora,
)

LAYOUTS = ("padded", "packed", "shared_prompt")
LR = 1e-6
BETA = 0.1


def prepare(args: Any) -> dict[str, Any]:
    """Model (LoRA-wrapped if asked), tokenizer, batches of pairs and their padded-layout token counts."""
    from benchmarks.common import load_base
    from prefopt.loops.offline_data import Item

    base, tok = load_base(args.model, seed=args.seed)
    proto = with_lora(base) if args.lora else base
    n_batches = args.warmup + args.steps
    pairs = bench_pairs(tok, n_batches * args.batch_size, args.max_length, args)
    items = [Item(tp, i) for i, (_, tp) in enumerate(pairs)]
    batches = [items[i * args.batch_size:(i + 1) * args.batch_size] for i in range(n_batches)]
    tokens = [padded_tokens(pair_seq_lengths([it.tok for it in b])) for b in batches]
    groups = [[(len(it.tok.prompt_ids), [len(it.tok.chosen_ids), len(it.tok.rejected_ids)]) for it in b]
              for b in batches]
    return {"proto": proto, "tok": tok, "pairs": pairs, "batches": batches, "tokens": tokens, "groups": groups,
            "n_params": count_params(proto)}


def _flops_per_token(n: int, ref: str) -> float:
    return (6 + (2 if ref == "live" else 0)) * n


def ours_side(env: dict[str, Any], args: Any, layout: str) -> Side:
    """prefopt's offline DPO step in ``layout``."""
    from prefopt.algorithms import get_algorithm
    from prefopt.core.backend import SingleBackend
    from prefopt.logprobs import forward_token_logps
    from prefopt.loops.common import autocast
    from prefopt.loops.offline_step import StepContext, collate, pairwise_loss
    from prefopt.loops.reference import Reference, resolve_mode
    from prefopt.losses.base import seq_logps

    policy = enable_tiled_mlp(enable_checkpointing(clone(env["proto"]), args), args)
    spec = get_algorithm("dpo")
    dev = torch.device("cpu")
    ctx = StepContext(spec=spec, loss_spec=spec.loss_spec(), hparams=spec.build_hparams({"beta": BETA}),
                      pad_id=env["tok"].pad_token_id, precision=args.precision, device=dev, layout=layout)
    if args.ref == "live":
        ctx.reference = Reference(resolve_mode("auto", policy, True), policy)
    else:  # reference.mode=precompute: the untrained policy is the reference; cache, then release
        ctx.reference = Reference("precompute", policy)
        cache: dict[int, torch.Tensor] = {}
        for batch_items in env["batches"]:
            batch = collate(batch_items, ctx)
            with autocast(args.precision, dev):
                lp = ctx.reference.run(policy, lambda m, b=batch: forward_token_logps(m, b))
            s = seq_logps(lp.token_logps.float(), lp.completion_mask)
            c, r = s.chunk(2)
            for k, it in enumerate(batch_items):
                cache[it.index] = torch.stack([c[k], r[k]]).detach()
        ctx.ref_cache = cache
        ctx.reference.release()
    policy.train()
    backend = SingleBackend(dev, our_optim(LR, args))
    backend.prepare(policy, 1000)

    def step(i: int) -> float:
        out = pairwise_loss(ctx, policy, env["batches"][i])
        loss = out.loss.mean()
        backend.backward(loss)
        backend.step()
        return float(loss.detach())

    return Side(f"prefopt[{layout}]", step, _flops_per_token(env["n_params"], args.ref),
                {"layout": layout, "model_tokens": model_tokens(layout, env["groups"]),
                 "activation_checkpointing": is_checkpointing(policy), "tiled_mlp_tokens": getattr(args, "tiled_mlp", None)})


def trl_side(env: dict[str, Any], args: Any) -> Side:
    """TRL ``DPOTrainer`` driven step by step on the same token ids."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    policy = clone(env["proto"])
    ref_model = clone(env["proto"]) if (args.ref == "live" and not args.lora) else None
    # DPOTrainer needs a train_dataset (tokenised, and ref-log-prob'd when precomputing, in __init__); a
    # one-line stand-in keeps that set-up short. The timed batches are built below from our token ids.
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": "Hi"}],
                             "chosen": [{"role": "assistant", "content": "Hello."}],
                             "rejected": [{"role": "assistant", "content": "Go away."}]}])
    cfg = DPOConfig(output_dir=scratch_dir("bench-trl-dpo-"), per_device_train_batch_size=args.batch_size,
                    max_length=args.max_length, beta=BETA, learning_rate=LR, lr_scheduler_type="constant",
                    max_grad_norm=1.0, bf16=args.precision == "bf16", use_cpu=True, report_to="none",
                    precompute_ref_log_probs=args.ref == "cache", save_strategy="no",
                    disable_dropout=True, logging_steps=1000, **trl_args(args))
    trainer = DPOTrainer(model=policy, ref_model=ref_model, args=cfg, train_dataset=ds,
                         processing_class=env["tok"])
    model = enable_checkpointing(trainer.model, args)
    amp = trainer.accelerator.autocast if args.precision == "bf16" else contextlib.nullcontext
    batches = []
    for b in env["batches"]:
        feats = [{"prompt_ids": list(it.tok.prompt_ids), "chosen_ids": list(it.tok.chosen_ids),
                  "rejected_ids": list(it.tok.rejected_ids)} for it in b]
        batch = trainer.data_collator(feats)
        if args.ref == "cache":  # TRL's own precompute function, on the untrained policy (= reference)
            c, r = trainer.compute_ref_log_probs(trainer.ref_model or model, batch)
            batch["ref_chosen_logps"], batch["ref_rejected_logps"] = c.detach(), r.detach()
        batches.append(batch)
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train(), which we do not call
    trainer.create_optimizer()

    step = trl_train_step(trainer, model, batches, amp)

    return Side("trl", step, _flops_per_token(env["n_params"], args.ref), {"ref_precomputed": args.ref == "cache", "activation_checkpointing": is_checkpointing(model)})


def layouts(args: Any) -> list[str]:
    return list(LAYOUTS) if args.layout == "all" else [args.layout]


def build_sides(env: dict[str, Any], args: Any, only: str | None = None) -> list[Side]:
    return collect_sides(env, args, layouts(args), ours_side, trl_side, only)
