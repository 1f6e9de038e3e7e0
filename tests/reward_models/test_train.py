"""``prefopt rm train`` end to end on tiny-llama: every kind trains (loss goes down), the saved directory
reloads and scores exactly as the trained model did, a missing head raises, configs validate."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from prefopt.core.errors import ConfigError, ModelLoadError
from prefopt.core.logging import read_metrics
from reward_models.data import collate_rm
from reward_models.train import load_items, run_rm_train
from reward_models.train_step import evaluate
from tests.reward_models.conftest import make_config


def _losses(out) -> list[float]:
    return [r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]


def _assert_decreases(out) -> None:
    losses = _losses(out)
    assert len(losses) >= 4
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2, losses


def _eval_reloaded(cfg, model, tok) -> dict:
    _, held, _ = load_items(cfg, tok, cfg.run.seed)
    return evaluate(cfg, model, held, tok.pad_token_id, torch.device("cpu"))[0]


def _assert_same_eval(summary, again) -> None:
    for k in ("eval/accuracy", "eval/margin"):
        assert again[k] == pytest.approx(summary["final_eval"][k], abs=1e-5), k


def test_bt_full_finetune_e2e_hf_parity_and_missing_head(rm_data, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from reward_models.models import RewardModel

    out = tmp_path / "bt"
    cfg, _ = make_config(rm_data["pairs"], out)
    summary = run_rm_train(cfg)
    _assert_decreases(out)
    final = out / "final"
    rcfg = json.loads((final / "reward_config.json").read_text())
    assert rcfg["pad_token_id"] == 0 and rcfg["reward_std"] > 0  # <|endoftext|>, not EOS (2)
    assert rcfg["reward_mean"] == pytest.approx(summary["reward_mean_std"][0])
    model = RewardModel.load(final).eval()
    tok = AutoTokenizer.from_pretrained(str(final))
    assert tok.pad_token_id == 0
    _assert_same_eval(summary, _eval_reloaded(cfg, model, tok))
    # HF parity: AutoModelForSequenceClassification pools the last non-pad token (pad 0 != EOS).
    hf = AutoModelForSequenceClassification.from_pretrained(str(final)).eval()
    _, held, _ = load_items(cfg, tok, 0)
    batch = collate_rm(held[:4], tok.pad_token_id)
    with torch.no_grad():
        ours = model(batch.input_ids, batch.attention_mask).rewards
        theirs = hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.squeeze(-1)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    # A checkpoint without its score head must not load with a random head.
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(final, broken)
    weights = load_file(str(broken / "model.safetensors"))
    del weights["score.weight"]
    save_file(weights, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="score.weight"):
        RewardModel.load(broken)


def test_bt_lora_heads_saved_with_adapter_and_reloaded_exactly(rm_data, tmp_path):
    from safetensors.torch import load_file

    from prefopt.core.models import make_tiny_model
    from reward_models.models import RewardModel

    out = tmp_path / "lora"
    # padded rows: at lr 5e-2 Adam's first step, g / (|g| + eps), turns the layouts' 1e-7 rounding
    # differences on near-zero gradient components into full-size updates, so the 6-step trajectories
    # differ; this test's decrease check is about saving/reloading, the layouts' equality is
    # tests/reward_models/test_layouts.py
    cfg, _ = make_config(rm_data["pairs"], out, ["model.lora.r=4", "run.save_every=6", "optim.lr=5e-2",
                                                 "data.layout=padded"])
    summary = run_rm_train(cfg)
    _assert_decreases(out)
    final = out / "final"
    assert (final / "adapter_model.safetensors").is_file() and not (final / "reward_head.safetensors").exists()
    assert json.loads((final / "adapter_config.json").read_text())["task_type"] == "SEQ_CLS"
    model = RewardModel.load(final, backbone=make_tiny_model("tiny-llama", seed=0)).eval()
    # bit-exact: the reloaded trainable weights equal the step-6 checkpoint (taken after the last step)
    trained = load_file(str(out / "checkpoints" / "step-000006" / "trainable.safetensors"))
    params = dict(model.named_parameters())
    assert trained and all(torch.equal(params[k], v) for k, v in trained.items())
    from transformers import AutoTokenizer

    _assert_same_eval(summary, _eval_reloaded(cfg, model, AutoTokenizer.from_pretrained(str(final))))
    (final / "adapter_model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="adapter_model.safetensors is missing"):
        RewardModel.load(final, backbone=make_tiny_model("tiny-llama", seed=0))


def test_gpm_e2e(rm_data, tmp_path):
    from transformers import AutoTokenizer

    from reward_models.models import RewardModel

    out = tmp_path / "gpm"
    cfg, _ = make_config(rm_data["pairs"], out, ["rm.kind=gpm", "rm.gpm.embed_dim=4"])
    summary = run_rm_train(cfg)
    _assert_decreases(out)
    model = RewardModel.load(out / "final").eval()
    assert model.config.kind == "gpm" and model.gate_head is not None
    _assert_same_eval(summary, _eval_reloaded(cfg, model, AutoTokenizer.from_pretrained(str(out / "final"))))
    (out / "final" / "reward_head.safetensors").unlink()
    with pytest.raises(ModelLoadError):
        RewardModel.load(out / "final")


def test_polar_e2e_adds_special_tokens(rm_data, tmp_path):
    from transformers import AutoTokenizer

    from reward_models.models import RewardModel

    out = tmp_path / "polar"
    cfg, _ = make_config(rm_data["triples"], out, ["rm.kind=polar", "data.max_length=64", "optim.lr=2e-2"])
    summary = run_rm_train(cfg)
    _assert_decreases(out)
    tok = AutoTokenizer.from_pretrained(str(out / "final"))
    model = RewardModel.load(out / "final").eval()
    assert model.config.reward_token_id == tok.convert_tokens_to_ids("<|reward|>")
    _assert_same_eval(summary, _eval_reloaded(cfg, model, tok))


def test_listwise_bt_on_ranked_lists(rm_data, tmp_path):
    out = tmp_path / "ranked"
    cfg, _ = make_config(rm_data["ranked"], out, ["data.max_length=64"])
    summary = run_rm_train(cfg)
    _assert_decreases(out)
    assert summary["data"]["kept"] == 20 and summary["final_eval"]["eval/items"] == 4


def test_ensemble_independent_members_with_bootstrap(rm_data, tmp_path):
    from reward_models.ensemble import EnsembleRewardModel

    out = tmp_path / "ens"
    cfg, _ = make_config(rm_data["pairs"], out, ["rm.kind=ensemble", "rm.ensemble.members=2",
                                                 "rm.ensemble.bootstrap=true", "max_steps=3"])
    summary = run_rm_train(cfg)
    assert [m["seed"] for m in summary["members"]] == [0, 1]
    ens = EnsembleRewardModel.load(out / "final").eval()
    heads = [m.score.weight for m in ens.members]
    assert not torch.equal(heads[0], heads[1])  # different seeds -> different members


def test_ensemble_shared_backbone_saves_and_reloads(rm_data, tmp_path):
    from reward_models.ensemble import SharedBackboneEnsemble

    out = tmp_path / "shared"
    cfg, _ = make_config(rm_data["pairs"], out, ["rm.kind=ensemble", "rm.ensemble.shared_backbone=true",
                                                 "rm.ensemble.members=3"])
    summary = run_rm_train(cfg)
    _assert_decreases(out)
    ens = SharedBackboneEnsemble.load(out / "final").eval()
    assert len(ens.heads) == 3
    from transformers import AutoTokenizer

    _assert_same_eval(summary, _eval_reloaded(cfg, ens, AutoTokenizer.from_pretrained(str(out / "final"))))
    (out / "final" / "reward_head.safetensors").unlink()
    with pytest.raises(ModelLoadError):
        SharedBackboneEnsemble.load(out / "final")


@pytest.mark.parametrize("override, message", [
    (["rm.kind=gpm", "rm.gpm.embed_dim=3"], "embed_dim must be even"),
    (["rm.kind=ensemble", "rm.ensemble.members=1"], "members must be >= 2"),
    (["data.max_prompt_length=64"], "max_prompt_length must be smaller"),
    (["rm.kind=dpo"], "is not one of"),
    (["rm.bogus=1"], "unknown config key 'rm.bogus'"),
    (["batch_size=0"], "batch_size must be >= 1"),
    (["optim.lr=0"], "optim.lr must be > 0"),
])
def test_config_validation_errors(rm_data, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        make_config(rm_data["pairs"], tmp_path / "bad", override)


def test_gpm_refuses_ranked_data(rm_data, tmp_path):
    from prefopt.core.errors import DataError

    cfg, _ = make_config(rm_data["ranked"], tmp_path / "x", ["rm.kind=gpm", "rm.gpm.embed_dim=4"])
    with pytest.raises(DataError, match="cannot train on ranked"):
        run_rm_train(cfg)
