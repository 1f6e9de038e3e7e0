"""Ranked and group adapters: HelpSteer, Stack Exchange, generic ranked/group records, HTML-to-text.

Imported (and so registered) by the :mod:`data_pipelines.adapters` package.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Iterable, Iterator, Literal

from data_pipelines import fields as F
from data_pipelines.adapters.base import AdaptContext, per_record, record_meta, register_adapter
from data_pipelines.errors import RecordError
from data_pipelines.schemas import GroupExample, RankedExample
from data_pipelines.sources import RawRecord


# --------------------------------------------------------------------------- HelpSteer
@dataclass(frozen=True)
class HelpSteerOptions:
    """Options of the ``helpsteer`` adapter."""

    score: str = "helpfulness"  # attribute used as the score (ignored when `weights` is set)
    weights: dict[str, float] | None = None  # score = sum(weight * attribute), e.g. {helpfulness: 1, correctness: 0.5}

    def __post_init__(self):
        if self.weights is not None and not self.weights:
            raise ValueError("weights must name at least one attribute")


def _helpsteer_score(rec: RawRecord, opts: HelpSteerOptions) -> float:
    weights = opts.weights or {opts.score: 1.0}
    return sum(w * F.number(rec, F.require(rec, attr), attr) for attr, w in weights.items())


@register_adapter("helpsteer", output="ranked", options=HelpSteerOptions)
def helpsteer(records: Iterable[RawRecord], ctx: AdaptContext) -> Iterator[RankedExample]:
    """NVIDIA HelpSteer rows ``{prompt, response, helpfulness, ...}`` grouped by identical prompt -> RankedExample.

    Score = one attribute (default ``helpfulness``) or a weighted sum (``weights``). Ties are kept (the
    builders decide). A prompt with a single valid response is a ``ranked_list_of_one`` (error, or a
    counted skip), reported at the line of that response. Groups keep first-appearance order.
    """
    groups: dict[str, list[tuple[int, str, float, str]]] = {}
    for rec in records:
        try:
            prompt = F.text_field(rec, "prompt")
            item = (rec.line, F.text_field(rec, "response"), _helpsteer_score(rec, ctx.options), rec.file)
        except RecordError as err:
            ctx.issues.handle(err)
            continue
        groups.setdefault(prompt, []).append(item)
    for prompt, items in groups.items():
        line, file = items[0][0], items[0][3]
        if len(items) < 2:
            ctx.issues.handle(RecordError("ranked_list_of_one", "prompt has only one response (a ranked "
                                          "list of one)", file=file, line=line, field="prompt"))
            continue
        yield RankedExample(prompt=[{"role": "user", "content": prompt}], responses=[i[1] for i in items],
                            scores=[i[2] for i in items], id=f"{ctx.source}:{line}", source=ctx.source,
                            meta={"lines": [i[0] for i in items]})


# --------------------------------------------------------------------------- Stack Exchange
class _TextExtractor(HTMLParser):
    """Collects text; block tags become line breaks, ``<li>`` becomes ``- ``, ``<pre>`` keeps spacing."""

    BREAK2 = {"p", "div", "pre", "blockquote", "ul", "ol", "table", "h1", "h2", "h3", "h4", "h5", "h6", "hr"}
    BREAK1 = {"br", "li", "tr"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.pre = 0

    def handle_starttag(self, tag, attrs):
        if tag in self.BREAK2:
            self.parts.append("\n\n")
        elif tag in self.BREAK1:
            self.parts.append("\n")
        if tag == "li":
            self.parts.append("- ")
        if tag == "pre":
            self.pre += 1

    def handle_endtag(self, tag):
        if tag == "pre":
            self.pre = max(0, self.pre - 1)
        if tag in self.BREAK2:
            self.parts.append("\n\n")

    def handle_data(self, data):
        if not self.pre:
            data = re.sub(r"\s+", " ", data)
            if not self.parts or self.parts[-1].endswith(("\n", "- ")):
                data = data.lstrip()
        self.parts.append(data)


def html_to_text(html: str) -> str:
    """A small HTML-to-text conversion: tags dropped, entities decoded, paragraphs as blank lines."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    text = "".join(parser.parts)
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


@dataclass(frozen=True)
class StackExchangeOptions:
    """Options of the ``stack_exchange`` adapter."""

    html: Literal["strip", "keep"] = "strip"  # strip: convert question/answers to plain text


def _answer(rec: RawRecord, ans: object, i: int, opts: StackExchangeOptions) -> tuple[str, float]:
    where = f"answers[{i}]"
    if not isinstance(ans, dict):
        raise RecordError("wrong_type", f"expected an answer object, got {type(ans).__name__}",
                          file=rec.file, line=rec.line, field=where)
    raw = F.text_field(rec, "text", ans, f"{where}.text")
    text = html_to_text(raw) if opts.html == "strip" else raw
    score = F.number(rec, F.require(rec, "pm_score", ans, f"{where}.pm_score"), f"{where}.pm_score")
    return F.text(rec, text, f"{where}.text"), score


def _site(rec: RawRecord) -> str:
    """Host of the site URL in ``metadata[1]`` (``""`` when absent)."""
    meta = rec.data.get("metadata")
    if isinstance(meta, list) and len(meta) > 1 and isinstance(meta[1], str):
        return meta[1].split("://", 1)[-1].rstrip("/")
    return ""


@register_adapter("stack_exchange", output="ranked", options=StackExchangeOptions)
@per_record
def stack_exchange(rec: RawRecord, ctx: AdaptContext) -> RankedExample:
    """Stack Exchange ``{qid, question, answers: [{text, pm_score, selected, ...}]}`` -> RankedExample.

    Prompt = the question (HTML stripped to text by default), responses = answers, scores = ``pm_score``.
    Question ids repeat across sites (main vs meta), so rows are keyed on ``(site, qid)`` with the site
    taken from ``metadata[1]``; the example id is ``"<site host>/<qid>"``. ``meta`` keeps ``qid``,
    ``site``, ``answer_ids`` and ``selected`` (index of the accepted answer or ``None``).
    """
    qid = F.record_id(rec, ctx.source, "qid")
    question = F.text_field(rec, "question")
    question = F.text(rec, html_to_text(question) if ctx.options.html == "strip" else question, "question")
    answers = F.require(rec, "answers")
    if not isinstance(answers, list):
        raise RecordError("wrong_type", f"expected a list, got {type(answers).__name__}",
                          file=rec.file, line=rec.line, field="answers")
    if len(answers) < 2:
        raise RecordError("ranked_list_of_one", f"a ranked list needs at least 2 answers, got {len(answers)}",
                          file=rec.file, line=rec.line, field="answers")
    pairs = [_answer(rec, a, i, ctx.options) for i, a in enumerate(answers)]
    site = _site(rec)
    ctx.seen.check(rec, (site, qid), "qid")
    selected = next((i for i, a in enumerate(answers) if a.get("selected") is True), None)
    return RankedExample(prompt=[{"role": "user", "content": question}], responses=[p[0] for p in pairs],
                         scores=[p[1] for p in pairs], id=f"{site}/{qid}" if site else qid, source=ctx.source,
                         meta={"qid": qid, "site": site, "answer_ids": [a.get("answer_id") for a in answers],
                               "selected": selected})


# --------------------------------------------------------------------------- generic
def _generic_id(rec: RawRecord, ctx: AdaptContext) -> str:
    rid = F.record_id(rec, ctx.source)
    if "id" in rec.data:
        ctx.seen.check(rec, rid)
    return rid


@register_adapter("ranked", output="ranked")
@per_record
def ranked(rec: RawRecord, ctx: AdaptContext) -> RankedExample:
    """Already-built ranked records ``{prompt, responses: [str], scores: [number], id?, meta?}``."""
    prompt = F.prompt(rec, F.require(rec, "prompt"))
    responses, scores = F.responses_and_scores(rec, "responses", "scores")
    return RankedExample(prompt=prompt, responses=responses, scores=scores, id=_generic_id(rec, ctx),
                         source=ctx.source_of(rec), meta=record_meta(rec))


@register_adapter("group", output="group")
@per_record
def group(rec: RawRecord, ctx: AdaptContext) -> GroupExample:
    """Already-built group records ``{prompt, responses: [str], rewards: [number], id?, meta?}``."""
    prompt = F.prompt(rec, F.require(rec, "prompt"))
    responses, rewards = F.responses_and_scores(rec, "responses", "rewards")
    return GroupExample(prompt=prompt, responses=responses, rewards=rewards, id=_generic_id(rec, ctx),
                        source=ctx.source_of(rec), meta=record_meta(rec))
