"""Safe-loading rules, checked over the shipped code: safetensors for weights, torch.load only with
weights_only=True, yaml.safe_load only, trust_remote_code off unless the user sets it, no shell
commands built from strings, no pickle."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = [p for pkg in ("prefopt", "reward_models", "data_pipelines", "benchmarks")
         for p in sorted((ROOT / pkg).rglob("*.py"))]


def _calls(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def test_torch_load_always_weights_only():
    bad = []
    for path in FILES:
        for node, name in _calls(path):
            if name.endswith("torch.load"):
                kw = {k.arg: k.value for k in node.keywords}
                if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not bad, "torch.load without weights_only=True:\n" + "\n".join(bad)


def test_no_unsafe_yaml_pickle_or_shell():
    bad = []
    for path in FILES:
        text = path.read_text(encoding="utf-8")
        for node, name in _calls(path):
            if name in ("yaml.load", "yaml.unsafe_load", "pickle.load", "pickle.loads", "eval", "exec",
                        "os.system"):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} calls {name}")
            if any(k.arg == "shell" and isinstance(k.value, ast.Constant) and k.value.value for k in node.keywords):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} uses shell=True")
        if re.search(r"^import pickle|^from pickle", text, re.M):
            bad.append(f"{path.relative_to(ROOT)} imports pickle")
    assert not bad, "\n".join(bad)


def test_trust_remote_code_never_defaults_on():
    bad = []
    for path in FILES:
        for node, _name in _calls(path):
            for k in node.keywords:
                if k.arg == "trust_remote_code" and isinstance(k.value, ast.Constant) and k.value.value is True:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):  # defaults of functions and dataclass fields
            if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "trust_remote_code":
                if isinstance(node.value, ast.Constant) and node.value.value is True:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno} field default")
    assert not bad, "trust_remote_code=True in shipped code:\n" + "\n".join(bad)


def test_model_weights_written_as_safetensors():
    bad = []
    for path in FILES:
        for node, name in _calls(path):
            if name.endswith("save_pretrained"):
                kw = {k.arg: k.value for k in node.keywords}
                v = kw.get("safe_serialization")
                if isinstance(v, ast.Constant) and v.value is False:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not bad, "\n".join(bad)
