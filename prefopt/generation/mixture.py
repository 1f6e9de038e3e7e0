"""Sampling from the token-level geometric mixture of the policy and the reference (Nash-MD, Munos et al.
2023, Nash Learning from Human Feedback; EGPO's sampler μ, Zhou, Fazel, Du 2025, arXiv 2503.08942).

``log μ(·|x, y_<t) ∝ (1 − c)·log π_θ(·|x, y_<t) + c·log π_ref(·|x, y_<t)``; c = 0 is π_θ, c = 1 is π_ref.
:func:`mixture_generate` decodes token by token without a KV cache (meant for short completions); the
log-probs it returns are those of the tempered, truncated mixture each token was drawn from.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import torch

from prefopt.generation.base import Completion, Prompt

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["geometric_mixture_logits", "sample_tokens", "last_logits", "mixture_generate"]

# Last-position logits [B, V] of a model for left-padded ``(input_ids, attention_mask)``.
LogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def geometric_mixture_logits(policy_logits: torch.Tensor, ref_logits: torch.Tensor,
                             coef: float) -> torch.Tensor:
    """Token-level geometric mixture ``(1 − c)·log π_θ + c·log π_ref`` (unnormalised log-probs;
    Nash-MD / EGPO sampler). c = 0 → π_θ, c = 1 → π_ref."""
    return ((1.0 - coef) * torch.log_softmax(policy_logits.to(torch.float32), -1)
            + coef * torch.log_softmax(ref_logits.to(torch.float32), -1))


def sample_tokens(logits: torch.Tensor, *, temperature: float = 1.0, top_k: int = 0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample one index per row of ``logits [..., V]`` at ``temperature`` with optional top-k."""
    z = logits.to(torch.float32) / temperature
    if top_k and top_k < z.shape[-1]:
        kth = torch.topk(z, top_k, dim=-1).values[..., -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    probs = torch.softmax(z, -1).reshape(-1, z.shape[-1])
    return torch.multinomial(probs, 1, generator=generator).reshape(z.shape[:-1])


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.as_tensor(r)
        mask[i, width - len(r):] = 1
    return ids, mask


def last_logits(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[B, V]`` float32 logits at the last position of left-padded rows."""
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits[:, -1].float()


def _completions(gen_ids: list[list[int]], gen_lps: list[list[float]], rows: list[list[int]], n: int,
                 tokenizer: PreTrainedTokenizerBase) -> list[list[Completion]]:
    eos = tokenizer.eos_token_id
    out: list[list[Completion]] = []
    for i, row in enumerate(gen_ids):
        k = row.index(eos) + 1 if eos in row else len(row)
        if i % n == 0:
            out.append([])
        out[-1].append(Completion(row[:k], tokenizer.decode(row[:k], skip_special_tokens=True), gen_lps[i][:k],
                                  "stop" if eos in row else "length", list(rows[i])))
    return out


@torch.no_grad()
def mixture_generate(policy: torch.nn.Module, ref_logits: LogitsFn, tokenizer: PreTrainedTokenizerBase,
                     prompts: Sequence[Prompt], n: int, *, coef: float, max_new_tokens: int, pad_id: int,
                     device: torch.device, max_prompt_length: int | None = None, temperature: float = 1.0,
                     top_k: int = 0, seed: int = 0) -> list[list[Completion]]:
    """``n`` completions per prompt from the geometric mixture of ``policy`` and the reference whose
    last-position logits ``ref_logits(ids, mask)`` returns (see the module docstring)."""
    from prefopt.generation.hf import encode_prompt_ids

    cut = -max_prompt_length if max_prompt_length else 0
    rows = [r for p in prompts for r in [encode_prompt_ids(tokenizer, p)[cut:]] * n]
    eos = tokenizer.eos_token_id
    ids, mask = (t.to(device) for t in _left_pad(rows, pad_id))
    gen = torch.Generator().manual_seed(seed)
    done = torch.zeros(len(rows), dtype=torch.bool, device=device)
    toks, lps = [], []
    was = policy.training
    policy.eval()
    for _ in range(max_new_tokens):
        z = geometric_mixture_logits(last_logits(policy, ids, mask), ref_logits(ids, mask), coef)
        tok = sample_tokens(z.cpu(), temperature=temperature, top_k=top_k, generator=gen).to(device)
        zt = z / temperature
        if top_k:
            zt = zt.masked_fill(zt < torch.topk(zt, top_k, -1).values[..., -1:], float("-inf"))
        lps.append(torch.log_softmax(zt, -1).gather(-1, tok[:, None]).squeeze(-1))
        tok = torch.where(done, torch.full_like(tok, pad_id), tok)
        toks.append(tok)
        mask = torch.cat([mask, (~done).long()[:, None]], 1)
        ids = torch.cat([ids, tok[:, None]], 1)
        done |= tok == eos
        if bool(done.all()):
            break
    policy.train(was)
    return _completions(torch.stack(toks, 1).tolist(), torch.stack(lps, 1).tolist(), rows, n, tokenizer)
