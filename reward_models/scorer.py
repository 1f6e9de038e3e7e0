"""One scoring interface for every reward model: ``score(prompts, responses)`` and ``preference(p, a, b)``.

* BT: ``score`` = scalar reward; ``preference = sigmoid(r_a - r_b)``.
* GPM: native pairwise; ``preference = sigmoid(s(a > b | x) / beta)``; ``score`` = ``s(y > ref | x)``
  against ``references`` (baseline responses), or :meth:`ModelScorer.group_scores` (GPO-style mean of
  ``s(y > y_k)`` over the other K-1 samples).
* POLAR: ``score(prompts, responses, references=...)`` (reference required);
  ``preference = sigmoid(r(ref, a) - r(ref, b))``.
* Ensembles (:class:`EnsembleScorer`) aggregate member scores (Coste et al. 2024, arXiv 2310.02743).

Text -> tokens goes through a small injectable ``encode_fn(prompt, response) -> (ids, prompt_len)``;
the default :class:`ChatEncoder` applies the tokenizer's chat template (later replaceable by
``data_pipelines.tokenize``). Everything runs under ``torch.no_grad``; ``bf16=True`` uses autocast.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor

from reward_models.ensemble import aggregate, zscore_members
from reward_models.heads import score_matrix
from reward_models.kinds import get_kind
from reward_models.layouts import build_rows, collate_right
from reward_models.models import RewardModel, RewardOutput
from reward_models.polar_data import DEFAULT_REWARD, DEFAULT_SPLIT, encode_polar, flatten

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Prompt = Any  # str or [{"role", "content"}]
EncodeFn = Callable[[Prompt, str], tuple[list[int], int]]

__all__ = ["RewardScorer", "ChatEncoder", "ModelScorer", "EnsembleScorer", "collate_right", "load_model_scorer",
           "rm_tokenizer"]


@runtime_checkable
class RewardScorer(Protocol):
    """What RL loops and evaluators call."""

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str], *,
              references: Sequence[str] | None = None) -> Tensor:
        """One float per (prompt, response) -> ``[N]`` float32 on CPU."""

    def preference(self, prompt: Prompt | Sequence[Prompt], a: str | Sequence[str], b: str | Sequence[str], *,
                   reference: str | Sequence[str] | None = None) -> Tensor:
        """Probability that ``a`` beats ``b`` (0-dim for one item, ``[N]`` for lists)."""


def _is_one(prompt: Any) -> bool:
    return isinstance(prompt, str) or (isinstance(prompt, list) and bool(prompt) and isinstance(prompt[0], dict))


class ChatEncoder:
    """``(prompt, response) -> (ids, prompt_len)`` with the tokenizer's chat template; EOS is last.

    Without a chat template: ``flatten(prompt) + "\\n" + response`` tokenised, plus EOS. Rows longer than
    ``max_length`` keep their last ``max_length`` tokens (``truncate_left``, RewardBench's side).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int = 2048):
        self.tok, self.max_length = tokenizer, max_length

    def _ids(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False))

    def __call__(self, prompt: Prompt, response: str) -> tuple[list[int], int]:
        from data_pipelines.schemas import as_messages

        tok = self.tok
        if getattr(tok, "chat_template", None):
            msgs = as_messages(prompt)
            p_text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            f_text = tok.apply_chat_template(msgs + [{"role": "assistant", "content": response}], tokenize=False)
            prompt_ids, ids = self._ids(p_text), self._ids(f_text)
        else:
            prompt_ids = self._ids(flatten(prompt) + "\n")
            ids = prompt_ids + self._ids(response)
        eos = tok.eos_token_id
        if eos is not None and (not ids or ids[-1] != eos):
            ids = ids + [eos]
        n_prompt = min(len(prompt_ids), len(ids) - 1)
        if len(ids) > self.max_length:
            cut = len(ids) - self.max_length
            ids, n_prompt = ids[cut:], max(1, n_prompt - cut)
        return ids, max(1, n_prompt)


class ModelScorer:
    """Scorer over one :class:`RewardModel` (bt, gpm or polar).

    Args:
        model: the reward model (put in eval mode here).
        tokenizer: tokenizer for the default encoders (chat template / POLAR template).
        encode_fn: optional ``(prompt, response) -> (ids, prompt_len)`` replacing :class:`ChatEncoder`.
        batch_size: rows per forward pass.
        bf16: run the forward under bf16 autocast.
        max_length: BT/GPM encoder max length; POLAR uses ``polar_max_len``/``max_response_len``.
        normalize: apply the stored reward mean/std (default: the model's ``normalize`` flag).
    """

    def __init__(self, model: RewardModel, tokenizer: PreTrainedTokenizerBase | None = None, *,
                 encode_fn: EncodeFn | None = None,
                 batch_size: int = 8, bf16: bool = False, max_length: int = 2048, polar_max_len: int = 16384,
                 max_response_len: int = 4096, normalize: bool | None = None, device: Any = None,
                 layout: str = "padded"):
        self.model = model.eval()
        self.layout = layout
        self.kind = model.config.kind
        self.spec = get_kind(self.kind)
        self.tok = tokenizer
        self.encode = encode_fn or (ChatEncoder(tokenizer, max_length) if tokenizer is not None else None)
        self.batch_size, self.bf16 = batch_size, bf16
        self.polar_max_len, self.max_response_len = polar_max_len, max_response_len
        self.normalize = normalize
        self.device = device or next(model.parameters()).device
        pad = model.config.pad_token_id
        if pad is None and tokenizer is not None:
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = 0 if pad is None else int(pad)

    # ----------------------------------------------------------------- low level
    def _autocast(self):
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(self.device).type, dtype=torch.bfloat16)

    @torch.no_grad()
    def forward_rows(self, rows: Sequence[Sequence[int]], prompt_lengths: Sequence[int] | None = None) -> RewardOutput:
        """Run token rows through the model in batches and concatenate the outputs (on CPU)."""
        parts: list[RewardOutput] = []
        for s in range(0, len(rows), self.batch_size):
            ids, mask = collate_right(rows[s:s + self.batch_size], self.pad_id)
            kw = {}
            if prompt_lengths is not None and self.spec.pairwise:
                kw["prompt_lengths"] = torch.as_tensor(prompt_lengths[s:s + self.batch_size]).to(self.device)
            with self._autocast():
                parts.append(self.model(ids.to(self.device), mask.to(self.device), **kw))

        def cat(name: str) -> Tensor | None:
            vals = [getattr(p, name) for p in parts]
            return None if vals[0] is None else torch.cat([v.float().cpu() for v in vals])

        return RewardOutput(rewards=cat("rewards"), embeddings=cat("embeddings"), gate=cat("gate"))

    def _encode(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> tuple[list, list]:
        if self.encode is None:
            raise ValueError("ModelScorer needs a tokenizer or an encode_fn to score text")
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        enc = [self.encode(p, r) for p, r in zip(prompts, responses, strict=False)]
        return [e[0] for e in enc], [e[1] for e in enc]

    def _polar_rows(self, prompts: Sequence[Prompt], responses: Sequence[str], references: Sequence[str]) -> list:
        c = self.model.config
        return [encode_polar(self.tok, p, ref, r, wrapper=c.wrapper, split_token=c.split_token or DEFAULT_SPLIT,
                             reward_token=c.reward_token or DEFAULT_REWARD, max_len=self.polar_max_len,
                             max_response_len=self.max_response_len)
                for p, r, ref in zip(prompts, responses, references, strict=False)]

    def embed(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> RewardOutput:
        """GPM embeddings ``[N, 2k]`` and gates ``[N, k]`` (one forward per response)."""
        rows, plen = self._encode(prompts, responses)
        return self.forward_rows(rows, plen)

    # ----------------------------------------------------------------- public API
    def score(self, prompts: Sequence[Prompt], responses: Sequence[str], *,
              references: Sequence[str] | None = None) -> Tensor:
        """``[N]`` scores (see module docstring for what a score means per kind)."""
        if self.spec.needs_reference:
            if references is None:
                raise ValueError("POLAR scores a response against a reference: pass references=[...]")
            out = self.forward_rows(self._polar_rows(prompts, responses, references))
            return self._serve(out.rewards)
        if self.spec.pairwise:
            if references is None:
                raise ValueError("GPM has no absolute score: pass references=[...] (baseline responses) "
                                 "or use group_scores()")
            return self._gpm_s(prompts, responses, references)
        rows, plens = self._encode(prompts, responses)
        if self.layout != "padded":
            return self._serve(self.forward_layout(rows, plens).rewards)
        return self._serve(self.forward_rows(rows, plens).rewards)

    @torch.no_grad()
    def forward_layout(self, rows: Sequence[Sequence[int]], prompt_lengths: Sequence[int]) -> RewardOutput:
        """Like :meth:`forward_rows`, with each batch of sequences in ``self.layout`` (``shared_prompt``:
        answers to the same prompt share one row after it; same outputs as padded rows)."""
        parts: list[RewardOutput] = []
        for s in range(0, len(rows), self.batch_size):
            batch = build_rows(rows[s:s + self.batch_size], prompt_lengths[s:s + self.batch_size], self.pad_id,
                               self.layout)
            with self._autocast():
                parts.append(self.model(rows=batch.to(self.device)))
        return RewardOutput(rewards=torch.cat([p.rewards.float().cpu() for p in parts]), embeddings=None, gate=None)

    def _serve(self, r: Tensor) -> Tensor:
        norm = self.model.config.normalize if self.normalize is None else self.normalize
        c = self.model.config
        return (r - c.reward_mean) / c.reward_std if norm else r

    def _gpm_s(self, prompts: Sequence[Prompt], a: Sequence[str], b: Sequence[str]) -> Tensor:
        oa, ob = self.embed(prompts, a), self.embed(prompts, b)
        return RewardModel.gpm_score(oa, ob)

    def preference(self, prompt: Prompt | Sequence[Prompt], a: str | Sequence[str], b: str | Sequence[str], *,
                   reference: str | Sequence[str] | None = None) -> Tensor:
        """``P(a beats b | prompt)``; 0-dim tensor for one item, ``[N]`` for lists."""
        one = _is_one(prompt)
        prompts, a_, b_ = ([prompt], [a], [b]) if one else (list(prompt), list(a), list(b))
        refs = None if reference is None else ([reference] if one else list(reference))
        if self.spec.pairwise:
            p = torch.sigmoid(self._gpm_s(prompts, a_, b_) / self.model.config.beta)
        else:
            ra = self.score(prompts, a_, references=refs) if refs else self.score(prompts, a_)
            rb = self.score(prompts, b_, references=refs) if refs else self.score(prompts, b_)
            p = torch.sigmoid(ra - rb)
        return p[0] if one else p

    def score_matrix(self, prompt: Prompt, responses: Sequence[str]) -> Tensor:
        """GPM ``[n, n]`` matrix ``S[i, j] = s(i > j)`` from n embeddings."""
        out = self.embed([prompt] * len(responses), list(responses))
        return score_matrix(out.embeddings, None if out.gate is None else out.gate[0])

    def group_scores(self, prompt: Prompt, responses: Sequence[str]) -> Tensor:
        """GPM scalar rewards for RL: mean of ``s(y_i > y_k)`` over the other K-1 samples (spec 2)."""
        s = self.score_matrix(prompt, responses)
        k = s.shape[0]
        return s.sum(1) / max(k - 1, 1)


class EnsembleScorer:
    """Aggregate K member scorers (Coste et al. 2024, arXiv 2310.02743); ``preference = sigmoid(A(a) - A(b))``."""

    def __init__(self, members: Sequence[RewardScorer], method: str = "mean", *, lam: float = 0.5,
                 ddof: int = 0, penalty: str = "var", calibration: tuple[list, list] | None = None):
        if len(members) < 2:
            raise ValueError(f"an ensemble needs k >= 2 members, got {len(members)}")
        self.members = list(members)
        self.method, self.lam, self.ddof, self.penalty, self.calibration = method, lam, ddof, penalty, calibration

    def score_members(self, prompts: Sequence[Prompt], responses: Sequence[str], *,
                      references: Sequence[str] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``(aggregate [N], member variance [N], member scores [K, N])`` (calibrated when set)."""
        kw = {} if references is None else {"references": references}
        member = torch.stack([m.score(prompts, responses, **kw) for m in self.members])
        if self.calibration is not None:
            member = zscore_members(member, *self.calibration)
        agg, var = aggregate(member, self.method, lam=self.lam, ddof=self.ddof, penalty=self.penalty)
        return agg, var, member

    def score_with_variance(self, prompts: Sequence[Prompt], responses: Sequence[str], *,
                            references: Sequence[str] | None = None) -> tuple[Tensor, Tensor]:
        """``(aggregate [N], member variance [N])`` - log the variance (over-optimisation signal)."""
        return self.score_members(prompts, responses, references=references)[:2]

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str], *,
              references: Sequence[str] | None = None) -> Tensor:
        return self.score_with_variance(prompts, responses, references=references)[0]

    def preference(self, prompt: Prompt | Sequence[Prompt], a: str | Sequence[str], b: str | Sequence[str], *,
                   reference: str | Sequence[str] | None = None) -> Tensor:
        one = _is_one(prompt)
        prompts, a_, b_ = ([prompt], [a], [b]) if one else (list(prompt), list(a), list(b))
        refs = None if reference is None else ([reference] if one else list(reference))
        p = torch.sigmoid(self.score(prompts, a_, references=refs) - self.score(prompts, b_, references=refs))
        return p[0] if one else p


def rm_tokenizer(path: str | Path, fallback: PreTrainedTokenizerBase | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer for a reward-model folder: the one saved in it; else ``fallback`` (e.g. the
    policy's); else the tokenizer of the ``base_model`` named in its ``reward_config.json``."""
    from prefopt.core.errors import ModelLoadError
    from prefopt.core.models import load_tokenizer

    path = Path(path)
    if (path / "tokenizer_config.json").is_file():
        return load_tokenizer(str(path))
    if fallback is not None:
        return fallback
    cfg = path / "reward_config.json"
    base = json.loads(cfg.read_text(encoding="utf-8")).get("base_model") if cfg.is_file() else None
    if not base:
        raise ModelLoadError(f"{path}: no tokenizer files and no base_model in reward_config.json")
    return load_tokenizer(base)


def load_model_scorer(path: str | Path, tokenizer: PreTrainedTokenizerBase | None = None, *,
                      device: torch.device | str | None = None, torch_dtype: torch.dtype | None = None,
                      **scorer_kwargs: Any) -> ModelScorer:
    """The one way to load a reward-model folder as a :class:`ModelScorer` (tokenizer: :func:`rm_tokenizer`;
    ``scorer_kwargs``: ``batch_size``, ``max_length``, ``polar_max_len``, ``layout``, ``bf16``, ...)."""
    model = RewardModel.load(path, torch_dtype=torch_dtype, device=device)
    return ModelScorer(model, rm_tokenizer(path, tokenizer), **scorer_kwargs)
