"""Error policy for data pipelines: raise on the first bad record, or skip it and count the reason.

Every problem is a :class:`RecordError` (a :class:`prefopt.core.errors.DataError`) carrying a short
``code`` (e.g. ``missing_field``) used as the key of the skip counter, and a message naming the file,
the 1-based line/row and the field.
"""
from __future__ import annotations

from collections import Counter
from typing import Literal

from prefopt.core.errors import DataError

OnError = Literal["raise", "skip"]

# The reason codes used across readers, adapters and builders (documentation + stats keys).
REASONS = {
    "malformed_json": "a line/file is not valid JSON",
    "bad_encoding": "bytes that are not UTF-8",
    "not_an_object": "a top-level JSON value that is not an object",
    "missing_field": "a required field is absent or null",
    "wrong_type": "a field has the wrong type (e.g. a score given as a string)",
    "empty_text": "a text field is empty or whitespace-only",
    "non_finite": "a score/reward/margin is NaN or infinite",
    "same_chosen_rejected": "chosen and rejected are identical",
    "ranked_list_of_one": "a ranked/group record has fewer than two responses",
    "duplicate_id": "an id (or key) already seen in this source",
    "prompt_mismatch": "chosen and rejected transcripts do not share the same prompt turns",
    "bad_transcript": "a dialogue that cannot be split into prompt + final assistant reply",
    "bad_value": "a value outside its allowed range",
    "no_preference": "a ranked list whose scores are all equal (states no preference)",
}


class RecordError(DataError):
    """A bad record. ``code`` is one of :data:`REASONS` and keys the skip counter."""

    def __init__(self, code: str, message: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None):
        super().__init__(message, file=file, line=line, field=field)
        self.code = code


class Issues:
    """Applies the ``on_error`` policy and counts skipped records by reason.

    Args:
        on_error: ``"raise"`` re-raises every :class:`RecordError`; ``"skip"`` counts it and goes on.
    """

    def __init__(self, on_error: OnError = "raise", always_skip: frozenset[str] = frozenset()):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.on_error = on_error
        self.always_skip = always_skip  # reasons counted and dropped whatever the policy
        self.skipped: Counter[str] = Counter()

    def handle(self, err: RecordError) -> None:
        """Raise ``err`` (policy ``raise``) or count it under ``err.code`` (policy ``skip``)."""
        if self.on_error == "raise" and err.code not in self.always_skip:
            raise err
        self.skipped[err.code] += 1

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.skipped.items()))
