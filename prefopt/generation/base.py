"""The generation interface shared by evaluation (AlpacaEval) and the online RL loops.

A :class:`Generator` turns prompts into sampled completions. Each completion carries its token ids, its
decoded text and the log-probability of every sampled token. Those log-probs come from the distribution
the token was actually drawn from: the model's logits after temperature scaling and top-k/top-p
filtering (for greedy decoding, the plain model distribution). An RL loop that needs log-probs under
the un-tempered policy must recompute them with :func:`prefopt.logprobs.forward_token_logps`.

Prompts are either plain strings (tokenised as they are) or message lists
(``[{"role": "user", "content": ...}]``), which are rendered with the tokenizer's chat template and the
assistant generation header.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence, Union, runtime_checkable

import torch

Message = Mapping[str, str]  # {"role": ..., "content": ...}
Prompt = Union[str, Sequence[Message]]  # a plain string, or chat messages
StateDict = Mapping[str, torch.Tensor]  # parameter name -> tensor (a transformers checkpoint's names)


@dataclass(frozen=True)
class SamplingParams:
    """Decoding settings. ``temperature == 0`` means greedy decoding (top-p/top-k ignored).

    Attributes:
        temperature: softmax temperature; 0 = greedy.
        top_p: nucleus threshold (1.0 = off).
        top_k: keep the k most likely tokens (0 = off).
        max_new_tokens: most tokens generated per completion.
        n: completions per prompt (``num_return_sequences``).
        stop: stop strings; the text is cut before the first one (the token ids keep the tokens up to
            and including the one that completed it).
        seed: base seed; backends derive per-call seeds from it deterministically.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.max_new_tokens < 1 or self.n < 1:
            raise ValueError(f"max_new_tokens and n must be >= 1, got {self.max_new_tokens}, {self.n}")
        object.__setattr__(self, "stop", tuple(self.stop))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def describe(self) -> dict[str, Any]:
        """JSON-ready settings (recorded next to generated outputs)."""
        return {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k,
                "max_new_tokens": self.max_new_tokens, "n": self.n, "stop": list(self.stop), "seed": self.seed}


@dataclass(frozen=True)
class Completion:
    """One sampled completion.

    Attributes:
        token_ids: generated token ids (an EOS that ended generation is included; no padding).
        text: decoded text without special tokens, cut before a stop string.
        logprobs: one float per token of ``token_ids`` (see the module docstring for the distribution).
        finish_reason: ``"stop"`` (EOS or stop string) or ``"length"`` (hit ``max_new_tokens``).
    """

    token_ids: list[int]
    text: str
    logprobs: list[float]
    finish_reason: str = "stop"
    prompt_ids: list[int] = field(default_factory=list)


@runtime_checkable
class Generator(Protocol):
    """What evaluation and RL loops call to sample completions."""

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[list[Completion]]:
        """``params.n`` completions per prompt: ``out[i][j]`` is sample j of prompt i."""

    def sync_weights(self, model_or_state_dict: torch.nn.Module | StateDict) -> None:
        """Load updated policy weights (called after each optimizer step in online RL)."""


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut ``text`` before the earliest stop string; return (text, whether one was found)."""
    hits = [text.find(s) for s in stop if s and s in text]
    if not hits:
        return text, False
    return text[: min(hits)], True
