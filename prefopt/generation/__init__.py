"""Text generation for evaluation and online RL: one :class:`Generator` protocol, pluggable backends.

Backends are registered in the ``generator`` registry (``prefopt ls generators``):

* ``hf`` (default): :class:`prefopt.generation.hf.HFGenerator`, transformers ``generate``.
* ``vllm``: :class:`prefopt.generation.vllm_backend.VLLMGenerator`, imported only when selected
  (a machine without vLLM gets a clear :class:`~prefopt.core.errors.ConfigError`).

The online loop builds its rollout generator on the training policy through the ``rollout_generator``
registry (:mod:`prefopt.generation.rollout`, ``online.generator``).

Usage::

    gen = make_generator("hf", model=model, tokenizer=tok, batch_size=8)
    outs = gen.generate([[{"role": "user", "content": "Hi"}]], SamplingParams(temperature=0.7, n=4))
"""
from __future__ import annotations

from typing import Any

from prefopt.core.registry import registry
from prefopt.generation.base import Completion, Generator, Prompt, SamplingParams, cut_at_stop

GENERATORS = registry("generator")

__all__ = ["GENERATORS", "Completion", "Generator", "Prompt", "SamplingParams", "cut_at_stop", "make_generator"]


def _hf(**kwargs: Any) -> Generator:
    from prefopt.generation.hf import HFGenerator

    if "model" in kwargs and isinstance(kwargs["model"], str):  # a name/path: load it
        return HFGenerator.from_pretrained(kwargs.pop("model"), **kwargs)
    return HFGenerator(**kwargs)


def _vllm(**kwargs: Any) -> Generator:
    from prefopt.generation.vllm_backend import VLLMGenerator  # raises ConfigError without vllm

    return VLLMGenerator(**kwargs)


for _name, _factory in (("hf", _hf), ("vllm", _vllm)):
    if _name not in GENERATORS:
        GENERATORS.register(_name, _factory)


def make_generator(backend: str = "hf", **kwargs: Any) -> Generator:
    """Build a generator by backend name; ``kwargs`` go to the backend's constructor.

    ``hf``: ``model`` (a loaded model, or a name/path loaded with ``load_causal_lm``), ``tokenizer``,
    ``batch_size``, ``dtype`` (with a name). ``vllm``: ``model`` (name/path), ``lora_path``, ...
    """
    return GENERATORS.get(backend)(**kwargs)

from prefopt.generation import rollout as _rollout  # noqa: E402,F401  (fills ROLLOUT_GENERATORS for `prefopt ls`)
