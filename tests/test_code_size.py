"""Size gates (CONTRIBUTING.md): every source file under 400 lines, every function under 60 lines."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("prefopt", "reward_models", "data_pipelines", "benchmarks")
MAX_FILE_LINES = 400  # a file must have fewer lines than this
MAX_FUNCTION_LINES = 60  # a function (def line to last line, docstring included) must have fewer


def _sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int, int]]:
    """``(name, first line, length)`` of every function or method of ``limit`` lines or more."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length >= limit:
                out.append((node.name, node.lineno, length))
    return out


def test_function_measure_counts_def_to_last_line():
    """A 3-line body under a def is 4 lines; nested functions are measured on their own."""
    src = "def f():\n    x = 1\n    def g():\n        return x\n    return g\n"
    assert long_functions(src, limit=5) == [("f", 1, 5)]
    assert long_functions(src, limit=2) == [("f", 1, 5), ("g", 3, 2)]
    assert long_functions(src, limit=6) == []


def test_the_gate_sees_the_packages():
    files = _sources()
    assert len(files) > 100 and any(p.name == "backend.py" for p in files)


def test_files_are_under_400_lines():
    bad = []
    for path in _sources():
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n >= MAX_FILE_LINES:
            bad.append(f"{path.relative_to(ROOT)}: {n} lines")
    assert not bad, f"files of {MAX_FILE_LINES}+ lines (split them by topic):\n" + "\n".join(bad)


def test_functions_are_under_60_lines():
    bad = []
    for path in _sources():
        for name, line, length in long_functions(path.read_text(encoding="utf-8")):
            bad.append(f"{path.relative_to(ROOT)}:{line} {name}() is {length} lines")
    assert not bad, f"functions of {MAX_FUNCTION_LINES}+ lines (extract named steps):\n" + "\n".join(bad)
