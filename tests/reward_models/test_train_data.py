"""RM batches: pair layout [chosen block; rejected block], prompt lengths, ranked slots, rank slicing,
listwise BT ignoring tied pairs (numbers derived by hand)."""
from __future__ import annotations

import math

import pytest
import torch

from reward_models.data import RMItem, collate_rm, micro_batches, subset
from reward_models.losses import listwise_bt_loss


def test_pairs_collate_chosen_block_then_rejected_block():
    items = [RMItem(((5, 6, 7), (5, 8)), (1, 1), margin=0.5), RMItem(((9, 10), (9, 11, 12, 13)), (1, 1))]
    b = collate_rm(items, pad_token_id=0)
    assert b.input_ids.tolist() == [[5, 6, 7, 0], [9, 10, 0, 0], [5, 8, 0, 0], [9, 11, 12, 13]]
    assert b.attention_mask.sum(-1).tolist() == [3, 2, 2, 4]
    assert b.slot.tolist() == [[0, 2], [1, 3]]
    assert b.prompt_lengths.tolist() == [1, 1, 1, 1]
    assert b.margin.tolist() == [0.5, 0.0]


def test_ranked_lists_of_different_length_get_padding_slots():
    items = [RMItem(((1, 2), (1, 3), (1, 4)), (1, 1, 1), (3.0, 2.0, 2.0)), RMItem(((7, 8), (7, 9)), (1, 1), (1.0, 0.0))]
    b = collate_rm(items, pad_token_id=0)
    assert b.slot.tolist() == [[0, 2, 4], [1, 3, -1]]
    assert torch.isnan(b.scores[1, 2]) and b.scores[0].tolist() == [3.0, 2.0, 2.0]


def test_listwise_bt_skips_tied_pairs():
    # scores (3, 2, 2): ordered pairs (0,1), (0,2) only; rewards (2, 1, 0) give gaps 1 and 2:
    # (softplus(-1) + softplus(-2)) / 2 = (0.313262 + 0.126928) / 2 = 0.220095
    out = listwise_bt_loss(torch.tensor([[2.0, 1.0, 0.0]]), scores=torch.tensor([[3.0, 2.0, 2.0]]))
    assert float(out.loss[0]) == pytest.approx((math.log1p(math.exp(-1)) + math.log1p(math.exp(-2))) / 2, abs=1e-6)


def test_micro_batches_slice_each_global_batch_by_rank():
    order = list(range(10))
    assert micro_batches(order, 2, 0, 2) == [[0, 1], [4, 5]]  # ragged tail (8, 9) dropped
    assert micro_batches(order, 2, 1, 2) == [[2, 3], [6, 7]]
    assert micro_batches(order, 4, 0, 1) == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_subset_is_seeded_and_keeps_file_order():
    a, b = subset(list(range(100)), 10, 3), subset(list(range(100)), 10, 3)
    assert a == b == sorted(a) and len(set(a)) == 10
    assert subset(list(range(5)), 3, None) == [0, 1, 2]
