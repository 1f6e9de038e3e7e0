"""EGPO / online IPO pieces of the online loop (Zhou, Fazel, Du 2025, arXiv 2503.08942; docs/online.md).

* :func:`collect_egpo` draws the contrast pair (y, y') from the sampler μ (π_θ at a temperature/top-k,
  or the token-level geometric mixture (1 − c)·log π_θ + c·log π_ref) and y'' from the opponent π_θ at
  temperature 1 untruncated; target = P(y ≻ y'') − P(y' ≻ y'') from the oracle (or P(y ≻ y') − ½).
* :func:`egpo_update` is the extragradient step (:mod:`prefopt.loops.extragradient`, the one
  implementation): back up θ_t and the optimizer/scheduler state, take the half step on a batch drawn
  at θ_t, draw a new batch at θ_{t+½}, restore θ_t and its optimizer state, take the real step on the
  new batch. Needs the single-process backend (its optimizer state is not sharded).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import torch

from prefopt.generation.base import Completion, Prompt
from prefopt.loops.extragradient import extragradient_update
from prefopt.loops.online_algos import Buffer, _no_grad_logps, make_batch, rollout

if TYPE_CHECKING:
    from data_pipelines.schemas import PromptExample
    from prefopt.loops.online import OnlineContext

__all__ = ["collect_egpo", "egpo_update", "online_ipo_update"]


def _mixture_pair(ctx: OnlineContext, prompts: Sequence[Prompt], seed: int) -> list[list[Completion]]:
    """(y, y') per prompt from the geometric mixture of π_θ and π_ref (:mod:`prefopt.generation.mixture`)."""
    from prefopt.generation.mixture import last_logits, mixture_generate

    e, model = ctx.oc.egpo, ctx.model

    def ref_logits(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return ctx.reference.run(model, lambda m: last_logits(m, ids, mask))

    return mixture_generate(model, ref_logits, ctx.tok, prompts, 2, coef=e.mixture_coef,
                            max_new_tokens=ctx.oc.max_new_tokens, pad_id=ctx.pad_id, device=ctx.device,
                            max_prompt_length=ctx.oc.max_prompt_length, temperature=e.temperature,
                            top_k=e.top_k, seed=seed)


def _pref(ctx: OnlineContext, examples: Sequence[PromptExample], a: Sequence[Completion],
          b: Sequence[Completion]) -> torch.Tensor:
    return ctx.source.preference([ex.prompt for ex in examples], [c.text for c in a], [c.text for c in b],
                                 answer=[ex.answer for ex in examples],
                                 task=[ex.meta.get("task") for ex in examples],
                                 meta=[ex.meta for ex in examples]).float()


def collect_egpo(ctx: OnlineContext, examples: Sequence[PromptExample], seed: int) -> Buffer:
    """One online-IPO batch: rows ``[y block; y' block]``, pair-aligned ``target``, ref log-probs."""
    e = ctx.oc.egpo
    prompts = [ex.prompt for ex in examples]
    if e.mixture_coef > 0:
        pair = _mixture_pair(ctx, prompts, seed)
    else:
        pair = rollout(ctx, prompts, 2, seed, temperature=e.temperature, top_k=e.top_k, top_p=1.0)
    y, y2 = [o[0] for o in pair], [o[1] for o in pair]
    same_dist = e.mixture_coef == 0 and e.temperature == 1.0 and e.top_k == 0
    if e.cheap_target and same_dist:
        target = _pref(ctx, examples, y, y2) - 0.5
    else:
        opp = [o[0] for o in rollout(ctx, prompts, 1, seed + 7919, temperature=1.0, top_k=0, top_p=1.0)]
        target = _pref(ctx, examples, y, opp) - _pref(ctx, examples, y2, opp)
    rows = y + y2
    batch = make_batch([c.prompt_ids for c in rows], [c.token_ids for c in rows], ctx.pad_id)
    tensors = {"target": target.to(ctx.device), "ref_token_logps": _no_grad_logps(ctx, batch, reference=True)}
    lens = [len(c.token_ids) for c in rows]
    metrics = {"egpo/target_abs": float(target.abs().mean()), "completions/mean_length": sum(lens) / len(lens)}
    return Buffer(batch, tensors, True, metrics, [c.text for c in rows])


def egpo_update(ctx: OnlineContext, examples: Sequence[PromptExample], seed: int,
                step_fn: Callable[[Buffer], tuple[dict | None, dict]]) -> tuple[dict | None, dict]:
    """One extragradient update θ_t → θ_{t+1} (:func:`prefopt.loops.extragradient.extragradient_update`
    over the backend's optimizer state); ``step_fn(buffer)`` runs the micro-batches and one optimizer step
    (the loop's). Returns the full step's ``(optimizer stats, metrics)``."""
    out = extragradient_update(ctx.model, ctx.backend, half=lambda: collect_egpo(ctx, examples, seed),
                               full=lambda: collect_egpo(ctx, examples, seed + 1),  # y, y', y'' at θ_{t+½}
                               step=step_fn, snapshot_device="cpu" if ctx.oc.egpo.snapshot_on_cpu else None)
    (stats, metrics), (_, half_metrics) = out.full, out.half
    metrics.update({f"egpo/half_{k}": v for k, v in half_metrics.items() if k in ("loss", "target_mean")})
    metrics.update(out.full_batch.metrics)
    ctx.last_egpo = (out.half_batch, out.full_batch)
    return stats, metrics


def online_ipo_update(ctx: OnlineContext, examples: Sequence[PromptExample], seed: int,
                      step_fn: Callable[[Buffer], tuple[dict | None, dict]]) -> tuple[dict | None, dict]:
    """One online-IPO update: a fresh pair batch at the current policy, then ``step_fn``'s optimizer step."""
    buf = collect_egpo(ctx, examples, seed)
    stats, metrics = step_fn(buf)
    return stats, {**buf.metrics, **metrics}

