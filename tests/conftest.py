"""Shared fixtures. Real data is read from ../shared/data beside the repository (never copied in)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PREFOPT_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder holding hh-rlhf, helpsteer-sample, stack-exchange..., reward-bench, alpaca-eval."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared data folder not found at {SHARED_DATA}; set PREFOPT_SHARED_DATA")
    return SHARED_DATA
