"""``Backend.save_model``: the one place that writes a trained model (ZeRO-3 gather inside the backend)."""
from __future__ import annotations

import pytest
import torch

from prefopt.core.backend import DeepSpeedBackend, OptimConfig, SingleBackend


def _calls(backend, model) -> list:
    seen: list = []
    backend.save_model(model, seen.append)
    return seen


def test_single_backend_writes_once_with_the_modules_own_weights():
    backend = SingleBackend(torch.device("cpu"), OptimConfig())
    assert _calls(backend, torch.nn.Linear(2, 1)) == [None]


def test_only_the_main_process_writes():
    backend = SingleBackend(torch.device("cpu"), OptimConfig())
    backend.rank = 1  # world_size stays 1, so the barrier is a no-op
    assert _calls(backend, torch.nn.Linear(2, 1)) == []


def _ds_backend(stage: int) -> DeepSpeedBackend:
    backend = DeepSpeedBackend.__new__(DeepSpeedBackend)  # no process group: rank 0 of 1
    backend.zero_stage, backend.rank, backend.world_size = stage, 0, 1
    return backend


def test_zero2_writes_like_a_single_process():
    assert _calls(_ds_backend(2), torch.nn.Linear(2, 1)) == [None]


def test_zero3_hands_the_writer_a_full_cpu_copy_of_the_state():
    pytest.importorskip("deepspeed")
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    (state,) = _calls(_ds_backend(3), model)
    assert sorted(state) == ["bias", "weight"]
    assert torch.equal(state["weight"], model.weight.detach()) and state["weight"].shape == (2, 3)
    assert state["weight"].data_ptr() != model.weight.data_ptr()  # a copy: later steps cannot change it
