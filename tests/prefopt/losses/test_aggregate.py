"""Aggregation modes and their shard invariance (spec §1 A-G4, brief: global counts)."""
from __future__ import annotations

import pytest
import torch

from prefopt.losses.aggregate import AGG_MODES, aggregate
from prefopt.losses.group import grpo_loss


def _two_seqs():
    mask = torch.tensor([[1.0, 0, 0, 0], [1.0, 1, 1, 0]])
    return torch.ones(2, 4), mask


def test_a_g4_lengths_1_and_3():
    """ℓ ≡ 1, lengths 1 and 3: grpo = (1 + 1)/2 = 1; dapo = 4/4 = 1; dr_grpo (L_max 4) = 4/(2·4)."""
    per_tok, mask = _two_seqs()
    assert aggregate(per_tok, mask, "grpo").sum().item() == pytest.approx(1.0)
    assert aggregate(per_tok, mask, "dapo").sum().item() == pytest.approx(1.0)
    assert aggregate(per_tok, mask, "dr_grpo", max_len=4).sum().item() == pytest.approx(0.5)


def test_unequal_values_hand_derived():
    """Rows ℓ = (2, ·, ·, ·) len 1 and (1, 3, 5, ·) len 3:
    token_mean: (2 + 9)/4 = 2.75 → contributions (0.5, 2.25);
    seq_mean_token_mean: (2/1 + 9/3)/2 = 2.5 → (1.0, 1.5);
    seq_mean_token_sum_norm, L_max 5: 11/(2·5) = 1.1 → (0.2, 0.9)."""
    per_tok = torch.tensor([[2.0, 7, 7, 7], [1.0, 3, 5, 7]])
    _, mask = _two_seqs()
    torch.testing.assert_close(aggregate(per_tok, mask, "token_mean"), torch.tensor([0.5, 2.25]))
    torch.testing.assert_close(aggregate(per_tok, mask, "seq_mean_token_mean"), torch.tensor([1.0, 1.5]))
    torch.testing.assert_close(aggregate(per_tok, mask, "seq_mean_token_sum_norm", max_len=5),
                               torch.tensor([0.2, 0.9]))


@pytest.mark.parametrize("mode", AGG_MODES)
@pytest.mark.parametrize("split", [3, 1, 4])
def test_sharding_invariance(mode, split):
    """Two fake ranks with the global counts sum to the unsharded value (any split point)."""
    g = torch.Generator().manual_seed(0)
    per_tok = torch.randn(6, 7, generator=g)
    mask = (torch.rand(6, 7, generator=g) > 0.3).float()
    mask[:, 0] = 1.0
    full = aggregate(per_tok, mask, mode, max_len=7).sum()
    kw = dict(num_tokens=mask.sum(), num_sequences=6, max_len=7)
    sharded = sum(aggregate(per_tok[s], mask[s], mode, **kw).sum()
                  for s in (slice(0, split), slice(split, 6)))
    torch.testing.assert_close(sharded, full)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_grpo_loss_sharding_invariance_values_and_grads(loss_type):
    """grpo_loss on two shards with global counts: same loss and same gradient as unsharded."""
    g = torch.Generator().manual_seed(1)
    old = -torch.rand(4, 5, generator=g)
    logps = (old + 0.3 * torch.randn(4, 5, generator=g)).requires_grad_()
    mask = torch.tensor([[1.0, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 1, 0, 0]])
    adv = torch.tensor([1.0, -0.5, 0.25, -2.0])
    full = grpo_loss(logps, old, adv, mask, loss_type=loss_type).loss.mean()
    (grad_full,) = torch.autograd.grad(full, logps)
    kw = dict(loss_type=loss_type, num_tokens=mask.sum(), num_sequences=4, max_completion_length=5)
    parts = [grpo_loss(logps[s], old[s], adv[s], mask[s], **kw).loss.mean()
             for s in (slice(0, 1), slice(1, 4))]
    (grad_sh,) = torch.autograd.grad(sum(parts), logps)
    torch.testing.assert_close(sum(parts), full)
    torch.testing.assert_close(grad_sh, grad_full)


def test_unknown_mode_raises():
    per_tok, mask = _two_seqs()
    with pytest.raises(ValueError, match="unknown aggregation mode 'foo'"):
        aggregate(per_tok, mask, "foo")
