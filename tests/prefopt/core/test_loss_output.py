"""One ``LossOutput`` for policy and reward-model losses."""
from __future__ import annotations

import dataclasses

import pytest
import torch


def test_policy_and_reward_model_losses_return_the_same_class():
    from prefopt.core.loss_output import LossOutput
    from prefopt.losses.base import LossOutput as PolicyOut
    from reward_models.losses import LossOutput as RMOut
    from reward_models.losses import bt_loss

    assert PolicyOut is LossOutput and RMOut is LossOutput
    out = bt_loss(torch.tensor([1.0]), torch.tensor([1.0]))
    assert type(out) is LossOutput
    assert float(out.loss[0]) == pytest.approx(0.693147, abs=1e-6)  # ln 2 at equal rewards


def test_loss_output_is_frozen_with_empty_defaults():
    from prefopt.core.loss_output import LossOutput

    out = LossOutput(loss=torch.zeros(2))
    assert out.metrics == {} and out.aux == {}
    with pytest.raises(dataclasses.FrozenInstanceError):
        out.loss = torch.ones(2)
