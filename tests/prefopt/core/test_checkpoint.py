import random

import numpy as np
import pytest
import torch

from prefopt.core.backend import OptimConfig, SingleBackend
from prefopt.core.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint


def _setup(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    model[0].weight.requires_grad_(False)
    backend = SingleBackend(torch.device("cpu"), OptimConfig(lr=0.1, warmup_ratio=0.0))
    backend.prepare(model, total_steps=10)
    return model, backend


def _train_step(model, backend):
    x = torch.randn(5, 3)
    loss = model(x).pow(2).mean()
    backend.backward(loss)
    backend.step()
    return loss.item()


def test_resume_reproduces_uninterrupted_run(tmp_path):
    model, backend = _setup()
    losses = [_train_step(model, backend) for _ in range(2)]
    save_checkpoint(tmp_path, 2, model, backend, {"data_pos": 2, "eta": [0.9]})
    ref = [_train_step(model, backend) for _ in range(3)]
    py_next, np_next = random.random(), np.random.rand()

    model2, backend2 = _setup(seed=0)  # frozen weights come from the base model, as in real runs
    with torch.no_grad():  # trainable weights must come from the checkpoint
        for p in model2.parameters():
            if p.requires_grad:
                p.add_(1.0)
    torch.manual_seed(999)
    state = load_checkpoint(latest_checkpoint(tmp_path), model2, backend2)
    assert state == {"step": 2, "data_pos": 2, "eta": [0.9]}
    assert [_train_step(model2, backend2) for _ in range(3)] == ref
    assert (random.random(), np.random.rand()) == (py_next, np_next)
    assert len(losses) == 2


def test_keep_last_and_partial_and_corrupt(tmp_path):
    model, backend = _setup()
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model, backend, {}, keep_last=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-000002", "step-000003"]
    (tmp_path / "checkpoints" / ".tmp-step-000004").mkdir()
    with pytest.warns(UserWarning, match="ignoring partial checkpoint"):
        assert latest_checkpoint(tmp_path).name == "step-000003"
    (tmp_path / "checkpoints" / "step-000003" / "trainable.safetensors").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match=r"step-000003 is corrupt: trainable.safetensors does not match its "
                      r"checksum; moved it aside to .*\.corrupt-step-000003 and falling back"):
        assert latest_checkpoint(tmp_path).name == "step-000002"
    assert (tmp_path / "checkpoints" / ".corrupt-step-000003" / "trainable.safetensors").read_bytes() == b"garbage"
    (tmp_path / "checkpoints" / "step-000002" / "rng.pt").unlink()
    with pytest.warns(UserWarning, match="rng.pt is missing"):
        assert latest_checkpoint(tmp_path) is None


def test_checkpoint_for_another_model_raises(tmp_path):
    model, backend = _setup()
    save_checkpoint(tmp_path, 1, model, backend, {})
    other = torch.nn.Linear(3, 1)
    b2 = SingleBackend(torch.device("cpu"), OptimConfig(lr=0.1))
    b2.prepare(other, 10)
    with pytest.raises(CheckpointError, match="does not fit this model"):
        load_checkpoint(latest_checkpoint(tmp_path), other, b2)
