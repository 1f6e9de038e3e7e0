"""POLAR inputs and training data (Dou et al. 2025, arXiv 2507.05197).

* :func:`polar_text` / :func:`polar_truncate` / :func:`encode_polar` - the input template, byte-identical
  between training and serving (P1, P2).
* :func:`sample_policy_responses` - sample responses from several policies through ``generate_fn``s.
* :func:`build_pretrain_triples` - (reference from A, positive from A, negative from B != A).
* :func:`build_sft_triples` - human rankings: best response = reference, then chosen > rejected.

All builders are deterministic for a given ``seed``.
"""
from __future__ import annotations

import random
from collections import OrderedDict
from typing import Any, Callable, Iterable, Sequence

from prefopt.core.errors import DataError

DEFAULT_SPLIT = "<|split|>"
DEFAULT_REWARD = "<|reward|>"

__all__ = ["flatten", "polar_text", "polar_truncate", "encode_polar", "sample_policy_responses",
           "build_pretrain_triples", "build_sft_triples"]


def flatten(x: str | Sequence[dict]) -> str:
    """A string, or message ``content``s joined with "\\n" (spec 3, step 1)."""
    if isinstance(x, str):
        return x
    return "\n".join(str(m["content"]) for m in x)


def polar_text(prompt: str, reference: str, candidate: str, *, wrapper: str = "sft",
               split_token: str = DEFAULT_SPLIT, reward_token: str = DEFAULT_REWARD) -> str:
    """``prompt + sep + reference + SPLIT + prompt + sep + candidate + REWARD`` (spec 3, steps 3-4).

    ``sep = "\\n"`` for ``sft`` (always, even for empty pieces, like the released client) and ``""``
    for ``pretrain``. Example (P1): ``("Q", "R", "C")`` -> ``"Q\\nR" + SPLIT + "Q\\nC" + REWARD``.
    """
    if wrapper not in ("sft", "pretrain"):
        raise ValueError(f"POLAR wrapper must be 'sft' or 'pretrain', got {wrapper!r}")
    sep = "\n" if wrapper == "sft" else ""
    return f"{prompt}{sep}{reference}{split_token}{prompt}{sep}{candidate}{reward_token}"


def polar_truncate(prompt_ids: Sequence[int], ref_ids: Sequence[int], cand_ids: Sequence[int], *,
                   max_len: int = 16384, max_response_len: int = 4096) -> tuple[list, list, list]:
    """Token-level truncation of spec 3, step 2.

    Reference and candidate keep their first ``max_response_len`` tokens; the prompt keeps its **last**
    ``max(0, floor((max_len - 4 - |ref| - |cand|) / 2))`` tokens (a budget of 0 keeps none - unlike the
    released client whose ``[-0:]`` slice keeps everything). Example (P2): ``max_len = 20``,
    ``max_response_len = 5``, 10 prompt tokens, ref 8 -> 5, cand 3: budget ``floor((20-4-5-3)/2) = 4``.
    """
    ref = list(ref_ids)[:max_response_len]
    cand = list(cand_ids)[:max_response_len]
    budget = max(0, (max_len - 4 - len(ref) - len(cand)) // 2)
    prompt = list(prompt_ids)[max(0, len(prompt_ids) - budget):] if budget > 0 else []
    return prompt, ref, cand


def encode_polar(tokenizer: Any, prompt: Any, reference: Any, candidate: Any, *, wrapper: str = "sft",
                 split_token: str = DEFAULT_SPLIT, reward_token: str = DEFAULT_REWARD,
                 max_len: int = 16384, max_response_len: int = 4096) -> list[int]:
    """Token ids of one POLAR sequence: flatten, truncate in tokens, decode, template, re-tokenise."""
    parts = [tokenizer.encode(flatten(x), add_special_tokens=False) for x in (prompt, reference, candidate)]
    p, r, c = polar_truncate(*parts, max_len=max_len, max_response_len=max_response_len)
    text = polar_text(*(tokenizer.decode(t) for t in (p, r, c)), wrapper=wrapper,
                      split_token=split_token, reward_token=reward_token)
    return list(tokenizer.encode(text, add_special_tokens=False))


GenerateFn = Callable[[str, int, int], list[str]]


def sample_policy_responses(prompts: Sequence[str], policies: dict[str, GenerateFn], *, n_per_policy: int = 2,
                            seed: int = 0) -> list[dict]:
    """Sample ``n_per_policy`` responses per (prompt, policy) via ``generate_fn(prompt, n, seed)``.

    Returns flat records ``{"prompt", "policy", "response"}`` (input for :func:`build_pretrain_triples`).
    Sampling settings (temperature 1.0, top-p 0.9, top-k 50, <= 4096 new tokens) belong to ``generate_fn``.
    """
    out = []
    for i, prompt in enumerate(prompts):
        for j, (name, fn) in enumerate(sorted(policies.items())):
            responses = fn(prompt, n_per_policy, seed * 1_000_003 + i * 1009 + j)
            out.extend({"prompt": prompt, "policy": name, "response": r} for r in responses)
    return out


def _group(samples: Iterable[dict]) -> "OrderedDict[str, dict[str, list[str]]]":
    groups: OrderedDict[str, dict[str, list[str]]] = OrderedDict()
    for line, rec in enumerate(samples, 1):
        for key in ("prompt", "policy", "response"):
            if key not in rec:
                raise DataError(f"missing field '{key}'", line=line, field=key)
        prompt = rec["prompt"]
        key = prompt if isinstance(prompt, str) else repr(prompt)
        groups.setdefault(key, {"__prompt__": prompt}).setdefault(str(rec["policy"]), []).append(rec["response"])
    return groups


def build_pretrain_triples(samples: Iterable[dict], *, seed: int = 0, triples_per_prompt: int = 1,
                           wrapper: str = "pretrain") -> list[dict]:
    """POLAR pre-training triples: ``reference, chosen ~ A`` (two distinct samples), ``rejected ~ B != A``.

    Args:
        samples: records ``{"prompt", "policy", "response"}``; >= 2 policies per prompt, and the
            reference policy needs >= 2 samples. Prompts that cannot form a triple are skipped.
        seed: RNG seed; the output is a pure function of (samples, seed, triples_per_prompt).
        triples_per_prompt: triples drawn per prompt (policy pairs re-drawn each time).
        wrapper: template wrapper recorded on each row.
    """
    rng = random.Random(seed)
    out = []
    for groups in _group(samples).values():
        prompt = groups.pop("__prompt__")
        policies = sorted(groups)
        a_pool = [p for p in policies if len(groups[p]) >= 2]
        if len(policies) < 2 or not a_pool:
            continue
        for _ in range(triples_per_prompt):
            a = rng.choice(a_pool)
            b = rng.choice([p for p in policies if p != a])
            ref_i, pos_i = rng.sample(range(len(groups[a])), 2)
            neg = rng.choice(groups[b])
            out.append({"prompt": prompt, "reference": groups[a][ref_i], "chosen": groups[a][pos_i],
                        "rejected": neg, "policy_a": a, "policy_b": b, "wrapper": wrapper})
    return out


def _ranked(rec: Any, line: int) -> tuple[Any, list[str], list[float]]:
    if hasattr(rec, "responses") and hasattr(rec, "scores"):
        return rec.prompt, list(rec.responses), list(rec.scores)
    for key in ("prompt", "responses", "scores"):
        if key not in rec:
            raise DataError(f"missing field '{key}'", line=line, field=key)
    if len(rec["responses"]) != len(rec["scores"]):
        raise DataError("responses and scores differ in length", line=line, field="scores")
    return rec["prompt"], list(rec["responses"]), [float(s) for s in rec["scores"]]


def build_sft_triples(ranked: Iterable[Any], *, seed: int = 0, max_per_prompt: int | None = 1,
                      wrapper: str = "sft") -> list[dict]:
    """POLAR fine-tuning triples from ranked human preferences (``A > B > C`` -> ref A, chosen B, rejected C).

    The best response (strictly highest score) is the reference; every strictly ordered pair among the
    rest gives ``(chosen, rejected)``. With ``max_per_prompt`` set, that many pairs are drawn (seeded),
    preferring the adjacent pair ranked 2 > 3 first. Items without a unique best or with fewer than 3
    responses are skipped.

    Args:
        ranked: :class:`data_pipelines.schemas.RankedExample` objects or dicts with
            ``prompt, responses, scores`` (higher is better).
        seed: RNG seed.
        max_per_prompt: pairs per prompt (None = all).
        wrapper: template wrapper recorded on each row.
    """
    rng = random.Random(seed)
    out = []
    for line, rec in enumerate(ranked, 1):
        prompt, responses, scores = _ranked(rec, line)
        order = sorted(range(len(responses)), key=lambda i: (-scores[i], i))
        if len(order) < 3 or scores[order[0]] == scores[order[1]]:
            continue
        rest = order[1:]
        pairs = [(a, b) for x, a in enumerate(rest) for b in rest[x + 1:] if scores[a] > scores[b]]
        if not pairs:
            continue
        if max_per_prompt is not None and len(pairs) > max_per_prompt:
            first, others = pairs[:1], pairs[1:]
            pairs = first + rng.sample(others, max_per_prompt - 1) if max_per_prompt > 1 else first
        for a, b in pairs:
            out.append({"prompt": prompt, "reference": responses[order[0]], "chosen": responses[a],
                        "rejected": responses[b], "wrapper": wrapper})
    return out
