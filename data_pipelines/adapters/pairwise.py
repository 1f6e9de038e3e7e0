"""Pairwise and prompt adapters: HH-RLHF transcripts, RewardBench, AlpacaEval, TRL standard and
conversational rows, generic ``pairwise`` and ``prompt`` records.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

from data_pipelines import fields as F
from data_pipelines.adapters.base import AdaptContext, per_record, record_meta, register_adapter
from data_pipelines.schemas import Message, PairwiseExample, PromptExample
from data_pipelines.sources import RawRecord

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
    return dataclasses.replace(ex, meta=record_meta(rec), source=ctx.source_of(rec))


@register_adapter("prompt", output="prompt")
@per_record
def prompt_only(rec: RawRecord, ctx: AdaptContext) -> PromptExample:
    """Prompts ``{prompt (str|messages), answer?, id?, meta?}`` -> PromptExample."""
    prompt = F.prompt(rec, F.require(rec, "prompt"))
    answer = F.text(rec, rec.data["answer"], "answer") if rec.data.get("answer") is not None else None
    rid = F.record_id(rec, ctx.source)
    if "id" in rec.data:
        ctx.seen.check(rec, rid)
    return PromptExample(prompt=prompt, id=rid, source=ctx.source_of(rec), answer=answer, meta=record_meta(rec))
