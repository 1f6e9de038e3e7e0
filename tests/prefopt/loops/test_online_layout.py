"""online.layout=shared_prompt: rollouts regrouped by prompt give the padded rows' log-probs, and a
GRPO / P3O run logs the same losses as the padded run (the update is the same computation)."""
from __future__ import annotations

import math

import pytest
import torch
from online_helpers import make_cfg

from prefopt.core.logging import read_metrics
from prefopt.core.models import make_tiny_model
from prefopt.logprobs import forward_token_logps
from prefopt.loops.online_algos import make_batch

PROMPTS = [[1, 5, 6, 7], [1, 5, 6, 7], [1, 9, 10], [1, 5, 6, 7], [1, 9, 10]]
COMPS = [[11, 12, 13], [14], [15, 16], [17, 18, 19, 20], [21]]


def test_regrouped_rows_match_padded_rows_and_keep_row_order():
    """Rows 0, 1, 3 share a prompt, rows 2, 4 another (3 + 2 rows -> 2 shared rows); row 1 is dropped
    (its completion_mask stays 0). Log-probs come back in the input row order, equal to padded."""
    batch = make_batch(PROMPTS, COMPS, pad_id=0, drop=[False, True, False, False, False])
    shared = batch.for_forward("shared_prompt", pad_id=0)
    assert shared.input_ids.shape[0] == 2
    assert torch.equal(shared.padded_completion_mask, batch.completion_mask)
    assert batch.for_forward("padded", 0) is batch
    model = make_tiny_model(seed=0)
    with torch.no_grad():
        a = forward_token_logps(model, batch, with_entropy=True)
        b = forward_token_logps(model, shared, with_entropy=True)
    assert torch.allclose(a.token_logps, b.token_logps, atol=1e-5, rtol=0)
    assert torch.allclose(a.entropy, b.entropy, atol=1e-5, rtol=0)
    assert torch.all(a.token_logps[batch.completion_mask.bool()] < 0)
    sub = batch.select(torch.tensor([3, 2]))  # a minibatch keeps its prompt lengths
    assert sub.prompt_lengths.tolist() == [4, 3]
    with torch.no_grad():
        c = forward_token_logps(model, sub.for_forward("shared_prompt", 0))
    assert torch.allclose(c.token_logps, a.token_logps[[3, 2], :c.token_logps.shape[1]], atol=1e-5)


def _losses(run_dir):
    return [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]


@pytest.mark.slow
@pytest.mark.parametrize("algo,loss,online", [
    ("grpo", {"beta": 0.04}, {"num_iterations": 2}),
    ("p3o", {}, {"num_generations": 2, "prompts_per_round": 4}),
])
def test_online_run_same_losses_in_shared_prompt_layout(eos_model_dir, tmp_path, monkeypatch, algo, loss, online):
    import data_pipelines.collate as collate
    from prefopt.loops.online import run_online

    calls = []
    real = collate.shared_prompt_from_rows
    monkeypatch.setattr(collate, "shared_prompt_from_rows", lambda *a, **k: calls.append(1) or real(*a, **k))
    losses = {}
    for layout in ("padded", "shared_prompt"):
        out = tmp_path / layout
        run_online(make_cfg(eos_model_dir, out, algo, loss, layout=layout, **online))
        losses[layout] = _losses(out)
    assert len(losses["padded"]) >= 2 and all(math.isfinite(x) for x in losses["padded"])
    assert calls  # the shared-prompt run really regrouped its rollouts
    assert losses["shared_prompt"] == pytest.approx(losses["padded"], abs=1e-5)


@pytest.mark.parametrize("where", ["data", "online"])
def test_shared_prompt_with_flash_attention_is_refused(tmp_path, where):
    from prefopt.configs import TrainConfig
    from prefopt.core.config import from_dict

    cfg = {"algorithm": "grpo" if where == "online" else "dpo", "model": {"name": "tiny-llama",
           "attn_implementation": "flash_attention_2"}, "run": {"output_dir": str(tmp_path)}}
    if where == "online":
        cfg["online"] = {"layout": "shared_prompt"}
    else:
        cfg["data"] = {"layout": "shared_prompt"}
    with pytest.raises(Exception, match="flash_attention_2"):
        from_dict(TrainConfig, cfg)
