"""The default batch layout (``auto``): shared_prompt wherever it is exact, else padded with one line.

* every offline pairwise loss resolves to ``shared_prompt`` and gives the padded loss there (1e-5);
  SparsePO (full-logit KL) and the listwise losses resolve to ``padded`` and say why;
* online rounds resolve to ``shared_prompt``; flash_attention_2 and sliding-window models fall back
  to ``padded`` (reward models: ``tests/reward_models/test_layouts.py``);
* an explicit layout is never changed and never logged.
"""
from __future__ import annotations

import copy

import pytest
import torch

from prefopt.algorithms import get_algorithm
from prefopt.configs import TrainConfig
from prefopt.core.config import from_dict
from prefopt.core.models import make_tiny_model
from prefopt.core.registry import ALGORITHMS
from prefopt.loops.layouts import offline_layout, online_layout
from reward_models.layouts import resolve_auto_layout, shared_prompt_blockers

OFFLINE = sorted(n for n in ALGORITHMS.names() if get_algorithm(n).loop == "offline")


def _cfg(tmp_path, algorithm: str = "dpo", **extra) -> TrainConfig:
    return from_dict(TrainConfig, {"algorithm": algorithm, "model": {"name": "tiny-llama"},
                                   "run": {"output_dir": str(tmp_path)}, **extra})


def _items(n: int = 3) -> list:
    from data_pipelines.tokenize import TokenizedPair
    from prefopt.loops.offline_data import Item

    g = torch.Generator().manual_seed(0)
    ids = lambda k: tuple(int(t) for t in torch.randint(3, 1000, (k,), generator=g))  # noqa: E731
    return [Item(TokenizedPair(ids(4 + 3 * i), ids(3 + i) + (2,), ids(5 - i) + (2,), margin=0.5), i)
            for i in range(n)]


class _Backend:
    device = torch.device("cpu")


def test_defaults_are_auto(tmp_path):
    from prefopt.loops.online import online_config
    from reward_models.config import RMDataConfig

    cfg = _cfg(tmp_path, "grpo")
    assert cfg.data.layout == "auto" and online_config(cfg).layout == "auto" and RMDataConfig().layout == "auto"


@pytest.mark.parametrize("name", OFFLINE)
def test_offline_default_resolves_and_is_exact(name, tmp_path, capfd):
    from prefopt.loops.offline import _build_context
    from prefopt.loops.offline_step import pairwise_loss

    spec = get_algorithm(name)
    cfg = _cfg(tmp_path, name)
    model = make_tiny_model("tiny-llama", seed=0)
    tok = type("Tok", (), {"pad_token_id": 2})()
    ctx = _build_context(cfg, spec, model, tok, _Backend())
    err = capfd.readouterr().err
    exact = spec.schema == "pairwise" and "token_kl" not in spec.extras
    assert ctx.layout == ("shared_prompt" if exact else "padded"), name
    assert ("layout auto -> padded" in err) == (not exact) and err.count("\n") == (0 if exact else 1)
    if not exact:
        assert name in err and ("per-token KL" in err or "listwise" in err)
        return
    padded = _build_context(from_dict(TrainConfig, {**_plain(cfg), "data": {"layout": "padded"}}), spec,
                            model, tok, _Backend())
    assert padded.layout == "padded" and capfd.readouterr().err == ""  # explicit: unchanged, silent
    with torch.no_grad():  # policy != reference, so the loss is not at its symmetric point
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    items = _items()
    losses = [pairwise_loss(c, model, items).loss.detach() for c in (ctx, padded)]
    assert torch.allclose(losses[0], losses[1], atol=1e-5, rtol=0), (name, losses)


def _plain(cfg: TrainConfig) -> dict:
    return {"algorithm": cfg.algorithm, "model": {"name": "tiny-llama"}, "run": {"output_dir": cfg.run.output_dir}}


def test_offline_flash_attention_falls_back(tmp_path, capfd):
    cfg = _cfg(tmp_path, "dpo", model={"name": "tiny-llama", "attn_implementation": "flash_attention_2"})
    assert offline_layout(cfg, get_algorithm("dpo"), make_tiny_model("tiny-llama")) == "padded"
    assert "flash_attention_2 cannot take the 4-D block mask" in capfd.readouterr().err


def test_online_default_resolves(tmp_path, capfd):
    cfg = _cfg(tmp_path, "grpo")
    model = make_tiny_model("tiny-llama")
    assert online_layout(cfg, "auto", model) == "shared_prompt"
    assert online_layout(cfg, "padded", model) == "padded" and capfd.readouterr().err == ""
    slid = copy.deepcopy(model)
    slid.config.sliding_window, slid.config.layer_types = 8, ["sliding_attention", "full_attention"]
    assert online_layout(cfg, "auto", slid) == "padded"
    err = capfd.readouterr().err
    assert "online grpo: layout auto -> padded" in err and "sliding-window attention (8 tokens)" in err


def test_sliding_window_needs_sliding_layers():
    model = make_tiny_model("tiny-llama")
    model.config.sliding_window, model.config.layer_types = 4096, ["full_attention"] * 2
    assert shared_prompt_blockers(model) == []  # a window on no layer (Qwen2 style) is no obstacle
    assert resolve_auto_layout("packed", ["anything"], "x") == "packed"

