"""Error types shared by every package.

Every user-facing failure raises a subclass of :class:`PrefoptError` whose message names *where*
the problem is (file, line, field) so a user can fix the input without reading a traceback.
"""
from __future__ import annotations


class PrefoptError(Exception):
    """Base class for all errors the platform raises on purpose."""


class ConfigError(PrefoptError):
    """A configuration file or override is invalid (unknown key, wrong type, bad value)."""


class DataError(PrefoptError):
    """A data record is malformed. The message names the file, the 1-based line and the field."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None):
        self.file, self.line, self.field, self.reason = file, line, field, message
        where = []
        if file is not None:
            where.append(str(file))
        if line is not None:
            where.append(f"line {line}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(f"{': '.join([', '.join(where), message]) if where else message}")


class ModelLoadError(PrefoptError):
    """A model, tokenizer or checkpoint could not be loaded (wrong path, missing head, corrupt file)."""


class OutputError(PrefoptError):
    """An output cannot be written (disk full, read-only or unwritable folder); the message names the path."""


class NumericError(PrefoptError):
    """A loss or gradient became NaN/inf during training."""
