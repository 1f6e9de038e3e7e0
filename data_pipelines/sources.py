"""Readers: iterate raw records (dicts) with their file and 1-based line/row from local files or the HF hub.

Supported inputs (chosen by suffix, or ``fmt``):

* ``.jsonl`` / ``.jsonl.gz`` - one JSON object per line; ``line`` is the physical 1-based line number
  (blank lines are skipped but still counted).
* ``.json`` / ``.json.gz`` - a JSON array of objects, or an object of equal-length lists (columnar);
  ``line`` is the 1-based row index.
* ``.parquet`` - ``line`` is the 1-based row index.
* ``hf:NAME[:CONFIG]@SPLIT`` - a Hugging Face ``datasets`` name, loaded lazily with
  ``datasets.load_dataset`` (needs network or a warm HF cache; never used by the tests).

Relative paths are resolved against the current working directory (run the shipped recipes from the
repository root). Corrupt files raise :class:`~prefopt.core.errors.DataError` naming the file and line.
"""
from __future__ import annotations

import gzip
import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from data_pipelines.errors import Issues, RecordError
from prefopt.core.errors import DataError


@dataclass(frozen=True)
class RawRecord:
    """One input record and where it came from (``line`` is 1-based: a line or row number)."""

    data: dict[str, Any]
    file: str
    line: int


def parse_hf_spec(spec: str) -> tuple[str, str | None, str]:
    """Split ``hf:NAME[:CONFIG]@SPLIT`` into ``(name, config, split)``; the split defaults to ``train``."""
    if not spec.startswith("hf:"):
        raise DataError(f"not a hub dataset spec (expected hf:NAME[:CONFIG]@SPLIT): {spec!r}")
    body, _, split = spec[3:].partition("@")
    name, _, config = body.partition(":")
    if not name:
        raise DataError(f"empty dataset name in {spec!r}")
    return name, (config or None), (split or "train")


def detect_format(path: str) -> str:
    """Return ``jsonl``, ``json``, ``parquet`` or ``hf`` from a path/spec."""
    if path.startswith("hf:"):
        return "hf"
    name = path.lower().removesuffix(".gz")
    for suffix, fmt in ((".jsonl", "jsonl"), (".json", "json"), (".parquet", "parquet")):
        if name.endswith(suffix):
            return fmt
    raise DataError(f"cannot tell the format of {path!r}: use .jsonl, .jsonl.gz, .json, .parquet or hf:NAME@SPLIT")


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _decode_line(raw: bytes, file: str, line: int) -> str:
    try:
        return raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise RecordError("bad_encoding", f"bytes that are not UTF-8 at byte {exc.start} of the line "
                          f"({raw[exc.start:exc.start + 4]!r})", file=file, line=line) from None


def _parse_object(text: str, file: str, line: int) -> dict:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordError("malformed_json", f"malformed JSON: {exc.msg} at column {exc.colno}",
                          file=file, line=line) from None
    if not isinstance(obj, dict):
        raise RecordError("not_an_object", f"expected a JSON object, got {type(obj).__name__}",
                          file=file, line=line)
    return obj


def iter_jsonl(path: str | Path, issues: Issues | None = None) -> Iterator[RawRecord]:
    """Yield the objects of a (gzipped) JSONL file; line-level problems go through ``issues``.

    A truncated or corrupt gzip stream always raises, naming the last good line.
    """
    path, issues = Path(path), issues or Issues("raise")
    file, line = str(path), 0
    try:
        with _open_binary(path) as fh:
            for line, raw in enumerate(fh, start=1):
                if not raw.strip():
                    continue
                try:
                    obj = _parse_object(_decode_line(raw, file, line), file, line)
                except RecordError as err:
                    issues.handle(err)
                    continue
                yield RawRecord(obj, file, line)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"gzip stream is truncated or corrupt; last good line is {line} ({exc})",
                        file=file, line=line + 1) from None


def _rows_from_json(obj: Any, file: str) -> list[Any]:
    if isinstance(obj, list):
        return obj
    if isinstance(obj, dict) and obj and all(isinstance(v, list) for v in obj.values()):
        lengths = {k: len(v) for k, v in obj.items()}
        if len(set(lengths.values())) != 1:
            raise DataError(f"object-of-lists has columns of different lengths: {lengths}", file=file)
        n = next(iter(lengths.values()))
        return [{k: obj[k][i] for k in obj} for i in range(n)]
    raise DataError("top level must be a JSON array of objects or an object of equal-length lists",
                    file=file)


def iter_json(path: str | Path, issues: Issues | None = None) -> Iterator[RawRecord]:
    """Yield the rows of a JSON array / object-of-lists file; ``line`` is the 1-based row index."""
    path, issues = Path(path), issues or Issues("raise")
    file = str(path)
    try:
        with _open_binary(path) as fh:
            data = fh.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"gzip stream is truncated or corrupt: {exc}", file=file) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError("bytes that are not UTF-8", file=file, line=line) from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"malformed JSON: {exc.msg} at column {exc.colno}", file=file, line=exc.lineno) from None
    for i, row in enumerate(_rows_from_json(obj, file), start=1):
        if not isinstance(row, dict):
            issues.handle(RecordError("not_an_object", f"expected a JSON object, got {type(row).__name__}",
                                      file=file, line=i))
            continue
        yield RawRecord(row, file, i)


def iter_parquet(path: str | Path, batch_size: int = 1024) -> Iterator[RawRecord]:
    """Yield the rows of a parquet file as dicts; ``line`` is the 1-based row index."""
    import pyarrow.parquet as pq

    file, row = str(path), 0
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError for corrupt files
        raise DataError(f"cannot read parquet file: {exc}", file=file) from None
    for batch in pf.iter_batches(batch_size=batch_size):
        for rec in batch.to_pylist():
            row += 1
            yield RawRecord(rec, file, row)


def iter_hf(spec: str) -> Iterator[RawRecord]:
    """Yield rows of ``hf:NAME[:CONFIG]@SPLIT`` via ``datasets.load_dataset`` (imported lazily)."""
    name, config, split = parse_hf_spec(spec)
    import datasets  # heavy and network-bound: only for online users

    ds = datasets.load_dataset(name, config, split=split)
    for i, rec in enumerate(ds, start=1):
        yield RawRecord(dict(rec), spec, i)


def read_records(path: str, fmt: str = "auto", issues: Issues | None = None,
                 max_records: int | None = None) -> Iterator[RawRecord]:
    """Iterate raw records from ``path`` (file or ``hf:`` spec), at most ``max_records`` of them.

    Args:
        path: file path (relative to the working directory) or ``hf:NAME[:CONFIG]@SPLIT``.
        fmt: ``auto`` (from the suffix), ``jsonl``, ``json``, ``parquet`` or ``hf``.
        issues: error policy for line-level problems (malformed JSON, non-UTF-8, non-object).
        max_records: stop after this many records (``None`` = all).
    """
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt != "hf" and not Path(path).is_file():
        raise DataError(f"data file not found: {path} (relative paths resolve against {Path.cwd()})")
    readers = {"jsonl": lambda: iter_jsonl(path, issues), "json": lambda: iter_json(path, issues),
               "parquet": lambda: iter_parquet(path), "hf": lambda: iter_hf(path)}
    if fmt not in readers:
        raise DataError(f"unknown format {fmt!r}; known: {', '.join(readers)}")
    for n, rec in enumerate(readers[fmt](), start=1):
        if max_records is not None and n > max_records:
            return
        yield rec


def infer_kind(rec: dict[str, Any]) -> str:
    """Which schema a built record is: ``pairwise``, ``ranked``, ``group`` or ``prompt``."""
    if "chosen" in rec:
        return "pairwise"
    if "scores" in rec:
        return "ranked"
    if "rewards" in rec:
        return "group"
    return "prompt"


def load_examples(path: str | Path, kind: str | None = None, issues: Issues | None = None,
                  limit: int | None = None, for_training: bool = False) -> list:
    """Load a built ``train.jsonl``/``test.jsonl`` (or any records given straight to ``train`` / ``rm
    train``) through the same checks ``data build`` makes: the generic adapter of the schema validates
    every field (file, line and field in each error; ``issues`` applies the ``on_error`` policy).

    Args:
        path: a ``.jsonl`` / ``.json`` / ``.parquet`` file (e.g. written by :func:`data_pipelines.build.run_build`),
            or TRL standard / conversational preference rows (converted by :mod:`data_pipelines.trl_formats`).
        kind: ``pairwise``/``ranked``/``group``/``prompt``; inferred per record when ``None``.
        issues: error policy and skip counter (default: raise on the first bad record).
        limit: stop after this many valid examples.
        for_training: also drop ranked lists whose scores are all equal (they state no preference: loss
            0), counted under ``no_preference``. Pairs whose chosen and rejected are identical are always
            dropped and counted under ``same_chosen_rejected``, whatever the ``issues`` policy.
    """
    from data_pipelines.adapters import adapt
    from data_pipelines.trl_formats import detect_trl

    issues = issues or Issues("raise")
    # pairs that state no preference (built data can hold some): dropped and counted, never trained on
    issues.always_skip = issues.always_skip | {"same_chosen_rejected"}
    records = list(read_records(str(path), issues=issues))
    source = Path(path).stem
    trl = detect_trl(records[0].data) if records else None
    if trl is not None:  # TRL preference rows: the data build adapter of that format validates them
        if kind not in (None, "pairwise"):
            raise DataError(f"TRL preference rows give pairwise records, but {kind} records are needed",
                            file=str(path))
        stream = adapt(trl, records, issues=issues, source=trl)
    elif kind is None:  # each record's own schema (a file may mix them)
        stream = (ex for rec in records for ex in adapt(infer_kind(rec.data), [rec], issues=issues,
                                                        source=source, keep_record_source=True))
    else:
        stream = adapt(kind, records, issues=issues, source=source, keep_record_source=True)
    out = []
    for ex in stream:
        if for_training and len(set(getattr(ex, "scores", None) or [0, 1])) == 1:
            issues.skipped["no_preference"] += 1  # ties teach nothing (loss 0): dropped and counted
            continue
        out.append(ex)
        if limit is not None and len(out) >= limit:
            break
    return out
