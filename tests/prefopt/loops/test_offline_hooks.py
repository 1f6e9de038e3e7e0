"""Offline-loop hooks (prefopt/loops/hooks/): which hooks a run gets, each hook's arithmetic by hand, and
a new hook added through the spec alone (no loop file) reaching metrics, checkpoints and the summary.

LCPO's EMA by hand: eta_0 = 0.8, ema_alpha = 0.5, two annotators. One optimizer step of two
micro-batches with w = [0.6, 0.2] (annotator 0, 0) and [0.9] (annotator 0): mean w_0 = 1.7 / 3, so
eta_0 <- 0.5 * 0.8 + 0.5 * 0.566667 = 0.683333; annotator 1 saw no pair and keeps 0.8.
"""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from offline_helpers import make_cfg, pair_records, train_rows, write_set

from prefopt.algorithms import get_algorithm
from prefopt.core.checkpoint import CheckpointError
from prefopt.core.errors import ConfigError
from prefopt.loops.hooks import OfflineHook, offline_hooks
from prefopt.loops.hooks.curriculum import StageReference
from prefopt.loops.hooks.lcpo import LCPOEta
from prefopt.loops.hooks.reference_sync import ReferenceSync
from prefopt.loops.hooks.sparsepo import SparsePOMasks


def _kinds(cfg) -> list[type]:
    return [type(h) for h in offline_hooks(cfg, get_algorithm(cfg.algorithm))]


def test_each_algorithm_gets_its_hooks_then_the_config_hooks(tmp_path):
    run = tmp_path / "run"
    assert _kinds(make_cfg(tmp_path, run)) == [ReferenceSync]
    assert _kinds(make_cfg(tmp_path, run, algorithm="lcpo")) == [LCPOEta, ReferenceSync]
    assert _kinds(make_cfg(tmp_path, run, algorithm="sparsepo")) == [SparsePOMasks, ReferenceSync]
    assert _kinds(make_cfg(tmp_path, run, algorithm="curry_dpo")) == [StageReference, ReferenceSync]
    # ordered / shuffled curricula keep one reference: no stage hook
    assert _kinds(make_cfg(tmp_path, run, algorithm="curry_dpo", curriculum="ordered")) == [ReferenceSync]


class _Out:
    def __init__(self, w, ids):
        self.aux = {"w": torch.tensor(w), "annotator_id": torch.tensor(ids)}


class _OneProcess:
    @staticmethod
    def all_reduce_sum(t):
        return t


def test_lcpo_hook_ema_by_hand(tmp_path):
    cfg = make_cfg(tmp_path, tmp_path / "run", algorithm="lcpo",
                   loss={"eta_0": 0.8, "ema_alpha": 0.5, "num_annotators": 2})
    hook = offline_hooks(cfg, get_algorithm("lcpo"))[0]
    items = [type("It", (), {"annotator": a})() for a in (1, 0)]
    got = hook.loss_inputs(items)
    assert got["annotator_id"].tolist() == [1, 0] and got["eta"].tolist() == pytest.approx([0.8, 0.8])
    hook.after_optimizer_step(None, None, _OneProcess(), 1)  # no finite micro-batch: eta unchanged
    assert hook.state.eta.tolist() == pytest.approx([0.8, 0.8])
    hook.after_micro_step(_Out([0.6, 0.2], [0, 0]), [])
    hook.after_micro_step(_Out([0.9], [0]), [])
    hook.after_optimizer_step(None, None, _OneProcess(), 2)
    assert hook.state.eta.tolist() == pytest.approx([0.683333, 0.8], abs=1e-6)
    assert hook.metrics(2) == pytest.approx({"lcpo/eta_0": 0.683333, "lcpo/eta_1": 0.8}, abs=1e-6)
    saved = hook.state_dict()
    fresh = offline_hooks(cfg, get_algorithm("lcpo"))[0]
    fresh.load_state(None, json.loads(json.dumps(saved)), tmp_path)
    assert torch.equal(fresh.state.eta, hook.state.eta) and fresh.summary(2) == saved
    with pytest.raises(CheckpointError, match="must hold lcpo_eta"):
        fresh.load_state(None, {"step": 2}, tmp_path)
    bad = [type("It", (), {"annotator": a, "index": i})() for i, a in enumerate((1, 2))]
    with pytest.raises(ConfigError, match=r"example #1 has meta.annotator_id 2, but loss.num_annotators is 2"):
        hook.loss_inputs(bad)


def test_reference_sync_counts_and_is_silent_when_off(tmp_path):
    on = ReferenceSync(make_cfg(tmp_path, tmp_path / "r", reference={"sync_every": 3}), get_algorithm("dpo"))
    assert on.metrics(7) == {"ref/syncs": 2.0} and on.summary(9) == {"ref_syncs": 3}
    off = ReferenceSync(make_cfg(tmp_path, tmp_path / "r"), get_algorithm("dpo"))
    assert off.metrics(7) == {} and off.summary(7) == {}
    ctx = type("Ctx", (), {"reference": object()})()
    assert off.checkpoint_tensors(ctx) == {}


def test_base_hook_does_nothing():
    hook, model = OfflineHook(), torch.nn.Linear(1, 1)
    assert hook.forward is None and not hook.new_optimizer_each_stage
    assert hook.on_stage_start(None, model, None) is model
    assert (hook.optimizer_groups(), hook.loss_inputs([]), hook.metrics(1), hook.state_dict(),
            hook.checkpoint_tensors(None), hook.summary(1)) == ([], {}, {}, {}, {}, {})


class _CountSteps(OfflineHook):
    """A new extra: counts optimizer steps, logs and checkpoints the count, restores it on resume."""

    def __init__(self):
        self.count = 0

    def after_optimizer_step(self, ctx, model, backend, step):
        self.count += 10

    def metrics(self, step):
        return {"toy/count": float(self.count)}

    def state_dict(self):
        return {"toy_count": self.count}

    def load_state(self, ctx, state, ckpt):
        self.count = state["toy_count"]

    def summary(self, step):
        return {"toy_count": self.count}


@pytest.mark.slow
def test_a_new_hook_needs_no_loop_change(tmp_path, monkeypatch):
    from prefopt.core.registry import OFFLINE_HOOKS
    from prefopt.loops import offline

    monkeypatch.setitem(OFFLINE_HOOKS._items, "toy_count", lambda cfg, spec: _CountSteps())
    spec = dataclasses.replace(get_algorithm("dpo"), hooks=("toy_count",))
    monkeypatch.setattr(offline, "get_algorithm", lambda name: spec)
    data = write_set(tmp_path / "data", pair_records(8))
    over = {"max_steps": 4, "run": {"save_every": 2, "keep_last": 3}}
    summary = offline.run_offline(make_cfg(data, tmp_path / "run", **over))
    rows = train_rows(tmp_path / "run")
    assert [r["toy/count"] for r in rows] == [10.0, 20.0, 30.0, 40.0] and summary["toy_count"] == 40
    state = json.loads((tmp_path / "run" / "checkpoints" / "step-000002" / "state.json").read_text())
    assert state["toy_count"] == 20
    # resume from step 2: the hook's count comes back from the checkpoint, not from zero
    import shutil

    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step-000004")
    summary = offline.run_offline(make_cfg(data, tmp_path / "run", **over))
    assert summary["toy_count"] == 40 and train_rows(tmp_path / "run")[-1]["toy/count"] == 40.0
