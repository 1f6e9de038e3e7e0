"""Field checks shared by the adapters. Each failure raises a :class:`RecordError` naming file/line/field."""
from __future__ import annotations

import math
from typing import Any

from data_pipelines.errors import RecordError
from data_pipelines.schemas import ROLES, Message
from data_pipelines.sources import RawRecord


def _err(rec: RawRecord, code: str, field: str | None, msg: str) -> RecordError:
    return RecordError(code, msg, file=rec.file, line=rec.line, field=field)


def require(rec: RawRecord, field: str, container: dict | None = None, where: str | None = None) -> Any:
    """Return ``container[field]`` (default: the record); absent or ``null`` -> ``missing_field``."""
    data = rec.data if container is None else container
    name = where or field
    if field not in data or data[field] is None:
        raise _err(rec, "missing_field", name, "required field is missing")
    return data[field]


def text(rec: RawRecord, value: Any, field: str) -> str:
    """Check a non-empty string (whitespace-only counts as empty)."""
    if not isinstance(value, str):
        raise _err(rec, "wrong_type", field, f"expected a string, got {type(value).__name__} {_short(value)}")
    if not value.strip():
        raise _err(rec, "empty_text", field, "text is empty or whitespace-only")
    return value


def text_field(rec: RawRecord, field: str, container: dict | None = None, where: str | None = None) -> str:
    """``require`` + ``text`` in one call."""
    return text(rec, require(rec, field, container, where), where or field)


def number(rec: RawRecord, value: Any, field: str) -> float:
    """Check a finite int/float (bools and numeric strings are rejected as ``wrong_type``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _err(rec, "wrong_type", field, f"expected a number, got {type(value).__name__} {_short(value)}")
    if not math.isfinite(float(value)):
        raise _err(rec, "non_finite", field, f"score must be finite, got {value!r}")
    return float(value)


def optional_margin(rec: RawRecord, field: str = "margin") -> float | None:
    """An optional non-negative finite margin."""
    value = rec.data.get(field)
    if value is None:
        return None
    margin = number(rec, value, field)
    if margin < 0:
        raise _err(rec, "bad_value", field, f"margin must be >= 0, got {margin}")
    return margin


def messages(rec: RawRecord, value: Any, field: str) -> list[Message]:
    """Check a chat message list ``[{"role", "content"}]`` with known roles and non-empty contents."""
    if not isinstance(value, list):
        raise _err(rec, "wrong_type", field, f"expected a list of messages, got {type(value).__name__}")
    if not value:
        raise _err(rec, "empty_text", field, "message list is empty")
    out = []
    for i, msg in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(msg, dict):
            raise _err(rec, "wrong_type", where, f"expected a message object, got {type(msg).__name__}")
        role = require(rec, "role", msg, f"{where}.role")
        if role not in ROLES:
            raise _err(rec, "bad_value", f"{where}.role", f"unknown role {role!r}; expected one of {ROLES}")
        out.append({"role": role, "content": text_field(rec, "content", msg, f"{where}.content")})
    return out


def prompt(rec: RawRecord, value: Any, field: str = "prompt") -> list[Message]:
    """A prompt given as a string or a message list whose last message is from the user."""
    if isinstance(value, str):
        return [{"role": "user", "content": text(rec, value, field)}]
    msgs = messages(rec, value, field)
    if msgs[-1]["role"] != "user":
        raise _err(rec, "bad_value", field, f"last prompt message must be from the user, got {msgs[-1]['role']!r}")
    return msgs


def distinct(rec: RawRecord, chosen: str, rejected: str, field: str = "rejected") -> None:
    """Chosen and rejected must differ."""
    if chosen == rejected:
        raise _err(rec, "same_chosen_rejected", field, "chosen and rejected are identical")


def responses_and_scores(rec: RawRecord, resp_field: str, score_field: str) -> tuple[list[str], list[float]]:
    """Two equal-length lists: >= 2 non-empty strings and finite numbers."""
    resps = require(rec, resp_field)
    scores = require(rec, score_field)
    for name, val in ((resp_field, resps), (score_field, scores)):
        if not isinstance(val, list):
            raise _err(rec, "wrong_type", name, f"expected a list, got {type(val).__name__}")
    if len(resps) != len(scores):
        raise _err(rec, "bad_value", score_field,
                   f"{len(scores)} {score_field} for {len(resps)} {resp_field}")
    if len(resps) < 2:
        raise _err(rec, "ranked_list_of_one", resp_field,
                   f"a ranked list needs at least 2 responses, got {len(resps)}")
    out_r = [text(rec, r, f"{resp_field}[{i}]") for i, r in enumerate(resps)]
    out_s = [number(rec, s, f"{score_field}[{i}]") for i, s in enumerate(scores)]
    return out_r, out_s


def record_id(rec: RawRecord, source: str, field: str = "id") -> str:
    """The record's ``id`` as a string, or ``"<source>:<line>"`` when absent."""
    value = rec.data.get(field)
    if value is None:
        return f"{source}:{rec.line}"
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _err(rec, "wrong_type", field, f"expected a string or integer id, got {type(value).__name__}")
    return str(value)


class SeenIds:
    """Detects duplicate ids within one source (``duplicate_id`` names the line of the first sighting)."""

    def __init__(self) -> None:
        self._first: dict[Any, int] = {}

    def check(self, rec: RawRecord, key: Any, field: str = "id") -> None:
        if key in self._first:
            raise _err(rec, "duplicate_id", field, f"duplicate id {key!r} (first seen on line {self._first[key]})")
        self._first[key] = rec.line


def _short(value: Any) -> str:
    text_ = repr(value)
    return text_ if len(text_) <= 40 else text_[:37] + "..."
