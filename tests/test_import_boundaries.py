"""Import rules (CONTRIBUTING.md): data_pipelines -> reward_models -> prefopt, never back; the maths
modules import with torch alone; device/distributed APIs live only in prefopt/core/backend.py."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# package -> packages it must not import (prefopt.core is allowed everywhere)
FORBIDDEN = {"data_pipelines": ("reward_models", "prefopt"), "reward_models": ("prefopt",)}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_upward_imports(package):
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, mod in _imports(path):
            top = mod.split(".")[0]
            if top in FORBIDDEN[package] and not mod.startswith("prefopt.core"):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {mod}")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_core_imports_only_stdlib_torch_yaml_at_module_level():
    allowed = {"torch", "yaml", "prefopt"}
    bad = []
    for path in sorted((ROOT / "prefopt" / "core").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:  # module level only; imports inside functions are lazy
            mods = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                mods = [node.module]
            for mod in mods:
                top = mod.split(".")[0]
                if top not in allowed and top not in sys.stdlib_module_names and top != "__future__":
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {mod}")
    assert not bad, "\n".join(bad)


def test_loss_modules_import_with_torch_alone():
    """Run in a fresh interpreter where transformers/trl/peft/deepspeed/datasets cannot be imported."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'transformers','trl','peft','deepspeed','datasets','vllm','accelerate'}:\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import prefopt.losses, reward_models.losses\n"
        "from prefopt.core.registry import LOSSES\n"
        "assert 'dpo' in LOSSES\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]


def test_no_device_or_distributed_api_outside_backend():
    needles = ("deepspeed.initialize", "torch.distributed.init", "init_process_group", ".cuda()")
    bad = []
    for pkg in ("prefopt", "reward_models", "data_pipelines"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if path.name == "backend.py" and path.parent.name == "core":
                continue
            text = path.read_text(encoding="utf-8")
            bad += [f"{path.relative_to(ROOT)}: {n}" for n in needles if n in text]
    assert not bad, "\n".join(bad)


BACKEND = ROOT / "prefopt" / "core" / "backend.py"
SOURCE_PACKAGES = ("prefopt", "reward_models", "data_pipelines", "benchmarks")


def _deepspeed_imports(tree: ast.AST) -> list[int]:
    """Lines that import deepspeed: ``import deepspeed[.x]``, ``from deepspeed[.x] import ...`` and
    ``importlib.import_module("deepspeed...")`` / ``__import__("deepspeed...")`` with a literal name."""
    lines = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                names = [node.args[0].value]
        if any(n.split(".")[0] == "deepspeed" for n in names):
            lines.append(node.lineno)
    return lines


def test_deepspeed_scan_finds_every_import_form():
    """The scanner itself: four spellings found at their lines, a mere mention of the word is not."""
    src = ("import deepspeed\nfrom deepspeed.zero import GatheredParameters\n"
           "importlib.import_module('deepspeed.comm')\n__import__('deepspeed')\n"
           "x = 'deepspeed'  # launcher name\nimport deepspeedish\n")
    assert _deepspeed_imports(ast.parse(src)) == [1, 2, 3, 4]


def test_deepspeed_imported_only_in_the_backend_module():
    """verl's tests/special_sanity/check_device_api_usage.py, for our one distributed dependency."""
    bad = []
    for pkg in SOURCE_PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if path == BACKEND:
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            bad += [f"{path.relative_to(ROOT)}:{line}" for line in _deepspeed_imports(tree)]
    assert not bad, "deepspeed imported outside prefopt/core/backend.py:\n" + "\n".join(bad)
    assert _deepspeed_imports(ast.parse(BACKEND.read_text(encoding="utf-8")))  # the scan still sees it


def _module_graph() -> dict[str, set[str]]:
    """Module-level imports between our modules (imports inside functions are lazy and left out).
    ``from pkg import sub`` is an edge to the submodule ``pkg.sub`` only."""
    mods = {}
    for pkg in SOURCE_PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        edges = set()
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                subs = {f"{node.module}.{a.name}" for a in node.names} & set(mods)
                edges |= subs if subs else {node.module}
        graph[name] = {e for e in edges if e in mods and e != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_sees_a_two_module_circle():
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles_between_modules():
    """E.g. data_pipelines.adapters is a package whose adapter modules import its base, never each other."""
    assert _cycles(_module_graph()) == []
