"""Every command shown in README.md and docs/*.md is checked: `prefopt ...` lines must route to a
real command and their config files must load and validate; `bash scripts/...` lines must name an
existing script that bash can parse; `python -m MODULE` lines must name an importable module; `prefopt ls`/`validate` lines are actually run."""
from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from prefopt.cli import ARGV_COMMANDS, CONFIG_COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _blocks(text: str) -> list[tuple[str, list[str]]]:
    """(language, lines) of every fenced code block, pairing fences in order."""
    blocks, lang, lines = [], None, []
    for line in text.splitlines():
        if line.startswith("```"):
            if lang is None:
                lang, lines = line[3:].strip(), []
            else:
                blocks.append((lang, lines))
                lang = None
        elif lang is not None:
            lines.append(line)
    return blocks


def _commands() -> list[tuple[str, str]]:
    out = []
    for doc in DOCS:
        for lang, lines in _blocks(doc.read_text(encoding="utf-8")):
            if lang not in ("bash", "sh", "console", ""):
                continue
            for line in lines:
                line = line.split("  #")[0].strip().removeprefix("$ ")
                if line.startswith(("prefopt ", "bash scripts/", "deepspeed ", "python -m ")):
                    out.append((doc.name, line))
    return out


COMMANDS = _commands()


def test_readme_has_exactly_two_setup_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    first_block = _blocks(readme)[0][1]
    lines = [ln.split("#")[0].strip() for ln in first_block if ln.strip()]
    assert lines == ["bash scripts/quickstart.sh", "bash scripts/test.sh"]
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("doc,line", COMMANDS, ids=[f"{d}:{c[:60]}" for d, c in COMMANDS])
def test_documented_command(doc, line, monkeypatch):
    monkeypatch.chdir(ROOT)
    words = shlex.split(line)
    if words[0] == "python":  # python -m MODULE ...: the module must exist in this project or its deps
        import importlib.util

        assert importlib.util.find_spec(words[2]) is not None, f"{doc}: module {words[2]} not found"
        return
    if words[0] == "bash":
        script = ROOT / words[1]
        assert script.is_file(), f"{doc}: {words[1]} does not exist"
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
        return
    if words[0] == "deepspeed":  # deepspeed --num_gpus N $(which prefopt) CMD ...
        words = ["prefopt"] + words[words.index("$(which") + 2:] if "$(which" in words else words
    args = [w for w in words[1:] if not w.startswith("$(")]
    if args[:1] in (["ls"], ["validate"]):
        assert main(args) == 0, f"{doc}: `{line}` failed"
        return
    table = {**{k: v[1] for k, v in CONFIG_COMMANDS.items()}, **ARGV_COMMANDS}
    match = [k for k in table if tuple(args[: len(k)]) == k]
    assert match, f"{doc}: `{line}` is not a prefopt command"
    words_ = max(match, key=len)
    if words_ in CONFIG_COMMANDS:
        cfg, overrides = args[len(words_)], [a for a in args[len(words_) + 1:] if "=" in a]
        assert main(["validate", cfg, *overrides]) == 0, f"{doc}: config of `{line}` does not validate"
