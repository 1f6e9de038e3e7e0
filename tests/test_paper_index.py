"""docs/paper_index.md lists every registered algorithm with its paper and is generated from the
registry (`python tests/test_paper_index.py` rewrites it), so the two cannot drift."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INDEX = ROOT / "docs" / "paper_index.md"


def render() -> str:
    import prefopt.algorithms  # noqa: F401  (registration)
    from prefopt.core.registry import ALGORITHMS

    lines = ["# Paper index", "", "Generated from the algorithm registry by `python tests/test_paper_index.py`.", "",
             "| algorithm | loop | loss | paper | page |", "|---|---|---|---|---|"]
    for name in ALGORITHMS.names():
        spec = ALGORITHMS.get(name)
        page = ROOT / "docs" / "methods" / f"{name}.md"
        link = f"[{name}](methods/{name}.md)" if page.exists() else ("[online](online.md)" if spec.loop == "online" else "")
        lines.append(f"| `{name}` | {spec.loop} | `{spec.loss}` | {spec.paper} | {link} |")
    return "\n".join(lines) + "\n"


def test_paper_index_is_current():
    assert INDEX.read_text(encoding="utf-8") == render(), "run: python tests/test_paper_index.py"


def test_every_offline_algorithm_has_a_method_page():
    import prefopt.algorithms  # noqa: F401
    from prefopt.core.registry import ALGORITHMS

    missing = [n for n in ALGORITHMS.names() if ALGORITHMS.get(n).loop == "offline"
               and not (ROOT / "docs" / "methods" / f"{n}.md").exists()]
    assert not missing


if __name__ == "__main__":
    INDEX.write_text(render(), encoding="utf-8")
