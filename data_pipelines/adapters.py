"""Adapters: raw records -> schema records (``PairwiseExample``, ``RankedExample``, ...), with validation.

Each adapter is registered in :data:`prefopt.core.registry.DATASETS` as an :class:`AdapterSpec` under a
plain name (``hh_rlhf``, ``helpsteer``, ``stack_exchange``, ``rewardbench``, ``alpacaeval``,
``trl_standard``, ``trl_conversational``, ``pairwise``, ``ranked``, ``group``, ``prompt``); builders are
registered under ``builder.*`` names (see :mod:`data_pipelines.builders`). Call :func:`adapt`.

Every bad record raises a :class:`~data_pipelines.errors.RecordError` naming file, line and field; with
``on_error: skip`` it is counted by reason instead (``Issues.skipped``).
"""
from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from data_pipelines import fields as F
from data_pipelines.errors import Issues, RecordError
from data_pipelines.schemas import Message, PairwiseExample, PromptExample
from data_pipelines.sources import RawRecord
from prefopt.core.config import from_dict
from prefopt.core.errors import ConfigError
from prefopt.core.registry import DATASETS


@dataclass(frozen=True)
class NoOptions:
    """Adapters without options (any key given is an unknown-key error)."""


@dataclass
class AdaptContext:
    """What an adapter sees besides the records: its options, the error policy and the source name."""

    options: Any
    issues: Issues
    source: str
    seen: F.SeenIds = dataclasses.field(default_factory=F.SeenIds)
    # Loading built records back: keep each record's own ``source`` field (generic adapters).
    keep_record_source: bool = False

    def source_of(self, rec: RawRecord) -> str:
        own = rec.data.get("source")
        return own if self.keep_record_source and isinstance(own, str) else self.source


@dataclass(frozen=True)
class AdapterSpec:
    """A registered adapter: ``fn(records, ctx) -> iterator of examples`` plus its options schema."""

    name: str
    fn: Callable[[Iterable[RawRecord], AdaptContext], Iterator[Any]]
    options: type
    output: str  # pairwise | ranked | group | prompt
    doc: str = ""
    kind: str = "adapter"


def register_adapter(name: str, output: str, options: type = NoOptions) -> Callable:
    """Decorator registering a stream adapter ``fn(records, ctx)`` in ``DATASETS``."""

    def deco(fn: Callable) -> Callable:
        DATASETS.register(name, AdapterSpec(name, fn, options, output, (fn.__doc__ or "").strip()))
        return fn

    return deco


def per_record(fn: Callable[[RawRecord, AdaptContext], Any]) -> Callable:
    """Turn ``fn(rec, ctx) -> example`` into a stream adapter applying the error policy per record."""

    def stream(records: Iterable[RawRecord], ctx: AdaptContext) -> Iterator[Any]:
        for rec in records:
            try:
                yield fn(rec, ctx)
            except RecordError as err:
                ctx.issues.handle(err)

    stream.__doc__ = fn.__doc__
    stream.__name__ = fn.__name__
    return stream


def adapt(name: str, records: Iterable[RawRecord], options: dict | None = None,
          issues: Issues | None = None, source: str = "", keep_record_source: bool = False) -> Iterator[Any]:
    """Run adapter ``name`` over ``records``.

    Args:
        name: a registered adapter name.
        records: raw records from :func:`data_pipelines.sources.read_records`.
        options: adapter options (unknown keys raise ``ConfigError``).
        issues: error policy and skip counter (default: raise on the first bad record).
        source: label stored in each example's ``source`` (and default ids ``<source>:<line>``).
        keep_record_source: generic adapters keep a record's own ``source`` field (loading built data).
    """
    spec = get_adapter(name)
    try:
        opts = from_dict(spec.options, options or {}, where="options")
    except ConfigError as exc:
        raise ConfigError(f"adapter '{name}': {exc}") from None
    ctx = AdaptContext(opts, issues or Issues("raise"), source or name, keep_record_source=keep_record_source)
    return spec.fn(records, ctx)


def get_adapter(name: str) -> AdapterSpec:
    """Look up an adapter; ``ConfigError`` (with a did-you-mean hint) when ``name`` is not one."""
    if name in DATASETS and getattr(DATASETS.get(name), "kind", None) == "adapter":
        return DATASETS.get(name)
    known = adapter_names()
    hint = difflib.get_close_matches(name, known, n=1)
    raise ConfigError(f"unknown adapter '{name}'" + (f" (did you mean '{hint[0]}'?)" if hint else "")
                      + f"; adapters: {', '.join(known)}")


def adapter_names() -> list[str]:
    return [n for n in DATASETS.names() if getattr(DATASETS.get(n), "kind", None) == "adapter"]


# --------------------------------------------------------------------------- hh-rlhf transcripts
_TURN = re.compile(r"\n\n(Human|Assistant):")
_ROLE = {"Human": "user", "Assistant": "assistant"}


def parse_transcript(rec: RawRecord, value: Any, field: str) -> list[Message]:
    """Split ``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` into messages (contents stripped)."""
    text = F.text(rec, value, field)
    parts = _TURN.split(text)
    if parts[0].strip() or len(parts) < 3:
        raise F.RecordError("bad_transcript", "expected a dialogue starting with '\\n\\nHuman:'",
                            file=rec.file, line=rec.line, field=field)
    return [{"role": _ROLE[parts[i]], "content": parts[i + 1].strip()} for i in range(1, len(parts), 2)]


def split_final_reply(rec: RawRecord, msgs: list[Message], field: str) -> tuple[list[Message], str]:
    """(turns before the final assistant reply, that reply); the dialogue must end with an assistant turn."""
    if msgs[-1]["role"] != "assistant" or len(msgs) < 2:
        raise F.RecordError("bad_transcript", "dialogue must end with an Assistant reply after a Human turn",
                            file=rec.file, line=rec.line, field=field)
    return msgs[:-1], msgs[-1]["content"]


@register_adapter("hh_rlhf", output="pairwise")
@per_record
def hh_rlhf(rec: RawRecord, ctx: AdaptContext) -> PairwiseExample:
    """Anthropic HH-RLHF ``{chosen, rejected}`` transcripts -> PairwiseExample.

    Prompt = every turn before the final assistant reply (the text after the last
    ``"\n\nAssistant:"``); chosen/rejected = the final replies (whitespace-stripped). Policy, checked in
    this order: a dialogue that does not end with an assistant reply (``bad_transcript``), prompt turns
    that differ between chosen and rejected (``prompt_mismatch``), a prompt whose last turn is not a
    Human turn (``bad_transcript``), an empty final reply (``empty_text``), equal replies
    (``same_chosen_rejected``). Each is an error, or a counted skip with ``on_error: skip``.
    """
    p_c, chosen = split_final_reply(rec, parse_transcript(rec, F.require(rec, "chosen"), "chosen"), "chosen")
    p_r, rejected = split_final_reply(rec, parse_transcript(rec, F.require(rec, "rejected"), "rejected"),
                                      "rejected")
    if p_c != p_r:
        turn = next((i for i, (a, b) in enumerate(zip(p_c, p_r, strict=False)) if a != b), min(len(p_c), len(p_r)))
        raise F.RecordError("prompt_mismatch", f"chosen and rejected differ before the final reply "
                            f"(turn {turn + 1})", file=rec.file, line=rec.line, field="rejected")
    if p_c[-1]["role"] != "user":
        raise F.RecordError("bad_transcript", "the turn before the final Assistant reply must be a Human turn "
                            "(consecutive Assistant turns)", file=rec.file, line=rec.line, field="chosen")
    F.text(rec, chosen, "chosen")
    F.text(rec, rejected, "rejected")
    F.distinct(rec, chosen, rejected)
    return PairwiseExample(prompt=p_c, chosen=chosen, rejected=rejected, id=f"{ctx.source}:{rec.line}",
                           source=ctx.source)


# --------------------------------------------------------------------------- benchmarks
@register_adapter("rewardbench", output="pairwise")
@per_record
def rewardbench(rec: RawRecord, ctx: AdaptContext) -> PairwiseExample:
    """RewardBench ``{id, subset, section?, prompt, chosen, rejected}`` -> PairwiseExample.

    Rows are keyed on ``(id, subset)`` (upstream ids repeat across subsets); the example id is
    ``"<subset>:<id>"`` and ``meta`` keeps ``id``, ``subset`` and ``section``.
    """
    F.require(rec, "id")
    rid = F.record_id(rec, ctx.source)
    subset = F.text_field(rec, "subset")
    section = rec.data.get("section")
    if section is not None:
        F.text(rec, section, "section")
    prompt = F.prompt(rec, F.require(rec, "prompt"))
    chosen, rejected = F.text_field(rec, "chosen"), F.text_field(rec, "rejected")
    F.distinct(rec, chosen, rejected)
    ctx.seen.check(rec, (rid, subset), "id")
    return PairwiseExample(prompt=prompt, chosen=chosen, rejected=rejected, id=f"{subset}:{rid}",
                           source=ctx.source, meta={"id": rec.data["id"], "subset": subset, "section": section})


@register_adapter("alpacaeval", output="prompt")
@per_record
def alpacaeval(rec: RawRecord, ctx: AdaptContext) -> PromptExample:
    """AlpacaEval ``{instruction, output?, generator?, dataset?}`` -> PromptExample (answer = reference output)."""
    prompt = F.prompt(rec, F.require(rec, "instruction"), "instruction")
    answer = F.text(rec, rec.data["output"], "output") if rec.data.get("output") is not None else None
    meta = {k: rec.data[k] for k in ("generator", "dataset") if rec.data.get(k) is not None}
    for k, v in meta.items():
        F.text(rec, v, k)
    return PromptExample(prompt=prompt, id=f"{ctx.source}:{rec.line}", source=ctx.source, answer=answer, meta=meta)


# --------------------------------------------------------------------------- TRL formats and generic
def _common_prefix_text(a: str, b: str) -> str:
    """Longest common prefix, backed off to the last whitespace (TRL ``extract_prompt`` for strings)."""
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    if i < min(len(a), len(b)):
        cut = max(a.rfind(" ", 0, i), a.rfind("\n", 0, i))
        i = cut + 1 if cut >= 0 else 0
    return a[:i]


def _checked_pair(rec: RawRecord, ctx: AdaptContext, prompt: list[Message], chosen: str,
                  rejected: str) -> PairwiseExample:
    F.text(rec, chosen, "chosen")
    F.text(rec, rejected, "rejected")
    F.distinct(rec, chosen, rejected)
    rid = F.record_id(rec, ctx.source)
    if "id" in rec.data:
        ctx.seen.check(rec, rid)
    return PairwiseExample(prompt=prompt, chosen=chosen, rejected=rejected, margin=F.optional_margin(rec),
                           id=rid, source=ctx.source)


@register_adapter("trl_standard", output="pairwise")
@per_record
def trl_standard(rec: RawRecord, ctx: AdaptContext) -> PairwiseExample:
    """TRL standard preference rows: ``prompt``/``chosen``/``rejected`` strings (``margin``, ``id`` optional).

    Without ``prompt`` (implicit prompt) the prompt is the common prefix of chosen and rejected, cut
    back to a whitespace boundary; the completions are the remainders.
    """
    chosen, rejected = F.text_field(rec, "chosen"), F.text_field(rec, "rejected")
    if rec.data.get("prompt") is not None:
        return _checked_pair(rec, ctx, F.prompt(rec, rec.data["prompt"]), chosen, rejected)
    prefix = _common_prefix_text(chosen, rejected)
    if not prefix.strip():
        raise F.RecordError("bad_transcript", "no 'prompt' and chosen/rejected share no prefix to use as one",
                            file=rec.file, line=rec.line, field="prompt")
    return _checked_pair(rec, ctx, F.prompt(rec, prefix), chosen[len(prefix):], rejected[len(prefix):])


def _single_reply(rec: RawRecord, msgs: list[Message], field: str) -> str:
    if len(msgs) != 1 or msgs[0]["role"] != "assistant":
        raise F.RecordError("bad_value", "completion must be exactly one assistant message",
                            file=rec.file, line=rec.line, field=field)
    return msgs[0]["content"]


@register_adapter("trl_conversational", output="pairwise")
@per_record
def trl_conversational(rec: RawRecord, ctx: AdaptContext) -> PairwiseExample:
    """TRL conversational rows: ``prompt`` message list, ``chosen``/``rejected`` = one assistant message.

    Without ``prompt`` (implicit prompt) chosen/rejected are full conversations: their common message
    prefix is the prompt and each must continue with exactly one assistant message.
    """
    chosen = F.messages(rec, F.require(rec, "chosen"), "chosen")
    rejected = F.messages(rec, F.require(rec, "rejected"), "rejected")
    if rec.data.get("prompt") is not None:
        prompt = F.prompt(rec, rec.data["prompt"])
    else:
        n = 0
        while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
            n += 1
        prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
        if not prompt or prompt[-1]["role"] != "user":
            raise F.RecordError("prompt_mismatch", "implicit prompt: chosen and rejected must share turns "
                                "ending with a user message", file=rec.file, line=rec.line, field="rejected")
    return _checked_pair(rec, ctx, prompt, _single_reply(rec, chosen, "chosen"),
                         _single_reply(rec, rejected, "rejected"))


@register_adapter("pairwise", output="pairwise")
@per_record
def pairwise(rec: RawRecord, ctx: AdaptContext) -> PairwiseExample:
    """Already-built pairs ``{prompt (str|messages), chosen, rejected, margin?, id?, meta?}``."""
    ex = _checked_pair(rec, ctx, F.prompt(rec, F.require(rec, "prompt")), F.require(rec, "chosen"),
                       F.require(rec, "rejected"))
    return dataclasses.replace(ex, meta=_meta(rec), source=ctx.source_of(rec))


@register_adapter("prompt", output="prompt")
@per_record
def prompt_only(rec: RawRecord, ctx: AdaptContext) -> PromptExample:
    """Prompts ``{prompt (str|messages), answer?, id?, meta?}`` -> PromptExample."""
    prompt = F.prompt(rec, F.require(rec, "prompt"))
    answer = F.text(rec, rec.data["answer"], "answer") if rec.data.get("answer") is not None else None
    rid = F.record_id(rec, ctx.source)
    if "id" in rec.data:
        ctx.seen.check(rec, rid)
    return PromptExample(prompt=prompt, id=rid, source=ctx.source_of(rec), answer=answer, meta=_meta(rec))


def _meta(rec: RawRecord) -> dict:
    meta = rec.data.get("meta") or {}
    if not isinstance(meta, dict):
        raise F.RecordError("wrong_type", f"expected an object, got {type(meta).__name__}",
                            file=rec.file, line=rec.line, field="meta")
    return dict(meta)


from data_pipelines import adapters_ranked  # noqa: E402,F401  (registers the ranked/group adapters)
