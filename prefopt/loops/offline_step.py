"""One offline micro-batch: items -> batch -> policy/reference log-probs -> registered loss.

The loss maths lives in :mod:`prefopt.losses`; this module only assembles the inputs each loss
declares (sequence log-probs, IRPO's per-response margins) from one forward of the policy and one
no-grad forward of the reference. An algorithm's hooks (:mod:`prefopt.loops.hooks`, ``ctx.hooks``)
add loss inputs (:meth:`~prefopt.loops.hooks.base.OfflineHook.loss_inputs`) or build a pairwise
micro-batch's inputs themselves (``ctx.forward``, e.g. token-level inputs from full logits).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from data_pipelines.collate import collate_list, collate_packed, collate_pairwise, collate_shared_prompt
from prefopt.logprobs import forward_token_logps
from prefopt.loops.common import autocast
from prefopt.losses.base import LossOutput, pair_inputs, seq_logps, seq_mean_logps
from prefopt.losses.irpo import irpo_from_margins


@dataclass
class StepContext:
    """Everything a micro-batch needs that does not change between steps."""

    spec: Any            # AlgorithmSpec
    loss_spec: Any       # LossSpec
    hparams: Any         # the loss's hyper-parameter dataclass
    pad_id: int
    precision: str
    device: torch.device
    layout: str = "padded"
    reference: Any = None        # prefopt.loops.reference.Reference or None
    ref_cache: dict[int, Tensor] | None = None  # precomputed (2,) reference seq log-probs by item index
    eval_ref_cache: dict[int, Tensor] | None = None  # the same for the held-out pairs
    hooks: list = field(default_factory=list)  # the run's OfflineHook objects (prefopt.loops.hooks)
    forward: Callable[..., "StepInputs"] | None = None  # a hook's pairwise input builder; None: sequence_inputs


@dataclass
class StepInputs:
    """One pairwise micro-batch after the forward passes.

    Attributes:
        inputs: the tensors the registered loss reads (the vocabulary of :mod:`prefopt.losses.base`).
        mask: completion mask of the ``[chosen; rejected]`` rows.
        stats: logit statistics of the policy forward (names: prefopt/core/metric_names.py).
        seq: sequence log-probs for the shared metrics (``policy_chosen_logps`` ...); None = ``inputs``.
    """

    inputs: dict[str, Tensor]
    mask: Tensor
    stats: dict[str, Tensor]
    seq: dict[str, Tensor] | None = None


def collate(items: list, ctx: StepContext) -> Any:
    """Batch the tokenised items in the configured layout ([chosen; rejected] rows for pairs)."""
    toks = [it.tok for it in items]
    if ctx.spec.schema == "ranked":
        return collate_list(toks, ctx.pad_id)
    if ctx.layout == "packed":
        return collate_packed(toks)
    if ctx.layout == "shared_prompt":
        return collate_shared_prompt(toks, ctx.pad_id)
    return collate_pairwise(toks, ctx.pad_id)


def _ref_token_logps(ctx: StepContext, policy: Any, batch: Any) -> Tensor | None:
    if ctx.reference is None or ctx.ref_cache is not None:
        return None
    with autocast(ctx.precision, ctx.device):
        return ctx.reference.run(policy, lambda m: forward_token_logps(m, batch).token_logps).float()


def policy_forward(policy: Any, batch: Any, need_logits: bool = False) -> tuple[Any, dict[str, Tensor], Tensor | None]:
    """Policy forward: :class:`ForwardLogps`, cheap logit statistics (names: prefopt/core/metric_names.py) and the logits.

    Default: :func:`forward_token_logps` with statistics (the LM head runs on completion positions
    only; no logits are returned): entropy, mean_token_accuracy (argmax == label) and the mean logit
    of the chosen / rejected completion tokens (logits/chosen, logits/rejected), token-weighted over
    each block. ``need_logits`` (e.g. a per-token KL): one padded full-logits forward, same statistics.
    """
    if need_logits:
        return _padded_full_forward(policy, batch)
    out = forward_token_logps(policy, batch, with_stats=True)
    mask = out.completion_mask.bool()
    return out, _logit_stats(mask, out.entropy, out.argmax_hit, out.mean_logit), None


def _logit_stats(mask: Tensor, ent: Tensor, hit: Tensor | None, mean_logit: Tensor | None) -> dict[str, Tensor]:
    """Logit statistics (names: prefopt/core/metric_names.py) over the completion tokens ``mask`` of a ``[chosen; rejected]`` batch."""
    with torch.no_grad():
        m = mask.float()
        n = m.sum().clamp(min=1.0)
        stats = {"entropy": (ent * m).sum() / n}
        if hit is not None:
            stats["mean_token_accuracy"] = (hit & mask).float().sum() / n
        if mean_logit is not None and mask.shape[0] % 2 == 0:
            half = mask.shape[0] // 2
            for name, rows in (("chosen", slice(0, half)), ("rejected", slice(half, None))):
                mr = m[rows]
                stats[f"logits/{name}"] = (mean_logit[rows] * mr).sum() / mr.sum().clamp(min=1.0)
    return stats


def _padded_full_forward(policy: Any, batch: Any) -> tuple[Any, dict[str, Tensor], Tensor]:
    """One full-logits forward of a padded batch (for losses that need the logits themselves)."""
    from prefopt.logprobs import ForwardLogps, entropy, token_logps

    dev = next(policy.parameters()).device
    ids = batch.input_ids.to(dev)
    logits = policy(input_ids=ids, attention_mask=batch.attention_mask.to(dev),
                    position_ids=batch.position_ids.to(dev), use_cache=False).logits
    mask = batch.completion_mask.to(dev)
    out = ForwardLogps(token_logps(logits, ids) * mask, mask, batch.attention_mask.to(dev))
    with torch.no_grad():
        lg = logits[:, :-1].detach()
        pad = lambda x: torch.cat([x.new_zeros(x.shape[0], 1), x], 1)  # noqa: E731
        ent = entropy(logits.detach())
        hit = pad(lg.argmax(-1) == ids[:, 1:])
        mean_logit = pad(lg.float().mean(-1))
    return out, _logit_stats(mask.bool(), ent, hit, mean_logit), logits


def sequence_inputs(ctx: StepContext, policy: Any, items: list) -> StepInputs:
    """Sequence log-probs of a pairwise micro-batch: policy forward, reference forward or cache."""
    batch = collate(items, ctx)
    with autocast(ctx.precision, ctx.device):
        out, stats, _ = policy_forward(policy, batch)
    pol = out.token_logps.float()
    inputs = pair_inputs(pol, out.completion_mask, _ref_token_logps(ctx, policy, batch))
    if ctx.ref_cache is not None:
        ref = torch.stack([ctx.ref_cache[it.index] for it in items]).to(pol.device)
        inputs["ref_chosen_logps"], inputs["ref_rejected_logps"] = ref[:, 0], ref[:, 1]
    return StepInputs(inputs, out.completion_mask, stats)


def pairwise_loss(ctx: StepContext, policy: Any, items: list) -> LossOutput:
    """Loss for a micro-batch of preference pairs: inputs (``ctx.forward`` or sequence log-probs) plus
    each hook's extra inputs -> the registered loss -> the shared metrics."""
    step = (ctx.forward or sequence_inputs)(ctx, policy, items)
    for hook in ctx.hooks:
        step.inputs.update(hook.loss_inputs(items))
    result = ctx.loss_spec(step.inputs, ctx.hparams)
    return _with_common_metrics(result, step.seq or step.inputs, step.mask, step.stats)


def _with_common_metrics(result: LossOutput, inputs: dict, mask: Tensor,
                         stats: dict[str, Tensor] | None = None) -> LossOutput:
    """Add the metric names every pairwise method shares (prefopt/core/metric_names.py): loss, logps/*, KL estimate, num_tokens."""
    metrics = dict(result.metrics)
    c, r = inputs["policy_chosen_logps"].detach(), inputs["policy_rejected_logps"].detach()
    metrics["loss"] = result.loss.detach().float().mean()
    metrics.setdefault("logps/chosen", c.mean())
    metrics.setdefault("logps/rejected", r.mean())
    if "ref_chosen_logps" in inputs:
        # sequence-level KL estimate E_data[log pi - log pi_ref] (k1 on the data's completions)
        kl = torch.cat([c - inputs["ref_chosen_logps"], r - inputs["ref_rejected_logps"]])
        metrics["kl"] = kl.detach().float().mean()
    metrics["num_tokens"] = mask.float().sum()
    metrics.update(stats or {})
    return LossOutput(result.loss, metrics, result.aux)


def ranked_margins(ctx: StepContext, policy: Any, items: list) -> tuple[Tensor, Any]:
    """Per-response mean log-ratio (policy - reference) as a padded (B, K) tensor, plus the batch."""
    batch = collate(items, ctx)
    with autocast(ctx.precision, ctx.device):
        out = forward_token_logps(policy, batch)
    ref = _ref_token_logps(ctx, policy, batch)
    mask = out.completion_mask
    h = seq_mean_logps(out.token_logps.float(), mask)
    if ref is not None:
        h = h - seq_mean_logps(ref, mask)
    return h, batch


def relevance_and_rank(scores: list[float]) -> tuple[list[float], list[float]]:
    """IRPO grades for scored responses: relevance = score - min score (worst = 0), rank = 1 + position
    in descending score order (ties keep input order)."""
    lo = min(scores)
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    rank = [0.0] * len(scores)
    for pos, i in enumerate(order):
        rank[i] = float(pos + 1)
    return [s - lo for s in scores], rank


def ranked_loss(ctx: StepContext, policy: Any, items: list) -> LossOutput:
    """IRPO over K scored responses per prompt (each response is one item of the list)."""
    h_flat, batch = ranked_margins(ctx, policy, items)
    sizes = [len(it.tok.completion_ids) for it in items]
    k = max(sizes)
    h = h_flat.new_zeros(len(items), k)
    rel, rank = torch.zeros(len(items), k), torch.ones(len(items), k)
    valid = torch.zeros(len(items), k, dtype=torch.bool)
    start = 0
    for b, (it, n) in enumerate(zip(items, sizes, strict=False)):
        h[b, :n] = h_flat[start:start + n]
        r, p = relevance_and_rank(list(it.tok.scores))
        rel[b, :n], rank[b, :n], valid[b, :n] = torch.tensor(r), torch.tensor(p), True
        start += n
    hp = ctx.hparams
    loss = irpo_from_margins(h, rel, rank, valid, beta=hp.beta, weight=hp.weight, lse_norm=hp.lse_norm)
    best = torch.where(valid, rel, torch.full_like(rel, -1.0)).argmax(-1)
    # top-1 accuracy: the best-scored response's h is strictly above every other response's h
    # (ties - e.g. policy == reference at step 0 - count as wrong)
    others = valid & (torch.arange(k)[None, :] != best[:, None])
    rival = torch.where(others, h, h.new_full(h.shape, float("-inf"))).max(-1).values
    acc = (h.gather(1, best[:, None]).squeeze(1) > rival).float().mean()
    metrics = {"loss": loss.detach().float().mean(), "rewards/accuracies": acc.detach(),
               "irpo/h_mean": h.detach().mean(),
               "num_tokens": batch.completion_mask.float().sum()}
    return LossOutput(loss, metrics)


def implicit_reward_margins(ctx: StepContext, policy: Any, items: list) -> Tensor:
    """Held-out metric: per pair ``(r_w - r_l)`` with r = policy - reference summed log-probs
    (reference-free algorithms: the difference of mean log-probs). Under ``reference.mode:
    precompute`` the reference side comes from the eval cache (``ctx.eval_ref_cache``)."""
    batch = collate_pairwise([it.tok for it in items], ctx.pad_id)
    cache = ctx.eval_ref_cache
    with torch.no_grad(), autocast(ctx.precision, ctx.device):
        pol = forward_token_logps(policy, batch)
        ref = None
        if ctx.reference is not None and cache is None:
            ref = ctx.reference.run(policy, lambda m: forward_token_logps(m, batch).token_logps)
    mask = pol.completion_mask
    if ctx.reference is None:
        s = seq_mean_logps(pol.token_logps.float(), mask)
    elif cache is not None:
        table = torch.stack([cache[it.index] for it in items]).to(mask.device)
        s = seq_logps(pol.token_logps.float(), mask) - torch.cat([table[:, 0], table[:, 1]])
    else:
        s = seq_logps(pol.token_logps.float(), mask) - seq_logps(ref.float(), mask)
    c, r = s.chunk(2)
    return c - r
