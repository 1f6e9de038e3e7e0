"""Adapter machinery: the :class:`AdapterSpec` registry entries, :func:`register_adapter`, :func:`per_record`,
:func:`adapt` and the shared record-meta check. Adapter modules import this one (never each other).
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from data_pipelines import fields as F
from data_pipelines.errors import Issues, RecordError
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


def record_meta(rec: RawRecord) -> dict:
    """The record's ``meta`` object (a copy); anything but an object is a ``wrong_type`` error, and so
    is a curriculum ``stage`` or an LCPO ``annotator_id`` that is not a non-negative integer."""
    meta = rec.data.get("meta") or {}
    if not isinstance(meta, dict):
        raise F.RecordError("wrong_type", f"expected an object, got {type(meta).__name__}",
                            file=rec.file, line=rec.line, field="meta")
    for key in INTEGER_META:
        value = meta.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise F.RecordError("wrong_type", f"expected a non-negative integer, got {value!r}",
                                file=rec.file, line=rec.line, field=f"meta.{key}")
    return dict(meta)


# Meta keys the training loops read as integers: Curry-DPO's stage, LCPO's annotator id.
INTEGER_META = ("stage", "annotator_id")
