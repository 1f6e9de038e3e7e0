"""Append-per-example results store that resumes after a crash without duplicates or gaps.

One JSON object per line (``prefopt.core.io.append_jsonl``: flushed and fsynced per call). A writer
killed mid-line leaves a torn last line: readers ignore it (``read_jsonl_tolerant``) and the next
:meth:`ResultStore.append` cuts it first (``repair_jsonl_tail``) so a new row never glues onto it. Rows
are keyed by ``key_fields`` (e.g. ``("id", "subset")`` for RewardBench); a key already on disk is never
written again, so re-running a loop over all examples after a kill only adds the missing ones.

Typical driver loop::

    store = ResultStore(out_dir / "results.jsonl", key_fields=("id", "subset"))
    for batch in batches(store.pending(examples)):
        store.append(score(batch))
    rows = store.rows()
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Hashable, Iterable, Mapping, Sequence

from prefopt.core.errors import DataError
from prefopt.core.io import append_jsonl, read_jsonl_tolerant, repair_jsonl_tail

_SCALARS = (str, int, float, bool, type(None))


class ResultStore:
    """Results file keyed by ``key_fields``; safe to resume after the writer was killed.

    Args:
        path: the ``.jsonl`` file (created on first append; parent folders too).
        key_fields: fields whose values identify an example; values must be JSON scalars.

    One writer per file: the store keeps the set of keys on disk in memory, loaded when it is created.
    ``retry_field`` (optional): a row whose value there is true records a failed attempt (e.g. an
    unparsable judge answer); it is kept in the file but its key stays pending, so a rerun retries it,
    and :meth:`rows` prefers a later successful row for the same key.
    """

    def __init__(self, path: str | os.PathLike, key_fields: Sequence[str], retry_field: str | None = None):
        if isinstance(key_fields, str) or not key_fields:
            raise ValueError("key_fields must be a non-empty sequence of field names")
        self.path = Path(path)
        self.key_fields = tuple(key_fields)
        self.retry_field = retry_field
        self._keys: set[tuple[Hashable, ...]] = set()
        for line, row in enumerate(self._read(), start=1):
            key = self.key_of(row, line=line)
            if not self.is_retry(row):
                self._keys.add(key)

    def is_retry(self, row: Mapping[str, Any]) -> bool:
        """True for a row recording a failed attempt (see ``retry_field``)."""
        return bool(self.retry_field and row.get(self.retry_field))

    def key_of(self, row: Mapping[str, Any], *, line: int | None = None) -> tuple[Hashable, ...]:
        """The key tuple of ``row``.

        Raises:
            DataError: a key field is missing or is not a JSON scalar.
        """
        key = []
        for f in self.key_fields:
            if f not in row:
                raise DataError("missing key field", file=str(self.path), line=line, field=f)
            v = row[f]
            if not isinstance(v, _SCALARS):
                raise DataError(f"key value must be a string/number/bool/null, got {type(v).__name__}",
                                file=str(self.path), line=line, field=f)
            key.append(v)
        return tuple(key)

    def _read(self) -> list[dict]:
        try:
            rows = read_jsonl_tolerant(self.path)
        except json.JSONDecodeError as e:
            raise DataError(f"corrupt line (not a torn tail): {e.msg}", file=str(self.path)) from None
        for i, row in enumerate(rows, start=1):
            if not isinstance(row, dict):
                raise DataError("expected a JSON object per line", file=str(self.path), line=i)
        return rows

    def done_keys(self) -> set[tuple[Hashable, ...]]:
        """Keys of the rows already stored (a copy)."""
        return set(self._keys)

    def __contains__(self, row_or_key: Any) -> bool:
        key = row_or_key if isinstance(row_or_key, tuple) else self.key_of(row_or_key)
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def pending(self, items: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        """The items (with the key fields) whose key is not stored yet, in input order, without repeats."""
        out, seen = [], set(self._keys)
        for item in items:
            k = self.key_of(item)
            if k not in seen:
                seen.add(k)
                out.append(item)
        return out

    def append(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Append the rows whose key is new (first occurrence wins); return how many were written.

        The whole call is one write followed by one fsync; a kill during it leaves whole lines plus at most
        one torn line, which the next store cuts.
        """
        new, keys = [], set()
        for row in rows:
            k = self.key_of(row)
            if k in self._keys or k in keys:
                continue
            new.append(dict(row))
            if not self.is_retry(row):
                keys.add(k)
        if not new:
            return 0
        repair_jsonl_tail(self.path)
        append_jsonl(self.path, new)
        self._keys.update(keys)
        return len(new)

    def rows(self) -> list[dict]:
        """Stored rows, one per key in order of first appearance, torn tail ignored: the first successful
        row of a key, else its latest failed attempt (``retry_field``)."""
        best: dict[tuple[Hashable, ...], dict] = {}
        for line, row in enumerate(self._read(), start=1):
            k = self.key_of(row, line=line)
            if k in best and not self.is_retry(best[k]):
                continue  # a key's first successful row wins
            best[k] = row
        return list(best.values())
