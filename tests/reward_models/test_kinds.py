"""Reward-model kinds as registered specs (reward_models/kinds.py): one list, traits, batch-loss dispatch."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from prefopt.core.registry import RM_KINDS, RegistryError
from reward_models.data import RMBatch
from reward_models.kinds import get_kind, kind_names, model_kinds, needs_reference, scorer_kind, serving_kind


def test_one_kind_list_with_its_traits():
    assert kind_names() == ("bt", "ensemble", "gpm", "polar", "rao_kupper") == tuple(RM_KINDS.names())
    assert model_kinds() == ("bt", "gpm", "polar", "rao_kupper")
    traits = {k: (s.pairwise, s.needs_reference, s.reward_token, s.hf_seq_cls, s.members, s.head_init)
              for k in kind_names() for s in [get_kind(k)]}
    assert traits == {"bt": (False, False, False, True, False, "normal"),
                      "ensemble": (False, False, False, False, True, "normal"),
                      "gpm": (True, False, False, False, False, "normal"),
                      "polar": (False, True, True, False, False, "zeros"),
                      "rao_kupper": (False, False, False, True, False, "normal")}
    assert not get_kind("gpm").ranked_lists and get_kind("bt").ranked_lists
    with pytest.raises(RegistryError, match="unknown reward_model 'gmp' \\(did you mean 'gpm'\\?\\)"):
        get_kind("gmp")


def test_scorer_traits_read_the_registry():
    polar, bt = SimpleNamespace(kind="polar"), SimpleNamespace(kind="bt")
    assert scorer_kind(bt) is get_kind("bt") and scorer_kind(SimpleNamespace()) is None
    assert needs_reference(polar) and not needs_reference(bt)
    assert needs_reference(SimpleNamespace(members=[bt, polar]))  # an ensemble with a POLAR member
    # evaluation adapters: a scalar kind registered as serving like bt; other names pass through
    assert [serving_kind(k) for k in ("rao_kupper", "bt", "gpm", "dpo")] == ["bt", "bt", "gpm", "dpo"]


class _Rewards(torch.nn.Module):
    """A stand-in reward model: row i's reward is ``values[i]``."""

    def __init__(self, values):
        super().__init__()
        self.values = torch.tensor(values)

    def forward(self, ids, mask, **kw):
        return SimpleNamespace(rewards=self.values)


def _pair_batch(n: int) -> RMBatch:
    ids = torch.zeros(2 * n, 3, dtype=torch.long)
    slot = torch.stack([torch.arange(n), torch.arange(n, 2 * n)], 1)
    return RMBatch(input_ids=ids, attention_mask=torch.ones_like(ids), prompt_lengths=torch.ones(2 * n),
                   slot=slot)


def test_batch_loss_dispatches_through_the_kind():
    """bt: gaps (0, 2) give (ln 2, softplus(-2) = 0.126928); polar: the same BT ranking loss."""
    from reward_models.train_step import batch_loss

    model = _Rewards([1.0, 3.0, 1.0, 1.0])  # chosen (1, 3), rejected (1, 1)
    bt = SimpleNamespace(tau=1.0, center_coef=0.0, l2_coef=0.0, barrier_coef=0.0, focal=False,
                         listwise_loss="bt")
    for kind in ("bt", "polar"):
        cfg = SimpleNamespace(rm=SimpleNamespace(kind=kind, bt=bt), data=SimpleNamespace(use_margin=False))
        out, rewards = batch_loss(cfg, model, _pair_batch(2))
        assert out.loss.tolist() == pytest.approx([math.log(2.0), 0.126928], abs=1e-6)
        assert float(out.metrics["accuracy"]) == 0.5 and torch.equal(rewards, model.values)
