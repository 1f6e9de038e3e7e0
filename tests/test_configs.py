"""Every YAML under configs/ (recursively) loads and validates against its schema."""
from __future__ import annotations

from pathlib import Path

import pytest

from prefopt.core.config import load_config, to_dict

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


def test_there_are_configs():
    assert len(CONFIGS) >= 5


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_config_loads_and_validates(path):
    cfg = load_config(path)
    assert to_dict(cfg)


def test_loss_section_is_typed_once_and_resolved_in_config_yaml(tmp_path):
    """A default-beta DPO run writes its real beta (0.1), no unused sparsepo section; SparsePO gets both."""
    import yaml

    from prefopt.configs import TrainConfig
    from prefopt.core.config import from_dict, save_resolved
    from prefopt.losses.pairwise import BetaHParams

    cfg = from_dict(TrainConfig, {"algorithm": "dpo"})
    assert cfg.loss == BetaHParams(beta=0.1) and cfg.sparsepo is None
    save_resolved(cfg, tmp_path)
    written = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert written["loss"] == {"beta": 0.1} and "sparsepo" not in written and "online" not in written
    back = from_dict(TrainConfig, {k: v for k, v in written.items() if k != "kind"})
    assert back.loss == cfg.loss  # the resolved file reads back to the same typed section
    sp = from_dict(TrainConfig, {"algorithm": "sparsepo", "loss": {"beta": 0.2}})
    assert sp.loss.beta == 0.2 and sp.loss.lambda_u == 0.0 and sp.sparsepo.provider == "learned"


def test_loss_and_sparsepo_sections_fail_clearly():
    from prefopt.configs import TrainConfig
    from prefopt.core.config import from_dict
    from prefopt.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"unknown config key 'loss.betaa' \(did you mean 'beta'\?\)"):
        from_dict(TrainConfig, {"algorithm": "dpo", "loss": {"betaa": 0.2}})
    with pytest.raises(ConfigError, match=r"sparsepo: not read by this run \(algorithm dpo\)"):
        from_dict(TrainConfig, {"algorithm": "dpo", "sparsepo": {"provider": "ones"}})
    legacy = from_dict(TrainConfig, {"algorithm": "dpo", "sparsepo": {"provider": "learned"}})  # old default
    assert legacy.sparsepo is None
