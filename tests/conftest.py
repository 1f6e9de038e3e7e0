"""Shared fixtures. Real data is read from ../shared/data beside the repository (never copied in)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if os.environ.get("PYTEST_XDIST_WORKER"):  # scripts/test.sh runs 2 workers on 2 cores: 1 thread each
    import torch

    torch.set_num_threads(1)


def pytest_collection_modifyitems(items):
    """Under pytest-xdist (--dist loadgroup) the multi-process DeepSpeed tests run one at a time on one
    worker: they launch 2 processes each and use fixed master ports."""
    for item in items:
        if item.get_closest_marker("distributed"):
            item.add_marker(pytest.mark.xdist_group("distributed"))
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


# --- tiny models (prefopt.core.models). Only the SmolLM2 tokenizer is needed: it is extracted from the
# --- embedded GGUF once into $PREFOPT_CACHE (~10 s on a fresh machine), never the full model conversion.
@pytest.fixture(scope="session")
def tiny_tokenizer():
    """The real SmolLM2 tokenizer (vocab 49152, pad = eos = <|im_end|>, SmolLM2 chat template)."""
    from prefopt.core.models import load_tokenizer

    return load_tokenizer("tiny-llama")


@pytest.fixture
def tiny_model():
    """A fresh 2-layer, 64-wide random Llama (seed 0, float32, eval mode) using the SmolLM2 vocabulary."""
    from prefopt.core.models import make_tiny_model

    return make_tiny_model("tiny-llama", seed=0)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A saved tiny-llama (seed 0) + tokenizer directory, loadable with ``load_causal_lm(path)``."""
    from prefopt.core.models import make_tiny_model

    out = tmp_path_factory.mktemp("tiny_llama")
    make_tiny_model("tiny-llama", seed=0).save_pretrained(out, safe_serialization=True)
    tiny_tokenizer.save_pretrained(out)
    return out


@pytest.fixture
def one_thread():
    """Tiny models run faster on one torch thread (and much faster on cores shared with other jobs)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
