"""Per-algorithm pieces of the online loop: how rollouts + rewards become loss inputs.

Each ``collect_*`` function samples from the current policy (the rollout policy π_old), scores the
samples with the reward source and returns a :class:`Buffer`: a padded batch plus the row-aligned
tensors its registered ``GROUP_LOSSES`` entry needs (``advantages``, ``old_token_logps``,
``ref_token_logps``, ``prev_token_logps``, ``rewards``, pair-aligned ``target``). The loop then runs
μ passes of minibatch updates over the buffer with :func:`buffer_loss`.

* group (GRPO / URPO): K samples per prompt, group-normalised advantages.
* p3o: 2 samples per prompt in the ``[y1 block; y2 block]`` layout, rewards clipped by the source.
* dno: K samples per prompt from π_t, integer judge scores 1..6 from the oracle, large-margin pairs
  (:func:`prefopt.losses.dno.dno_pairs`), π_t's log-probs frozen at collection (the reference of
  iteration t is exactly π_t).
EGPO's sampler and extragradient update live in :mod:`prefopt.loops.online_egpo`; the drivers that use
these collectors are registered in :mod:`prefopt.loops.online_drivers`.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import torch
from torch import Tensor

from prefopt.generation.base import Completion, Prompt, SamplingParams
from prefopt.loops.common import autocast
from prefopt.rewards.sources import ScoredRewards

if TYPE_CHECKING:
    from data_pipelines.schemas import PromptExample
    from prefopt.logprobs import TokenBatch
    from prefopt.loops.online import OnlineContext

__all__ = ["RolloutBatch", "Buffer", "make_batch", "rollout", "score_rows", "collect_group",
           "collect_p3o", "collect_dno", "buffer_loss", "weights_checksum", "repeats_ngrams"]

PAIR_KEYS = ("target",)


@dataclass(frozen=True)
class RolloutBatch:
    """Right-padded ``prompt + completion`` rows in the padded layout of ``data_pipelines.collate``."""

    layout: ClassVar[str] = "padded"
    input_ids: Tensor
    attention_mask: Tensor
    position_ids: Tensor
    completion_mask: Tensor
    prompt_lengths: Tensor | None = None  # (N,) prompt tokens at the start of each row

    def _tensors(self) -> tuple[Tensor, ...]:
        return (self.input_ids, self.attention_mask, self.position_ids, self.completion_mask)

    def select(self, idx: Tensor) -> "RolloutBatch":
        rows = [t[idx] for t in self._tensors()]
        width = int(rows[1].sum(-1).max().clamp(min=1))
        plens = None if self.prompt_lengths is None else self.prompt_lengths[idx]
        return RolloutBatch(*(t[:, :width] for t in rows), prompt_lengths=plens)

    def for_forward(self, layout: str, pad_id: int) -> TokenBatch:
        """This batch, or the same rows regrouped so rows with one prompt share it (``shared_prompt``:
        :func:`data_pipelines.collate.shared_prompt_from_rows`; log-probs come back in these rows)."""
        if layout == "padded" or self.prompt_lengths is None:
            return self
        from data_pipelines.collate import shared_prompt_from_rows

        ids, lens = self.input_ids.tolist(), self.attention_mask.sum(-1).tolist()
        plens = self.prompt_lengths.tolist()
        keep = self.completion_mask.any(-1).tolist()
        return shared_prompt_from_rows([r[:p] for r, p in zip(ids, plens, strict=False)],
                                       [r[p:n] for r, p, n in zip(ids, plens, lens, strict=False)], pad_id, keep)


def make_batch(prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]], pad_id: int,
               drop: Sequence[bool] | None = None) -> RolloutBatch:
    """Rows ``prompt + completion``; ``completion_mask`` is 1 on completion tokens (0 on ``drop`` rows)."""
    lens = [len(p) + len(c) for p, c in zip(prompt_ids, completion_ids, strict=False)]
    width = max(lens)
    ids = torch.full((len(lens), width), pad_id, dtype=torch.long)
    att = torch.zeros((len(lens), width), dtype=torch.long)
    comp = torch.zeros((len(lens), width), dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompt_ids, completion_ids, strict=False)):
        ids[i, :lens[i]] = torch.as_tensor(list(p) + list(c), dtype=torch.long)
        att[i, :lens[i]] = 1
        if not (drop is not None and drop[i]):
            comp[i, len(p):lens[i]] = 1
    pos = (att.cumsum(-1) - 1).clamp(min=0)
    plens = torch.tensor([len(p) for p in prompt_ids], dtype=torch.long)
    return RolloutBatch(ids, att, pos, comp, plens)


@dataclass
class Buffer:
    """One round's rollouts and loss inputs. ``paired``: rows are ``[first block; second block]``."""

    batch: RolloutBatch
    tensors: dict[str, Tensor]
    paired: bool = False
    metrics: dict[str, float] = field(default_factory=dict)
    texts: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return int(self.batch.input_ids.shape[0])

    def _take(self, units: Tensor) -> "Buffer":
        if self.paired:
            p = self.rows // 2
            idx = torch.cat([units, units + p])
        else:
            idx = units
        batch, width = self.batch.select(idx), self.batch.input_ids.shape[1]
        tensors = {k: (v[units] if (self.paired and k in PAIR_KEYS) else v[idx]) for k, v in self.tensors.items()}
        # Per-token tensors (B, T) follow the batch, which select() trims to its chunk's longest row.
        tensors = {k: (v[:, :batch.input_ids.shape[1]] if v.dim() == 2 and v.shape[1] == width else v)
                   for k, v in tensors.items()}
        return replace(self, batch=batch, tensors=tensors, metrics={})

    def split(self, parts: int) -> list["Buffer"]:
        """``parts`` chunks of (about) equal size over prompts/pairs; empty chunks are dropped."""
        units = self.rows // 2 if self.paired else self.rows
        return [self._take(c) for c in torch.arange(units).chunk(parts) if c.numel()]


def rollout(ctx: OnlineContext, prompts: Sequence[Prompt], n: int, seed: int,
            **overrides: Any) -> list[list[Completion]]:
    """``n`` samples per prompt from the current policy (``ctx.generator``)."""
    oc = ctx.oc
    kw = dict(temperature=oc.temperature, top_p=oc.top_p, top_k=oc.top_k, max_new_tokens=oc.max_new_tokens)
    kw.update(overrides)
    return ctx.generator.generate(list(prompts), SamplingParams(n=n, seed=seed, **kw))


def score_rows(ctx: OnlineContext, examples: Sequence[PromptExample], comps: Sequence[Completion],
               group: Sequence[int]) -> ScoredRewards:
    """Rewards ``[N]`` (NaN = none) and their parts for rows ``(examples[i], comps[i])`` from the reward
    source."""
    return ctx.source.score([ex.prompt for ex in examples], [c.text for c in comps],
                              answer=[ex.answer for ex in examples],
                              completion_ids=[c.token_ids for c in comps],
                              task=[ex.meta.get("task") for ex in examples],
                              meta=[ex.meta for ex in examples], group=list(group))


def _no_grad_logps(ctx: OnlineContext, batch: RolloutBatch, reference: bool = False) -> Tensor:
    from prefopt.logprobs import forward_token_logps

    def run(model: torch.nn.Module) -> Tensor:
        with autocast(ctx.precision, ctx.device):
            fwd = batch.for_forward(ctx.oc.layout, ctx.pad_id)
            return forward_token_logps(model, fwd).token_logps.float().detach()

    with torch.no_grad():
        if reference:
            return ctx.reference.run(ctx.model, run)
        was = ctx.model.training
        ctx.model.eval()
        try:
            return run(ctx.model)
        finally:
            ctx.model.train(was)


def _rollout_metrics(scored: ScoredRewards, group: Sequence[int], comps: Sequence[Completion],
                     examples: Sequence[PromptExample]) -> dict[str, float]:
    from prefopt.losses.advantages import group_reward_stats

    rewards = scored.total
    stats = {k: float(v) for k, v in group_reward_stats(rewards, torch.as_tensor(list(group))).items()}
    lens = torch.tensor([len(c.token_ids) for c in comps], dtype=torch.float32)
    stats.update({"completions/mean_length": float(lens.mean()), "completions/max_length": float(lens.max()),
                  "completions/clipped_ratio": float(sum(c.finish_reason == "length" for c in comps) / len(comps))})
    for name, vals in scored.components.items():
        if vals.numel() == rewards.numel() and (~torch.isnan(vals)).any():
            stats[f"rewards/{name}/mean"] = float(vals[~torch.isnan(vals)].mean())
    tasks = [ex.meta.get("task") for ex in examples]
    for task in sorted({t for t in tasks if t}):
        sel = torch.tensor([t == task for t in tasks]) & ~torch.isnan(rewards)
        if sel.any():
            stats[f"rewards/task_{task}"] = float(rewards[sel].mean())
    return stats


def _flatten(examples: Sequence[PromptExample], outs: list[list[Completion]]
             ) -> tuple[list[PromptExample], list[Completion], list[int]]:
    rows_ex, comps, group = [], [], []
    for g, (ex, cs) in enumerate(zip(examples, outs, strict=False)):
        for c in cs:
            rows_ex.append(ex)
            comps.append(c)
            group.append(g)
    return rows_ex, comps, group


def _advantages(ctx: OnlineContext, rewards: Tensor, group: Sequence[int]) -> Tensor:
    """``ADVANTAGES[online.advantage]`` with the online options it reads (``advantage_options``)."""
    from prefopt.core.registry import ADVANTAGES
    from prefopt.losses.advantages import advantage_options

    name = ctx.oc.advantage
    return ADVANTAGES.get(name)(rewards, torch.as_tensor(list(group)), **advantage_options(name, ctx.oc))


def collect_group(ctx: OnlineContext, examples: Sequence[PromptExample], seed: int) -> Buffer:
    """GRPO / URPO: K samples per prompt -> rewards -> group advantages (+ old/ref log-probs)."""
    oc = ctx.oc
    rows_ex, comps, group = _flatten(examples, rollout(ctx, [ex.prompt for ex in examples],
                                                       oc.num_generations, seed))
    scored = score_rows(ctx, rows_ex, comps, group)
    rewards = scored.total
    adv = _advantages(ctx, rewards, group)
    drop = [oc.mask_truncated and c.finish_reason == "length" for c in comps]
    batch = make_batch([c.prompt_ids for c in comps], [c.token_ids for c in comps], ctx.pad_id, drop)
    tensors = {"advantages": adv.to(ctx.device), "rewards": rewards.to(ctx.device)}
    if oc.num_iterations > 1 or oc.minibatches > 1:
        tensors["old_token_logps"] = _no_grad_logps(ctx, batch)
    if getattr(ctx.hparams, "beta", 0.0) and ctx.reference is not None:
        tensors["ref_token_logps"] = _no_grad_logps(ctx, batch, reference=True)
    return Buffer(batch, tensors, False, _rollout_metrics(scored, group, comps, rows_ex),
                  [c.text for c in comps])


def collect_p3o(ctx: OnlineContext, examples: Sequence[PromptExample], seed: int) -> Buffer:
    """P3O: two samples per prompt, rows ``[y1 of every prompt; y2 of every prompt]``."""
    outs = rollout(ctx, [ex.prompt for ex in examples], 2, seed)
    comps = [o[0] for o in outs] + [o[1] for o in outs]
    rows_ex = list(examples) + list(examples)
    group = list(range(len(examples))) * 2
    scored = score_rows(ctx, rows_ex, comps, group)
    scored = replace(scored, total=torch.nan_to_num(scored.total))
    rewards = scored.total
    batch = make_batch([c.prompt_ids for c in comps], [c.token_ids for c in comps], ctx.pad_id)
    tensors = {"rewards": rewards.to(ctx.device), "old_token_logps": _no_grad_logps(ctx, batch),
               "ref_token_logps": _no_grad_logps(ctx, batch, reference=True)}
    return Buffer(batch, tensors, True, _rollout_metrics(scored, group, comps, rows_ex),
                  [c.text for c in comps])


def repeats_ngrams(token_ids: Sequence[int], n: int = 3, times: int = 3) -> bool:
    """Heavy repetition: some n-gram occurs at least ``times`` times (DNO-Prct automatic negatives)."""
    counts: dict[tuple[int, ...], int] = {}
    for i in range(len(token_ids) - n + 1):
        key = tuple(token_ids[i:i + n])
        counts[key] = counts.get(key, 0) + 1
        if counts[key] >= times:
            return True
    return False


def dno_scores(ctx: OnlineContext, ex: PromptExample, texts: Sequence[str], comps: Sequence[Completion]) -> list[int]:
    """Integer judge scores 1 + round(5 s): s = mean oracle win probability against the other
    candidates (``score_from=preference``) or the scalar reward clamped to [0, 1]."""
    k = len(texts)
    if ctx.oc.dno.score_from == "reward":
        r = ctx.source.rewards([ex.prompt] * k, list(texts), answer=[ex.answer] * k,
                               completion_ids=[c.token_ids for c in comps], task=[ex.meta.get("task")] * k,
                               meta=[ex.meta] * k, group=[0] * k)
        s = torch.nan_to_num(r).clamp(0.0, 1.0)
    else:
        p = ctx.source.preference_matrix(ex.prompt, list(texts), answer=ex.answer, task=ex.meta.get("task"),
                                         meta=ex.meta)
        s = (p.sum(1) - 0.5) / max(k - 1, 1)
    return [1 + int(round(5 * float(v))) for v in s]


def _gold_completion(ctx: OnlineContext, ex: PromptExample, prompt_ids: list[int]) -> Completion:
    ids = list(ctx.tok(str(ex.answer), add_special_tokens=False)["input_ids"]) + [ctx.tok.eos_token_id]
    return Completion(ids, str(ex.answer), [0.0] * len(ids), "stop", prompt_ids)


def _dno_prompt_pairs(ctx: OnlineContext, ex: PromptExample, cands: list[Completion]) -> tuple[list, dict[str, int]]:
    from prefopt.losses.dno import dno_pairs

    d = ctx.oc.dno
    ids = [f"s{j}" for j in range(len(cands))]
    if d.use_gold and ex.answer is not None:
        ids[-1] = "gold"
    scores = dict(zip(ids, dno_scores(ctx, ex, [c.text for c in cands], cands), strict=False))
    bad = [i for i, c in zip(ids, cands, strict=False) if i != "gold" and repeats_ngrams(c.token_ids)]
    pairs = dno_pairs(scores, ("gold",), min_positive=d.min_positive, teacher_margin=d.teacher_margin,
                      student_margin=d.student_margin, bad_ids=bad)
    if d.max_pairs_per_prompt:
        pairs = pairs[:d.max_pairs_per_prompt]
    index = dict(zip(ids, range(len(ids)), strict=False))
    return [(cands[index[p]], cands[index[q]]) for p, q in pairs], scores


def collect_dno(ctx: OnlineContext, examples: Sequence[PromptExample], seed: int) -> Buffer:
    """DNO-Prct iteration data: K samples from π_t per prompt, margin-rule pairs, π_t log-probs."""
    outs = rollout(ctx, [ex.prompt for ex in examples], ctx.oc.num_generations, seed)
    pos, neg, all_scores = [], [], []
    for ex, cs in zip(examples, outs, strict=False):
        cands = list(cs) + ([_gold_completion(ctx, ex, cs[0].prompt_ids)]
                            if ctx.oc.dno.use_gold and ex.answer is not None else [])
        pairs, scores = _dno_prompt_pairs(ctx, ex, cands)
        all_scores.extend(scores.values())
        pos += [p for p, _ in pairs]
        neg += [q for _, q in pairs]
    comps = [c for cs in outs for c in cs]
    metrics = {"dno/pairs": float(len(pos)), "dno/score_mean": float(sum(all_scores) / max(len(all_scores), 1)),
               "completions/mean_length": float(sum(len(c.token_ids) for c in comps) / len(comps)),
               "dno/ref_checksum": float(int(weights_checksum(ctx.model)[:8], 16))}
    if not pos:
        return Buffer(make_batch([[ctx.pad_id]], [[ctx.pad_id]], ctx.pad_id, [True]), {}, False, metrics)
    rows = pos + neg
    batch = make_batch([c.prompt_ids for c in rows], [c.token_ids for c in rows], ctx.pad_id)
    tensors = {"prev_token_logps": _no_grad_logps(ctx, batch)}
    if getattr(ctx.hparams, "tau", 0.0):
        tensors["ref_token_logps"] = _no_grad_logps(ctx, batch, reference=True)
    return Buffer(batch, tensors, True, metrics, [c.text for c in rows])


def weights_checksum(model: torch.nn.Module) -> str:
    """sha256 over the trainable parameters (names + float32 bytes), for "which weights" checks."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        if p.requires_grad:
            h.update(name.encode())
            h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def buffer_loss(ctx: OnlineContext, buf: Buffer, counts: dict[str, float]) -> tuple[Tensor, dict[str, Tensor]]:
    """Policy forward (with grad) on ``buf`` and the registered loss; returns ``(loss, metrics)``.

    ``loss`` is ``out.loss.mean()`` - with the global counts in ``counts`` (already divided by the
    number of micro-batches × processes) the backend's averaging yields the global objective.
    A buffer with no trainable rows (DNO without pairs) gives an exact zero that still touches every
    parameter, so all processes take the same optimizer steps.
    """
    from prefopt.logprobs import forward_token_logps
    from prefopt.losses.aggregate import masked_mean

    if not buf.tensors:
        zero = sum(p.sum() for p in ctx.model.parameters() if p.requires_grad) * 0.0
        return zero, {}
    with autocast(ctx.precision, ctx.device):
        out = forward_token_logps(ctx.engine, buf.batch.for_forward(ctx.oc.layout, ctx.pad_id), with_entropy=True)
    mask = buf.batch.completion_mask.to(ctx.device)
    inputs: dict[str, Any] = {"policy_token_logps": out.token_logps.float(), "completion_mask": mask,
                              **buf.tensors, **counts}
    inputs.setdefault("old_token_logps", out.token_logps.detach().float())
    if ctx.oc.max_new_tokens:
        inputs["max_completion_length"] = ctx.oc.max_new_tokens
    lo = ctx.loss_spec(inputs, ctx.hparams)
    metrics = dict(lo.metrics)
    if out.entropy is not None:
        metrics["entropy"] = masked_mean(out.entropy, mask)
    if "ref_token_logps" in buf.tensors and "kl" not in metrics:
        diff = out.token_logps.detach().float() - buf.tensors["ref_token_logps"]
        metrics["kl"] = masked_mean(diff, mask)
    return lo.loss.mean(), metrics

