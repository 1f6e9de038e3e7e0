"""``prefopt rm train CFG``: train a BT / GPM / POLAR reward model or a BT ensemble.

One loop for every kind: tokenised RM items -> seeded per-epoch order -> per-rank micro-batches -> loss
(:mod:`reward_models.train_step`) -> backend step. Held-out accuracy at the start, every
``run.eval_every`` steps and at the end; resumable checkpoints via :mod:`prefopt.core.checkpoint` (the
data position, optimizer and RNG are restored, so a killed run reproduces an uninterrupted one); the
final model goes to ``<output_dir>/final`` as a ``RewardModel`` directory (BT full fine-tune: loadable by
``AutoModelForSequenceClassification``) with the tokenizer and the reward mean/std. An ``ensemble``
trains K BT members (seeds ``run.seed + i``, optional bootstrap data) into ``final/member_i`` +
``final/ensemble.json``, or one backbone with K heads when ``rm.ensemble.shared_backbone``.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from prefopt.core.backend import make_backend
from prefopt.core.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from prefopt.core.config import save_resolved, to_dict
from prefopt.core.errors import DataError
from prefopt.core.io import atomic_write_json
from prefopt.core.logging import MetricLogger, progress, short_postfix
from prefopt.core.loop import (
    MetricAccumulator,
    NonFiniteGuard,
    autocast,
    micro_batches,
    repeat_epochs,
    seed_everything,
    whole_steps,
)
from prefopt.core.metric_names import REWARD_MODEL
from reward_models import data as D
from reward_models.kinds import get_kind
from reward_models.train_step import batch_loss, build_model, evaluate, resolve_layout, to_device


def load_items(cfg: Any, tok: Any, seed: int) -> tuple[list, list, dict]:
    """Training and held-out RM items for the kind (pairs, ranked lists or POLAR triples) and stats."""
    return get_kind(cfg.rm.kind).load_items(cfg, tok, seed)


def make_plan(cfg: Any, items: list, rank: int, world: int, seed: int) -> tuple[list[list], int]:
    """This rank's micro-batches (whole optimizer steps) and the number of optimizer steps."""
    accum = cfg.optim.grad_accum
    per_epoch = len(micro_batches(items, cfg.batch_size, rank, world))
    if per_epoch == 0:
        raise DataError(f"not enough examples for one batch: {len(items)} item(s), batch_size "
                        f"{cfg.batch_size} x {world} process(es)")
    want = whole_steps(cfg.max_steps * accum if cfg.max_steps else round(cfg.epochs * per_epoch), accum)
    plan = repeat_epochs(items, want, batch_size=cfg.batch_size, rank=rank, world=world, seed=seed,
                         shuffle=cfg.data.shuffle)
    return plan, want // accum


def _save_final(model: Any, tok: Any, out: Path, backend: Any) -> None:
    """Save the reward model (+ tokenizer) through the backend (ZeRO-3 gather; collective)."""
    def write(_state_dict: dict | None) -> None:  # the gathered module saves its own complete weights
        model.save_pretrained(out)
        tok.save_pretrained(str(out))

    backend.save_model(model, write)


def _reward_stats(cfg: Any, model: Any, items: list, pad: int, device: Any, final_eval: torch.Tensor | None):
    if get_kind(cfg.rm.kind).pairwise or cfg.rm.reward_stats == "none":  # GPM: no scalar reward
        return None
    if cfg.rm.reward_stats == "eval":
        r = final_eval
    else:
        r = evaluate(cfg, model, items[:cfg.rm.reward_stats_examples], pad, device)[1]
    if r is None or r.numel() < 2:
        return None
    return float(r.mean()), max(float(r.std()), 1e-6)


def _start(cfg: Any, seed: int, boot: bool) -> tuple:
    """Run folder, logger, model, data and plan: ``(cfg with its concrete data.layout, backend, run_dir,
    logger, model, tok, items, eval_items, stats, plan, total steps)``."""
    backend = make_backend(cfg.backend, cfg.optim, cfg.batch_size)
    run_dir = Path(cfg.run.output_dir)
    model, tok = build_model(cfg, seed)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, layout=resolve_layout(cfg, model)))
    if backend.is_main:  # the saved config holds the concrete layout ("auto" resolved)
        run_dir.mkdir(parents=True, exist_ok=True)
        save_resolved(cfg, run_dir)
    logger = MetricLogger(run_dir, report_to=cfg.run.report_to, names=REWARD_MODEL, config=to_dict(cfg))
    items, eval_items, stats = load_items(cfg, tok, seed)
    if boot:
        items = D.bootstrap(items, seed)
    plan, total = make_plan(cfg, items, backend.rank, backend.world_size, seed)
    return cfg, backend, run_dir, logger, model, tok, items, eval_items, stats, plan, total


def _micro_step(cfg: Any, engine: Any, mb: list, pad: int, backend: Any, acc: MetricAccumulator,
                guard: NonFiniteGuard, step: int) -> None:
    """Forward, loss and backward of one micro-batch (a non-finite loss is stopped or skipped)."""
    batch = to_device(D.collate_rm(mb, pad, cfg.data.layout), backend.device)
    with autocast(cfg.precision, backend.device):
        out, _ = batch_loss(cfg, engine, batch)
    loss = out.loss.mean()
    if guard.ok(loss, step):
        backend.backward(loss)
        acc.add({"loss": loss.detach(), **out.metrics}, weight=float(len(mb)))


def _finish(cfg: Any, model: Any, tok: Any, backend: Any, items: list, eval_items: list,
            final_dir: Path, logger: Any, summary: dict) -> dict:
    """Final eval, reward statistics (stored in the model), the saved model and ``summary.json``."""
    pad, dev = tok.pad_token_id, backend.device
    final, final_r = evaluate(cfg, model, eval_items, pad, dev)
    rstats = _reward_stats(cfg, model, items, pad, dev, final_r)
    if rstats is not None and hasattr(model, "set_reward_stats"):
        model.set_reward_stats(*rstats)
    logger.log({**final, "train/skipped_nonfinite": float(summary.pop("skipped"))}, summary["steps"])
    logger.close()
    _save_final(model, tok, final_dir, backend)
    data = summary.pop("data")
    summary.update({"final_eval": final, "reward_mean_std": rstats, "data": data, "final_dir": str(final_dir)})
    if backend.is_main:
        atomic_write_json(Path(cfg.run.output_dir) / "summary.json", summary)
    return summary


def train_one(cfg: Any, final_dir: Path, member_seed: int | None = None, boot: bool = False) -> dict:
    """Train one reward model (or a shared-backbone ensemble) from ``cfg``; returns the summary."""
    seed = cfg.run.seed if member_seed is None else member_seed
    seed_everything(seed)
    cfg, backend, run_dir, logger, model, tok, items, eval_items, stats, plan, total = _start(cfg, seed, boot)
    pad, dev = tok.pad_token_id, backend.device
    model.train()
    engine = backend.prepare(model, total)
    model = backend.unwrap()
    ckpt = latest_checkpoint(run_dir) if cfg.run.resume else None
    step, pos = 0, 0
    if ckpt is not None:
        state = load_checkpoint(ckpt, model, backend)
        step, pos = state["step"], state["data_pos"]
    logger.rewind(step if ckpt is not None else -1)  # never repeat steps a resumed run logs again
    if backend.is_main:
        atomic_write_json(run_dir / "data_stats.json", {"train": stats, "train_items": len(items),
                                                        "eval_items": len(eval_items), "steps": total})
    first = evaluate(cfg, model, eval_items, pad, dev)[0] if ckpt is None and cfg.run.eval_at_start else {}
    if first:
        logger.log(first, 0)
    acc, guard = MetricAccumulator(), NonFiniteGuard(cfg.run.on_nonfinite)
    bar = progress(total=total, initial=step, desc=f"rm train {cfg.rm.kind}")
    for mb in plan[pos:]:
        if step >= total:
            break
        _micro_step(cfg, engine, mb, pad, backend, acc, guard, step + 1)
        pos += 1
        optim_stats = backend.step()
        if optim_stats is None:
            continue
        guard.grad_ok(optim_stats, step + 1)
        step += 1
        metrics = {**acc.reduce(backend), **optim_stats}
        if cfg.run.eval_every and step % cfg.run.eval_every == 0 and step < total:
            metrics.update(evaluate(cfg, model, eval_items, pad, dev)[0])
        if step % cfg.run.log_every == 0:
            bar.set_postfix_str(short_postfix(logger.log(metrics, step)), refresh=False)
        bar.update(1)
        if cfg.run.save_every and step % cfg.run.save_every == 0:
            save_checkpoint(run_dir, step, model, backend, {"data_pos": pos}, cfg.run.keep_last)
    bar.close()
    return _finish(cfg, model, tok, backend, items, eval_items, final_dir, logger,
                   {"kind": cfg.rm.kind, "steps": step, "seed": seed, "layout": cfg.data.layout,
                    "first_eval": first, "skipped": guard.skipped, "data": stats})


def run_rm_train(cfg: Any) -> dict[str, Any]:
    """Entry point of ``prefopt rm train`` (cfg: :class:`reward_models.config.RMTrainConfig`)."""
    out = Path(cfg.run.output_dir)
    ens = cfg.rm.ensemble
    if not get_kind(cfg.rm.kind).members or ens.shared_backbone:
        return train_one(cfg, out / "final", boot=False)
    summaries = []
    for i in range(ens.members):
        member_rm = dataclasses.replace(cfg.rm, kind="bt", ensemble=type(cfg.rm.ensemble)())  # a plain BT run
        sub = dataclasses.replace(cfg, rm=member_rm,
                                  run=dataclasses.replace(cfg.run, output_dir=str(out / f"member_{i}")))
        summaries.append(train_one(sub, out / "final" / f"member_{i}", member_seed=cfg.run.seed + i,
                                   boot=ens.bootstrap))
    from prefopt.core.backend import world_info

    if world_info()[0] == 0:  # the members' concrete data.layout ("auto" resolved), as a single run writes it
        save_resolved(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, layout=summaries[0]["layout"])), out)
        atomic_write_json(out / "final" / "ensemble.json", {
            "kind": "ensemble", "members": [f"member_{i}" for i in range(ens.members)],
            "method": ens.method, "lam": ens.lam, "ddof": 0, "penalty": "var", "calibration": None})
        atomic_write_json(out / "summary.json", {"kind": "ensemble", "members": summaries})
    return {"kind": "ensemble", "members": summaries}
