"""The offline loop: fixed preference data -> policy (+reference) log-probs -> loss -> step.

``run_offline(cfg)`` is all of ``prefopt train`` for offline algorithms. The data plan runs its stages
in order (one stage unless the algorithm trains on ``meta.stage``). What an algorithm adds to the
generic loop - state updated after each optimizer step, extra loss inputs, extra optimizer groups, a
new reference per stage - lives in its hooks (:mod:`prefopt.loops.hooks`), which the loop calls
without asking which algorithm runs. Checkpoints hold the stage, the position in the data, the RNG
and every hook's state, so a killed run resumes and reproduces an uninterrupted one.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from data_pipelines.tokenize import LengthPolicy, print_data_summary
from prefopt.algorithms import get_algorithm
from prefopt.core.adapters import publish_adapter_base
from prefopt.core.backend import make_backend
from prefopt.core.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from prefopt.core.errors import ConfigError
from prefopt.core.io import atomic_write_json
from prefopt.core.logging import progress, short_postfix
from prefopt.core.models import load_model
from prefopt.loops.common import MetricAccumulator, NonFiniteGuard, seed_everything, start_run
from prefopt.loops.hooks import OfflineHook, offline_hooks
from prefopt.loops.layouts import offline_layout, with_offline_layout
from prefopt.loops.offline_data import STAGE_METRIC, Plan, make_plan, tokenize_items, train_eval_paths
from prefopt.loops.offline_step import StepContext, implicit_reward_margins, pairwise_loss, ranked_loss
from prefopt.loops.ref_cache import precompute_reference
from prefopt.loops.reference import Reference, is_peft, resolve_mode


def _build_context(cfg: Any, spec: Any, model: Any, tok: Any, backend: Any,
                   hooks: list[OfflineHook] | None = None) -> StepContext:
    """The step context: typed loss hyper-parameters, layout, reference and the run's hooks (started)."""
    hooks = offline_hooks(cfg, spec) if hooks is None else hooks
    forwards = [h.forward for h in hooks if h.forward is not None]
    if len(forwards) > 1:
        raise ConfigError(f"{cfg.algorithm}: {len(forwards)} hooks build the loss inputs; at most one may")
    hp = spec.build_hparams(cfg.loss)  # typed once in TrainConfig: returned as it is
    ctx = StepContext(spec=spec, loss_spec=spec.loss_spec(), hparams=hp, pad_id=tok.pad_token_id,
                      precision=cfg.precision, device=backend.device, layout=offline_layout(cfg, spec, model),
                      hooks=hooks, forward=forwards[0] if forwards else None)
    mode = resolve_mode(cfg.reference.mode, model, spec.needs_ref)
    if mode != "none":
        ctx.reference = Reference(mode, model).to(backend.device)
    for hook in hooks:
        hook.on_start(ctx, model, backend)
    return ctx


def check_runtime(cfg: Any, spec: Any, backend: Any) -> list[OfflineHook]:
    """The run's hooks, each having checked the settings that only conflict once the backend is known
    (clear errors before any work)."""
    hooks = offline_hooks(cfg, spec)
    for hook in hooks:
        hook.check(backend)
    return hooks


def evaluate(ctx: StepContext, policy: Any, items: list, batch_size: int) -> dict[str, float]:
    """Held-out implicit-reward accuracy and margin on pairs (IRPO: top-response accuracy).

    Pairs: margin ``(r_w - r_l)`` of summed policy-minus-reference log-probs (reference-free losses:
    the difference of token-mean log-probs); accuracy is the fraction with margin > 0.
    """
    if not items:
        return {}
    was_training = policy.training
    policy.eval()
    values, weights = [], []
    with torch.no_grad():
        for i in range(0, len(items), batch_size):
            chunk = items[i:i + batch_size]
            if ctx.spec.schema == "ranked":
                values.append(ranked_loss(ctx, policy, chunk).metrics["rewards/accuracies"].reshape(1))
                weights.append(len(chunk))
            else:
                values.append(implicit_reward_margins(ctx, policy, chunk).float())
    policy.train(was_training)
    m = torch.cat(values)
    if ctx.spec.schema == "ranked":
        w = torch.tensor(weights, dtype=torch.float32)
        return {"eval/accuracy": float((m * w).sum() / w.sum()), "eval/lists": float(w.sum())}
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
    for hook in ctx.hooks:
        hook.after_micro_step(out, items)


def _hook_state(ctx: StepContext) -> dict[str, Any]:
    """Every hook's checkpoint state (``state.json``), merged."""
    return {k: v for hook in ctx.hooks for k, v in hook.state_dict().items()}


def _prepare_reference_cache(ctx: StepContext, model: Any, items: list, eval_items: list, cfg: Any,
                             run_dir: Path, backend: Any) -> None:
    """``reference.mode: precompute``: fill (or read) the train and eval caches, then drop the reference."""
    ctx.ref_cache = precompute_reference(ctx, model, items, cfg, run_dir, "ref_logps", backend.is_main)
    ctx.eval_ref_cache = precompute_reference(ctx, model, eval_items, cfg, run_dir, "ref_logps_eval",
                                              backend.is_main)
    ctx.reference.release()
    backend.barrier()


def _checkpoint_tensors(ctx: StepContext) -> dict[str, torch.Tensor] | None:
    """Every hook's tensors for ``extra.safetensors``; None when there are none."""
    tensors = {k: v for hook in ctx.hooks for k, v in hook.checkpoint_tensors(ctx).items()}
    return tensors or None


def _restore(cfg: Any, ctx: StepContext, model: Any, backend: Any, run_dir: Path) -> tuple:
    """``(checkpoint or None, step, stage index, data position)`` after loading the newest checkpoint
    (policy, optimizer, RNG, then each hook's state)."""
    ckpt = latest_checkpoint(run_dir) if cfg.run.resume else None
    if ckpt is None:
        return None, 0, 0, 0
    state = load_checkpoint(ckpt, model, backend)
    for hook in ctx.hooks:
        hook.load_state(ctx, state, ckpt)
    return ckpt, state["step"], state["stage_index"], state["data_pos"]


def _load_data(cfg: Any, spec: Any, tok: Any, backend: Any) -> tuple[list, list, dict]:
    """``(train items, eval items, train data stats)``; an empty eval file means no held-out eval."""
    policy = LengthPolicy(cfg.data.max_length, cfg.data.max_prompt_length, cfg.data.overlong)
    train_path, eval_path = train_eval_paths(cfg.data.path, cfg.data.eval_path)
    items, data_stats = tokenize_items(train_path, spec.schema, tok, policy, cfg.data.max_train_examples,
                                       cfg.data.on_error, seed=cfg.run.seed)
    eval_items, eval_stats = (tokenize_items(eval_path, spec.schema, tok, policy, cfg.data.max_eval_examples,
                                             cfg.data.on_error)
                              if eval_path else ([], {}))
    if backend.is_main:
        print_data_summary(str(train_path), data_stats, len(items))
        if eval_stats:
            print_data_summary(str(eval_path), eval_stats, len(eval_items))
    return items, eval_items, data_stats


def _optimizer_groups(ctx: StepContext) -> list[dict[str, Any]] | None:
    return [g for hook in ctx.hooks for g in hook.optimizer_groups()] or None


def _first_budget(ctx: StepContext, plan: Plan) -> int:
    """Optimizer steps the first schedule spans: the first stage's when the optimizer restarts each stage."""
    return plan.stage_steps[plan.stages[0]] if _restarts_per_stage(ctx, plan) else plan.total_steps


def _restarts_per_stage(ctx: StepContext, plan: Plan) -> bool:
    return len(plan.stages) > 1 and any(h.new_optimizer_each_stage for h in ctx.hooks)


def _prepare(cfg: Any, spec: Any, model: Any, tok: Any, backend: Any, hooks: list[OfflineHook],
             plan: Plan) -> tuple:
    """``(step context, engine, unwrapped model)``: reference, hooks, optimizer (+ the hooks' groups)."""
    model.train()
    ctx = _build_context(cfg, spec, model, tok, backend, hooks)
    engine = backend.prepare(model, _first_budget(ctx, plan), _optimizer_groups(ctx))
    return ctx, engine, backend.unwrap()


def _step_metrics(cfg: Any, ctx: StepContext, model: Any, eval_items: list, stats: dict, stage: int,
                  step: int, acc: MetricAccumulator, backend: Any) -> dict[str, float]:
    """One optimizer step's log row: reduced loss metrics, optimizer stats, hook values, eval."""
    metrics = {**acc.reduce(backend), **stats, STAGE_METRIC: float(stage)}
    for hook in ctx.hooks:
        metrics.update(hook.metrics(step))
    if cfg.run.eval_every and step % cfg.run.eval_every == 0:
        metrics.update(evaluate(ctx, model, eval_items, cfg.batch_size))
    return metrics


def _next_stage(ctx: StepContext, model: Any, backend: Any, budget: int) -> tuple:
    """``(engine, unwrapped model)`` for a new stage: the hooks' stage start, then a fresh optimizer."""
    for hook in ctx.hooks:
        model = hook.on_stage_start(ctx, model, backend)
    model.train()
    engine = backend.prepare(model, budget, _optimizer_groups(ctx))
    return engine, backend.unwrap()


def _finish(cfg: Any, ctx: StepContext, model: Any, tok: Any, backend: Any, run_dir: Path,
            summary: dict[str, Any]) -> dict[str, Any]:
    """Save the policy and ``summary.json`` (plus each hook's summary entries)."""
    summary["algorithm"] = cfg.algorithm
    for hook in ctx.hooks:
        summary.update(hook.summary(summary["steps"]))
    save_policy(model, tok, run_dir / "final", backend, cfg.model.name)
    if backend.is_main:
        atomic_write_json(run_dir / "summary.json", summary)
    backend.barrier()
    return summary


def run_offline(cfg: Any) -> dict[str, Any]:  # noqa: C901, PLR0915 - the loop, top to bottom
    """Train an offline algorithm from ``cfg`` (a :class:`prefopt.configs.TrainConfig`)."""
    seed_everything(cfg.run.seed)
    spec = get_algorithm(cfg.algorithm)
    backend = make_backend(cfg.backend, cfg.optim, cfg.batch_size)
    hooks = check_runtime(cfg, spec, backend)
    model, tok = load_model(cfg.model, seed=cfg.run.seed)
    cfg = with_offline_layout(cfg, spec, model)  # config.yaml records the concrete layout
    run_dir, logger = start_run(cfg, backend.is_main)
    items, eval_items, data_stats = _load_data(cfg, spec, tok, backend)
    plan = make_plan(cfg, items, spec, backend.rank, backend.world_size)
    ctx, engine, model = _prepare(cfg, spec, model, tok, backend, hooks, plan)
    if cfg.reference.mode == "precompute" and ctx.reference is not None:
        _prepare_reference_cache(ctx, model, items, eval_items, cfg, run_dir, backend)
    ckpt, step, stage_i, pos = _restore(cfg, ctx, model, backend, run_dir)
    logger.rewind(step if ckpt is not None else -1)  # never repeat steps a resumed run logs again
    if backend.is_main:
        atomic_write_json(run_dir / "data_stats.json", {"train": data_stats, "eval_items": len(eval_items),
                                                        "stage_steps": plan.stage_steps})
    first = evaluate(ctx, model, eval_items, cfg.batch_size) if ckpt is None else {}
    if first:
        logger.log(first, step)
    guard, acc = NonFiniteGuard(cfg.run.on_nonfinite), MetricAccumulator()
    bar = progress(total=plan.total_steps, initial=step, desc=f"train {cfg.algorithm}")
    while stage_i < len(plan.stages) and step < plan.total_steps:
        for mb in plan.batches[plan.stages[stage_i]][pos:]:
            _micro_step(ctx, engine, mb, backend, acc, guard, step)
            pos += 1
            stats = backend.step()
            if stats is None:
                continue
            guard.grad_ok(stats, step + 1)
            step += 1
            for hook in ctx.hooks:
                hook.after_optimizer_step(ctx, model, backend, step)
            metrics = _step_metrics(cfg, ctx, model, eval_items, stats, plan.stages[stage_i], step, acc, backend)
            if step % cfg.run.log_every == 0:
                bar.set_postfix_str(short_postfix(logger.log(metrics, step)), refresh=False)
            bar.update(1)
            if cfg.run.save_every and step % cfg.run.save_every == 0:
                save_checkpoint(run_dir, step, model, backend,
                                {"stage_index": stage_i, "data_pos": pos, **_hook_state(ctx)},
                                cfg.run.keep_last, tensors=_checkpoint_tensors(ctx))
            if step >= plan.total_steps:
                break
        stage_i, pos = stage_i + 1, 0
        if _restarts_per_stage(ctx, plan) and stage_i < len(plan.stages) and step < plan.total_steps:
            engine, model = _next_stage(ctx, model, backend, plan.stage_steps[plan.stages[stage_i]])
    bar.close()
    final = evaluate(ctx, model, eval_items, cfg.batch_size)
    logger.log({**final, "train/skipped_nonfinite": float(guard.skipped)}, step)
    logger.close()
    return _finish(cfg, ctx, model, tok, backend, run_dir, {"steps": step, "first_eval": first,
                                                             "final_eval": final, "data": data_stats})


def save_policy(model: Any, tok: Any, out: Path, backend: Any = None, base_model: str = "") -> None:
    """Write the trained policy (main process): a LoRA adapter folder (PEFT ``adapter_model``, to load on
    top of ``base_model``) or a full safetensors model, plus the tokenizer and ``prefopt.json``.

    With a ``backend`` this is a collective (:meth:`prefopt.core.backend.Backend.save_model` gathers
    ZeRO-3 partitions); without one the caller is the only process that writes.
    """
    def write(state_dict: dict | None) -> None:
        out.mkdir(parents=True, exist_ok=True)
        kwargs = {} if state_dict is None else {"state_dict": state_dict}
        model.save_pretrained(str(out), safe_serialization=True, **kwargs)
        tok.save_pretrained(str(out))
        (out / "prefopt.json").write_text(json.dumps({"lora": is_peft(model), "base_model": base_model}))
        publish_adapter_base(out, base_model)  # adapter_config.json names the public base, not a cache path

    if backend is None:
        write(None)
    else:
        backend.save_model(model, write)
