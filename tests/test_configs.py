"""Every YAML under configs/ (recursively) loads and validates against its schema."""
from __future__ import annotations

from pathlib import Path

import pytest

from prefopt.core.config import load_config, to_dict

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


def test_there_are_configs():
    assert len(CONFIGS) >= 5


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_config_loads_and_validates(path):
    cfg = load_config(path)
    assert to_dict(cfg)
