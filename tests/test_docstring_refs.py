"""Docstrings cite a paper + equation or a docs/ page, never sections of a document outside the repo."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PATTERN = re.compile(r"spec §|spec sections?\b|shared/spec/", re.IGNORECASE)


def test_no_references_to_the_internal_spec():
    bad = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
           for pkg in ("prefopt", "reward_models", "data_pipelines") for p in sorted((ROOT / pkg).rglob("*.py"))
           for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if PATTERN.search(line)]
    assert not bad, "cite the paper + equation or a docs/ page instead:\n" + "\n".join(bad)


def test_pattern_catches_the_old_forms():
    assert all(PATTERN.search(s) for s in ("(spec §3)", "(spec section 2)", "spec sections 0-5",
                                           "Spec: ``shared/spec/reward_models.md``"))
    assert not PATTERN.search("AlgorithmSpec(name)")
