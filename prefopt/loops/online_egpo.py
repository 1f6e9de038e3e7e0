"""EGPO / online IPO pieces of the online loop (Zhou, Fazel, Du 2025, arXiv 2503.08942; docs/online.md).

* :func:`collect_egpo` draws the contrast pair (y, y') from the sampler μ (π_θ at a temperature/top-k,
  or the token-level geometric mixture (1 − c)·log π_θ + c·log π_ref) and y'' from the opponent π_θ at
  temperature 1 untruncated; target = P(y ≻ y'') − P(y' ≻ y'') from the oracle (or P(y ≻ y') − ½).
* :func:`egpo_update` is the extragradient step: back up θ_t and the optimizer/scheduler state, take
  the half step on a batch drawn at θ_t, draw a new batch at θ_{t+½}, restore θ_t and its optimizer
  state, take the real step on the new batch. Needs the single-process backend (its optimizer state is
  not sharded).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from prefopt.generation.base import Completion
from prefopt.loops.online_algos import Buffer, _no_grad_logps, make_batch, rollout

__all__ = ["collect_egpo", "egpo_update", "mixture_generate", "Snapshot", "take_snapshot", "restore"]


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.as_tensor(r)
        mask[i, width - len(r):] = 1
    return ids, mask


def _last_logits(model: Any, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits[:, -1].float()


@torch.no_grad()
def mixture_generate(ctx: Any, prompts: Sequence[Any], n: int, *, coef: float, temperature: float = 1.0,
                     top_k: int = 0, seed: int = 0) -> list[list[Completion]]:
    """Sample ``n`` completions per prompt from the token-level geometric mixture of π_θ and π_ref
    (Nash-MD / EGPO sampler; no KV cache - meant for short completions). Log-probs are those of the
    tempered, truncated mixture the tokens were drawn from."""
    from prefopt.generation.hf import encode_prompt_ids
    from prefopt.losses.egpo import geometric_mixture_logits, sample_tokens

    prompt_rows = [encode_prompt_ids(ctx.tok, p)[-ctx.oc.max_prompt_length:] for p in prompts]
    rows = [r for r in prompt_rows for _ in range(n)]
    dev, eos, pad = ctx.device, ctx.tok.eos_token_id, ctx.pad_id
    ids, mask = (t.to(dev) for t in _left_pad(rows, pad))
    gen = torch.Generator().manual_seed(seed)
    done = torch.zeros(len(rows), dtype=torch.bool, device=dev)
    toks, lps = [], []
    was = ctx.model.training
    ctx.model.eval()
    for _ in range(ctx.oc.max_new_tokens):
        z = geometric_mixture_logits(_last_logits(ctx.model, ids, mask),
                                     ctx.reference.run(ctx.model, lambda m, ids=ids, mask=mask: _last_logits(m, ids, mask)), coef)
        tok = sample_tokens(z.cpu(), temperature=temperature, top_k=top_k, generator=gen).to(dev)
        zt = z / temperature
        if top_k:
            zt = zt.masked_fill(zt < torch.topk(zt, top_k, -1).values[..., -1:], float("-inf"))
        lps.append(torch.log_softmax(zt, -1).gather(-1, tok[:, None]).squeeze(-1))
        tok = torch.where(done, torch.full_like(tok, pad), tok)
        toks.append(tok)
        mask = torch.cat([mask, (~done).long()[:, None]], 1)
        ids = torch.cat([ids, tok[:, None]], 1)
        done |= tok == eos
        if bool(done.all()):
            break
    ctx.model.train(was)
    gen_ids, gen_lps = torch.stack(toks, 1).tolist(), torch.stack(lps, 1).tolist()
    out: list[list[Completion]] = []
    for i, row in enumerate(gen_ids):
        k = row.index(eos) + 1 if eos in row else len(row)
        reason = "stop" if eos in row else "length"
        if i % n == 0:
            out.append([])
        out[-1].append(Completion(row[:k], ctx.tok.decode(row[:k], skip_special_tokens=True), gen_lps[i][:k],
                                  reason, list(rows[i])))
    return out


def _pref(ctx: Any, examples: Sequence[Any], a: Sequence[Completion], b: Sequence[Completion]) -> torch.Tensor:
    return ctx.source.preference([ex.prompt for ex in examples], [c.text for c in a], [c.text for c in b],
                                 answer=[ex.answer for ex in examples],
                                 task=[ex.meta.get("task") for ex in examples],
                                 meta=[ex.meta for ex in examples]).float()


def collect_egpo(ctx: Any, examples: Sequence[Any], seed: int) -> Buffer:
    """One online-IPO batch: rows ``[y block; y' block]``, pair-aligned ``target``, ref log-probs."""
    e = ctx.oc.egpo
    prompts = [ex.prompt for ex in examples]
    if e.mixture_coef > 0:
        pair = mixture_generate(ctx, prompts, 2, coef=e.mixture_coef, temperature=e.temperature,
                                top_k=e.top_k, seed=seed)
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


@dataclass
class Snapshot:
    """θ_t (trainable parameters) and a deep copy of the optimizer/scheduler state."""

    params: dict[str, torch.Tensor]
    backend_state: dict[str, Any]


def take_snapshot(ctx: Any) -> Snapshot:
    if not hasattr(ctx.backend, "state_dict"):
        raise RuntimeError("EGPO's extragradient step needs the single-process backend")
    dev = "cpu" if ctx.oc.egpo.snapshot_on_cpu else None
    params = {n: p.detach().to(dev or p.device, copy=True) for n, p in ctx.model.named_parameters()
              if p.requires_grad}
    return Snapshot(params, copy.deepcopy(ctx.backend.state_dict()))


@torch.no_grad()
def restore(ctx: Any, snap: Snapshot) -> None:
    named = dict(ctx.model.named_parameters())
    for name, value in snap.params.items():
        named[name].copy_(value)
    ctx.backend.load_state_dict(copy.deepcopy(snap.backend_state))


def egpo_update(ctx: Any, examples: Sequence[Any], seed: int,
                step_fn: Callable[[Buffer], tuple[dict | None, dict]]) -> tuple[dict | None, dict]:
    """One extragradient update θ_t → θ_{t+1}; ``step_fn(buffer)`` runs the micro-batches and one
    optimizer step (the loop's). Returns the full step's ``(optimizer stats, metrics)``."""
    snap = take_snapshot(ctx)
    half = collect_egpo(ctx, examples, seed)
    _, half_metrics = step_fn(half)
    full = collect_egpo(ctx, examples, seed + 1)  # y, y', y'' all drawn at θ_{t+½}
    restore(ctx, snap)
    stats, metrics = step_fn(full)
    metrics.update({f"egpo/half_{k}": v for k, v in half_metrics.items() if k in ("loss", "target_mean")})
    metrics.update(full.metrics)
    ctx.last_egpo = (snap, full)
    return stats, metrics


def online_ipo_update(ctx: Any, examples: Sequence[Any], seed: int,
                      step_fn: Callable[[Buffer], tuple[dict | None, dict]]) -> tuple[dict | None, dict]:
    """One online-IPO update: a fresh pair batch at the current policy, then ``step_fn``'s optimizer step."""
    buf = collect_egpo(ctx, examples, seed)
    stats, metrics = step_fn(buf)
    return stats, {**buf.metrics, **metrics}


# Drivers whose rollouts are drawn between optimizer steps (spec.rollout_every_step): one update each.
STEP_UPDATES = {"egpo": egpo_update, "online_ipo": online_ipo_update}
