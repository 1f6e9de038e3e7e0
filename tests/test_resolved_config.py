"""A run's config.yaml holds every resolved value and nothing unused, and reads back to an equal config:
``kind: train`` keeps only the optional sections its algorithm reads (AlgorithmSpec.reads), ``kind: rm``
only the ``rm.<section>`` of its kind (RMKind.sections)."""
from __future__ import annotations

import pytest
import yaml

from prefopt.algorithms import OPTIONAL_SECTIONS, get_algorithm
from prefopt.configs import TrainConfig
from prefopt.core.config import from_dict, load_config, save_resolved
from prefopt.core.errors import ConfigError
from prefopt.core.registry import ALGORITHMS
from reward_models.config import RMTrainConfig
from reward_models.kinds import kind_names

# What each run's config.yaml holds besides run/model/optim/backend/loss/batch_size/precision.
OPTIONAL_WRITTEN = {
    "dpo": {"data", "epochs", "max_steps", "reference"},
    "simpo": {"data", "epochs", "max_steps"},  # reference-free: no reference section
    "orpo": {"data", "epochs", "max_steps"},
    "sparsepo": {"data", "epochs", "max_steps", "reference", "sparsepo"},
    "curry_dpo": {"data", "epochs", "max_steps", "reference", "curriculum"},
    "grpo": {"online"},  # default beta 0: no KL term, no reference (the driver's reference rule)
    "dno": {"online", "online.dno"},  # default tau 0
    "egpo": {"online", "online.egpo", "reference"},
    "online_ipo": {"online", "online.egpo", "reference"},
}


def _written(cfg, tmp_path) -> dict:
    save_resolved(cfg, tmp_path)
    return yaml.safe_load((tmp_path / "config.yaml").read_text())


def _optional_keys(data: dict) -> set[str]:
    top = {k for k in OPTIONAL_SECTIONS if "." not in k and k in data}
    return top | {k for k in OPTIONAL_SECTIONS if "." in k and k.split(".")[1] in (data.get("online") or {})}


@pytest.mark.parametrize("algorithm", sorted(OPTIONAL_WRITTEN))
def test_train_config_yaml_holds_only_what_the_algorithm_reads(algorithm, tmp_path):
    cfg = from_dict(TrainConfig, {"algorithm": algorithm})
    data = _written(cfg, tmp_path)
    assert _optional_keys(data) == OPTIONAL_WRITTEN[algorithm]
    assert "vllm" not in (data.get("online") or {})  # generator hf
    assert load_config(tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS.names()))
def test_every_algorithm_round_trips(algorithm, tmp_path):
    estimator = getattr(get_algorithm(algorithm), "advantage", None)  # RLOO names its estimator
    cfg = from_dict(TrainConfig, {"algorithm": algorithm, **({"online": {"advantage": estimator}} if estimator else {})})
    data = _written(cfg, tmp_path)
    assert _optional_keys(data) == {k for k in OPTIONAL_SECTIONS if k in get_algorithm(algorithm).reads(cfg.loss)}
    assert load_config(tmp_path / "config.yaml") == cfg
    if get_algorithm(algorithm).loop == "online":  # filled with its defaults, not null
        assert data["online"]["rounds"] == 20 and cfg.online is not None


def test_online_reference_written_when_the_loss_needs_one(tmp_path):
    cfg = from_dict(TrainConfig, {"algorithm": "grpo", "loss": {"beta": 0.04}, "reference": {"mode": "copy"}})
    assert _written(cfg, tmp_path)["reference"]["mode"] == "copy"
    assert load_config(tmp_path / "config.yaml") == cfg
    with pytest.raises(ConfigError, match=r"reference: not read by this run \(algorithm grpo\)"):
        from_dict(TrainConfig, {"algorithm": "grpo", "reference": {"mode": "copy"}})


def test_vllm_settings_written_only_for_the_vllm_generator(tmp_path):
    cfg = from_dict(TrainConfig, {"algorithm": "grpo", "online": {"generator": "vllm",
                                                                  "vllm": {"gpu_memory_utilization": 0.3}}})
    assert _written(cfg, tmp_path)["online"]["vllm"]["gpu_memory_utilization"] == 0.3
    assert load_config(tmp_path / "config.yaml") == cfg
    with pytest.raises(ConfigError, match=r"online.vllm: not read by this run \(algorithm grpo\)"):
        from_dict(TrainConfig, {"algorithm": "grpo", "online": {"vllm": {"gpu_memory_utilization": 0.3}}})


@pytest.mark.parametrize("algorithm, section, message", [
    ("simpo", {"reference": {"mode": "copy"}}, "reference: not read"),
    ("dpo", {"curriculum": "ordered"}, "curriculum: not read"),
    ("dpo", {"online": {"rounds": 3}}, "online: not read"),
    ("grpo", {"data": {"path": "x"}}, "data: not read"),
    ("grpo", {"max_steps": 5}, "max_steps: not read"),
    ("grpo", {"online": {"dno": {"use_gold": True}}}, "online.dno: not read"),
])
def test_settings_a_run_would_ignore_are_refused(algorithm, section, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(TrainConfig, {"algorithm": algorithm, **section})


def test_legacy_config_yaml_with_every_section_still_loads(tmp_path):
    """A config.yaml written by earlier versions (every section, defaults in the unused ones) reads back."""
    old = {"kind": "train", "algorithm": "simpo", "data": {"layout": "auto"}, "reference": {"mode": "auto"},
           "curriculum": "iterative", "sparsepo": None, "online": None}
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(old))
    assert load_config(tmp_path / "old.yaml") == from_dict(TrainConfig, {"algorithm": "simpo"})


@pytest.mark.parametrize("kind", kind_names())
def test_rm_config_yaml_holds_only_its_kind_section(kind, tmp_path):
    cfg = from_dict(RMTrainConfig, {"rm": {"kind": kind}})
    data = _written(cfg, tmp_path)
    sections = {k for k, v in data["rm"].items() if isinstance(v, dict)}
    assert sections == ({"ensemble", "bt"} if kind == "ensemble" else {kind})
    assert load_config(tmp_path / "config.yaml") == cfg


def test_rm_other_kind_sections_refused_and_legacy_defaults_read(tmp_path):
    with pytest.raises(ConfigError, match="rm.gpm.embed_dim must be even and >= 2, got 3"):
        from_dict(RMTrainConfig, {"rm": {"kind": "bt", "gpm": {"embed_dim": 3}}})
    with pytest.raises(ConfigError, match=r"gpm: not read by rm.kind bt"):
        from_dict(RMTrainConfig, {"rm": {"kind": "bt", "gpm": {"embed_dim": 8}}})
    legacy = {"kind": "rm", "rm": {"kind": "bt", "bt": {"tau": 2.0}, "gpm": {"embed_dim": 6}, "polar": {},
                                   "ensemble": {"members": 3}, "rao_kupper": {"log_theta": 1.0}}}
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(legacy))
    assert load_config(tmp_path / "old.yaml") == from_dict(RMTrainConfig, {"rm": {"kind": "bt", "bt": {"tau": 2.0}}})
