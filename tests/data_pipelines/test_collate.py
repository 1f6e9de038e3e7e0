"""Collators on hand-made token ids (no tokenizer): padded, packed and shared-prompt layouts."""
from __future__ import annotations

import pytest
import torch

from data_pipelines.collate import (
    ListBatch,
    PackedBatch,
    PairwiseBatch,
    SharedPromptBatch,
    collate_list,
    collate_packed,
    collate_padded,
    collate_pairwise,
    collate_shared_prompt,
)
from data_pipelines.tokenize import TokenizedList, TokenizedPair

PAD = 0
# Example 0: prompt [1, 2], chosen [3], rejected [4, 5]; example 1: prompt [6], chosen [7, 8], rejected [9].
PAIRS = [TokenizedPair((1, 2), (3,), (4, 5), margin=1.5, id="a"), TokenizedPair((6,), (7, 8), (9,), id="b")]
# Example 0: prompt [1], completions [2], [3, 4]; example 1: prompt [5, 6], completions [7], [8], [9].
LISTS = [TokenizedList((1,), ((2,), (3, 4)), (0.5, 1.0), id="x"),
         TokenizedList((5, 6), ((7,), (8,), (9,)), (3.0, 2.0, 1.0), id="y")]
T = torch.tensor


def test_pairwise_right_padding():
    """Rows: chosen a = 1 2 3, chosen b = 6 7 8, rejected a = 1 2 4 5, rejected b = 6 9; T = 4."""
    b = collate_pairwise(PAIRS, PAD)
    assert isinstance(b, PairwiseBatch) and b.layout == "padded" and b.kind == "pairwise"
    assert torch.equal(b.input_ids, T([[1, 2, 3, 0], [6, 7, 8, 0], [1, 2, 4, 5], [6, 9, 0, 0]]))
    assert torch.equal(b.attention_mask, T([[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]]))
    assert torch.equal(b.completion_mask, T([[0, 0, 1, 0], [0, 1, 1, 0], [0, 0, 1, 1], [0, 1, 0, 0]]))
    assert torch.equal(b.position_ids, T([[0, 1, 2, 2], [0, 1, 2, 2], [0, 1, 2, 3], [0, 1, 1, 1]]))
    assert torch.equal(b.group_index, T([0, 1, 0, 1]))
    assert torch.equal(b.margin, T([1.5, 0.0])) and b.scores is None
    assert b.ids == ("a", "b") and b.num_examples == 2 and b.num_sequences == 4


def test_pairwise_left_padding_and_multiple():
    b = collate_pairwise(PAIRS, PAD, padding_side="left", pad_to_multiple_of=3)  # T = 4 -> 6
    assert b.input_ids.shape == (4, 6)
    assert torch.equal(b.input_ids[3], T([0, 0, 0, 0, 6, 9]))
    assert torch.equal(b.completion_mask[3], T([0, 0, 0, 0, 0, 1]))
    assert torch.equal(b.position_ids[3], T([0, 0, 0, 0, 0, 1]))
    right = collate_pairwise(PAIRS, PAD)
    n_real = right.attention_mask.sum(-1)
    for i in range(4):  # the same tokens/positions, only moved
        assert torch.equal(b.input_ids[i, 6 - n_real[i]:], right.input_ids[i, :n_real[i]])
        assert torch.equal(b.position_ids[i, 6 - n_real[i]:], right.position_ids[i, :n_real[i]])


def test_no_margin_gives_none():
    assert collate_pairwise([TokenizedPair((1,), (2,), (3,))], PAD).margin is None


def test_list_batch_variable_k():
    b = collate_list(LISTS, PAD)
    assert isinstance(b, ListBatch) and b.kind == "list"
    assert torch.equal(b.input_ids, T([[1, 2, 0], [1, 3, 4], [5, 6, 7], [5, 6, 8], [5, 6, 9]]))
    assert torch.equal(b.completion_mask, T([[0, 1, 0], [0, 1, 1], [0, 0, 1], [0, 0, 1], [0, 0, 1]]))
    assert torch.equal(b.group_index, T([0, 0, 1, 1, 1]))
    assert torch.equal(b.scores, T([0.5, 1.0, 3.0, 2.0, 1.0]))


def test_packed_layout():
    """Sequences (padded-layout order): 1 2 3 | 6 7 8 | 1 2 4 5 | 6 9 -> total 12."""
    b = collate_packed(PAIRS)
    assert isinstance(b, PackedBatch) and b.layout == "packed"
    assert torch.equal(b.input_ids, T([[1, 2, 3, 6, 7, 8, 1, 2, 4, 5, 6, 9]]))
    assert torch.equal(b.position_ids, T([[0, 1, 2, 0, 1, 2, 0, 1, 2, 3, 0, 1]]))
    assert torch.equal(b.seq_index, T([[0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 3, 3]]))
    assert torch.equal(b.completion_mask, T([[0, 0, 1, 0, 1, 1, 0, 0, 1, 1, 0, 1]]))
    assert torch.equal(b.seq_lens, T([3, 3, 4, 2]))
    assert b.cu_seqlens.dtype == torch.int32 and b.cu_seqlens.tolist() == [0, 3, 6, 10, 12]
    assert b.max_seqlen == 4
    right = collate_pairwise(PAIRS, PAD)
    assert torch.equal(b.unpack(b.input_ids), right.input_ids)  # PAD = 0 = unpack's fill
    assert torch.equal(b.padded_completion_mask, right.completion_mask)
    assert torch.equal(b.padded_attention_mask, right.attention_mask)


def test_shared_prompt_layout_pairs():
    """Example 0 row: 1 2 | 3 | 4 5 (prompt positions 0 1, chosen 2, rejected 2 3); example 1: 6 | 7 8 | 9."""
    b = collate_shared_prompt(PAIRS, PAD)
    assert isinstance(b, SharedPromptBatch) and b.layout == "shared_prompt"
    assert torch.equal(b.input_ids, T([[1, 2, 3, 4, 5], [6, 7, 8, 9, 0]]))
    assert torch.equal(b.position_ids, T([[0, 1, 2, 2, 3], [0, 1, 2, 1, 0]]))
    assert torch.equal(b.completion_mask, T([[0, 0, 1, 1, 1], [0, 1, 1, 1, 0]]))
    # token 3 (chosen) and 4 (rejected's first) are both predicted from the prompt's last token (index 1)
    assert torch.equal(b.source_index, T([[-1, 0, 1, 1, 3], [-1, 0, 1, 0, -1]]))
    allowed0 = T([[1, 0, 0, 0, 0],
                  [1, 1, 0, 0, 0],
                  [1, 1, 1, 0, 0],   # chosen: prompt + itself
                  [1, 1, 0, 1, 0],   # rejected token 1: prompt + itself, not chosen
                  [1, 1, 0, 1, 1]]).bool()
    assert torch.equal(b.allowed[0, 0], allowed0)
    allowed1 = T([[1, 0, 0, 0, 0],
                  [1, 1, 0, 0, 0],
                  [1, 1, 1, 0, 0],
                  [1, 0, 0, 1, 0],
                  [0, 0, 0, 0, 1]]).bool()  # padding sees itself only
    assert torch.equal(b.allowed[1, 0], allowed1)
    add = b.additive_mask(torch.bfloat16)
    assert add.dtype == torch.bfloat16 and add.shape == (2, 1, 5, 5)
    assert torch.equal(add == 0, b.allowed) and torch.isfinite(add).all()
    right = collate_pairwise(PAIRS, PAD)
    assert torch.equal(b.unpack(b.input_ids), right.input_ids)
    assert torch.equal(b.unpack(b.position_ids), right.position_ids * right.attention_mask)
    assert torch.equal(b.padded_completion_mask, right.completion_mask)
    assert torch.equal(b.padded_attention_mask, right.attention_mask)


def test_shared_prompt_lists_unpack_to_padded_order():
    b = collate_shared_prompt(LISTS, PAD, pad_to_multiple_of=4)
    assert b.input_ids.shape == (2, 8)  # widest row 5 6 7 8 9 -> 5, rounded to 8
    padded = collate_list(LISTS, PAD)
    assert torch.equal(b.unpack(b.input_ids), padded.input_ids)
    assert torch.equal(b.padded_completion_mask, padded.completion_mask)
    assert torch.equal(b.group_index, padded.group_index) and torch.equal(b.scores, padded.scores)


def test_bad_batches():
    with pytest.raises(ValueError, match="empty"):
        collate_padded([], PAD)
    with pytest.raises(TypeError, match="only"):
        collate_packed([PAIRS[0], LISTS[0]])
    with pytest.raises(ValueError, match="padding_side"):
        collate_padded(PAIRS, PAD, padding_side="middle")


def test_shared_prompt_empty_last_completion():
    """An empty completion at the end of the widest row: no write past the row; the other completion's
    first token is predicted from the prompt's last position (2), its second from its first (3)."""
    b = collate_shared_prompt([TokenizedList((1, 2, 3), ((4, 5), ()), (1.0, 0.0))], 0)
    assert b.source_index.tolist() == [[-1, 0, 1, 2, 3]]
    assert b.segments == ((3, ((3, 5), (5, 5))),)
    assert b.unpack_index.tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, -1, -1]]
