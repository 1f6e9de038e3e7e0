"""``run.report_to``: TensorBoard and W&B (offline) receive TRL's metric names; metric_names.json maps them."""
from __future__ import annotations

import json

import pytest

from prefopt.core.errors import ConfigError
from prefopt.core.logging import MetricLogger, read_metrics, short_postfix
from prefopt.core.metric_names import POLICY, REWARD_MODEL


def _tb_scalars(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_gets_trl_names_and_jsonl_keeps_prefopt_names(tmp_path):
    with MetricLogger(tmp_path, report_to=["tensorboard"], names=POLICY) as log:
        log.log({"loss/total": 0.5, "optim/lr": 1e-3, "rewards/accuracies": 0.75}, step=1)
        log.log({"loss/total": 0.25, "optim/lr": 5e-4, "eval/accuracy": 0.625}, step=2)
    tb = _tb_scalars(tmp_path)
    assert tb["loss"] == [(1, 0.5), (2, 0.25)]
    assert tb["learning_rate"] == [(1, pytest.approx(1e-3)), (2, pytest.approx(5e-4))]
    assert tb["rewards/accuracies"] == [(1, 0.75)] and tb["eval_rewards/accuracies"] == [(2, 0.625)]
    assert "loss/total" not in tb
    assert [r["loss/total"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [0.5, 0.25]
    names = json.loads((tmp_path / "metric_names.json").read_text())
    assert names == {"eval/accuracy": "eval_rewards/accuracies", "loss/total": "loss",
                     "optim/lr": "learning_rate", "rewards/accuracies": "rewards/accuracies"}


@pytest.mark.slow
def _wandb_records(path, wait_s: float = 60.0) -> bytes:
    """The run file's bytes once wandb's service process has written the history records to it (it
    writes asynchronously, and on a loaded machine finish() can return before the file has them)."""
    import time

    deadline = time.monotonic() + wait_s
    data = path.read_bytes()
    while b"max_reward" not in data and time.monotonic() < deadline:
        time.sleep(0.5)
        data = path.read_bytes()
    return data


def test_wandb_offline_run_records_trl_names(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    with MetricLogger(tmp_path / "rm_run", report_to=["wandb"], names=REWARD_MODEL,
                      config={"rm": {"kind": "bt"}}) as log:
        log.log({"loss": 0.7, "reward_mean": 0.125, "reward_max": 1.5}, step=1)
        log.log({"loss": 0.6, "reward_mean": 0.25, "reward_max": 2.0}, step=2)
    runs = list((tmp_path / "rm_run" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1  # the offline run file `wandb sync` uploads later
    data = _wandb_records(runs[0])  # protobuf history records: keys and JSON values as plain bytes
    for key in (b"loss", b"mean_reward", b"max_reward"):
        assert key in data
    assert b"reward_mean" not in data and b"reward_max" not in data
    assert not (tmp_path / "rm_run" / "tb").exists()


def test_unknown_sink_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"run.report_to: unknown \['mlflow'\]"):
        MetricLogger(tmp_path, report_to=["mlflow"])


def test_short_postfix_keeps_a_few_key_metrics():
    values = {"loss/total": 0.51234, "rewards/accuracies": 0.75, "optim/grad_norm": 1.25,
              "logps/chosen": -40.0, "rewards/margins": 0.3, "perf/tokens_per_s": 1234.0}
    assert short_postfix(values) == "loss=0.512 acc=0.75 gnorm=1.25"
    assert short_postfix({"loss": 0.6, "accuracy": 0.5}) == "loss=0.6 acc=0.5"
