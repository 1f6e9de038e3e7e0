"""Every registered loss / group loss / advantage estimator must have a golden-value test.

Convention (for everyone adding to these registries)
----------------------------------------------------
For a registry entry ``<name>`` in a registry whose ``kind`` is ``<kind>``, some file
``tests/**/test_*.py`` must define a top-level test function named::

    test_golden_<kind>__<name>        (double underscore between kind and name)

with the hand-derived numbers in its docstring (the explicit form; preferred). The short form
``test_golden_<name>`` (no kind, no double underscore) is also accepted and counts for ``<name>`` in
every registry that holds it (e.g. ``test_golden_grpo`` covers both ``GROUP_LOSSES['grpo']`` and
``ADVANTAGES['grpo']``), so use the explicit form when a name lives in several registries. Kinds: ``loss`` (``LOSSES``, e.g.
``test_golden_loss__dpo``), ``group_loss`` (``GROUP_LOSSES``, e.g. ``test_golden_group_loss__grpo``),
``advantage`` (``ADVANTAGES``, e.g. ``test_golden_advantage__gae``). Characters in a name that are not
valid in a Python identifier (``-``, ``.``, ``/``, spaces) are written as ``_``. Functions inside
classes count too (``class TestX: def test_golden_loss__dpo(self)``).

The check is two-sided: a registered name without a golden test fails, and an explicit-form golden
test for a name that is not registered (a typo or a removed loss) fails too (short-form names are
not checked that way, since other registries, e.g. reward-model losses, may use the same prefix). Registries that are empty at the time
the test runs are skipped name-by-name (nothing to check), so entries added later are picked up
automatically.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import prefopt.losses  # noqa: F401  (registers LOSSES, GROUP_LOSSES, ADVANTAGES)
from prefopt.core.registry import ADVANTAGES, GROUP_LOSSES, LOSSES, Registry

TESTS = Path(__file__).resolve().parent
REGISTRIES: dict[str, Registry] = {"loss": LOSSES, "group_loss": GROUP_LOSSES, "advantage": ADVANTAGES}
PATTERN = re.compile(r"^test_golden_(?P<kind>[a-z_]+?)__(?P<name>\w+)$")
SHORT = re.compile(r"^test_golden_(?P<name>(?!\w*__)\w+)$")


def _ident(name: str) -> str:
    return re.sub(r"\W", "_", name)


def golden_tests() -> tuple[dict[str, dict[str, list[str]]], dict[str, list[str]]]:
    """Explicit form ``{kind: {name_ident: [file::function]}}`` and short form ``{name: [file::function]}``."""
    found: dict[str, dict[str, list[str]]] = {k: {} for k in REGISTRIES}
    short: dict[str, list[str]] = {}
    for path in sorted(TESTS.rglob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            where = f"{path.relative_to(TESTS)}::{node.name}"
            m = PATTERN.match(node.name)
            if m is None:
                s = SHORT.match(node.name)
                if s is not None:
                    short.setdefault(s["name"], []).append(where)
                continue
            kind = m["kind"]
            if kind not in found:
                pytest.fail(f"{path.relative_to(TESTS)}::{node.name}: unknown registry kind '{kind}' "
                            f"(use one of {sorted(REGISTRIES)})")
            found[kind].setdefault(m["name"], []).append(where)
    return found, short


def test_convention_parser_recognises_names():
    assert PATTERN.match("test_golden_loss__sigmoid_norm").groupdict() == {"kind": "loss", "name": "sigmoid_norm"}
    assert PATTERN.match("test_golden_group_loss__grpo").groupdict() == {"kind": "group_loss", "name": "grpo"}
    assert PATTERN.match("test_golden_dpo") is None
    assert SHORT.match("test_golden_dr_grpo")["name"] == "dr_grpo"
    assert SHORT.match("test_golden_loss__dpo") is None


@pytest.mark.parametrize("kind", sorted(REGISTRIES))
def test_every_registered_name_has_a_golden_test(kind):
    explicit, short = golden_tests()
    registered = {_ident(n) for n in REGISTRIES[kind].names()}
    covered = set(explicit[kind])
    missing = sorted(registered - covered - set(short))
    stale = sorted(covered - registered)
    assert not missing, (f"{kind} entries without a golden test (add test_golden_{kind}__<name>): "
                         f"{missing}")
    assert not stale, f"golden tests for unregistered {kind} names: " + str(
        {n: explicit[kind][n] for n in stale})


def test_offline_losses_present():
    """Guard against the registry silently shrinking (an import failing and being swallowed)."""
    expected = {"dpo", "sigmoid", "cdpo", "robust", "hinge", "ipo", "sigmoid_norm", "simpo", "cpo", "orpo",
                "kto", "sft", "sparsepo", "lcpo", "irpo"}
    assert expected <= set(LOSSES.names())
