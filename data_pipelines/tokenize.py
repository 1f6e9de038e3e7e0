"""Chat-template tokenisation and over-length policy (pure functions; the tokenizer is passed in).

Encoding rules:

* **Prompt** = ``tokenizer.apply_chat_template(messages, add_generation_prompt=True)``; tokenizers
  without a chat template fall back to :data:`PLAIN_TEMPLATE` (``"User: ...\\n\\nAssistant: "``).
* **Completion** = the tokens the template adds for the assistant reply: encode the whole conversation
  (prompt + assistant message) and cut off the prompt tokens. Template trailers after the last EOS
  (SmolLM2's ``"\\n"`` after ``<|im_end|>``) are removed and EOS is appended when missing, so every
  completion is ``reply tokens + EOS``. If the prompt tokens are *not* a prefix of the conversation
  tokens (a template that rewrites earlier turns, or a BPE merge across the boundary) we fall back to
  ``tokenizer(reply, add_special_tokens=False) + [EOS]`` and count it in ``template_fallbacks``.

Over-length policy (:class:`LengthPolicy`), applied to prompt + longest completion:

* ``drop``: examples whose prompt exceeds ``max_prompt_length`` or whose prompt + any completion
  exceeds ``max_length`` are dropped (counted).
* ``truncate_left``: cut the *start* of the prompt (keep its last tokens, so the generation header
  stays next to the reply) until it fits ``max_prompt_length`` and ``max_length - longest completion``.
  At least one prompt token is kept (token 0 has no log-prob); if even that does not fit, the example
  leaves no room and is dropped (or raises, ``on_no_room="raise"``).
* ``truncate_right``: keep the start of the sequence: the prompt is cut from the start to
  ``max_prompt_length`` as above, then each completion is cut at its *end* to
  ``max_length - len(prompt)``; with ``eos_last=True`` the final kept token is overwritten with EOS
  (reward models read the last token). A prompt leaving no completion tokens is dropped/raises.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Literal, Sequence

from data_pipelines.schemas import GroupExample, PairwiseExample, RankedExample
from prefopt.core.errors import DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

PLAIN_TEMPLATE = "{role}: {content}\n\n"  # fallback for tokenizers without a chat template
Overlong = Literal["drop", "truncate_left", "truncate_right"]


@dataclass(frozen=True)
class LengthPolicy:
    """Length limits and what to do with examples over them (see the module docstring)."""

    # Longest prompt + completion in tokens (None = unlimited).
    max_length: int | None = 1024
    # Longest prompt in tokens (None = unlimited).
    max_prompt_length: int | None = 512
    # drop | truncate_left | truncate_right
    overlong: Overlong = "drop"
    # What to do when truncation would leave no completion tokens: drop (counted) or raise DataError.
    on_no_room: Literal["drop", "raise"] = "drop"
    # After right truncation, overwrite the last completion token with EOS.
    eos_last: bool = False

    def __post_init__(self) -> None:
        if self.overlong not in ("drop", "truncate_left", "truncate_right"):
            raise ValueError(f"overlong must be drop|truncate_left|truncate_right, got {self.overlong!r}")
        for name in ("max_length", "max_prompt_length"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")


@dataclass
class TokenizeStats:
    """Counts to report after tokenising a dataset (mutable accumulator)."""

    kept: int = 0
    dropped: int = 0            # over-length examples dropped by the ``drop`` policy
    dropped_no_room: int = 0    # examples where the prompt left no completion tokens
    truncated: int = 0          # examples with any truncation
    prompt_truncated: int = 0
    completion_truncated: int = 0
    template_fallbacks: int = 0  # completions encoded by concatenation (prompt not a prefix)

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class TokenizedPair:
    """Token ids of one preference pair (completions end with EOS unless right-truncated)."""

    prompt_ids: tuple[int, ...]
    chosen_ids: tuple[int, ...]
    rejected_ids: tuple[int, ...]
    margin: float | None = None
    id: str = ""


@dataclass(frozen=True)
class TokenizedList:
    """A prompt with K completions and their scores (ranked) or rewards (group)."""

    prompt_ids: tuple[int, ...]
    completion_ids: tuple[tuple[int, ...], ...]
    scores: tuple[float, ...]
    id: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


def _check_text(text: Any, field_name: str) -> None:
    if not isinstance(text, str) or not text.strip():
        raise DataError("empty text" if isinstance(text, str) else f"expected text, got {type(text).__name__}",
                        field=field_name)


def _ids(out: Any) -> list[int]:
    """``apply_chat_template`` returns a list or (transformers 5) a BatchEncoding."""
    if hasattr(out, "keys") and "input_ids" in out:
        out = out["input_ids"]
    return [int(t) for t in out]


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]],
            add_generation_prompt: bool) -> list[int]:
    if getattr(tokenizer, "chat_template", None):
        return _ids(tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                                  tokenize=True))
    text = "".join(PLAIN_TEMPLATE.format(role=m["role"].capitalize(), content=m["content"]) for m in messages)
    if add_generation_prompt:
        text += "Assistant: "
    return _ids(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_prompt(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], *,
                  field_name: str = "prompt") -> list[int]:
    """Prompt tokens ending with the assistant generation header.

    Raises:
        DataError: empty message content (field ``prompt[i].content``) or empty message list.
    """
    if not messages:
        raise DataError("empty message list", field=field_name)
    for i, m in enumerate(messages):
        _check_text(m.get("content"), f"{field_name}[{i}].content")
    return _render(tokenizer, list(messages), add_generation_prompt=True)


def encode_completion(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], completion: str,
                      prompt_ids: Sequence[int], *, field_name: str = "completion") -> tuple[list[int], bool]:
    """Completion tokens (reply + EOS) and whether the concatenation fallback was used."""
    _check_text(completion, field_name)
    eos = tokenizer.eos_token_id
    full = _render(tokenizer, [*messages, {"role": "assistant", "content": completion}],
                   add_generation_prompt=False)
    n = len(prompt_ids)
    if len(full) > n and full[:n] == list(prompt_ids):
        ids = full[n:]
        if eos is not None and eos in ids:
            ids = ids[: len(ids) - ids[::-1].index(eos)]  # drop template trailer after the last EOS
        fallback = False
    else:
        ids = _ids(tokenizer(completion, add_special_tokens=False)["input_ids"])
        fallback = True
    if eos is not None and (not ids or ids[-1] != eos):
        ids.append(eos)
    return ids, fallback


def apply_length_policy(prompt_ids: Sequence[int], completions: Sequence[Sequence[int]], policy: LengthPolicy,
                        stats: TokenizeStats | None = None, *, eos_token_id: int | None = None,
                        where: str = "") -> tuple[list[int], list[list[int]]] | None:
    """Fit one example to ``policy``; None when dropped. Counts go into ``stats``."""
    stats = stats if stats is not None else TokenizeStats()
    prompt, comps = list(prompt_ids), [list(c) for c in completions]
    max_len = policy.max_length if policy.max_length is not None else 1 << 62
    max_prompt = policy.max_prompt_length if policy.max_prompt_length is not None else 1 << 62
    longest = max(len(c) for c in comps)
    if len(prompt) <= max_prompt and len(prompt) + longest <= max_len:
        stats.kept += 1
        return prompt, comps
    if policy.overlong == "drop":
        stats.dropped += 1
        return None
    keep_prompt = min(len(prompt), max_prompt)
    if policy.overlong == "truncate_left":
        keep_prompt = min(keep_prompt, max_len - longest)
    if keep_prompt < 1 or max_len - keep_prompt < 1:
        if policy.on_no_room == "raise":
            raise DataError(f"prompt of {len(prompt)} tokens leaves no room for the completion "
                            f"(max_length={policy.max_length}, max_prompt_length={policy.max_prompt_length})",
                            field=where or "prompt")
        stats.dropped_no_room += 1
        return None
    prompt_cut = keep_prompt < len(prompt)
    prompt = prompt[len(prompt) - keep_prompt:]
    room = max_len - len(prompt)
    comp_cut = any(len(c) > room for c in comps)
    if comp_cut:
        comps = [c[:room] for c in comps]
        if policy.eos_last and eos_token_id is not None:
            comps = [c[:-1] + [eos_token_id] for c in comps]
    stats.kept += 1
    stats.truncated += 1
    stats.prompt_truncated += int(prompt_cut)
    stats.completion_truncated += int(comp_cut)
    return prompt, comps


def _encode_all(tokenizer: PreTrainedTokenizerBase, prompt: list[dict[str, str]], texts: Sequence[str],
                fields: Sequence[str],
                stats: TokenizeStats) -> tuple[list[int], list[list[int]]]:
    prompt_ids = encode_prompt(tokenizer, prompt)
    comps = []
    for text, name in zip(texts, fields, strict=False):
        ids, fallback = encode_completion(tokenizer, prompt, text, prompt_ids, field_name=name)
        stats.template_fallbacks += int(fallback)
        comps.append(ids)
    return prompt_ids, comps


def tokenize_pairwise(example: PairwiseExample, tokenizer: PreTrainedTokenizerBase, policy: LengthPolicy,
                      stats: TokenizeStats | None = None) -> TokenizedPair | None:
    """(prompt ids, chosen ids, rejected ids) under ``policy``; None if dropped."""
    stats = stats if stats is not None else TokenizeStats()
    prompt_ids, comps = _encode_all(tokenizer, example.prompt, [example.chosen, example.rejected],
                                    ["chosen", "rejected"], stats)
    fitted = apply_length_policy(prompt_ids, comps, policy, stats, eos_token_id=tokenizer.eos_token_id)
    if fitted is None:
        return None
    prompt_ids, (chosen, rejected) = fitted
    return TokenizedPair(tuple(prompt_ids), tuple(chosen), tuple(rejected), example.margin, example.id)


def _tokenize_list(example: RankedExample | GroupExample, scores: Sequence[float],
                   tokenizer: PreTrainedTokenizerBase,
                   policy: LengthPolicy, stats: TokenizeStats | None) -> TokenizedList | None:
    stats = stats if stats is not None else TokenizeStats()
    if not example.responses:
        raise DataError("no responses", field="responses")
    if len(scores) != len(example.responses):
        raise DataError(f"{len(example.responses)} responses but {len(scores)} scores", field="scores")
    fields = [f"responses[{i}]" for i in range(len(example.responses))]
    prompt_ids, comps = _encode_all(tokenizer, example.prompt, example.responses, fields, stats)
    fitted = apply_length_policy(prompt_ids, comps, policy, stats, eos_token_id=tokenizer.eos_token_id)
    if fitted is None:
        return None
    prompt_ids, comps = fitted
    return TokenizedList(tuple(prompt_ids), tuple(tuple(c) for c in comps), tuple(float(s) for s in scores),
                         example.id, dict(example.meta))


def tokenize_ranked(example: RankedExample, tokenizer: PreTrainedTokenizerBase, policy: LengthPolicy,
                    stats: TokenizeStats | None = None) -> TokenizedList | None:
    """Prompt ids + K completion ids with their scores; None if dropped."""
    return _tokenize_list(example, example.scores, tokenizer, policy, stats)


def tokenize_group(example: GroupExample, tokenizer: PreTrainedTokenizerBase, policy: LengthPolicy,
                   stats: TokenizeStats | None = None) -> TokenizedList | None:
    """Prompt ids + N rollout ids with their rewards (in ``scores``); None if dropped."""
    return _tokenize_list(example, example.rewards, tokenizer, policy, stats)


def tokenize_examples(examples: Iterable[PairwiseExample | RankedExample | GroupExample],
                      tokenizer: PreTrainedTokenizerBase,
                      policy: LengthPolicy) -> tuple[list[TokenizedPair | TokenizedList], TokenizeStats]:
    """Tokenise a stream of examples (any of the three kinds); returns kept items and the counts."""
    stats = TokenizeStats()
    out: list[TokenizedPair | TokenizedList] = []
    for ex in examples:
        if isinstance(ex, PairwiseExample):
            item = tokenize_pairwise(ex, tokenizer, policy, stats)
        elif isinstance(ex, RankedExample):
            item = tokenize_ranked(ex, tokenizer, policy, stats)
        elif isinstance(ex, GroupExample):
            item = tokenize_group(ex, tokenizer, policy, stats)
        else:
            raise DataError(f"cannot tokenise a {type(ex).__name__}")
        if item is not None:
            out.append(item)
    return out, stats


def print_data_summary(name: str, counts: dict[str, Any], n_items: int) -> None:
    """One console line per data file: what was kept, skipped and dropped (and why)."""
    import sys

    print(f"data {name}: {n_items} item(s) from {describe_counts(counts)}", file=sys.stderr, flush=True)


def describe_counts(counts: dict[str, Any]) -> str:
    """``records=32, skipped: same_chosen_rejected=2, dropped at tokenisation: too_long=6`` style text."""
    skipped = counts.get("skipped_records") or {}
    dropped = {k: v for k, v in counts.items() if k not in ("records", "skipped_records", "kept")
               and isinstance(v, int) and v}
    parts = [f"{counts.get('records', 0)} valid record(s)"]
    if skipped:
        parts.append("skipped as invalid: " + ", ".join(f"{k}={v}" for k, v in skipped.items()))
    if dropped:
        parts.append("tokenisation: " + ", ".join(f"{k}={v}" for k, v in dropped.items()))
    return "; ".join(parts)
