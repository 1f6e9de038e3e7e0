"""Judge protocol and the reward-model judge."""
from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable


@runtime_checkable
class Judge(Protocol):
    """Annotates AlpacaEval triples. ``name`` is written as the ``annotator`` of every annotation."""

    name: str

    def annotate(self, instructions: Sequence[str], references: Sequence[str], outputs: Sequence[str], *,
                 keys: Sequence[Any] | None = None) -> list[dict[str, Any]]:
        """One dict per triple with ``preference`` in [1, 2] (2 = output better; None = unparsable) and
        judge-specific extras. ``keys`` (stable per example) seed any per-example randomness."""


def flatten_prompt(prompt: Any) -> str:
    """A prompt as one text: a string as is, chat messages as ``role: content`` lines."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def identical(a: str, b: str) -> bool:
    """AlpacaEval treats identical outputs as a tie (preference 1.5) without asking the judge."""
    return a.strip() == b.strip()


class RMJudge:
    """Reward-model judge: ``preference = 1 + P(output beats reference)`` from ``scorer.preference``.

    Args:
        scorer: a :class:`reward_models.scorer.RewardScorer` (ModelScorer of any kind, EnsembleScorer).
        name: annotator label (default ``"rm"``); results are labelled AlpacaEval-style.
        batch_size: triples per scorer call.
        polar: pass the reference answer as POLAR's reference too (POLAR needs one).
    """

    def __init__(self, scorer: Any, *, name: str = "rm", batch_size: int = 8, polar: bool | None = None):
        self.scorer, self.name, self.batch_size = scorer, name, batch_size
        from reward_models.kinds import needs_reference

        self.polar = needs_reference(scorer) if polar is None else polar

    def annotate(self, instructions: Sequence[str], references: Sequence[str], outputs: Sequence[str], *,
                 keys: Sequence[Any] | None = None) -> list[dict[str, Any]]:
        import torch

        prompts = [list(i) if isinstance(i, list) else [{"role": "user", "content": i}] for i in instructions]
        kw = {"reference": list(references)} if self.polar else {}
        with torch.no_grad():
            p = self.scorer.preference(prompts, list(outputs), list(references), **kw).float().tolist()
        return [{"preference": 1.5 if identical(o, r) else 1.0 + float(x)}
                for x, o, r in zip(p, outputs, references, strict=False)]
