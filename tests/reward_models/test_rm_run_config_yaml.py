"""A reward-model run's config.yaml holds its concrete ``data.layout`` and only its kind's ``rm`` section,
and reads back to the same config (an ensemble of separate members too)."""
from __future__ import annotations

import dataclasses

import yaml

from prefopt.core.config import load_config
from reward_models.train import run_rm_train
from tests.reward_models.conftest import make_config


def _kind_sections(run_dir) -> set[str]:
    rm = yaml.safe_load((run_dir / "config.yaml").read_text())["rm"]
    return {k for k, v in rm.items() if isinstance(v, dict)}


def _resolved(cfg, layout: str):
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, layout=layout))


def test_bt_run_writes_only_its_section_and_reads_back(rm_data, tmp_path):
    out = tmp_path / "bt"
    cfg, _ = make_config(rm_data["pairs"], out, ["max_steps=1", "run.eval_at_start=false"])
    run_rm_train(cfg)
    assert _kind_sections(out) == {"bt"}
    assert load_config(out / "config.yaml") == _resolved(cfg, "shared_prompt")


def test_ensemble_members_are_bt_runs_and_the_top_config_is_resolved(rm_data, tmp_path):
    out = tmp_path / "ens"
    cfg, _ = make_config(rm_data["pairs"], out, ["rm.kind=ensemble", "rm.ensemble.members=2", "max_steps=1",
                                                 "run.eval_at_start=false"])
    run_rm_train(cfg)
    assert _kind_sections(out) == {"ensemble", "bt"} and _kind_sections(out / "member_0") == {"bt"}
    assert load_config(out / "config.yaml") == _resolved(cfg, "shared_prompt")
    member = load_config(out / "member_1" / "config.yaml")
    assert member.rm.kind == "bt" and member.data.layout == "shared_prompt"
    assert member.run.output_dir == str(out / "member_1")


def test_gpm_config_leaves_out_the_scalar_reward_statistics():
    """GPM scores pairs by embeddings, with no scalar reward: rm.reward_stats* are not read, so they are
    not written, and setting them is refused."""
    import pytest

    from prefopt.core.config import from_dict, to_dict
    from prefopt.core.errors import ConfigError
    from reward_models.config import RMSection

    gpm = to_dict(from_dict(RMSection, {"kind": "gpm"}))
    assert "reward_stats" not in gpm and "reward_stats_examples" not in gpm and "gpm" in gpm
    assert "reward_stats" in to_dict(from_dict(RMSection, {"kind": "bt"}))
    with pytest.raises(ConfigError, match="reward_stats: not read by rm.kind gpm"):
        from_dict(RMSection, {"kind": "gpm", "reward_stats": "eval"})


def test_use_margin_is_written_only_for_kinds_that_read_it():
    import pytest

    from prefopt.core.config import from_dict, to_dict
    from prefopt.core.errors import ConfigError
    from reward_models.config import RMTrainConfig

    assert "use_margin" in to_dict(from_dict(RMTrainConfig, {"rm": {"kind": "bt"}}))["data"]
    polar = from_dict(RMTrainConfig, {"rm": {"kind": "polar"}, "data": {"layout": "padded"}})
    assert "use_margin" not in to_dict(polar)["data"]
    with pytest.raises(ConfigError, match="data.use_margin: not read by rm.kind ensemble"):
        from_dict(RMTrainConfig, {"rm": {"kind": "ensemble"}, "data": {"use_margin": True}})
