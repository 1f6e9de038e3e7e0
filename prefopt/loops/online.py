"""The online loop: prompts -> rollouts -> rewards -> advantages/pairs -> registered loss -> update.

``run_online(cfg)`` is ``prefopt train`` for algorithms whose spec says ``loop: online`` (GRPO, GSPO,
URPO, DNO, EGPO, online IPO, P3O). One round samples ``prompts_per_round`` prompts (sharded over
processes), draws rollouts with the :class:`~prefopt.generation.base.Generator` that ``online.generator``
names in the :mod:`prefopt.generation.rollout` registry (one holding its own weights, vLLM, gets them
from :func:`sync_rollout_weights` after every round's updates, EGPO / online IPO after every step),
scores them with the :class:`~prefopt.rewards.RewardSource`, turns them into loss inputs with the
algorithm's collector (the spec's registered driver, :mod:`prefopt.loops.online_drivers`) and runs
``num_iterations`` passes of ``minibatches`` optimizer steps
(old log-probs come from the rollout policy). EGPO replaces the step by its extragradient update.
Rounds are seeded by their index, and checkpoints hold the round (DNO: iteration), so a killed run
resumes where it stopped. Logged: reward mean/std (per function and task), KL, clip fractions,
entropy, completion lengths, oracle win rate of greedy answers against the reference's.
"""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch

from prefopt.core.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from prefopt.core.errors import ConfigError
from prefopt.loops.common import MetricAccumulator, NonFiniteGuard, seed_everything, start_run
from prefopt.loops.layouts import online_layout, with_online_layout
from prefopt.loops.online_algos import Buffer, buffer_loss, make_batch, score_rows
from prefopt.loops.online_config import OnlineConfig
from prefopt.loops.online_drivers import get_driver

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from data_pipelines.schemas import PromptExample
    from prefopt.algorithms import OnlineAlgorithmSpec
    from prefopt.configs import TrainConfig
    from prefopt.core.backend import Backend
    from prefopt.core.logging import MetricLogger
    from prefopt.generation.base import Generator
    from prefopt.loops.reference import Reference
    from prefopt.losses.base import LossSpec
    from prefopt.rewards.sources import RewardSource
    from reward_models.scorer import RewardScorer

__all__ = ["OnlineContext", "run_online", "build_context", "optimizer_step", "run_round", "sync_rollout_weights",
           "total_steps"]


@dataclass
class OnlineContext:
    """Everything a round needs (built once by :func:`build_context`)."""

    cfg: TrainConfig
    oc: OnlineConfig
    spec: OnlineAlgorithmSpec
    loss_spec: LossSpec
    hparams: Any        # the loss's hyper-parameter dataclass (``loss_spec.hparams_cls``)
    backend: Backend
    model: torch.nn.Module   # the unwrapped policy (generation, no-grad forwards, checkpoints)
    engine: torch.nn.Module  # what the training forward runs (DeepSpeed engine or the model)
    tok: PreTrainedTokenizerBase
    generator: Generator
    source: RewardSource
    reference: Reference | None = None
    device: torch.device = torch.device("cpu")
    precision: str = "fp32"
    pad_id: int = 0
    guard: NonFiniteGuard = field(default_factory=NonFiniteGuard)
    last_egpo: tuple[Buffer, Buffer] | None = None  # EGPO: the (half, full) step buffers of the last update


def online_config(cfg: TrainConfig) -> OnlineConfig:
    oc = getattr(cfg, "online", None)
    return oc if oc is not None else OnlineConfig()


def total_steps(spec: OnlineAlgorithmSpec, oc: OnlineConfig) -> int:
    """Optimizer steps of the run (EGPO: full extragradient updates)."""
    if spec.rollout_every_step:
        return oc.rounds * oc.minibatches
    return oc.rounds * oc.num_iterations * oc.minibatches


def _urpo_defaults(oc: OnlineConfig) -> OnlineConfig:
    """URPO without explicit rewards: player + referee functions and the policy as referee."""
    from dataclasses import replace

    from prefopt.loops.online_config import RewardFnConfig

    rw = oc.reward
    if not rw.functions and not rw.models:
        rw = replace(rw, functions=(RewardFnConfig("urpo_verifiable"), RewardFnConfig("urpo_referee")),
                     policy_referee=True)
    return replace(oc, reward=rw)


def resolved_config(cfg: TrainConfig, spec: OnlineAlgorithmSpec, model: torch.nn.Module) -> TrainConfig:
    """``cfg`` as the run uses it and its config.yaml records it: the concrete ``online.layout`` and, for a
    self-refereeing algorithm (URPO) without explicit rewards, the reward functions it fills in."""
    cfg = with_online_layout(cfg, model)
    if spec.self_referee:
        cfg = dataclasses.replace(cfg, online=_urpo_defaults(online_config(cfg)))
    return cfg


def _rollout_generator(cfg: TrainConfig, oc: OnlineConfig, backend: Backend, model: torch.nn.Module,
                       tok: PreTrainedTokenizerBase) -> Generator:
    """``online.generator`` from the ``rollout_generator`` registry (:mod:`prefopt.generation.rollout`)."""
    from prefopt.generation.rollout import RolloutRequest, engine_options, make_rollout_generator

    req = RolloutRequest(model=model, tokenizer=tok, model_cfg=cfg.model, output_dir=Path(cfg.run.output_dir),
                         seed=cfg.run.seed, rank=backend.rank, world_size=backend.world_size,
                         zero_stage=getattr(backend, "zero_stage", 0), batch_size=oc.generation_batch_size,
                         max_prompt_length=oc.max_prompt_length,
                         engine_options=engine_options(oc.vllm),
                         hf_options=dataclasses.asdict(oc.hf))
    return make_rollout_generator(oc.generator, req)


def sync_rollout_weights(ctx: "OnlineContext") -> bool:
    """Push the current policy into a generator holding its own copy (vLLM; a LoRA policy merged);
    a no-op for the HF generator on the live policy. Returns whether weights were pushed."""
    from prefopt.generation.sync import sync_generator

    return sync_generator(ctx.generator, ctx.model)


def build_context(cfg: TrainConfig, spec: OnlineAlgorithmSpec, backend: Backend, model: torch.nn.Module,
                  tok: PreTrainedTokenizerBase, *, engine: torch.nn.Module | None = None,
                  scorer: RewardScorer | None = None) -> OnlineContext:
    """Reference (if the loss or β needs one), generator on the live policy, reward source."""
    from prefopt.loops.reference import Reference, resolve_mode
    from prefopt.rewards import PolicyReferee, build_reward_source

    oc = online_config(cfg)
    if spec.self_referee:
        oc = _urpo_defaults(oc)
    oc = dataclasses.replace(oc, layout=online_layout(cfg, oc.layout, model))
    hp = spec.build_hparams(cfg.loss)  # typed once in TrainConfig: returned as it is
    needs_ref = get_driver(spec.driver).needs_reference(hp)
    mode = resolve_mode(cfg.reference.mode, model, needs_ref)
    if mode == "precompute":
        raise ConfigError("online algorithms sample new responses every round; reference.mode=precompute "
                          "cannot serve them (use auto, copy or adapter_disabled)")
    if cfg.reference.sync_every:
        raise ConfigError("reference.sync_every (TR-DPO soft sync) is an offline-loop option; online algorithms "
                          "define their own reference (DNO: previous iterate); set reference.sync_every=0")
    reference = Reference(mode, model) if mode != "none" else None
    gen = _rollout_generator(cfg, oc, backend, model, tok)
    referee = PolicyReferee(gen, seed=cfg.run.seed) if oc.reward.policy_referee else None
    source = build_reward_source(oc.reward, tokenizer=tok, referee=referee, scorer=scorer, device=backend.device)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return OnlineContext(cfg=cfg, oc=oc, spec=spec, loss_spec=spec.loss_spec(), hparams=hp, backend=backend,
                         model=model, engine=engine if engine is not None else model, tok=tok, generator=gen,
                         source=source, reference=reference, device=backend.device, precision=cfg.precision,
                         pad_id=pad, guard=NonFiniteGuard(cfg.run.on_nonfinite))


def _empty(ctx: OnlineContext) -> Buffer:
    return Buffer(make_batch([[ctx.pad_id]], [[ctx.pad_id]], ctx.pad_id, [True]), {})


def _split_exact(ctx: OnlineContext, buf: Buffer, parts: int) -> list[Buffer]:
    """Exactly ``parts`` chunks (empty buffers pad the list so every process steps alike)."""
    chunks = buf.split(parts) if buf.tensors else []
    return chunks + [_empty(ctx)] * (parts - len(chunks))


def _global_counts(ctx: OnlineContext, buf: Buffer, parts: int) -> dict[str, torch.Tensor]:
    """Global token/sequence/pair counts of one optimizer step, divided by micro-batches × processes
    (the backends average gradients over both), so every process's loss is its share."""
    if not buf.tensors:
        local = torch.zeros(3, dtype=torch.float64)
    else:
        rows = float(buf.rows)
        local = torch.tensor([float(buf.batch.completion_mask.sum()), rows, rows / 2], dtype=torch.float64)
    total = ctx.backend.all_reduce_sum(local.to(ctx.device)).cpu() / (parts * ctx.backend.world_size)
    return {"num_tokens": total[0].float(), "num_sequences": total[1].float(), "num_pairs": total[2].float()}


def optimizer_step(ctx: OnlineContext, buf: Buffer, step: int = 0) -> tuple[dict | None, dict[str, float]]:
    """``optim.grad_accum`` micro-batches of ``buf`` then one optimizer step; returns (stats, metrics)."""
    parts = ctx.backend.grad_accum
    counts = _global_counts(ctx, buf, parts)
    acc, stats = MetricAccumulator(), None
    for mb in _split_exact(ctx, buf, parts):
        loss, metrics = buffer_loss(ctx, mb, counts)
        if not ctx.guard.ok(loss, step):
            loss = loss * 0.0
        ctx.backend.backward(loss)
        acc.add({"loss": loss.detach(), **metrics}, weight=float(max(mb.rows, 1)) if mb.tensors else 0.0)
        stats = ctx.backend.step()
    local = {k: acc.sums[k] / acc.counts[k] for k in acc.sums if acc.counts[k] > 0}
    local.setdefault("loss", 0.0)  # a step without trainable rows (DNO without pairs) still logs a row
    return stats, local


def _round_prompts(prompts: Sequence[PromptExample], r: int, per_round: int, seed: int) -> list[PromptExample]:
    """Prompts of round ``r``: a fresh seeded permutation per pass over the prompt set."""
    n, out = len(prompts), []
    for k in range(r * per_round, (r + 1) * per_round):
        epoch, j = divmod(k, n)
        order = list(range(n))
        random.Random(seed * 7919 + epoch).shuffle(order)
        out.append(prompts[order[j]])
    return out


def run_round(ctx: OnlineContext, examples: Sequence[PromptExample], r: int,
              step: int) -> Iterator[tuple[dict | None, dict]]:
    """Yield ``(optimizer stats, metrics)`` after each optimizer step of round ``r`` (the spec's registered
    driver: :mod:`prefopt.loops.online_drivers`)."""
    oc, driver = ctx.oc, get_driver(ctx.spec.driver)
    seed = ctx.cfg.run.seed * 1_000_003 + r * 1009 + ctx.backend.rank * 17
    if ctx.spec.rollout_every_step:
        # Rollouts are drawn between optimizer steps (EGPO: also at θ_{t+½} after the half step), so a
        # generator with its own weights (vLLM) is synced after every step. EGPO's restore of θ_t is
        # followed by the full step before anything is generated, so it needs no sync of its own.
        def synced_step(b: Buffer) -> tuple[dict | None, dict]:
            out = optimizer_step(ctx, b, step)
            sync_rollout_weights(ctx)
            return out

        for k in range(oc.minibatches):
            part = list(examples)[k::oc.minibatches]
            yield driver.update(ctx, part, seed + 2 * k, synced_step)
        return
    buf = driver.collect(ctx, examples, seed)
    for _ in range(oc.num_iterations):
        for mb in _split_exact(ctx, buf, oc.minibatches):
            stats, m = optimizer_step(ctx, mb, step)
            yield stats, {**buf.metrics, **m}
    # Rollouts are drawn only at the start of a round: one sync after the round's updates, before the
    # next round's (or the evaluation's) generation.
    sync_rollout_weights(ctx)


@torch.no_grad()
def evaluate(ctx: OnlineContext, examples: Sequence[PromptExample],
             ref_texts: Sequence[str] | None) -> tuple[dict[str, float], list[str]]:
    """Greedy answers on held-out prompts: (metrics, texts); metrics = mean reward (per task) and the
    oracle win rate against ``ref_texts`` (the reference policy's greedy answers)."""
    from prefopt.generation.base import SamplingParams

    if not examples:
        return {}, []
    outs = ctx.generator.generate([ex.prompt for ex in examples],
                                  SamplingParams(temperature=0.0, max_new_tokens=ctx.oc.max_new_tokens))
    comps = [o[0] for o in outs]
    rewards = score_rows(ctx, examples, comps, list(range(len(comps)))).total
    ok = ~torch.isnan(rewards)
    out = {"eval/reward": float(rewards[ok].mean()) if ok.any() else float("nan")}
    for task in sorted({ex.meta.get("task") for ex in examples if ex.meta.get("task")}):
        sel = torch.tensor([ex.meta.get("task") == task for ex in examples]) & ok
        if sel.any():
            out[f"eval/reward_{task}"] = float(rewards[sel].mean())
    if ref_texts is not None and ctx.source.has_oracle:
        p = ctx.source.preference([ex.prompt for ex in examples], [c.text for c in comps], list(ref_texts),
                                  answer=[ex.answer for ex in examples], task=[ex.meta.get("task") for ex in examples],
                                  meta=[ex.meta for ex in examples])
        out["eval/win_rate_vs_ref"] = float(p.float().mean())
    return out, [c.text for c in comps]


def _gather_mean(backend: Backend, metrics: dict[str, float]) -> dict[str, float]:
    """Average metric dicts over processes (keys may differ between processes)."""
    if backend.world_size == 1:
        return metrics
    import torch.distributed as dist

    parts: list[dict] = [None] * backend.world_size  # type: ignore[list-item]
    dist.all_gather_object(parts, metrics)
    keys = sorted({k for p in parts for k in p})
    return {k: sum(p[k] for p in parts if k in p) / sum(k in p for p in parts) for k in keys}


def _check(ctx: OnlineContext) -> None:
    oc, w = ctx.oc, ctx.backend.world_size
    if oc.prompts_per_round % w:
        raise ConfigError(f"online.prompts_per_round={oc.prompts_per_round} must be a multiple of the "
                          f"number of processes ({w})")
    spec = ctx.spec
    if spec.restores_optimizer and not hasattr(ctx.backend, "state_dict"):
        raise ConfigError(f"{spec.name}'s extragradient step restores the optimizer state; it needs "
                          "backend.kind=single")
    if spec.generations is not None and oc.num_generations != spec.generations:
        raise ConfigError(f"{spec.name} compares {spec.generations} responses per prompt: set "
                          f"online.num_generations: {spec.generations}")


def run_online(cfg: TrainConfig, *, scorer: RewardScorer | None = None) -> dict[str, Any]:  # noqa: C901, PLR0915 - the loop
    """Train an online algorithm from ``cfg`` (a :class:`prefopt.configs.TrainConfig`)."""
    from prefopt.algorithms import get_algorithm
    from prefopt.core.backend import make_backend
    from prefopt.core.models import load_model
    from prefopt.data.prompts import load_prompts

    seed_everything(cfg.run.seed)
    spec = get_algorithm(cfg.algorithm)
    backend = make_backend(cfg.backend, cfg.optim, cfg.batch_size)
    model, tok = load_model(cfg.model, seed=cfg.run.seed)
    model = model.to(backend.device)
    cfg = resolved_config(cfg, spec, model)
    oc = online_config(cfg)
    run_dir, logger = start_run(cfg, backend.is_main)
    prompts = load_prompts(oc.prompts, seed=cfg.run.seed)
    train, held_out = prompts[:oc.prompts.n], prompts[oc.prompts.n:]
    ctx = build_context(cfg, spec, backend, model, tok, scorer=scorer)  # reference = initial weights
    ctx.engine = backend.prepare(model, total_steps(spec, ctx.oc))
    ctx.model = backend.unwrap()
    _check(ctx)
    step, start_round, ref_texts = 0, 0, None
    ckpt = latest_checkpoint(run_dir) if cfg.run.resume else None
    if ckpt is not None:
        state = load_checkpoint(ckpt, ctx.model, backend)
        step, start_round, ref_texts = state["step"], state["round"], state.get("ref_texts")
        sync_rollout_weights(ctx)  # the engine (vLLM) started from the initial weights
    logger.rewind(step if ckpt is not None else -1)  # never repeat steps a resumed run logs again
    wr = oc.win_rate_every
    first: dict[str, float] = {}
    if wr >= 0 and held_out and ckpt is None:
        first, ref_texts = evaluate(ctx, held_out, None)
        first = {**first, "eval/win_rate_vs_ref": 0.5}
        logger.log(first, step)
    curve = []
    for r in range(start_round, oc.rounds):
        examples = _round_prompts(train, r, oc.prompts_per_round, cfg.run.seed)[backend.rank::backend.world_size]
        for stats, metrics in run_round(ctx, examples, r, step):
            step += 1
            metrics = _gather_mean(backend, metrics)
            metrics.update({**(stats or {}), "round": float(r)})
            if ctx.source.referee is not None:
                metrics.update(ctx.source.referee.metrics())
            curve.append({"step": step, "reward": metrics.get("reward")})
            if step % cfg.run.log_every == 0:
                logger.log(metrics, step)
        if wr > 0 and (r + 1) % wr == 0 and held_out and r + 1 < oc.rounds:
            logger.log(evaluate(ctx, held_out, ref_texts)[0], step)
        if cfg.run.save_every and (r + 1) % cfg.run.save_every == 0:
            save_checkpoint(run_dir, step, ctx.model, backend, {"round": r + 1, "ref_texts": ref_texts},
                            cfg.run.keep_last)
    return _finish(ctx, tok, held_out, ref_texts, logger, run_dir,
                   {"algorithm": cfg.algorithm, "steps": step, "rounds": oc.rounds, "first_eval": first,
                    "reward_curve": curve})


def _finish(ctx: OnlineContext, tok: PreTrainedTokenizerBase, held_out: list[PromptExample],
            ref_texts: list[str] | None, logger: MetricLogger,
            run_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """Final held-out evaluation and log row; the policy and ``summary.json`` from the main process."""
    from prefopt.core.io import atomic_write_json
    from prefopt.loops.offline import save_policy

    final = evaluate(ctx, held_out, ref_texts)[0] if ctx.oc.win_rate_every >= 0 and held_out else {}
    logger.log({**final, "train/skipped_nonfinite": float(ctx.guard.skipped)}, summary["steps"])
    logger.close()
    curve = summary.pop("reward_curve")
    summary.update({"final_eval": final, "reward_curve": curve})
    if ctx.backend.is_main:
        save_policy(ctx.model, tok, run_dir / "final")
        atomic_write_json(run_dir / "summary.json", summary)
    return summary
