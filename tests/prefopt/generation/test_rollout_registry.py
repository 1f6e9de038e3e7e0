"""The online loop's rollout generator comes from the ``rollout_generator`` registry
(:mod:`prefopt.generation.rollout`); the vLLM model source lives there, not in the loop."""
from __future__ import annotations

from pathlib import Path

import pytest

from prefopt.core.errors import ConfigError
from prefopt.core.models import ModelConfig
from prefopt.core.registry import RegistryError
from prefopt.generation.rollout import (
    ROLLOUT_GENERATORS,
    RolloutRequest,
    engine_options,
    make_rollout_generator,
    vllm_model_source,
)
from prefopt.loops.online_config import VLLMConfig


def _request(name: str, tmp_path: Path, **kw) -> RolloutRequest:
    return RolloutRequest(model=None, tokenizer=None, model_cfg=ModelConfig(name=name, **kw),  # type: ignore[arg-type]
                          output_dir=tmp_path)


def test_registry_holds_hf_and_vllm_and_names_them_on_a_typo(tmp_path):
    assert {"hf", "vllm"} <= set(ROLLOUT_GENERATORS.names())
    with pytest.raises(RegistryError, match="hf.*vllm"):
        make_rollout_generator("sglang", _request("tiny-llama", tmp_path))


def test_engine_options_merge_the_section_and_its_kwargs():
    v = VLLMConfig(gpu_memory_utilization=0.3, dtype="float32", kwargs={"enforce_eager": True, "dtype": "bfloat16"})
    assert engine_options(v) == {"gpu_memory_utilization": 0.3, "dtype": "bfloat16", "enforce_eager": True}


def test_hub_name_is_passed_on_with_its_revision(tmp_path):
    source, kwargs = vllm_model_source(_request("org/some-model", tmp_path, revision="abc123"))
    assert (source, kwargs) == ("org/some-model", {"revision": "abc123"})


def test_zero3_is_refused_before_an_engine_starts(tmp_path):
    from dataclasses import replace

    with pytest.raises(ConfigError, match="ZeRO-3"):
        make_rollout_generator("vllm", replace(_request("org/some-model", tmp_path), zero_stage=3))
