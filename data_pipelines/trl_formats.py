"""TRL preference files straight into ``prefopt train`` / ``prefopt rm train`` (``data.path=file.jsonl``).

A small adapter in front of the training loaders: a file whose rows are not prefopt's records
(those carry ``source``, ``id``, ``meta``, ``margin`` or a POLAR ``reference``) but TRL preference rows is converted to
prefopt's pairwise schema by the same registered adapters ``data build`` uses, so it gets the same
validation and the same messages (file, line, field):

* standard:        ``{"prompt": str, "chosen": str, "rejected": str}`` (explicit prompt) or
  ``{"chosen": str, "rejected": str}`` (implicit prompt) -> adapter ``trl_standard``;
* conversational:  ``{"prompt": [messages], "chosen": [assistant msg], "rejected": [...]}`` or
  implicit-prompt full conversations -> adapter ``trl_conversational``.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

from data_pipelines.sources import RawRecord

log = logging.getLogger(__name__)

__all__ = ["detect_trl", "from_trl"]

# Keys only prefopt's own records carry: a row with any of them is never read as a TRL row.
PREFOPT_KEYS = frozenset({"source", "id", "meta", "margin", "reference", "responses", "scores", "rewards"})


def detect_trl(row: dict[str, Any]) -> str | None:
    """The adapter for a raw row: ``trl_conversational``, ``trl_standard`` or None (prefopt's own rows)."""
    if "chosen" not in row or PREFOPT_KEYS & set(row):
        return None  # a prefopt record (built, POLAR, ranked, with meta ...) or not a preference row at all
    return "trl_conversational" if isinstance(row.get("chosen"), list) else "trl_standard"


def from_trl(records: Sequence[RawRecord]) -> list | None:
    """``PairwiseExample`` list when the rows are TRL preference rows (decided by the first row), else None.

    Raises:
        RecordError: a bad row, exactly as ``prefopt data build`` with the same adapter would raise it.
    """
    if not records:
        return None
    name = detect_trl(records[0].data)
    if name is None:
        return None
    from data_pipelines.adapters import adapt

    examples = list(adapt(name, records, source=name))
    prompt = "explicit" if "prompt" in records[0].data else "implicit"
    log.info("%s: TRL %s preference rows (%s prompt): %d pairs", records[0].file,
             name.removeprefix("trl_"), prompt, len(examples))
    return examples
