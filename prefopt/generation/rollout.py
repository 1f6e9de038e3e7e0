"""Generators on a training policy: what ``online.generator`` names, chosen through a registry.

``ROLLOUT_GENERATORS`` maps ``online.generator`` to a builder ``(RolloutRequest) -> Generator``:

* ``hf``: :class:`~prefopt.generation.hf.HFGenerator` on the live policy (nothing to sync).
* ``vllm``: an in-process vLLM engine (:class:`~prefopt.generation.vllm_backend.VLLMGenerator`, imported
  only when built) started on the policy's initial weights (:func:`vllm_model_source`); the online loop
  pushes the current weights in after every update (:func:`prefopt.generation.sync.sync_generator`).

Adding a rollout backend is one builder registered here; the loop never names a backend.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from prefopt.core.errors import ConfigError
from prefopt.core.registry import registry
from prefopt.generation.base import Generator

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from prefopt.core.models import ModelConfig

__all__ = ["ROLLOUT_GENERATORS", "RolloutRequest", "engine_options", "make_rollout_generator", "vllm_model_source"]

ROLLOUT_GENERATORS = registry("rollout_generator")


@dataclass(frozen=True)
class RolloutRequest:
    """What a rollout-generator builder gets from the online loop.

    Attributes:
        model: the live (unwrapped) policy; ``tokenizer``: its tokenizer.
        model_cfg: the run's ``model:`` section (where the initial weights come from).
        output_dir: the run folder (an engine that needs the initial weights on disk writes them here).
        seed: the run seed; ``rank`` / ``world_size`` / ``zero_stage``: the training backend's layout.
        batch_size / max_prompt_length: ``online.generation_batch_size`` / ``online.max_prompt_length``.
        engine_options: keyword arguments of an engine with its own weights (``online.vllm``: its
            settings and, merged in, its ``kwargs``).
        hf_options: the HF generator's decode options (``online.hf``: kv_cache, decode, drop_finished,
            compile; :class:`prefopt.generation.hf.HFGenerator`).
    """

    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    model_cfg: ModelConfig
    output_dir: Path
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    zero_stage: int = 0
    batch_size: int = 64
    max_prompt_length: int | None = None
    engine_options: dict[str, Any] = field(default_factory=dict)
    hf_options: dict[str, Any] = field(default_factory=dict)


def engine_options(section: Any) -> dict[str, Any]:
    """An engine section (``online.vllm``: a dataclass) as keyword arguments: its fields, with its
    ``kwargs`` mapping merged in (``kwargs`` wins)."""
    import dataclasses

    opts = {f.name: getattr(section, f.name) for f in dataclasses.fields(section) if f.name != "kwargs"}
    return {**opts, **dict(getattr(section, "kwargs", {}))}


def make_rollout_generator(name: str, request: RolloutRequest) -> Generator:
    """The registered rollout generator ``name`` (``online.generator``) built for ``request``."""
    builder: Callable[[RolloutRequest], Generator] = ROLLOUT_GENERATORS.get(name)
    return builder(request)


def _hf(req: RolloutRequest) -> Generator:
    from prefopt.generation import make_generator

    return make_generator("hf", model=req.model, tokenizer=req.tokenizer, batch_size=req.batch_size,
                          max_prompt_length=req.max_prompt_length, **req.hf_options)


def vllm_model_source(req: RolloutRequest) -> tuple[str, dict[str, Any]]:
    """What the vLLM engine loads first (the policy's initial weights): ``(name or directory, kwargs)``.

    The embedded model -> its converted cache folder; a local model folder -> itself; a hub name -> the
    name (revision / trust_remote_code passed on); anything else (tiny-* models) -> the initial policy
    saved to ``<run_dir>/vllm_init`` (LoRA merged, i.e. the base weights).
    """
    from prefopt.core.models import EMBEDDED_NAME, TINY_CONFIGS, prepare_embedded_model
    from prefopt.generation.sync import policy_state_for_inference, unwrap_model

    mc = req.model_cfg
    name = mc.name
    kwargs: dict[str, Any] = {"trust_remote_code": True} if mc.trust_remote_code else {}
    if name == EMBEDDED_NAME:
        return str(prepare_embedded_model()), kwargs
    path = Path(name).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return str(path), kwargs
    if name not in TINY_CONFIGS and not path.exists():
        return name, {**kwargs, **({"revision": mc.revision} if mc.revision else {})}
    out = Path(req.output_dir) / ("vllm_init" if req.world_size == 1 else f"vllm_init-rank{req.rank}")
    inner = unwrap_model(req.model)
    base = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    state = {k: v.detach().cpu().contiguous() for k, v in policy_state_for_inference(inner).items()}
    base.save_pretrained(str(out), state_dict=state, safe_serialization=True)
    req.tokenizer.save_pretrained(str(out))
    return str(out), kwargs


def _vllm(req: RolloutRequest) -> Generator:
    """An in-process engine on the initial weights (``vllm`` imported only here)."""
    from prefopt.generation import make_generator

    if req.zero_stage == 3:
        raise ConfigError("online.generator=vllm syncs full weights from every process; it does not support "
                          "ZeRO-3 (partitioned parameters): use backend.zero_stage 2 or generator hf")
    source, extra = vllm_model_source(req)
    return make_generator("vllm", model=source, seed=req.seed, **{**extra, **req.engine_options})


for _name, _builder in (("hf", _hf), ("vllm", _vllm)):
    if _name not in ROLLOUT_GENERATORS:
        ROLLOUT_GENERATORS.register(_name, _builder)
