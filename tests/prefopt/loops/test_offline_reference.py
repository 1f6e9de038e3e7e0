"""Reference modes of the offline loop (spec section 6) and curriculum ordering (section 5).

* precompute: the cache is written once; a second run with the same cache reads it and makes no
  reference forward at all (Reference.run is counted) and its losses equal the live-copy run (1e-5).
* LoRA: the reference is the policy with adapters disabled - no frozen copy is ever made.
* Curry-DPO iterative: the reference of stage s+1 is bitwise the policy at the end of stage s and is
  the same at every reference forward of the stage (full fine-tune and LoRA).
* Curry-DPO ordered: every stage-1 pair is emitted before any stage-2 pair.
"""
from __future__ import annotations

import math

import pytest
import torch
from offline_helpers import make_cfg, pair_records, train_rows, write_set


def _count_reference_calls(monkeypatch) -> list[int]:
    from prefopt.loops import reference

    calls = [0]
    real = reference.Reference.run

    def counted(self, policy, fn):
        calls[0] += 1
        return real(self, policy, fn)

    monkeypatch.setattr(reference.Reference, "run", counted)
    return calls


@pytest.mark.slow
def test_precompute_cache_written_once_reused_and_equal_to_live(tmp_path, monkeypatch):
    from prefopt.loops.offline import run_offline

    data = write_set(tmp_path / "data", pair_records(4), pair_records(2))
    cache = tmp_path / "cache"
    calls = _count_reference_calls(monkeypatch)
    run_offline(make_cfg(data, tmp_path / "live", reference={"mode": "copy"}))
    live_calls = calls[0]
    assert live_calls > 0
    calls[0] = 0
    run_offline(make_cfg(data, tmp_path / "pre1", reference={"mode": "precompute", "cache_dir": str(cache)}))
    assert calls[0] == 2  # one batch of 4 train pairs, one batch of 2 eval pairs; training: none
    files = sorted(p.name for p in cache.iterdir())
    assert files == ["ref_logps.safetensors", "ref_logps_eval.safetensors"]
    mtimes = {p: p.stat().st_mtime_ns for p in cache.iterdir()}
    calls[0] = 0
    run_offline(make_cfg(data, tmp_path / "pre2", reference={"mode": "precompute", "cache_dir": str(cache)}))
    assert calls[0] == 0
    assert {p: p.stat().st_mtime_ns for p in cache.iterdir()} == mtimes
    live, pre = train_rows(tmp_path / "live"), train_rows(tmp_path / "pre2")
    assert len(live) == len(pre) == 2
    for a, b in zip(live, pre, strict=False):
        for key in ("loss", "rewards/margins", "kl"):
            assert b[key] == pytest.approx(a[key], abs=1e-5)


@pytest.mark.slow
def test_lora_reference_is_adapter_disabled_without_copy(tmp_path, monkeypatch):
    from prefopt.loops import reference
    from prefopt.loops.offline import run_offline

    real_deepcopy = reference.copy.deepcopy

    def no_copy(obj, *args):
        if isinstance(obj, torch.nn.Module):
            raise AssertionError("a frozen reference copy was made under LoRA")
        return real_deepcopy(obj, *args)

    monkeypatch.setattr(reference, "_frozen_copy", no_copy)
    monkeypatch.setattr(reference.copy, "deepcopy", no_copy)
    data = write_set(tmp_path / "data", pair_records(4))
    run_offline(make_cfg(data, tmp_path / "run", model={"name": "tiny-llama", "lora": {"r": 4, "dropout": 0.0}}))
    rows = train_rows(tmp_path / "run")
    # fresh adapters (B = 0): policy == reference, so the first DPO loss is exactly ln 2
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)


def _base_key(name: str) -> str:
    return name.replace("base_model.model.", "").replace(".base_layer", "")


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True])
def test_curry_iterative_reference_is_previous_stage_policy(tmp_path, monkeypatch, lora):
    from prefopt.loops import offline, reference
    from prefopt.loops.hooks import curriculum

    stage = [1]
    expected: dict[int, dict[str, torch.Tensor]] = {}
    seen: dict[int, list[dict[str, torch.Tensor]]] = {}
    real_refresh = curriculum.refresh_reference

    def refresh(policy, ref, lora_cfg):
        import copy

        end = copy.deepcopy(policy)
        if reference.is_peft(end):
            end = end.merge_and_unload()
        stage[0] += 1
        expected[stage[0]] = {k: v.detach().clone() for k, v in end.state_dict().items()}
        return real_refresh(policy, ref, lora_cfg)

    real_run = reference.Reference.run

    def run(self, policy, fn):
        def capture(m):
            state = {_base_key(k): v.detach().clone() for k, v in m.state_dict().items() if "lora_" not in k}
            seen.setdefault(stage[0], []).append(state)
            return fn(m)

        return real_run(self, policy, capture)

    monkeypatch.setattr(curriculum, "refresh_reference", refresh)
    monkeypatch.setattr(reference.Reference, "run", run)
    data = write_set(tmp_path / "data", pair_records(8, stages=2))
    model = {"name": "tiny-llama", "lora": {"r": 4, "dropout": 0.0}} if lora else {"name": "tiny-llama"}
    offline.run_offline(make_cfg(data, tmp_path / "run", algorithm="curry_dpo", model=model))
    assert sorted(expected) == [2] and len(seen[2]) == 2  # 2 steps in stage 2, one reference forward each
    for state in seen[2]:
        assert state.keys() == expected[2].keys()
        for k, v in expected[2].items():
            assert torch.equal(state[k], v), k
    # and the stage-2 reference differs from the stage-1 one (the policy did move)
    assert any(not torch.equal(seen[1][0][k], expected[2][k]) for k in expected[2])
    rows = train_rows(tmp_path / "run")
    assert [r["curry/stage"] for r in rows] == [1.0, 1.0, 2.0, 2.0]
    assert rows[2]["loss"] == pytest.approx(math.log(2), abs=1e-6)


class _Tok:
    prompt_ids = chosen_ids = rejected_ids = (1,)


def _items(stages: list[int]):
    from prefopt.loops.offline_data import Item

    return [Item(_Tok(), i, s) for i, s in enumerate(stages)]


def _plan_cfg(tmp_path, **kw):
    return make_cfg(tmp_path, tmp_path / "run", algorithm=kw.pop("algorithm", "curry_dpo"), **kw)


def test_ordered_mode_emits_stage_1_before_stage_2(tmp_path):
    from prefopt.algorithms import get_algorithm
    from prefopt.loops.offline import make_plan

    items = _items([2, 1, 3, 1, 2, 1, 3, 2, 1, 3, 2, 3])  # file order mixes stages
    spec = get_algorithm("curry_dpo")
    for mode in ("ordered", "iterative"):
        plan = make_plan(_plan_cfg(tmp_path, curriculum=mode), items, spec, 0, 1)
        emitted = [it.stage for s in plan.stages for mb in plan.batches[s] for it in mb]
        assert emitted == sorted(emitted) == [1] * 4 + [2] * 4 + [3] * 4
        assert plan.stage_steps == {1: 2, 2: 2, 3: 2} and plan.total_steps == 6
    ordered = make_plan(_plan_cfg(tmp_path, curriculum="ordered"), items, spec, 0, 1)
    assert [it.index for mb in ordered.batches[1] for it in mb] == [1, 3, 5, 8]  # file order kept
    shuffled = make_plan(_plan_cfg(tmp_path, curriculum="shuffled"), items, spec, 0, 1)
    assert shuffled.stages == [1] and sorted(it.index for mb in shuffled.batches[1] for it in mb) == list(range(12))


def test_plan_fractional_epochs_max_steps_and_accumulation(tmp_path):
    from prefopt.algorithms import get_algorithm
    from prefopt.loops.offline import make_plan

    items, spec = _items([1] * 8), get_algorithm("dpo")
    plan = make_plan(_plan_cfg(tmp_path, algorithm="dpo", epochs=1.5), items, spec, 0, 1)
    assert len(plan.batches[1]) == 6 and plan.total_steps == 6  # 4 per epoch x 1.5
    first, second = plan.batches[1][:4], plan.batches[1][4:]
    assert sorted(it.index for mb in first for it in mb) == list(range(8))  # epoch 1 complete
    assert len({it.index for mb in second for it in mb}) == 4  # half of a fresh epoch
    plan = make_plan(_plan_cfg(tmp_path, algorithm="dpo", epochs=0.5), items, spec, 0, 1)
    assert plan.total_steps == 2
    plan = make_plan(_plan_cfg(tmp_path, algorithm="dpo", max_steps=10), items, spec, 0, 1)
    assert plan.total_steps == 10 and len(plan.batches[1]) == 10  # epochs repeat
    plan = make_plan(_plan_cfg(tmp_path, algorithm="dpo", optim={"grad_accum": 3}), items, spec, 0, 1)
    assert len(plan.batches[1]) == 3 and plan.total_steps == 1  # 4 micro-batches -> one whole step
    two = [make_plan(_plan_cfg(tmp_path, algorithm="dpo"), items, spec, r, 2) for r in (0, 1)]
    ids = [sorted(it.index for mb in p.batches[1] for it in mb) for p in two]
    assert not set(ids[0]) & set(ids[1]) and len(ids[0]) == len(ids[1]) == 4
