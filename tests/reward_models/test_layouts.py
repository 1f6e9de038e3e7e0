"""RM layouts (reward_models.layouts): packed and shared-prompt rows give the padded rows' rewards,
GPM embeddings/gates, losses and gradients (1e-5), and the trainer runs in each layout."""
from __future__ import annotations

import copy

import pytest
import torch

from reward_models.data import RMItem, collate_rm
from reward_models.ensemble import SharedBackboneEnsemble
from reward_models.layouts import build_rows
from reward_models.losses import bt_loss
from reward_models.models import RewardModel
from tests.reward_models.conftest import make_config
from tests.reward_models.test_reward_model import PAD, tiny_lm

# Two pairs with multi-token prompts and one ranked list (K = 3) with a shared prompt.
PAIRS = [RMItem(((5, 6, 7, 8, 9), (5, 6, 7, 10)), (3, 3)), RMItem(((11, 12, 13), (11, 12, 14, 15, 16, 17)), (2, 2))]
RANKED = [RMItem(((20, 21, 22, 23), (20, 21, 24), (20, 21, 25, 26, 27)), (2, 2, 2), (3.0, 2.0, 1.0)),
          RMItem(((30, 31, 32), (30, 33)), (1, 1), (1.0, 0.0))]


def test_build_rows_hand_layout():
    """Shared prompt: item 0's prompt (5, 6, 7) once, then (8, 9) and (10); reads at the completions'
    last tokens (flat 4 and 5), gate reads at the prompt end (flat 2) for both."""
    seqs = [(5, 6, 7, 8, 9), (5, 6, 7, 10)]
    r = build_rows(seqs, [3, 3], PAD, "shared_prompt")
    assert r.input_ids.tolist() == [[5, 6, 7, 8, 9, 10]]
    assert r.position_ids.tolist() == [[0, 1, 2, 3, 4, 3]]
    assert r.read_index.tolist() == [4, 5] and r.prompt_index.tolist() == [2, 2]
    assert r.allowed[0, 0, 5].tolist() == [True, True, True, False, False, True]  # 10 sees prompt + itself
    p = build_rows(seqs, [3, 3], PAD, "packed")
    assert p.position_ids.tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 3]] and p.read_index.tolist() == [4, 8]
    d = build_rows(seqs, [3, 3], PAD, "padded")
    assert d.read_index.tolist() == [4, 8] and d.prompt_index.tolist() == [2, 7]
    with pytest.raises(ValueError, match="layout"):
        build_rows(seqs, [3, 3], PAD, "ragged")


def test_different_prompts_get_separate_rows():
    r = build_rows([(1, 2, 3), (1, 4, 5)], [2, 2], PAD, "shared_prompt")
    assert r.input_ids.shape[0] == 2  # prompts (1, 2) and (1, 4) differ


def _outputs(model, items, layout):
    batch = collate_rm(items, PAD, layout)
    out = model(batch.input_ids, batch.attention_mask, prompt_lengths=batch.prompt_lengths, rows=batch.rows)
    return out, batch


@pytest.mark.parametrize("kind", ["bt", "gpm"])
@pytest.mark.parametrize("layout", ["packed", "shared_prompt"])
@pytest.mark.parametrize("data", ["pairs", "ranked"])
def test_layout_matches_padded_values_and_gradients(kind, layout, data):
    items = PAIRS if data == "pairs" else RANKED
    proto = RewardModel(tiny_lm(), kind, seed=1, **({"gate": "scaled_softmax"} if kind == "gpm" else {}))
    res = {}
    for lay in ("padded", layout):
        model = copy.deepcopy(proto)
        out, batch = _outputs(model, items, lay)
        vals = out.rewards if kind == "bt" else torch.cat([out.embeddings, out.gate], -1)
        (vals * torch.linspace(0.5, 2.0, vals.numel()).reshape(vals.shape)).sum().backward()
        grad = model.model.layers[0].mlp.up_proj.weight.grad.clone()
        res[lay] = (vals.detach(), grad)
    assert torch.allclose(res[layout][0], res["padded"][0], atol=1e-5, rtol=0)
    assert torch.allclose(res[layout][1], res["padded"][1], atol=1e-5, rtol=1e-4)


def test_bt_loss_same_in_every_layout():
    model = RewardModel(tiny_lm(), "bt", seed=3)
    losses = []
    with torch.no_grad():
        for lay in ("padded", "packed", "shared_prompt"):
            out, batch = _outputs(model, PAIRS, lay)
            r = out.rewards
            losses.append(float(bt_loss(r[batch.slot[:, 0]], r[batch.slot[:, 1]]).loss.mean()))
    assert losses[1] == pytest.approx(losses[0], abs=1e-6) and losses[2] == pytest.approx(losses[0], abs=1e-6)
    assert abs(losses[0] - 0.693147) > 1e-4  # random head: the rewards differ, the loss is not ln 2


def test_shared_backbone_ensemble_rows_match_padded():
    ens = SharedBackboneEnsemble(tiny_lm(), seeds=[0, 1, 2])
    padded = collate_rm(PAIRS, PAD)
    with torch.no_grad():
        a = ens(padded.input_ids, padded.attention_mask)
        b = ens(rows=collate_rm(PAIRS, PAD, "shared_prompt").rows)
    assert torch.allclose(a.member_rewards, b.member_rewards, atol=1e-5)


def test_polar_refuses_fast_rows():
    model = RewardModel(tiny_lm(), "polar", seed=0)
    with pytest.raises(ValueError, match="POLAR"):
        _outputs(model, PAIRS, "packed")


def test_config_refuses_polar_and_flash_with_fast_layouts(rm_data, tmp_path):
    with pytest.raises(Exception, match="POLAR"):
        make_config(rm_data["pairs"], tmp_path / "p", ["rm.kind=polar", "data.layout=packed"])
    with pytest.raises(Exception, match="flash_attention_2"):
        make_config(rm_data["pairs"], tmp_path / "f",
                    ["data.layout=shared_prompt", "model.attn_implementation=flash_attention_2"])


@pytest.mark.slow
def test_rm_training_same_losses_in_shared_prompt_layout(rm_data, tmp_path):
    """Four BT steps on tiny-llama: the shared-prompt run logs the padded run's losses (1e-5)."""
    from prefopt.core.logging import read_metrics
    from reward_models.train import run_rm_train

    losses = {}
    for lay in ("padded", "shared_prompt"):
        out = tmp_path / lay
        cfg, _ = make_config(rm_data["pairs"], out, ["max_steps=4", "run.eval_at_start=false",
                                                     f"data.layout={lay}"])
        run_rm_train(cfg)
        losses[lay] = [r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert len(losses["padded"]) == 4
    assert losses["shared_prompt"] == pytest.approx(losses["padded"], abs=1e-5)


def test_rm_default_layout_resolves_and_polar_falls_back(rm_data, tmp_path, capfd):
    """``data.layout`` defaults to ``auto``: shared_prompt for BT (silently); POLAR (valid with auto)
    resolves to padded with one line saying why."""
    from reward_models.train_step import build_model, resolve_layout

    cfg, _ = make_config(rm_data["pairs"], tmp_path / "bt", [])
    assert cfg.data.layout == "auto"
    model, _ = build_model(cfg, 0)
    assert resolve_layout(cfg, model) == "shared_prompt" and capfd.readouterr().err == ""
    polar, _ = make_config(rm_data["pairs"], tmp_path / "p", ["rm.kind=polar"])
    assert resolve_layout(polar, model) == "padded"
    err = capfd.readouterr().err
    assert "rm train polar: layout auto -> padded" in err and "REWARD token" in err and err.count("\n") == 1


@pytest.mark.slow
def test_rm_training_with_the_tiled_mlp_logs_the_same_losses(rm_data, tmp_path):
    """Four BT steps on tiny-llama with activation checkpointing: model.tiled_mlp_tokens=4 (every row is
    longer than 4 tokens, so every MLP runs tiled) logs the untiled run's losses (1e-5), and the run's
    config.yaml records the setting."""
    import yaml

    from prefopt.core.logging import read_metrics
    from reward_models.train import run_rm_train

    losses = {}
    for tiles in ("null", "4"):
        out = tmp_path / f"tiles_{tiles}"
        cfg, _ = make_config(rm_data["pairs"], out, ["max_steps=4", "run.eval_at_start=false",
                                                     "model.gradient_checkpointing=true",
                                                     f"model.tiled_mlp_tokens={tiles}"])
        run_rm_train(cfg)
        losses[tiles] = [r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
        saved = yaml.safe_load((out / "config.yaml").read_text())
        assert saved["model"]["tiled_mlp_tokens"] == (None if tiles == "null" else 4)
    assert len(losses["null"]) == 4
    assert losses["4"] == pytest.approx(losses["null"], abs=1e-5)
