"""The offline loop: fixed preference data -> policy (+reference) log-probs -> loss -> step.

``run_offline(cfg)`` is all of ``prefopt train`` for offline algorithms. Curriculum algorithms
(Curry-DPO) run their stages in order; in ``iterative`` mode the policy at the end of a stage becomes
the frozen reference of the next. Checkpoints hold the stage, the position in the data, the RNG and
algorithm state (LCPO's eta), so a killed run resumes and reproduces an uninterrupted one.

TR-DPO (``reference.sync_every > 0``): after every ``sync_every``-th optimizer step the frozen reference
is softly pulled towards the policy, ``ref <- a * policy + (1 - a) * ref`` (``a = reference.sync_alpha``);
the synced reference is stored in each checkpoint (``extra.safetensors``) so a resume is exact.
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
from prefopt.core.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    load_extra_tensors,
    save_checkpoint,
)
from prefopt.core.errors import ConfigError
from prefopt.core.io import atomic_write_json
from prefopt.core.logging import progress, short_postfix
from prefopt.core.models import load_model
from prefopt.loops.common import MetricAccumulator, NonFiniteGuard, seed_everything, start_run
from prefopt.loops.layouts import offline_layout
from prefopt.loops.offline_data import make_plan, tokenize_items, train_eval_paths
from prefopt.loops.offline_step import StepContext, implicit_reward_margins, pairwise_loss, ranked_loss
from prefopt.loops.ref_cache import precompute_reference
from prefopt.loops.reference import Reference, is_peft, refresh_reference, resolve_mode


def _build_context(cfg: Any, spec: Any, model: Any, tok: Any, backend: Any) -> StepContext:
    hp = spec.build_hparams(cfg.loss)  # typed once in TrainConfig: returned as it is
    ctx = StepContext(spec=spec, loss_spec=spec.loss_spec(), hparams=hp, pad_id=tok.pad_token_id,
                      precision=cfg.precision, device=backend.device, layout=offline_layout(cfg, spec, model))
    mode = resolve_mode(cfg.reference.mode, model, spec.needs_ref)
    if mode != "none":
        ctx.reference = Reference(mode, model).to(backend.device)
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


def check_runtime(cfg: Any, spec: Any, backend: Any) -> None:
    """Settings that only conflict once the backend is known (clear errors before any work)."""
    zero3 = getattr(backend, "zero_stage", 0) == 3
    if zero3 and spec.curriculum and cfg.curriculum == "iterative":
        raise ConfigError("Curry-DPO iterative copies the policy into the next stage's reference, which "
                          "ZeRO-3 partitions; use backend.zero_stage=2 or curriculum=ordered")
    if zero3 and "sparse_mask" in spec.extras and cfg.sparsepo.provider == "learned":
        raise ConfigError("SparsePO's learned mask head is not sharded by ZeRO-3; use backend.zero_stage=2 "
                          "or sparsepo.provider=activation")
    check_reference_sync(cfg, spec, zero3)


def check_reference_sync(cfg: Any, spec: Any, zero3: bool = False) -> None:
    """TR-DPO soft sync needs a separate, whole reference copy to update (Gorbatovski et al. 2024, TR-DPO, arXiv 2404.09656)."""
    ref = cfg.reference
    if not ref.sync_every:
        return
    if not spec.needs_ref:
        raise ConfigError(f"reference.sync_every is set but {cfg.algorithm} is reference-free (no reference "
                          "to sync); set reference.sync_every=0")
    if ref.mode == "precompute":
        raise ConfigError("reference.sync_every (TR-DPO soft sync) changes the reference during training; "
                          "reference.mode=precompute caches it once - use reference.mode auto or copy")
    if ref.mode == "adapter_disabled" or cfg.model.lora is not None:
        raise ConfigError("reference.sync_every (TR-DPO soft sync) needs a separate frozen reference copy; "
                          "with LoRA the reference is the policy with adapters disabled (no copy to update) - "
                          "train without model.lora or set reference.sync_every=0")
    if zero3:
        raise ConfigError("reference.sync_every (TR-DPO soft sync) mixes the policy into the reference copy, "
                          "which ZeRO-3 partitions; use backend.zero_stage=2")


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
    if ctx.lcpo_state is not None:
        sums, counts = ctx.lcpo_state.batch_stats(out.aux["w"], out.aux["annotator_id"],
                                                  ctx.lcpo_state.eta.numel())
        ctx.extras["lcpo_sums"] = ctx.extras.get("lcpo_sums", 0) + sums
        ctx.extras["lcpo_counts"] = ctx.extras.get("lcpo_counts", 0) + counts


def _after_optimizer_step(cfg: Any, ctx: StepContext, model: Any, backend: Any, step: int) -> int:
    """Algorithm state after optimizer step ``step``: LCPO's eta update; TR-DPO's soft reference sync
    every ``reference.sync_every`` steps. Returns the number of syncs made (0 or 1)."""
    if ctx.lcpo_state is not None and "lcpo_sums" in ctx.extras:
        sums = backend.all_reduce_sum(ctx.extras.pop("lcpo_sums"))
        counts = backend.all_reduce_sum(ctx.extras.pop("lcpo_counts"))
        ctx.lcpo_state.update(sums=sums, counts=counts)
    sync_every = cfg.reference.sync_every
    if sync_every and step % sync_every == 0:
        ctx.reference.soft_sync(model, cfg.reference.sync_alpha)
        return 1
    return 0


def _algo_state(ctx: StepContext) -> dict[str, Any]:
    """Algorithm state kept in checkpoints: LCPO's eta, SparsePO's learned mask head (small)."""
    state: dict[str, Any] = {}
    if ctx.lcpo_state is not None:
        state["lcpo_eta"] = ctx.lcpo_state.eta.tolist()
    if ctx.mask_head is not None:
        state["mask_head"] = {k: v.detach().cpu().flatten().tolist()
                              for k, v in ctx.mask_head.state_dict().items()}
    return state


def _load_algo_state(ctx: StepContext, state: dict[str, Any]) -> None:
    if ctx.lcpo_state is not None:
        ctx.lcpo_state.eta = torch.tensor(state["lcpo_eta"], dtype=torch.float32)
    if ctx.mask_head is not None and "mask_head" in state:
        with torch.no_grad():
            for k, v in ctx.mask_head.state_dict().items():
                v.copy_(torch.tensor(state["mask_head"][k], dtype=v.dtype).reshape(v.shape))


def _prepare_reference_cache(ctx: StepContext, model: Any, items: list, eval_items: list, cfg: Any,
                             run_dir: Path, backend: Any) -> None:
    """``reference.mode: precompute``: fill (or read) the train and eval caches, then drop the reference."""
    ctx.ref_cache = precompute_reference(ctx, model, items, cfg, run_dir, "ref_logps", backend.is_main)
    ctx.extras["eval_ref_cache"] = precompute_reference(ctx, model, eval_items, cfg, run_dir,
                                                        "ref_logps_eval", backend.is_main)
    ctx.reference.release()
    backend.barrier()


REF_PREFIX = "reference/"


def _checkpoint_tensors(cfg: Any, ctx: StepContext) -> dict[str, torch.Tensor] | None:
    """The synced reference copy (TR-DPO) for ``extra.safetensors``; None when the reference is fixed."""
    if not cfg.reference.sync_every or ctx.reference is None:
        return None
    return {REF_PREFIX + k: v for k, v in ctx.reference.state_tensors().items()}


def _restore_reference(cfg: Any, ctx: StepContext, ckpt: Path, step: int) -> None:
    saved = {k[len(REF_PREFIX):]: v for k, v in load_extra_tensors(ckpt).items() if k.startswith(REF_PREFIX)}
    frozen = ctx.reference is not None and ctx.reference.frozen is not None
    if saved and frozen:
        try:
            ctx.reference.load_state_tensors(saved)
        except RuntimeError as exc:
            raise CheckpointError(f"{ckpt}: {exc}") from None
    elif cfg.reference.sync_every and frozen and step >= cfg.reference.sync_every:
        raise CheckpointError(f"{ckpt}: reference.sync_every={cfg.reference.sync_every} but the checkpoint "
                              f"(step {step}) holds no synced reference (saved with sync off?); restart the run "
                              "or set reference.sync_every=0")


def _restore(cfg: Any, spec: Any, ctx: StepContext, model: Any, backend: Any, run_dir: Path) -> tuple:
    """``(checkpoint or None, step, stage index, data position)`` after loading the newest checkpoint."""
    ckpt = latest_checkpoint(run_dir) if cfg.run.resume else None
    if ckpt is None:
        return None, 0, 0, 0
    state = load_checkpoint(ckpt, model, backend)
    if spec.curriculum and cfg.curriculum == "iterative" and state["stage_index"] > 0:
        raise CheckpointError(f"{ckpt}: resuming Curry-DPO iterative inside stage {state['stage_index'] + 1} "
                              "is not supported (the stage's reference is not in the checkpoint); restart "
                              "the run or use curriculum=ordered")
    _load_algo_state(ctx, state)
    _restore_reference(cfg, ctx, ckpt, state["step"])
    return ckpt, state["step"], state["stage_index"], state["data_pos"]


def _load_data(cfg: Any, spec: Any, tok: Any, backend: Any) -> tuple[list, list, dict]:
    """``(train items, eval items, train data stats)``; an empty eval file means no held-out eval."""
    policy = LengthPolicy(cfg.data.max_length, cfg.data.max_prompt_length, cfg.data.overlong)
    train_path, eval_path = train_eval_paths(cfg.data.path, cfg.data.eval_path)
    items, data_stats = tokenize_items(train_path, spec.schema, tok, policy, cfg.data.max_train_examples,
                                       cfg.data.on_error)
    eval_items, eval_stats = (tokenize_items(eval_path, spec.schema, tok, policy, cfg.data.max_eval_examples,
                                             cfg.data.on_error)
                              if eval_path else ([], {}))
    if backend.is_main:
        print_data_summary(str(train_path), data_stats, len(items))
        if eval_stats:
            print_data_summary(str(eval_path), eval_stats, len(eval_items))
    return items, eval_items, data_stats


def _prepare(cfg: Any, spec: Any, model: Any, tok: Any, backend: Any, first_budget: int) -> tuple:
    """``(step context, engine, unwrapped model)``: reference, algorithm state, optimizer (+ mask head)."""
    model.train()
    ctx = _build_context(cfg, spec, model, tok, backend)
    extra_groups = None
    if ctx.mask_head is not None:
        extra_groups = [{"params": list(ctx.mask_head.parameters()), "weight_decay": cfg.sparsepo.weight_decay}]
        ctx.mask_head.to(backend.device)
    engine = backend.prepare(model, first_budget, extra_groups)
    return ctx, engine, backend.unwrap()


def _step_metrics(cfg: Any, ctx: StepContext, model: Any, eval_items: list, stats: dict, stage: int,
                  step: int, syncs: int, acc: MetricAccumulator, backend: Any) -> dict[str, float]:
    """One optimizer step's log row: reduced loss metrics, optimizer stats, algorithm state, eval."""
    metrics = {**acc.reduce(backend), **stats, "curry/stage": float(stage)}
    if cfg.reference.sync_every:
        metrics["ref/syncs"] = float(syncs)
    if ctx.lcpo_state is not None:
        metrics.update({f"lcpo/eta_{k}": float(v) for k, v in enumerate(ctx.lcpo_state.eta)})
    if cfg.run.eval_every and step % cfg.run.eval_every == 0:
        metrics.update(evaluate(ctx, model, eval_items, cfg.batch_size))
    return metrics


def _next_stage_reference(cfg: Any, ctx: StepContext, model: Any, backend: Any, budget: int) -> tuple:
    """Iterative Curry-DPO: the policy becomes the next stage's frozen reference; fresh optimizer."""
    model, ctx.reference = refresh_reference(model, ctx.reference, cfg.model.lora)
    ctx.reference.to(backend.device)
    model.train()
    engine = backend.prepare(model, budget)
    return engine, backend.unwrap()


def _finish(cfg: Any, ctx: StepContext, model: Any, tok: Any, backend: Any, run_dir: Path,
            summary: dict[str, Any]) -> dict[str, Any]:
    """Save the policy and ``summary.json`` (plus algorithm state and the TR-DPO sync count)."""
    syncs = summary.pop("ref_syncs")
    summary.update({"algorithm": cfg.algorithm,
                    **{k: v for k, v in _algo_state(ctx).items() if k != "mask_head"}})
    if cfg.reference.sync_every:
        summary["ref_syncs"] = syncs
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
    check_runtime(cfg, spec, backend)
    run_dir, logger = start_run(cfg, backend.is_main)
    model, tok = load_model(cfg.model, seed=cfg.run.seed)
    items, eval_items, data_stats = _load_data(cfg, spec, tok, backend)
    plan = make_plan(cfg, items, spec, backend.rank, backend.world_size)
    iterative = spec.curriculum and cfg.curriculum == "iterative" and len(plan.stages) > 1
    budget = plan.stage_steps[plan.stages[0]] if iterative else plan.total_steps
    ctx, engine, model = _prepare(cfg, spec, model, tok, backend, budget)
    if cfg.reference.mode == "precompute" and ctx.reference is not None:
        _prepare_reference_cache(ctx, model, items, eval_items, cfg, run_dir, backend)
    ckpt, step, stage_i, pos = _restore(cfg, spec, ctx, model, backend, run_dir)
    logger.rewind(step if ckpt is not None else -1)  # never repeat steps a resumed run logs again
    if backend.is_main:
        atomic_write_json(run_dir / "data_stats.json", {"train": data_stats, "eval_items": len(eval_items),
                                                        "stage_steps": plan.stage_steps})
    first = evaluate(ctx, model, eval_items, cfg.batch_size) if ckpt is None else {}
    if first:
        logger.log(first, step)
    guard, acc = NonFiniteGuard(cfg.run.on_nonfinite), MetricAccumulator()
    sync_every = cfg.reference.sync_every
    syncs = step // sync_every if sync_every else 0  # syncs made before a resumed step
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
            syncs += _after_optimizer_step(cfg, ctx, model, backend, step)
            metrics = _step_metrics(cfg, ctx, model, eval_items, stats, plan.stages[stage_i], step, syncs,
                                    acc, backend)
            if step % cfg.run.log_every == 0:
                bar.set_postfix_str(short_postfix(logger.log(metrics, step)), refresh=False)
            bar.update(1)
            if cfg.run.save_every and step % cfg.run.save_every == 0:
                save_checkpoint(run_dir, step, model, backend,
                                {"stage_index": stage_i, "data_pos": pos, **_algo_state(ctx)},
                                cfg.run.keep_last, tensors=_checkpoint_tensors(cfg, ctx))
            if step >= plan.total_steps:
                break
        stage_i, pos = stage_i + 1, 0
        if iterative and stage_i < len(plan.stages) and step < plan.total_steps:
            engine, model = _next_stage_reference(cfg, ctx, model, backend, plan.stage_steps[plan.stages[stage_i]])
    bar.close()
    final = evaluate(ctx, model, eval_items, cfg.batch_size)
    logger.log({**final, "train/skipped_nonfinite": float(guard.skipped)}, step)
    logger.close()
    return _finish(cfg, ctx, model, tok, backend, run_dir, {"steps": step, "first_eval": first,
                                                             "final_eval": final, "data": data_stats,
                                                             "ref_syncs": syncs})


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
