"""The registries are the dispatch: trainers, loops and the scorer factory never branch on a kind or
algorithm name (``if kind == "gpm"``); they ask the registered spec (``get_kind(kind).pairwise``)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCANNED = [*sorted((ROOT / "reward_models").glob("*.py")), *sorted((ROOT / "prefopt" / "loops").rglob("*.py")),
           ROOT / "prefopt" / "eval" / "scorers.py", ROOT / "prefopt" / "eval" / "alpacaeval.py",
           ROOT / "prefopt" / "eval" / "judges" / "base.py", ROOT / "prefopt" / "rewards" / "sources.py",
           ROOT / "prefopt" / "export.py", ROOT / "prefopt" / "train.py", ROOT / "prefopt" / "eval" / "bon.py",
           ROOT / "prefopt" / "eval" / "rewardbench_v2_scorers.py"]
NAMES = {"kind", "algorithm", "driver", "name", "advantage"}  # what a registry key is called in this code base
# (file, literal): comparisons that are not dispatch.
ALLOWED = {
    ("prefopt/eval/scorers.py", "auto"),  # --kind auto: read the kind from the checkpoint first
    ("reward_models/ensemble.py", "shared_backbone"),  # a file-format tag in ensemble.json, not a kind
}


def _key_name(node: ast.AST) -> str | None:
    """``kind`` for ``kind``, ``cfg.rm.kind``, ``spec.driver``, ``meta.get("kind")``; else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
            and node.args and isinstance(node.args[0], ast.Constant)):
        return str(node.args[0].value)
    return None


def _literals(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    return []


def name_branches(source: str) -> list[tuple[int, str, str]]:
    """``(line, key name, literal)`` of every ``key ==/!=/in/not in "literal"`` comparison."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        sides = [node.left, *node.comparators]
        for a, b in zip(sides, sides[1:], strict=False):
            for key_side, lit_side in ((a, b), (b, a)):
                key = _key_name(key_side)
                if key in NAMES:
                    out += [(node.lineno, key, lit) for lit in _literals(lit_side)]
    return out


def test_scanner_finds_the_branch_shapes():
    src = ('if kind == "gpm": pass\nif cfg.rm.kind != "polar": pass\nif spec.driver in ("egpo", "x"): pass\n'
           'if "bt" == meta.get("kind"): pass\nif spec.pairwise: pass\nif mode == "skip": pass\n')
    assert name_branches(src) == [(1, "kind", "gpm"), (2, "kind", "polar"), (3, "driver", "egpo"),
                                  (3, "driver", "x"), (4, "kind", "bt")]


def test_no_kind_or_algorithm_name_branches_in_trainers_loops_and_scorer_factory():
    bad = []
    for path in SCANNED:
        rel = path.relative_to(ROOT).as_posix()
        for line, key, lit in name_branches(path.read_text(encoding="utf-8")):
            if (rel, lit) not in ALLOWED:
                bad.append(f"{rel}:{line}: {key} vs {lit!r}")
    assert not bad, ("string dispatch found; give the registered spec a trait instead "
                     "(reward_models/kinds.py, prefopt/algorithms.py):\n" + "\n".join(bad))


# --------------------------------------------------------------------------- offline loop and step
GENERIC_OFFLINE = ("prefopt/loops/offline.py", "prefopt/loops/offline_step.py")
# Method words that are not registry names but name an extra (hooks in prefopt/loops/hooks/).
EXTRA_WORDS = ("curry", "tr-dpo", "trdpo", "sparse", "lcpo")
# The listwise (ranked-schema) step still computes IRPO's margins itself (its only listwise loss).
OFFLINE_ALLOWED = {("prefopt/loops/offline_step.py", "irpo"), ("prefopt/loops/offline.py", "irpo")}


def method_words(source: str, words: list[str]) -> list[tuple[int, str]]:
    """``(line, word)`` for every whole-word, case-insensitive occurrence (``_`` joins words) in code,
    strings, comments and docstrings alike."""
    import re

    out = []
    for i, line in enumerate(source.splitlines(), 1):
        for w in words:
            if re.search(rf"(?<![A-Za-z0-9_]){re.escape(w)}(?![A-Za-z0-9_])", line, re.IGNORECASE):
                out.append((i, w))
    return out


def test_method_word_scanner():
    src = 'x = 1\n"""Curry-DPO stages"""\nif ctx.lcpo_state: pass\nuse_sparse = 1\n# dpo and lcpo here\n'
    assert method_words(src, ["dpo", "lcpo", "curry", "sparse"]) == [(2, "dpo"), (2, "curry"), (5, "dpo"),
                                                                    (5, "lcpo")]


def test_offline_loop_and_step_name_no_algorithm():
    """Algorithm extras are hook objects (prefopt/loops/hooks/): the generic loop and step never name an
    algorithm or a method's extra, not even in a comment."""
    import prefopt.algorithms  # noqa: F401  (registration)
    from prefopt.core.registry import ALGORITHMS

    words = [*ALGORITHMS.names(), *EXTRA_WORDS]
    assert {"lcpo", "sparsepo", "curry_dpo", "dpo"} <= set(words)
    bad = [f"{rel}:{line}: {w}" for rel in GENERIC_OFFLINE
           for line, w in method_words((ROOT / rel).read_text(encoding="utf-8"), words)
           if (rel, w) not in OFFLINE_ALLOWED]
    assert not bad, "move the method's part into a hook (prefopt/loops/hooks/, CONTRIBUTING.md):\n" + "\n".join(bad)
