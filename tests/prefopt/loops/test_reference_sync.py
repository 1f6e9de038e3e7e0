"""TR-DPO periodic soft reference sync (spec offline_losses.md section 6; Gorbatovski et al. 2024):
``ref <- a * policy + (1 - a) * ref`` every ``reference.sync_every`` optimizer steps.

* ``Reference.soft_sync`` on a tiny module: hand values for a = 0.6, a hard copy for a = 1, float
  buffers mixed too, a clear error without a frozen copy.
* In a tiny DPO run with ``sync_every=1, sync_alpha=1`` the reference equals the policy at the start of
  every step, so every step's loss is ln 2 (zero margin); without sync step 2 already differs.
* ``sync_every=2, sync_alpha=0.6``: the reference stored in the checkpoints equals the rule replayed
  from the checkpointed policy weights (bitwise).
* Resume after a sync is exact (the synced reference is in the checkpoint), and is not without it.
* Incompatible settings are ConfigErrors before any work.
"""
from __future__ import annotations

import math
import shutil

import pytest
import torch
from offline_helpers import make_cfg, pair_records, train_rows, write_set

from prefopt.core.errors import ConfigError


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)
        self.register_buffer("stat", torch.zeros(2))
        self.register_buffer("count", torch.zeros(1, dtype=torch.long))


def _set(module: _Tiny, w, b, stat, count) -> None:
    with torch.no_grad():
        module.lin.weight.copy_(torch.tensor(w))
        module.lin.bias.copy_(torch.tensor(b))
        module.stat.copy_(torch.tensor(stat))
        module.count.fill_(count)


def test_soft_sync_hand_values_and_hard_copy():
    from prefopt.loops.reference import Reference

    policy = _Tiny()
    _set(policy, [[0.0, 1.0], [2.0, -1.0]], [10.0, 0.0], [5.0, 0.0], 3)
    ref = Reference("copy", policy)
    _set(policy, [[10.0, 6.0], [-3.0, 4.0]], [0.0, 5.0], [0.0, 10.0], 7)
    ref.soft_sync(policy, 0.6)
    # 0.6 * policy + 0.4 * ref, by hand
    assert torch.allclose(ref.frozen.lin.weight, torch.tensor([[6.0, 4.0], [-1.0, 2.0]]), atol=1e-6)
    assert torch.allclose(ref.frozen.lin.bias, torch.tensor([4.0, 3.0]), atol=1e-6)
    assert torch.allclose(ref.frozen.stat, torch.tensor([2.0, 6.0]), atol=1e-6)
    assert int(ref.frozen.count) == 3  # integer buffers are not mixed
    assert not any(p.requires_grad for p in ref.frozen.parameters())  # still frozen
    assert policy.lin.weight.tolist() == [[10.0, 6.0], [-3.0, 4.0]]  # the policy is untouched
    ref.soft_sync(policy, 0.6)  # a second sync mixes again from the current reference
    assert torch.allclose(ref.frozen.lin.weight, torch.tensor([[8.4, 5.2], [-2.2, 3.2]]), atol=1e-6)

    _set(policy, [[0.1, 0.2], [0.3, 0.7]], [1e-8, 3.3], [0.9, 1e30], 1)
    ref.soft_sync(policy, 1.0)
    for name, p in policy.named_parameters():
        assert torch.equal(dict(ref.frozen.named_parameters())[name], p), name
    assert torch.equal(ref.frozen.stat, policy.stat)


def test_soft_sync_needs_a_frozen_copy():
    from prefopt.loops.reference import Reference

    policy = _Tiny()
    with pytest.raises(RuntimeError, match="needs a frozen reference copy; reference mode 'precompute'"):
        Reference("precompute", policy).soft_sync(policy, 0.6)
    ref = Reference("copy", policy)
    with pytest.raises(ValueError, match=r"sync alpha must be in \(0, 1\]"):
        ref.soft_sync(policy, 0.0)
    ref.release()
    with pytest.raises(RuntimeError, match="has none"):
        ref.soft_sync(policy, 0.6)


def test_checkpoint_extra_tensors(tmp_path):
    from prefopt.core.backend import OptimConfig, SingleBackend
    from prefopt.core.checkpoint import CheckpointError, load_extra_tensors, save_checkpoint

    model = torch.nn.Linear(2, 1)
    backend = SingleBackend(torch.device("cpu"), OptimConfig(lr=0.1, warmup_ratio=0.0))
    backend.prepare(model, total_steps=2)
    plain = save_checkpoint(tmp_path, 1, model, backend, {})
    assert load_extra_tensors(plain) == {} and not (plain / "extra.safetensors").exists()
    extra = {"reference/param.w": torch.arange(6.0).reshape(2, 3)}
    folder = save_checkpoint(tmp_path, 2, model, backend, {}, tensors=extra)
    got = load_extra_tensors(folder)
    assert got.keys() == extra.keys() and torch.equal(got["reference/param.w"], extra["reference/param.w"])
    (folder / "extra.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="extra.safetensors does not match its checksum"):
        load_extra_tensors(folder)


@pytest.mark.slow
def test_hard_sync_every_step_gives_zero_margin(tmp_path):
    from prefopt.loops.offline import run_offline

    data = write_set(tmp_path / "data", pair_records(8))
    summary = run_offline(make_cfg(data, tmp_path / "sync", max_steps=4,
                                   reference={"sync_every": 1, "sync_alpha": 1.0}))
    rows = train_rows(tmp_path / "sync")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:  # the policy at the start of step k+1 == the reference synced after step k
        assert r["loss"] == pytest.approx(math.log(2), abs=1e-6), r["step"]
        assert r["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert [r["ref/syncs"] for r in rows] == [1.0, 2.0, 3.0, 4.0]
    assert summary["ref_syncs"] == 4
    run_offline(make_cfg(data, tmp_path / "fixed", max_steps=2))  # without sync the margin opens up
    fixed = train_rows(tmp_path / "fixed")
    assert abs(fixed[1]["loss"] - math.log(2)) > 1e-3 and "ref/syncs" not in fixed[1]


@pytest.mark.slow
def test_soft_sync_reference_matches_replayed_rule(tmp_path):
    from safetensors.torch import load_file

    from prefopt.core.checkpoint import load_extra_tensors
    from prefopt.core.models import load_model
    from prefopt.loops.offline import run_offline

    alpha = 0.6
    data = write_set(tmp_path / "data", pair_records(8))
    cfg = make_cfg(data, tmp_path / "run", max_steps=4, reference={"sync_every": 2, "sync_alpha": alpha},
                   run={"save_every": 1, "keep_last": 4})
    run_offline(cfg)
    rows = train_rows(tmp_path / "run")
    assert [r["ref/syncs"] for r in rows] == [0.0, 1.0, 1.0, 2.0]
    ckpts = {s: tmp_path / "run" / "checkpoints" / f"step-{s:06d}" for s in (1, 2, 3, 4)}
    policy = {s: load_file(str(f / "trainable.safetensors")) for s, f in ckpts.items()}
    saved = {s: {k.removeprefix("reference/param."): v for k, v in load_extra_tensors(f).items()
                 if k.startswith("reference/param.")} for s, f in ckpts.items()}
    start, _ = load_model(cfg.model, seed=cfg.run.seed)
    ref = {k: v.detach().clone() for k, v in start.named_parameters()}
    assert ref.keys() == policy[1].keys() == saved[1].keys()
    for step in (1, 2, 3, 4):
        if step % 2 == 0:  # replay: ref <- a * policy + (1 - a) * ref, the same float ops
            ref = {k: v.mul(1 - alpha).add(policy[step][k], alpha=alpha) for k, v in ref.items()}
        for k, v in ref.items():
            assert torch.equal(saved[step][k], v), (step, k)
    # the synced reference is neither the start nor the policy
    assert any(not torch.equal(saved[4][k], policy[4][k]) for k in ref)
    assert any(not torch.equal(saved[4][k], v) for k, v in start.named_parameters())


@pytest.mark.slow
def test_resume_after_sync_is_exact(tmp_path, monkeypatch):
    from prefopt.loops import offline

    data = write_set(tmp_path / "data", pair_records(8))
    over = {"max_steps": 4, "reference": {"sync_every": 2, "sync_alpha": 0.6},
            "run": {"save_every": 3, "keep_last": 2}}
    offline.run_offline(make_cfg(data, tmp_path / "run", **over))
    full = train_rows(tmp_path / "run")
    assert [r["step"] for r in full] == [1, 2, 3, 4]
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["step-000003"]  # after the sync at step 2, before the one at step 4
    shutil.rmtree(tmp_path / "run" / "final")
    (tmp_path / "run" / "summary.json").unlink()

    summary = offline.run_offline(make_cfg(data, tmp_path / "run", **over))  # resumes at step 3
    assert summary["steps"] == 4 and summary["ref_syncs"] == 2
    resumed = train_rows(tmp_path / "run")[-1]
    assert resumed["step"] == 4 and resumed["ref/syncs"] == 2.0
    for key in ("loss", "rewards/margins", "kl", "optim/grad_norm"):
        assert resumed[key] == pytest.approx(full[3][key], abs=1e-6, rel=1e-6), key

    # without restoring the synced reference the resumed step would differ (the test can fail)
    from prefopt.loops.hooks.reference_sync import ReferenceSync

    monkeypatch.setattr(ReferenceSync, "load_state", lambda *a, **k: None)
    offline.run_offline(make_cfg(data, tmp_path / "run", **over))
    unsynced = train_rows(tmp_path / "run")[-1]
    assert abs(unsynced["loss"] - full[3]["loss"]) > 1e-4


def test_incompatible_settings_are_config_errors(tmp_path):
    from prefopt.algorithms import get_algorithm
    from prefopt.loops.hooks.reference_sync import check_reference_sync
    from prefopt.loops.offline import run_offline

    with pytest.raises(ConfigError, match="reference.sync_every needs a frozen reference copy to update; "
                                          "reference.mode=precompute has none"):
        make_cfg(tmp_path, tmp_path / "run", reference={"mode": "precompute", "sync_every": 2})
    with pytest.raises(ConfigError, match="reference.mode=adapter_disabled has none"):
        make_cfg(tmp_path, tmp_path / "run", model={"name": "tiny-llama", "lora": {"r": 4}},
                 reference={"mode": "adapter_disabled", "sync_every": 2})
    with pytest.raises(ConfigError, match=r"reference.sync_alpha must be in \(0, 1\], got 0.0"):
        make_cfg(tmp_path, tmp_path / "run", reference={"sync_every": 2, "sync_alpha": 0.0})
    with pytest.raises(ConfigError, match=r"reference.sync_alpha must be in \(0, 1\], got 1.5"):
        make_cfg(tmp_path, tmp_path / "run", reference={"sync_alpha": 1.5})
    with pytest.raises(ConfigError, match="reference.sync_every must be >= 0"):
        make_cfg(tmp_path, tmp_path / "run", reference={"sync_every": -1})

    # LoRA (auto -> adapters disabled): caught before the model is loaded (no data needed)
    lora = make_cfg(tmp_path / "nodata", tmp_path / "run", model={"name": "tiny-llama", "lora": {"r": 4}},
                    reference={"sync_every": 2})
    with pytest.raises(ConfigError, match="needs a separate frozen reference copy; with LoRA the reference "
                                          "is the policy with adapters disabled"):
        run_offline(lora)
    # a reference-free loss reads no reference section: the config itself refuses its settings
    with pytest.raises(ConfigError, match=r"reference: not read by this run \(algorithm simpo\)"):
        make_cfg(tmp_path, tmp_path / "run", algorithm="simpo", reference={"sync_every": 2})
    dpo = make_cfg(tmp_path, tmp_path / "run", reference={"sync_every": 2})
    check_reference_sync(dpo, get_algorithm("dpo"))  # full fine-tune, live copy: allowed
    with pytest.raises(ConfigError, match="which ZeRO-3 partitions"):
        check_reference_sync(dpo, get_algorithm("dpo"), zero3=True)
    check_reference_sync(make_cfg(tmp_path, tmp_path / "run", reference={"mode": "precompute"}),
                         get_algorithm("dpo"))  # sync off: nothing to check


def test_online_loop_rejects_sync(eos_model_dir, tmp_path):
    """The online loop has its own reference rules: TR-DPO's sync is refused, not silently ignored."""
    from online_helpers import make_cfg as make_online_cfg

    from prefopt.configs import TrainConfig
    from prefopt.core.config import from_dict, to_dict
    from prefopt.core.errors import ConfigError
    from prefopt.loops.online import run_online

    c = to_dict(make_online_cfg(eos_model_dir, tmp_path / "run", "grpo", {"beta": 0.04}))
    c["reference"] = {"mode": "copy", "sync_every": 2}
    with pytest.raises(ConfigError, match="reference.sync_every .*offline-loop option"):
        run_online(from_dict(TrainConfig, c))
