"""Chunked log-probs vs naive log_softmax, and layout equivalence on the tiny model."""
from __future__ import annotations

import math

import pytest
import torch

from data_pipelines.collate import collate_packed, collate_padded, collate_shared_prompt
from data_pipelines.schemas import PairwiseExample, RankedExample
from data_pipelines.tokenize import LengthPolicy, tokenize_examples
from prefopt.core.models import apply_lora, make_tiny_model
from prefopt.logprobs import entropy, forward_token_logps, gather_logps, sequence_logps, token_logps


def naive(logits, ids):
    lp = torch.log_softmax(logits.float(), -1)[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
    return torch.cat([torch.zeros(ids.shape[0], 1), lp], 1)


@pytest.mark.parametrize("chunk", [1, 3, 7, 100])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_equals_naive(chunk, dtype):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 50, generator=g).to(dtype)  # |log p| ~ 4: fp32 rounding ~5e-7
    ids = torch.randint(0, 50, (3, 7), generator=g)
    out = token_logps(logits, ids, chunk_size=chunk)
    assert out.dtype == torch.float32 and out.shape == (3, 7)
    assert torch.all(out[:, 0] == 0)
    assert torch.allclose(out, naive(logits, ids), atol=1e-6, rtol=0)


def test_uniform_logits_hand_value():
    """Equal logits over V = 4: every token has log-prob log(1/4) = -1.3863 (position 0 stays 0)."""
    out = token_logps(torch.zeros(1, 3, 4), torch.tensor([[0, 1, 2]]), chunk_size=1)
    assert torch.allclose(out, torch.tensor([[0.0, -math.log(4), -math.log(4)]]))


def test_gradients_match_naive():
    g = torch.Generator().manual_seed(1)
    base = torch.randn(2, 6, 30, generator=g)
    ids = torch.randint(0, 30, (2, 6), generator=g)
    a = base.clone().requires_grad_()
    b = base.clone().requires_grad_()
    (token_logps(a, ids, chunk_size=2) * torch.arange(6.0)).sum().backward()
    (naive(b, ids) * torch.arange(6.0)).sum().backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-6)


def test_gather_logps_unshifted():
    logits = torch.tensor([[[0.0, math.log(3.0)]]])  # p = (1/4, 3/4)
    assert torch.allclose(gather_logps(logits, torch.tensor([[1]])), torch.tensor([[math.log(0.75)]]))
    with pytest.raises(ValueError):
        gather_logps(logits, torch.tensor([[1]]), chunk_size=0)


def test_sequence_logps_sum_and_average():
    """Row 0: -1 - 2 on the mask = -3, mean -1.5; row 1: empty mask -> sum 0, mean 0 (divide by max(n, 1))."""
    lp = torch.tensor([[0.0, -1.0, -2.0], [0.0, -5.0, -6.0]])
    mask = torch.tensor([[0, 1, 1], [0, 0, 0]])
    assert torch.equal(sequence_logps(lp, mask), torch.tensor([-3.0, 0.0]))
    assert torch.equal(sequence_logps(lp, mask, average=True), torch.tensor([-1.5, 0.0]))


def test_entropy_matches_naive():
    """Uniform over 4 -> log 4; shifted layout puts it on positions 1.. ."""
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 5, 11, generator=g)
    p = torch.softmax(logits, -1)
    ref = -(p * torch.log_softmax(logits, -1)).sum(-1)
    assert torch.allclose(entropy(logits, chunk_size=2, shift=False), ref, atol=1e-6)
    shifted = entropy(logits, chunk_size=3)
    assert torch.all(shifted[:, 0] == 0) and torch.allclose(shifted[:, 1:], ref[:, :-1], atol=1e-6)
    assert torch.allclose(entropy(torch.zeros(1, 2, 4), shift=False), torch.full((1, 2), math.log(4)))


MSGS = [{"role": "user", "content": "What is 2+2?"}]


@pytest.fixture(scope="module")
def items(tiny_tokenizer):
    pairs = [PairwiseExample(MSGS, "Four.", "Five, obviously, because reasons.", margin=1.0, id="a"),
             PairwiseExample([{"role": "user", "content": "Name a colour, any colour."}], "Blue is one.", "No.")]
    ranked = [RankedExample(MSGS, ["4", "It is four.", "five"], [3.0, 2.0, 1.0]),
              RankedExample([{"role": "user", "content": "Say hi"}], ["hi", "hello there"], [1.0, 0.0])]
    policy = LengthPolicy(max_length=128, max_prompt_length=64)
    return {"pairwise": tokenize_examples(pairs, tiny_tokenizer, policy)[0],
            "ranked": tokenize_examples(ranked, tiny_tokenizer, policy)[0]}


def _all_layouts(batch_items, pad):
    return {"right": collate_padded(batch_items, pad), "left": collate_padded(batch_items, pad, "left"),
            "packed": collate_packed(batch_items), "shared": collate_shared_prompt(batch_items, pad)}


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("kind", ["pairwise", "ranked"])
def test_layouts_agree_on_tiny_model(items, tiny_tokenizer, attn, kind):
    model = make_tiny_model(seed=0, attn_implementation=attn)
    outs = {}
    with torch.no_grad():
        for name, batch in _all_layouts(items[kind], tiny_tokenizer.pad_token_id).items():
            outs[name] = forward_token_logps(model, batch, chunk_size=5, with_entropy=True, positions="all")
    ref = outs["right"]
    ref_seq = sequence_logps(ref.token_logps, ref.completion_mask)
    assert torch.all(ref_seq < 0)
    for name in ("packed", "shared"):  # same padded (right) layout back
        o = outs[name]
        assert torch.equal(o.completion_mask, ref.completion_mask)
        assert torch.equal(o.attention_mask, ref.attention_mask)
        real = ref.attention_mask.bool()
        assert torch.allclose(o.token_logps[real], ref.token_logps[real], atol=1e-5, rtol=0)
        assert torch.allclose(o.entropy[real], ref.entropy[real], atol=1e-5, rtol=0)
        assert torch.allclose(sequence_logps(o.token_logps, o.completion_mask), ref_seq, atol=1e-5, rtol=0)
    left = outs["left"]
    assert torch.allclose(sequence_logps(left.token_logps, left.completion_mask), ref_seq, atol=1e-5, rtol=0)


def test_forward_matches_naive_and_gradients_agree(items, tiny_tokenizer):
    """Padded forward = naive log_softmax on the model's logits; packed/shared grads = padded grads."""
    pad = tiny_tokenizer.pad_token_id
    batches = _all_layouts(items["pairwise"], pad)
    grads = {}
    for name in ("right", "packed", "shared"):
        model = make_tiny_model(seed=0)
        out = forward_token_logps(model, batches[name], chunk_size=4, positions="all")
        sequence_logps(out.token_logps, out.completion_mask).sum().backward()
        grads[name] = model.model.layers[0].self_attn.q_proj.weight.grad.clone()
        if name == "right":
            b = batches["right"]
            with torch.no_grad():
                logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask,
                               position_ids=b.position_ids).logits
            real = b.attention_mask.bool()
            assert torch.allclose(out.token_logps.detach()[real], naive(logits, b.input_ids)[real], atol=1e-6)
    for name in ("packed", "shared"):
        assert torch.allclose(grads[name], grads["right"], atol=1e-5)


def test_forward_through_lora_model(items, tiny_tokenizer):
    model = apply_lora(make_tiny_model(seed=0), r=2, alpha=4, dropout=0.0)
    out = forward_token_logps(model, collate_shared_prompt(items["ranked"], tiny_tokenizer.pad_token_id))
    assert out.token_logps.shape == out.completion_mask.shape and torch.isfinite(out.token_logps).all()


def test_unknown_batch_type(tiny_model):
    with pytest.raises(TypeError, match="unsupported batch"):
        forward_token_logps(tiny_model, object())
