"""Local generative judge: a causal LM asked which of two answers is better, scored from label logits.

The judge prompt (a user message rendered with the LM's chat template, assistant header appended) shows
the question and two answers labelled "A" and "B" and asks for one letter. ``P(A)`` is the softmax over
the next-token logits of the two labels (each label's variants with/without a leading space pooled by
logsumexp). Every pair is judged in both orders and the results averaged, which cancels position bias:
``P(x better than y) = (P_A(x, y) + 1 - P_A(y, x)) / 2``.
"""
from __future__ import annotations

import contextlib
from typing import Any, Sequence

import torch

from prefopt.eval.judges.base import flatten_prompt as _flatten
from prefopt.eval.judges.base import identical

JUDGE_PROMPT = (
    "Please act as an impartial judge. Compare the two responses to the user's question below and decide "
    "which one is more helpful, correct, harmless and relevant. Do not let the order, length or style of "
    "the responses influence you.\n\n[Question]\n{question}\n\n[Response A]\n{a}\n\n[Response B]\n{b}\n\n"
    "Which response is better? Answer with a single letter: {la} or {lb}.")


class LMPairJudge:
    """``P(first answer better)`` from a causal LM's label logits.

    Args:
        model: causal LM (eval mode).
        tokenizer: its tokenizer (chat template used when present).
        labels: the two answer labels, e.g. ``("A", "B")`` or ``("1", "2")``.
        batch_size: prompts per forward pass.
        max_length: token budget of a judge prompt; longer answers are cut (each to an equal share).
        bf16: bf16 autocast.
    """

    def __init__(self, model: Any, tokenizer: Any, *, labels: tuple[str, str] = ("A", "B"), batch_size: int = 4,
                 max_length: int = 2048, bf16: bool = False):
        self.model, self.tok, self.labels = model.eval(), tokenizer, labels
        self.batch_size, self.max_length, self.bf16 = batch_size, max_length, bf16
        self.label_ids = [self._label_ids(lab) for lab in labels]
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def _label_ids(self, label: str) -> list[int]:
        ids = set()
        for text in (label, " " + label):
            enc = self.tok.encode(text, add_special_tokens=False)
            if len(enc) == 1:
                ids.add(enc[0])
        if not ids:
            raise ValueError(f"judge label {label!r} is not a single token for this tokenizer; use --judge-labels")
        return sorted(ids)

    def _cut(self, text: str, budget: int) -> str:
        ids = self.tok.encode(text, add_special_tokens=False)
        return text if len(ids) <= budget else self.tok.decode(ids[:budget]) + " ..."

    def _encode(self, question: Any, a: str, b: str) -> list[int]:
        from prefopt.generation.hf import encode_prompt_ids

        q = _flatten(question)
        share = max(16, (self.max_length - len(self.tok.encode(q, add_special_tokens=False)) - 160) // 2)
        text = JUDGE_PROMPT.format(question=q, a=self._cut(a, share), b=self._cut(b, share),
                                   la=self.labels[0], lb=self.labels[1])
        ids = encode_prompt_ids(self.tok, [{"role": "user", "content": text}])
        return ids[-self.max_length:]

    @torch.no_grad()
    def _forward(self, rows: list[list[int]]) -> torch.Tensor:
        """Left-padded batch; only the last position's logits are computed (``logits_to_keep=1``)."""
        device = next(self.model.parameters()).device
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, width - len(r):] = torch.as_tensor(r)
            mask[i, width - len(r):] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        ctx = torch.autocast(device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        with ctx:
            logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device),
                                position_ids=pos.to(device), use_cache=False, logits_to_keep=1).logits
        last = logits[:, -1].float().log_softmax(-1)
        la = torch.logsumexp(last[:, self.label_ids[0]], -1)
        lb = torch.logsumexp(last[:, self.label_ids[1]], -1)
        return torch.sigmoid(la - lb).cpu()  # renormalised over the two labels

    def prob_first(self, questions: Sequence[Any], first: Sequence[str], second: Sequence[str]) -> torch.Tensor:
        """``[N]`` P(label of ``first``) with ``first`` shown as A and ``second`` as B."""
        rows = [self._encode(q, a, b) for q, a, b in zip(questions, first, second, strict=False)]
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        out = torch.empty(len(rows))
        for s in range(0, len(order), self.batch_size):
            idx = order[s:s + self.batch_size]
            out[idx] = self._forward([rows[i] for i in idx])
        return out

    def both_orders(self, questions: Sequence[Any], x: Sequence[str], y: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(P(x better | x shown first), P(y better | y shown first))``."""
        return self.prob_first(questions, x, y), self.prob_first(questions, y, x)


class LMJudge:
    """AlpacaEval judge over a local LM (both orders): ``preference = 1 + P(output better)``.

    Args:
        model: a loaded causal LM, or a name/path for :func:`prefopt.core.models.load_causal_lm`.
        tokenizer: needed with a loaded model.
        name: annotator label (default ``"lm:<model>"``).
        **kwargs: :class:`LMPairJudge` options (labels, batch_size, max_length, bf16).
    """

    def __init__(self, model: Any, tokenizer: Any = None, *, name: str | None = None, dtype: str = "float32",
                 **kwargs: Any):
        if isinstance(model, str):
            from prefopt.core.models import load_causal_lm

            name = name or f"lm:{model}"
            model, tokenizer = load_causal_lm(model, dtype=dtype)
        self.name = name or "lm"
        self.pair = LMPairJudge(model, tokenizer, **kwargs)

    def annotate(self, instructions: Sequence[str], references: Sequence[str], outputs: Sequence[str], *,
                 keys: Sequence[Any] | None = None) -> list[dict[str, Any]]:
        p_out, p_ref = self.pair.both_orders(list(instructions), list(outputs), list(references))
        rows = []
        for po, pr, o, r in zip(p_out.tolist(), p_ref.tolist(), outputs, references, strict=False):
            pref = 1.5 if identical(o, r) else 1.0 + (po + 1.0 - pr) / 2
            rows.append({"preference": pref, "p_output_first": po, "p_reference_first": pr})
        return rows
