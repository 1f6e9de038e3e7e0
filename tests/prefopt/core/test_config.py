from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest
import yaml

from prefopt.core.config import apply_overrides, from_dict, load_config, to_dict
from prefopt.core.errors import ConfigError
from prefopt.core.registry import CONFIG_KINDS


@dataclass(frozen=True)
class Optim:
    lr: float = 1e-5
    steps: int = 10
    betas: tuple[float, ...] = (0.9, 0.999)


@dataclass(frozen=True)
class Source:
    path: str
    weight: float = 1.0


@dataclass(frozen=True)
class Root:
    name: str = "run"
    mode: Literal["a", "b"] = "a"
    optim: Optim = field(default_factory=Optim)
    sources: list[Source] = field(default_factory=list)
    extra: Optional[dict[str, int]] = None

    def __post_init__(self):
        if self.optim.steps < 0:
            raise ValueError("optim.steps must be >= 0")


if "_test_root" not in CONFIG_KINDS:
    CONFIG_KINDS.register("_test_root", Root)


def test_defaults_come_from_dataclass():
    cfg = from_dict(Root, {})
    assert cfg == Root() and cfg.optim.lr == 1e-5


def test_nested_types_and_yaml_scientific_notation():
    cfg = from_dict(Root, {"optim": {"lr": "1e-6", "betas": [0.8, 0.9]},
                           "sources": [{"path": "x.jsonl"}], "extra": {"k": 3}})
    assert cfg.optim.lr == 1e-6 and cfg.optim.betas == (0.8, 0.9)
    assert cfg.sources == [Source("x.jsonl", 1.0)] and cfg.extra == {"k": 3}


def test_unknown_key_fails_with_hint():
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.lrr' \(did you mean 'lr'\?\)"):
        from_dict(Root, {"optim": {"lrr": 1}})


def test_wrong_type_and_literal_and_missing():
    with pytest.raises(ConfigError, match="optim.steps: expected an integer, got 'ten'"):
        from_dict(Root, {"optim": {"steps": "ten"}})
    with pytest.raises(ConfigError, match=r"mode: 'c' is not one of \['a', 'b'\]"):
        from_dict(Root, {"mode": "c"})
    with pytest.raises(ConfigError, match=r"sources\[0\]: missing required key\(s\): path"):
        from_dict(Root, {"sources": [{}]})
    with pytest.raises(ConfigError, match="optim.steps must be >= 0"):
        from_dict(Root, {"optim": {"steps": -1}})


def test_dotted_overrides():
    data = apply_overrides({"optim": {"lr": 1.0}}, ["optim.lr=1e-6", "optim.steps=5", "name=x y", "extra.k=2"])
    assert data == {"optim": {"lr": "1e-6", "steps": 5}, "name": "x y", "extra": {"k": 2}}
    assert from_dict(Root, data).optim.lr == 1e-6  # YAML 1.1 reads 1e-6 as a string; the float field converts it
    with pytest.raises(ConfigError, match="must look like key.sub=value"):
        apply_overrides({}, ["optim.lr"])


def test_load_config_kind_and_roundtrip(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"kind": "_test_root", "optim": {"steps": 3}}))
    cfg = load_config(p, ["optim.lr=2e-5"])
    assert cfg.optim.steps == 3 and cfg.optim.lr == 2e-5
    assert from_dict(Root, to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="needs a 'train' config"):
        load_config(p, expect="train")
    p.write_text("optim: {steps: 3}\n")
    with pytest.raises(ConfigError, match="missing top-level 'kind' key"):
        load_config(p)
    p.write_text("kind: _test_rot\n")
    with pytest.raises(ConfigError, match=r"unknown kind '_test_rot' \(did you mean '_test_root'\?\)"):
        load_config(p)
    p.write_text("kind: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(p)


def test_override_list_items():
    data = {"sources": [{"path": "a"}, {"path": "b"}]}
    assert apply_overrides(data, ["sources.1.path=c"]) == {"sources": [{"path": "a"}, {"path": "c"}]}
    with pytest.raises(ConfigError, match="'5' is not an index of a list of 2"):
        apply_overrides(data, ["sources.5.path=c"])
