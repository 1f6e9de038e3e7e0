"""The config.yaml an offline / online run writes holds the resolved values (``layout: auto`` resolved to
the layout the run used), none of the sections its algorithm does not read, and reads back to the same
config (reward-model runs: tests/reward_models/test_rm_run_config_yaml.py)."""
from __future__ import annotations

import dataclasses

import yaml
from offline_helpers import make_cfg as offline_cfg
from offline_helpers import pair_records, write_set
from online_helpers import make_cfg as online_cfg

from prefopt.core.config import load_config
from prefopt.loops.offline import run_offline
from prefopt.loops.online import run_online


def _read(run_dir) -> dict:
    return yaml.safe_load((run_dir / "config.yaml").read_text())


def test_offline_run_writes_the_resolved_layout_and_no_unused_section(tmp_path):
    data = write_set(tmp_path / "data", pair_records(8), pair_records(4))
    out = tmp_path / "dpo"
    cfg = offline_cfg(data, out, max_steps=1)
    assert cfg.data.layout == "auto"
    run_offline(cfg)
    written = _read(out)
    assert written["data"]["layout"] == "shared_prompt" and written["loss"] == {"beta": 0.1}
    assert not {"online", "sparsepo", "curriculum"} & set(written)
    resolved = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, layout="shared_prompt"))
    assert load_config(out / "config.yaml") == resolved


def test_online_run_writes_the_resolved_layout_and_no_unused_section(eos_model_dir, tmp_path):
    out = tmp_path / "grpo"
    cfg = online_cfg(eos_model_dir, out, "grpo", rounds=1)
    assert cfg.online.layout == "auto"
    run_online(cfg)
    written = _read(out)
    assert written["online"]["layout"] == "shared_prompt" and written["online"]["rounds"] == 1
    assert not {"data", "sparsepo", "curriculum", "epochs", "max_steps"} & set(written)
    assert not {"dno", "egpo", "vllm"} & set(written["online"])
    resolved = dataclasses.replace(cfg, online=dataclasses.replace(cfg.online, layout="shared_prompt"))
    assert load_config(out / "config.yaml") == resolved


def test_urpo_config_records_the_reward_functions_it_fills_in():
    """URPO without explicit rewards runs the verifiable + referee functions; its config.yaml says so."""
    from prefopt.algorithms import get_algorithm
    from prefopt.configs import TrainConfig
    from prefopt.core.config import from_dict, to_dict
    from prefopt.core.models import ModelConfig, load_model
    from prefopt.loops.online import resolved_config

    cfg = from_dict(TrainConfig, {"algorithm": "urpo", "model": {"name": "tiny-smollm2"},
                                  "online": {"prompts": {"kind": "urpo", "n": 4}}})
    model, _ = load_model(ModelConfig(name="tiny-smollm2"))
    got = resolved_config(cfg, get_algorithm("urpo"), model)
    reward = to_dict(got)["online"]["reward"]
    assert [f["name"] for f in reward["functions"]] == ["urpo_verifiable", "urpo_referee"]
    assert reward["policy_referee"] is True and to_dict(got)["online"]["layout"] != "auto"
