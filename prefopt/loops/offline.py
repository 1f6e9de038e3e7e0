"""The offline loop: fixed preference data -> policy (+reference) log-probs -> loss -> step.

``run_offline(cfg)`` is all of ``prefopt train`` for offline algorithms. Curriculum algorithms
(Curry-DPO) run their stages in order; in ``iterative`` mode the policy at the end of a stage becomes
the frozen reference of the next. Checkpoints hold the stage, the position in the data, the RNG and
algorithm state (LCPO's eta), so a killed run resumes and reproduces an uninterrupted one.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from data_pipelines.tokenize import LengthPolicy
from prefopt.algorithms import get_algorithm
from prefopt.core.backend import make_backend
from prefopt.core.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from prefopt.core.io import atomic_write_json
from prefopt.core.logging import progress
from prefopt.core.models import load_model
from prefopt.loops.common import MetricAccumulator, NonFiniteGuard, seed_everything, start_run
from prefopt.loops.offline_data import epoch_order, micro_batches, tokenize_items, train_eval_paths
from prefopt.loops.offline_step import (StepContext, implicit_reward_margins, pairwise_loss, ranked_loss)
from prefopt.loops.reference import Reference, refresh_reference, resolve_mode
from prefopt.loops.ref_cache import precompute_reference


@dataclass
class Plan:
    """Micro-batches per stage and the optimizer-step budget."""

    stages: list[int]
    batches: dict[int, list[list[Any]]]
    total_steps: int


def make_plan(cfg: Any, items: list, spec: Any, rank: int, world: int) -> Plan:
    """Order the data (seeded shuffle per epoch; curriculum stages in order) into micro-batches."""
    stages = sorted({it.stage for it in items}) if spec.curriculum else [1]
    if spec.curriculum and cfg.curriculum == "shuffled":
        stages = [1]
    batches: dict[int, list] = {}
    epochs = max(1, math.ceil(cfg.epochs))
    for s in stages:
        pool = [it for it in items if not spec.curriculum or len(stages) == 1 or it.stage == s]
        shuffle = cfg.data.shuffle and not (spec.curriculum and cfg.curriculum == "ordered" and len(stages) > 1)
        seq = []
        for e in range(epochs):
            seq += micro_batches(epoch_order(pool, e, cfg.run.seed, shuffle), cfg.batch_size, rank, world)
        keep = max(1, int(len(seq) * cfg.epochs / epochs)) if seq else 0
        batches[s] = seq[:keep]
    steps = sum(len(b) for b in batches.values()) // cfg.optim.grad_accum
    if cfg.max_steps:
        steps = min(steps, cfg.max_steps) if steps else cfg.max_steps
    return Plan(stages, batches, max(1, steps))


def _build_context(cfg: Any, spec: Any, model: Any, tok: Any, backend: Any) -> StepContext:
    hp = spec.build_hparams(cfg.loss)
    ctx = StepContext(spec=spec, loss_spec=spec.loss_spec(), hparams=hp, pad_id=tok.pad_token_id,
                      precision=cfg.precision, device=backend.device, layout="padded")
    mode = resolve_mode(cfg.reference.mode, model, spec.needs_ref)
    if mode != "none":
        ctx.reference = Reference(mode, model)
    if "lcpo_state" in spec.extras:
        from prefopt.losses.lcpo import LCPOState

        ctx.lcpo_state = LCPOState.from_hparams(hp)
    if "sparse_mask" in spec.extras:
        from prefopt.losses.sparsepo import LearnedMaskHead

        ctx.mask_provider = cfg.sparsepo.provider
        if cfg.sparsepo.provider == "learned":
            ctx.mask_head = LearnedMaskHead(model.config.hidden_size, model.config.num_hidden_layers,
                                            cfg.sparsepo.dropout)
    return ctx


def evaluate(ctx: StepContext, policy: Any, items: list, batch_size: int) -> dict[str, float]:
    """Held-out implicit-reward accuracy and margin on pairs (IRPO: top-response accuracy)."""
    if not items:
        return {}
    policy.eval()
    margins = []
    with torch.no_grad():
        for i in range(0, len(items), batch_size):
            chunk = items[i:i + batch_size]
            if ctx.spec.schema == "ranked":
                margins.append(ranked_loss(ctx, policy, chunk).metrics["rewards/accuracies"].reshape(1))
            else:
                margins.append(implicit_reward_margins(ctx, policy, chunk).float())
    policy.train()
    m = torch.cat(margins)
    if ctx.spec.schema == "ranked":
        return {"eval/accuracy": float(m.mean())}
    return {"eval/accuracy": float((m > 0).float().mean()), "eval/margin": float(m.mean()),
            "eval/pairs": float(m.numel())}


def _micro_step(ctx: StepContext, model: Any, items: list, backend: Any, acc: MetricAccumulator,
                guard: NonFiniteGuard, step: int) -> None:
    out = ranked_loss(ctx, model, items) if ctx.spec.schema == "ranked" else pairwise_loss(ctx, model, items)
    loss = out.loss.mean()
    if not guard.ok(loss, step):
        return
    backend.backward(loss)
    acc.add({"loss/total": loss.detach(), **out.metrics}, weight=float(len(items)))
    if ctx.lcpo_state is not None:
        sums, counts = ctx.lcpo_state.batch_stats(out.aux["w"], out.aux["annotator_id"],
                                                  ctx.lcpo_state.eta.numel())
        ctx.extras["lcpo_sums"] = ctx.extras.get("lcpo_sums", 0) + sums
        ctx.extras["lcpo_counts"] = ctx.extras.get("lcpo_counts", 0) + counts


def _after_optimizer_step(ctx: StepContext, backend: Any) -> None:
    if ctx.lcpo_state is not None and "lcpo_sums" in ctx.extras:
        sums = backend.all_reduce_sum(ctx.extras.pop("lcpo_sums"))
        counts = backend.all_reduce_sum(ctx.extras.pop("lcpo_counts"))
        ctx.lcpo_state.update(sums=sums, counts=counts)


def _algo_state(ctx: StepContext) -> dict[str, Any]:
    return {"lcpo_eta": ctx.lcpo_state.eta.tolist()} if ctx.lcpo_state is not None else {}


def run_offline(cfg: Any) -> dict[str, Any]:  # noqa: C901, PLR0915 - the loop, top to bottom
    """Train an offline algorithm from ``cfg`` (a :class:`prefopt.configs.TrainConfig`)."""
    seed_everything(cfg.run.seed)
    spec = get_algorithm(cfg.algorithm)
    backend = make_backend(cfg.backend, cfg.optim, cfg.batch_size)
    run_dir, logger = start_run(cfg, backend.is_main)
    model, tok = load_model(cfg.model, seed=cfg.run.seed)
    policy = LengthPolicy(cfg.data.max_length, cfg.data.max_prompt_length, cfg.data.overlong)
    train_path, eval_path = train_eval_paths(cfg.data.path, cfg.data.eval_path)
    items, data_stats = tokenize_items(train_path, spec.schema, tok, policy, cfg.data.max_train_examples)
    eval_items = (tokenize_items(eval_path, spec.schema, tok, policy, cfg.data.max_eval_examples)[0]
                  if eval_path else [])
    plan = make_plan(cfg, items, spec, backend.rank, backend.world_size)
    ctx = _build_context(cfg, spec, model, tok, backend)
    extra_groups = ([{"params": list(ctx.mask_head.parameters()), "weight_decay": cfg.sparsepo.weight_decay}]
                    if ctx.mask_head is not None else None)
    engine = backend.prepare(model, plan.total_steps, extra_groups)
    model = backend.unwrap()
    if ctx.mask_head is not None:
        ctx.mask_head.to(backend.device)
    if cfg.reference.mode == "precompute" and ctx.reference is not None:
        ctx.ref_cache = precompute_reference(ctx, model, items, cfg, run_dir)
        ctx.reference.release()
    step, stage_i, pos = 0, 0, 0
    ckpt = latest_checkpoint(run_dir) if cfg.run.resume else None
    if ckpt is not None:
        state = load_checkpoint(ckpt, model, backend)
        step, stage_i, pos = state["step"], state["stage_index"], state["data_pos"]
        if spec.curriculum and cfg.curriculum == "iterative" and stage_i > 0:
            raise CheckpointError(f"{ckpt}: resuming Curry-DPO iterative inside stage {stage_i + 1} is not "
                                  "supported (the stage's reference is not in the checkpoint); restart the "
                                  "run or use curriculum=ordered")
        if ctx.lcpo_state is not None:
            ctx.lcpo_state.eta = torch.tensor(state["lcpo_eta"], dtype=torch.float32)
    if backend.is_main:
        atomic_write_json(run_dir / "data_stats.json", {"train": data_stats, "eval_items": len(eval_items)})
    first = evaluate(ctx, model, eval_items, cfg.batch_size) if ckpt is None else {}
    if first:
        logger.log(first, step)
    guard, acc = NonFiniteGuard(cfg.run.on_nonfinite), MetricAccumulator()
    bar = progress(total=plan.total_steps, initial=step, desc=f"train {cfg.algorithm}")
    while stage_i < len(plan.stages) and step < plan.total_steps:
        stage = plan.stages[stage_i]
        for mb in plan.batches[stage][pos:]:
            _micro_step(ctx, engine, mb, backend, acc, guard, step)
            pos += 1
            stats = backend.step()
            if stats is None:
                continue
            step += 1
            _after_optimizer_step(ctx, backend)
            metrics = {**acc.reduce(backend), **stats, "curry/stage": float(stage)}
            if ctx.lcpo_state is not None:
                metrics.update({f"lcpo/eta_{k}": float(v) for k, v in enumerate(ctx.lcpo_state.eta)})
            if cfg.run.eval_every and step % cfg.run.eval_every == 0:
                metrics.update(evaluate(ctx, model, eval_items, cfg.batch_size))
            if step % cfg.run.log_every == 0:
                logger.log(metrics, step)
            bar.update(1)
            if cfg.run.save_every and step % cfg.run.save_every == 0:
                save_checkpoint(run_dir, step, model, backend,
                                {"stage_index": stage_i, "data_pos": pos, **_algo_state(ctx)},
                                cfg.run.keep_last)
            if step >= plan.total_steps:
                break
        stage_i, pos = stage_i + 1, 0
        if spec.curriculum and cfg.curriculum == "iterative" and stage_i < len(plan.stages):
            model, ctx.reference = refresh_reference(model, ctx.reference, cfg.model.lora)
            engine = backend.prepare(model, plan.total_steps)
            model = backend.unwrap()
    bar.close()
    final = evaluate(ctx, model, eval_items, cfg.batch_size)
    logger.log({**final, "train/skipped_nonfinite": float(guard.skipped)}, step)
    logger.close()
    summary = {"steps": step, "first_eval": first, "final_eval": final, "data": data_stats,
               "algorithm": cfg.algorithm, **_algo_state(ctx)}
    if backend.is_main:
        save_policy(model, tok, run_dir / "final")
        atomic_write_json(run_dir / "summary.json", summary)
    return summary


def save_policy(model: Any, tok: Any, out: Path) -> None:
    """Write the trained policy: a LoRA adapter folder or a full safetensors model, plus tokenizer."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    (out / "prefopt.json").write_text(json.dumps({"lora": hasattr(model, "peft_config")}))
