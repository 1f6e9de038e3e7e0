"""Reward model (Bradley-Terry): prefopt ``RewardModel`` + ``bt_loss`` vs TRL ``RewardTrainer``.

Same start on both sides: our ``RewardModel(kind="bt")`` body (the SmolLM2 decoder, LM head dropped) with
its seeded score head; TRL gets a ``LlamaForSequenceClassification`` holding the same body weights and
the same score weights (no bias on either). Both read the reward at the last real token (the EOS of
the completion). TRL's sequence-classification pooling finds that token by ``input_ids != pad``; the
SmolLM2 pad token is the EOS, so TRL's side pads with ``<|endoftext|>`` (id 0, absent from the data)
instead, or it would read the token before the EOS.

One step on both sides: BT loss on ``batch_size`` pairs (``-log sigmoid(r+ - r-)`` mean), backward,
clip to 1.0, AdamW (lr 1e-6).

* ours: the RM trainer's own path: ``reward_models.data.collate_rm(items, pad, layout)`` and
  ``RewardModel.forward(..., rows=batch.rows)`` (``reward_models.layouts``: ``padded`` one row per
  sequence; ``packed`` one padding-free row; ``shared_prompt`` one row per pair, ``prompt + chosen +
  rejected`` under a block mask, rewards read at each completion's last token), then
  ``reward_models.losses.bt_loss`` (``prefopt rm train`` with ``data.layout``).
* TRL: ``RewardTrainer.training_step`` on its ``DataCollatorForPreference`` batches built from the
  same token ids (prompt + completion), then clip + AdamW.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Any

import torch

from benchmarks.common import (
    Side,
    bench_pairs,
    clone,
    collect_sides,
    count_params,
    enable_checkpointing,
    is_checkpointing,
    model_tokens,
    our_optim,
    padded_tokens,
    pair_seq_lengths,
    scratch_dir,
    trl_args,
    trl_train_step,
)

LAYOUTS = ("padded", "packed", "shared_prompt")
LR = 1e-6
TRL_PAD_ID = 0  # <|endoftext|>


def prepare(args: Any) -> dict[str, Any]:
    from benchmarks.common import load_base
    from reward_models.models import RewardModel

    if args.lora:
        raise SystemExit("prefopt bench rm: --lora is not supported (full fine-tuning only)")
    base, tok = load_base(args.model, seed=args.seed)
    proto = RewardModel(base, kind="bt", seed=args.seed)
    n_batches = args.warmup + args.steps
    pairs = bench_pairs(tok, n_batches * args.batch_size, args.max_length, args)
    tps = [tp for _, tp in pairs]
    batches = [tps[i * args.batch_size:(i + 1) * args.batch_size] for i in range(n_batches)]
    tokens = [padded_tokens(pair_seq_lengths(b)) for b in batches]
    groups = [[(len(t.prompt_ids), [len(t.chosen_ids), len(t.rejected_ids)]) for t in b] for b in batches]
    return {"proto": proto, "base": base, "tok": tok, "pairs": pairs, "batches": batches, "tokens": tokens,
            "groups": groups,
            "n_params": count_params(proto)}


def rm_items(tps: list) -> list:
    """``RMItem`` pairs (prompt + chosen, prompt + rejected) as ``reward_models.train`` builds them."""
    from reward_models.data import RMItem

    return [RMItem((tuple(t.prompt_ids + t.chosen_ids), tuple(t.prompt_ids + t.rejected_ids)),
                   (len(t.prompt_ids), len(t.prompt_ids))) for t in tps]


def ours_side(env: dict[str, Any], args: Any, layout: str) -> Side:
    from prefopt.core.backend import SingleBackend
    from prefopt.loops.common import autocast
    from reward_models.data import collate_rm
    from reward_models.losses import bt_loss

    rm = clone(env["proto"])
    enable_checkpointing(rm.model, args)
    rm.train()
    pad = env["tok"].pad_token_id
    batches = [collate_rm(rm_items(b), pad, layout) for b in env["batches"]]
    dev = torch.device("cpu")
    backend = SingleBackend(dev, our_optim(LR, args))
    backend.prepare(rm, 1000)

    def step(i: int) -> float:
        b = batches[i]
        with autocast(args.precision, dev):
            r = rm(b.input_ids, b.attention_mask, rows=b.rows).rewards.float()
        loss = bt_loss(r[b.slot[:, 0]], r[b.slot[:, 1]]).loss.mean()
        backend.backward(loss)
        backend.step()
        return float(loss.detach())

    return Side(f"prefopt[{layout}]", step, 6 * env["n_params"],
                {"layout": layout, "model_tokens": model_tokens(layout, env["groups"]),
                 "activation_checkpointing": is_checkpointing(rm)})


def _seq_cls(env: dict[str, Any]) -> Any:
    """``LlamaForSequenceClassification`` with our body weights and our score head."""
    from transformers import AutoModelForSequenceClassification

    rm = env["proto"]
    cfg = copy.deepcopy(rm.model.config)
    cfg.num_labels = 1
    cfg.pad_token_id = TRL_PAD_ID
    model = AutoModelForSequenceClassification.from_config(cfg, dtype=torch.float32)
    model.model.load_state_dict(rm.model.state_dict())
    with torch.no_grad():
        model.score.weight.copy_(rm.score.weight.float())
    return model


def trl_side(env: dict[str, Any], args: Any) -> Side:
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    model = _seq_cls(env)
    tok = copy.deepcopy(env["tok"])
    tok.pad_token = tok.convert_ids_to_tokens(TRL_PAD_ID)
    ds = Dataset.from_list([{"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
                             "rejected": [{"role": "user", "content": "Hi"},
                                          {"role": "assistant", "content": "Go away."}]}])  # stand-in
    cfg = RewardConfig(output_dir=scratch_dir("bench-trl-rm-"),
                       per_device_train_batch_size=args.batch_size, max_length=args.max_length,
                       learning_rate=LR, lr_scheduler_type="constant", max_grad_norm=1.0,
                       bf16=args.precision == "bf16", use_cpu=True, report_to="none",
                       save_strategy="no", disable_dropout=True, logging_steps=1000, **trl_args(args))
    trainer = RewardTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok)
    model = enable_checkpointing(trainer.model, args)
    if trainer.data_collator.pad_token_id != TRL_PAD_ID:
        raise RuntimeError(f"TRL collator pads with {trainer.data_collator.pad_token_id}, expected {TRL_PAD_ID}")
    batches = [trainer.data_collator([{"chosen_ids": list(t.prompt_ids + t.chosen_ids),
                                        "rejected_ids": list(t.prompt_ids + t.rejected_ids)} for t in b])
               for b in env["batches"]]
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train(), which we do not call
    trainer.create_optimizer()
    amp = trainer.accelerator.autocast if args.precision == "bf16" else contextlib.nullcontext

    step = trl_train_step(trainer, model, batches, amp)

    return Side("trl", step, 6 * env["n_params"], {"activation_checkpointing": is_checkpointing(model)})


def build_sides(env: dict[str, Any], args: Any, only: str | None = None) -> list[Side]:
    return collect_sides(env, args, (LAYOUTS if args.layout == "all" else [args.layout]), ours_side, trl_side, only)
