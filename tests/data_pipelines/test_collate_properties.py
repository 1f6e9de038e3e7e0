"""Property-based checks (hypothesis) of the three collator layouts on random pairs and ranked lists.

Invariants: the packed and shared-prompt layouts hold exactly the padded layout's tokens, masks and
positions (their ``unpack`` maps back to it); left padding is right padding shifted; every shared-prompt
completion token attends to exactly its prompt and its own prefix (so the number of allowed keys is its
position + 1) and is predicted from the token one position earlier.
"""
from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from data_pipelines.collate import collate_list, collate_packed, collate_padded, collate_shared_prompt
from data_pipelines.tokenize import TokenizedList, TokenizedPair

PAD = 0
tokens = st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=6).map(tuple)
pairs = st.builds(TokenizedPair, tokens, tokens, tokens)
lists = st.builds(lambda p, cs: TokenizedList(p, tuple(cs), tuple(float(i) for i in range(len(cs)))),
                  tokens, st.lists(tokens, min_size=2, max_size=4))
batches = st.one_of(st.lists(pairs, min_size=1, max_size=4), st.lists(lists, min_size=1, max_size=3))
SETTINGS = settings(max_examples=60, deadline=None)


def _padded(items):
    return collate_padded(items, PAD)


@SETTINGS
@given(items=batches)
def test_packed_unpacks_to_padded_layout(items):
    ref, packed = _padded(items), collate_packed(items)
    assert torch.equal(packed.unpack(packed.input_ids), ref.input_ids * ref.attention_mask)
    assert torch.equal(packed.padded_attention_mask, ref.attention_mask)
    assert torch.equal(packed.padded_completion_mask, ref.completion_mask)
    assert torch.equal(packed.seq_lens, ref.attention_mask.sum(-1))
    assert torch.equal(packed.cu_seqlens[1:] - packed.cu_seqlens[:-1], packed.seq_lens.int())
    assert int(packed.cu_seqlens[-1]) == packed.input_ids.shape[1]
    assert packed.max_seqlen == ref.input_ids.shape[1]
    assert torch.equal(packed.group_index, ref.group_index)


@SETTINGS
@given(items=batches)
def test_shared_prompt_unpacks_to_padded_layout(items):
    ref, sp = _padded(items), collate_shared_prompt(items, PAD)
    mask = ref.attention_mask.bool()
    assert torch.equal(sp.padded_attention_mask, ref.attention_mask)
    assert torch.equal(sp.unpack(sp.input_ids), ref.input_ids * ref.attention_mask)
    assert torch.equal(sp.padded_completion_mask, ref.completion_mask)
    assert torch.equal(sp.unpack(sp.position_ids)[mask], ref.position_ids[mask])
    # The shared layout stores each prompt once: never more tokens than the padded layout.
    assert int(sp.attention_mask.sum()) <= int(ref.attention_mask.sum())


@SETTINGS
@given(items=batches)
def test_shared_prompt_attention_and_sources(items):
    sp = collate_shared_prompt(items, PAD)
    real = sp.attention_mask.bool()
    allowed = sp.allowed[:, 0]
    n_keys = allowed.sum(-1)
    assert torch.equal(n_keys[real], sp.position_ids[real] + 1)
    assert torch.equal(n_keys[~real], torch.ones_like(n_keys[~real]))  # pads see only themselves
    causal = torch.ones_like(allowed[0]).tril()
    assert not (allowed & ~causal).any()  # nothing attends forward
    b, t = torch.nonzero(real & (sp.position_ids > 0), as_tuple=True)
    src = sp.source_index[b, t]
    assert (src >= 0).all() and torch.equal(sp.position_ids[b, src], sp.position_ids[b, t] - 1)
    assert allowed[b, t, src].all()


@SETTINGS
@given(items=batches, multiple=st.sampled_from([None, 3, 8]))
def test_left_padding_is_right_padding_shifted(items, multiple):
    right = collate_padded(items, PAD, pad_to_multiple_of=multiple)
    left = collate_padded(items, PAD, padding_side="left", pad_to_multiple_of=multiple)
    width = right.input_ids.shape[1]
    assert left.input_ids.shape == right.input_ids.shape
    assert multiple is None or width % multiple == 0
    for i, n in enumerate(right.attention_mask.sum(-1).tolist()):
        for name in ("input_ids", "completion_mask", "position_ids"):
            assert torch.equal(getattr(left, name)[i, width - n:], getattr(right, name)[i, :n]), name
        assert int(left.attention_mask[i, :width - n].sum()) == 0


@SETTINGS
@given(items=st.lists(lists, min_size=1, max_size=3))
def test_list_rows_are_example_major_with_scores(items):
    b = collate_list(items, PAD)
    expect = [i for i, it in enumerate(items) for _ in it.completion_ids]
    assert b.group_index.tolist() == expect
    assert b.scores.tolist() == [s for it in items for s in it.scores]
