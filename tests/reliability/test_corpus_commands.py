"""Bad-input corpus, commands and configs (issue 17 items 1, 6, 9, 12, 13, 15): runs into a folder that
holds another run, non-finite config numbers, pipeline stages checked before the first starts, stage
names, POLAR references that leak the label, pickled weights, the hub offline.

Every case asserts the error class and message and that earlier outputs are unchanged.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import yaml
from corpus import earlier_outputs, snapshot, unchanged, write_jsonl

from prefopt.cli import main
from prefopt.core.config import load_config, to_dict
from prefopt.core.errors import ConfigError, DataError, ModelLoadError
from prefopt.core.rundir import check_fingerprint, config_fingerprint

REPO = Path(__file__).resolve().parents[2]
PAIR = {"prompt": "q", "chosen": "a", "rejected": "b"}


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err.strip()


@pytest.mark.parametrize("recipe,override,shown", [
    ("ipo/tiny.yaml", [], "config.algorithm: 'dpo' -> 'ipo'"),
    ("dpo/tiny.yaml", ["optim.lr=1e-4"], "config.optim.lr: 0.001 -> 0.0001"),
], ids=["ipo_into_dpo_folder", "new_lr_into_old_folder"])
def test_train_refuses_a_folder_holding_another_run(tmp_path, capsys, recipe, override, shown):
    out = earlier_outputs(tmp_path / "x")
    first = load_config(REPO / "configs/dpo/tiny.yaml", [f"run.output_dir={out}"])
    check_fingerprint(out, config_fingerprint(to_dict(first)))  # what `prefopt train` recorded
    capsys.readouterr()
    before = snapshot(tmp_path)
    err = _error(capsys, ["train", str(REPO / "configs" / recipe), f"run.output_dir={out}", *override])
    assert err.startswith(f"error: {out} holds a different 'train' run (") and shown in err
    assert err.endswith("use a new output folder, or pass --overwrite to move the old one aside and start afresh")
    assert unchanged(before, tmp_path) == []


def _data_yaml(tmp_path: Path, source: Path, **extra) -> Path:
    p = tmp_path / "data.yaml"
    p.write_text(yaml.safe_dump({"kind": "data", "output_dir": str(tmp_path / "built"), **extra,
                                 "sources": [{"path": str(source), "adapter": "pairwise", "split": "train"}]}))
    return p


def test_data_build_refuses_another_build_then_overwrite_moves_it_aside(tmp_path, capsys):
    src = write_jsonl(tmp_path / "src.jsonl", [PAIR, {**PAIR, "chosen": "c"}])
    assert main(["data", "build", str(_data_yaml(tmp_path, src))]) == 0
    before = snapshot(tmp_path / "built")
    err = _error(capsys, ["data", "build", str(_data_yaml(tmp_path, src, dedup=False))])
    assert err.startswith(f"error: {tmp_path / 'built'} holds a different 'data build' run (config.dedup: True -> False)")
    assert unchanged(before, tmp_path / "built") == []
    assert main(["data", "build", str(_data_yaml(tmp_path, src, dedup=False)), "--overwrite"]) == 0
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("built.replaced-")]
    assert len(aside) == 1 and snapshot(aside[0]) == before


@pytest.mark.parametrize("value,shown", [(".inf", "inf"), ("-.inf", "-inf"), ("nan", "'nan'")],
                         ids=["lr_inf", "lr_minus_inf", "lr_nan"])
def test_non_finite_config_numbers_are_refused(capsys, value, shown):
    err = _error(capsys, ["validate", str(REPO / "configs/dpo/tiny.yaml"), f"optim.lr={value}"])
    assert err.endswith(f"optim.lr: expected a finite number, got {shown}")


def _pipeline(tmp_path: Path, stages: list[dict]) -> Path:
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump({"kind": "run", "output_dir": str(tmp_path / "out"), "stages": stages}))
    return p


def test_a_mistyped_stage_argument_fails_validation(tmp_path, capsys):
    cfg = _pipeline(tmp_path, [{"name": "rb", "command": "eval rewardbench",
                                "args": ["--model", "m", "--limit-per-subsett", "2"]}])
    err = _error(capsys, ["validate", str(cfg)])
    assert err == "error: stage 'rb': prefopt eval rewardbench: error: unrecognized arguments: --limit-per-subsett 2"


def test_a_bad_later_stage_stops_the_pipeline_before_the_first_stage(tmp_path, capsys):
    src = write_jsonl(tmp_path / "src.jsonl", [PAIR])
    cfg = _pipeline(tmp_path, [
        {"name": "data", "command": "data build", "config": str(_data_yaml(tmp_path, src))},
        {"name": "dpo", "command": "train", "config": str(REPO / "configs/dpo/tiny.yaml"),
         "overrides": ["optim.lr=.inf"]}])
    err = _error(capsys, ["run", str(cfg)])
    assert err.endswith("stage 'dpo': " + str(REPO / "configs/dpo/tiny.yaml") + ": optim.lr: expected a finite "
                        "number, got inf")
    assert not (tmp_path / "out" / "data").exists()


@pytest.mark.parametrize("name", ["..", ".", "..."], ids=["dotdot", "dot", "dots"])
def test_stage_names_cannot_leave_the_pipeline_folder(tmp_path, name):
    with pytest.raises(ConfigError, match=r"may only hold letters, digits, '_', '.', '-' \(and not only dots"):
        load_config(_pipeline(tmp_path, [{"name": name, "command": "report", "args": []}]))


def test_a_stage_whose_input_changed_restarts_clean(tmp_path):
    src = write_jsonl(tmp_path / "src.jsonl", [PAIR])
    cfg = _pipeline(tmp_path, [{"name": "data", "command": "data build",
                                "config": str(_data_yaml(tmp_path, src))}])
    assert main(["run", str(cfg)]) == 0
    before = snapshot(tmp_path / "out" / "data")
    write_jsonl(src, [PAIR, {**PAIR, "chosen": "new"}])  # same config, new data
    assert main(["run", str(cfg)]) == 0
    assert json.loads((tmp_path / "out" / "pipeline.json").read_text())["stages"][0]["status"] == "done"
    assert len((tmp_path / "out" / "data" / "train.jsonl").read_text().splitlines()) == 2
    aside = [p for p in (tmp_path / "out").iterdir() if p.name.startswith("data.replaced-")]
    assert len(aside) == 1 and snapshot(aside[0]) == before


@pytest.mark.parametrize("field", ["chosen", "rejected"])
def test_polar_reference_may_not_be_an_answer_of_the_pair(tmp_path, field):
    from prefopt.eval.rewardbench import polar_references

    rows = [{"id": 1, "subset": "x", "raw": {"chosen": "a", "rejected": "b"}, "line": 1}]
    with pytest.raises(ConfigError, match=rf"--polar-reference field:{field} would score each answer against the "
                       rf"{field} answer itself \(the label leaks into the reference\)"):
        polar_references(f"field:{field}", rows, tmp_path)


def test_rewardbench_from_the_hub_offline_names_the_options(monkeypatch):
    import data_pipelines.sources as sources
    from prefopt.eval.rewardbench import load_rows

    def offline(spec):
        raise ConnectionError("Couldn't reach 'allenai/reward-bench' on the Hub (LocalEntryNotFoundError)")
        yield

    monkeypatch.setattr(sources, "iter_hf", offline)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match=r"cannot load hf:allenai/reward-bench@filtered offline \(HF_HUB_OFFLINE/"
                       r"HF_DATASETS_OFFLINE is set\): ConnectionError: .* Offline options: pass --data FILE"):
        load_rows("hf:allenai/reward-bench@filtered")


def test_rewardbench_limit_per_subset_must_be_positive(tmp_path, capsys):
    err = _error(capsys, ["eval", "rewardbench", "--model", "m", "--limit-per-subset", "0", "--out",
                          str(tmp_path / "rb")])
    assert err == "error: --limit-per-subset must be >= 1, got 0"


class Payload:
    def __reduce__(self):
        return (print, ("this would have run",))


def test_pickled_model_weights_are_refused(tmp_path):
    from prefopt.core.models import load_causal_lm

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    before = snapshot(tmp_path)
    with pytest.raises(ModelLoadError) as info:
        load_causal_lm(str(folder))
    assert str(info.value) == (f"{folder}: refusing to load pickled weights pytorch_model.bin (a pickle can run "
                               "code when loaded); convert it to safetensors, or set PREFOPT_ALLOW_PICKLE=1 if "
                               "you trust this folder")
    assert unchanged(before, tmp_path) == []


def test_a_pickle_in_a_checkpoint_is_refused(tmp_path):
    from prefopt.core.checkpoint import CheckpointError, _load_tensors_file

    path = tmp_path / "rng.pt"
    path.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(CheckpointError, match=rf"refusing to load {path}: not a plain tensor file"):
        _load_tensors_file(path)
