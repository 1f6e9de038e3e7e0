"""The completion-only LM head (prefopt.lm_head) equals the plain full-logits path.

Every comparison is against a path that does not share the code under test: ``log_softmax`` of the
model's own ``.logits`` (or of ``head(h)`` computed in one piece), in float32, to 1e-5.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch

from data_pipelines.collate import collate_packed, collate_padded, collate_shared_prompt
from data_pipelines.schemas import GroupExample, PairwiseExample
from data_pipelines.tokenize import LengthPolicy, tokenize_examples
from prefopt.core.models import apply_lora, make_tiny_model
from prefopt.lm_head import head_logps, split_causal_lm
from prefopt.logprobs import forward_token_logps, sequence_logps

MSGS = [{"role": "user", "content": "What is 2+2? Answer briefly, please."}]


@pytest.fixture(scope="module")
def items(tiny_tokenizer):
    pairs = [PairwiseExample(MSGS, "Four.", "Five, obviously, because reasons.", id="a"),
             PairwiseExample([{"role": "user", "content": "Name a colour."}], "Blue is one.", "No.", id="b")]
    groups = [GroupExample(MSGS, ["4", "It is four.", "five", "2+2=4, so four."], [1.0, 0.5, 0.0, 1.0]),
              GroupExample([{"role": "user", "content": "Say hi"}], ["hi", "hello there"], [1.0, 0.0])]
    policy = LengthPolicy(max_length=128, max_prompt_length=64)
    return {"pairwise": tokenize_examples(pairs, tiny_tokenizer, policy)[0],
            "group": tokenize_examples(groups, tiny_tokenizer, policy)[0]}


def _batches(toks, pad):
    return {"padded": collate_padded(toks, pad), "left": collate_padded(toks, pad, "left"),
            "packed": collate_packed(toks), "shared_prompt": collate_shared_prompt(toks, pad)}


# ------------------------------------------------------------------------------------------- head_logps

def test_head_logps_hand_value():
    """d = 1, V = 2, head weight [[0], [ln 3]], h = 1: logits (0, ln 3) -> p = (1/4, 3/4).
    log p(1) = ln 0.75; entropy = -(1/4 ln 1/4 + 3/4 ln 3/4) = 0.562335; argmax = 1; mean logit ln(3)/2."""
    head = torch.nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[0.0], [math.log(3.0)]]))
    out = head_logps(torch.ones(2, 1), head, torch.tensor([1, 0]), chunk_size=1, with_stats=True)
    assert torch.allclose(out.logps, torch.tensor([math.log(0.75), math.log(0.25)]), atol=1e-6)
    assert torch.allclose(out.entropy, torch.full((2,), 0.562335), atol=1e-6)
    assert out.argmax_hit.tolist() == [True, False]
    assert torch.allclose(out.mean_logit, torch.full((2,), math.log(3.0) / 2), atol=1e-6)


@pytest.mark.parametrize("chunk", [1, 3, 100])
def test_head_logps_values_and_grads_equal_one_piece_log_softmax(chunk):
    g = torch.Generator().manual_seed(0)
    head_a = torch.nn.Linear(8, 40, bias=False)
    head_b = torch.nn.Linear(8, 40, bias=False)
    with torch.no_grad():
        head_a.weight.copy_(torch.randn(40, 8, generator=g))
        head_b.weight.copy_(head_a.weight)
    h = torch.randn(7, 8, generator=g)
    labels = torch.randint(0, 40, (7,), generator=g)
    ha, hb = h.clone().requires_grad_(), h.clone().requires_grad_()
    w = torch.arange(1.0, 8.0)  # distinct upstream gradient per position
    out = head_logps(ha, head_a, labels, chunk_size=chunk, with_stats=True)
    ref = torch.log_softmax(head_b(hb), -1).gather(-1, labels[:, None]).squeeze(-1)
    assert torch.allclose(out.logps, ref, atol=1e-5)
    (out.logps * w).sum().backward()
    (ref * w).sum().backward()
    assert torch.allclose(ha.grad, hb.grad, atol=1e-5)
    assert torch.allclose(head_a.weight.grad, head_b.weight.grad, atol=1e-5)
    p = torch.softmax(head_b(h), -1)
    assert torch.allclose(out.entropy, -(p * p.log()).sum(-1), atol=1e-5)


def test_head_logps_empty_and_bad_chunk():
    head = torch.nn.Linear(4, 5, bias=False)
    assert head_logps(torch.zeros(0, 4), head, torch.zeros(0, dtype=torch.long)).logps.shape == (0,)
    with pytest.raises(ValueError, match="chunk_size"):
        head_logps(torch.zeros(1, 4), head, torch.zeros(1, dtype=torch.long), chunk_size=0)


# ------------------------------------------------------------------------------------------- split

def test_split_accepts_llama_and_lora_and_refuses_scaled_heads():
    model = make_tiny_model(seed=0)
    body, head = split_causal_lm(model)
    assert body is model.model and head is model.lm_head
    lora = apply_lora(make_tiny_model(seed=0), r=2, alpha=4, dropout=0.0)
    body, head = split_causal_lm(lora)
    assert body is lora.get_base_model().model
    capped = make_tiny_model(seed=0)
    capped.config.final_logit_softcapping = 30.0  # Gemma-2 style: logits != head(h)
    assert split_causal_lm(capped) is None
    other = make_tiny_model(seed=0)
    other.config.model_type = "gemma2"
    assert split_causal_lm(other) is None
    assert split_causal_lm(torch.nn.Linear(2, 2)) is None


# ------------------------------------------------------------------------------------------- forward

@pytest.mark.parametrize("kind", ["pairwise", "group"])
@pytest.mark.parametrize("layout", ["padded", "left", "packed", "shared_prompt"])
@pytest.mark.parametrize("positions", ["completion", "all"])
def test_head_path_equals_full_logits_path(items, tiny_tokenizer, kind, layout, positions):
    """Same token log-probs, entropy and gradients (every parameter) as the model's own full logits."""
    batch = _batches(items[kind], tiny_tokenizer.pad_token_id)[layout]
    outs, grads = {}, {}
    for full in (False, True):
        model = make_tiny_model(seed=0)
        out = forward_token_logps(model, batch, chunk_size=3, with_entropy=True, positions=positions,
                                  full_logits=full)
        w = torch.arange(out.token_logps.shape[1], dtype=torch.float32) / 10 + 1  # position-dependent
        (out.token_logps * w).sum().backward()
        outs[full] = out
        grads[full] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    fast, plain = outs[False], outs[True]
    assert torch.equal(fast.completion_mask, plain.completion_mask)
    assert torch.allclose(fast.token_logps.detach(), plain.token_logps.detach(), atol=1e-5, rtol=0)
    assert torch.allclose(fast.entropy, plain.entropy, atol=1e-5, rtol=0)
    comp = fast.completion_mask.bool()
    assert torch.all(fast.token_logps[comp] < 0)
    if positions == "completion":
        assert torch.all(fast.token_logps[~comp] == 0)
    assert grads[False].keys() == grads[True].keys()
    for name, g in grads[True].items():  # float32 rounding: ~5e-6 of each gradient's scale here
        scale = float(g.abs().max())
        assert float((grads[False][name] - g).abs().max()) <= 2e-5 * max(scale, 1.0), name


def test_head_path_stats_equal_full_logits(items, tiny_tokenizer):
    """argmax hit and mean logit at completion tokens equal those read off the full logits."""
    batch = collate_padded(items["pairwise"], tiny_tokenizer.pad_token_id)
    model = make_tiny_model(seed=0)
    with torch.no_grad():
        out = forward_token_logps(model, batch, with_stats=True)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       position_ids=batch.position_ids).logits
    comp = batch.completion_mask.bool()
    comp[:, 0] = False
    rows, t = comp.nonzero(as_tuple=True)
    lg = logits[rows, t - 1]
    assert torch.equal(out.argmax_hit[rows, t], lg.argmax(-1) == batch.input_ids[rows, t])
    assert torch.allclose(out.mean_logit[rows, t], lg.mean(-1), atol=1e-6)
    assert not out.argmax_hit[~comp].any()


def test_head_path_through_lora_equals_full_path(items, tiny_tokenizer):
    batch = collate_shared_prompt(items["group"], tiny_tokenizer.pad_token_id)
    proto = apply_lora(make_tiny_model(seed=0), r=2, alpha=4, dropout=0.0)  # lora_A: global-RNG init
    with torch.no_grad():  # nonzero B so the adapter changes the output
        for n, p in proto.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.full_like(p, 0.05))
    res = {}
    for full in (False, True):
        model = copy.deepcopy(proto)
        out = forward_token_logps(model, batch, full_logits=full)
        seq = sequence_logps(out.token_logps, out.completion_mask)
        seq.sum().backward()
        grad = next(p.grad for n, p in model.named_parameters() if "lora_A" in n)
        res[full] = (seq.detach(), grad.clone())
    assert torch.allclose(res[False][0], res[True][0], atol=1e-5)
    assert torch.allclose(res[False][1], res[True][1], atol=1e-5)


def test_bf16_autocast_head_path_close_to_full(items, tiny_tokenizer):
    """Under bf16 autocast both paths round the same matmuls to bf16: sequence log-probs agree to the
    bf16 logit rounding (|log p| ~ 10 per token here, bf16 eps 2^-8: a few 1e-2 per sequence)."""
    batch = collate_padded(items["pairwise"], tiny_tokenizer.pad_token_id)
    model = make_tiny_model(seed=0)
    seqs = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for full in (False, True):
            out = forward_token_logps(model, batch, full_logits=full)
            seqs.append(sequence_logps(out.token_logps, out.completion_mask))
    assert torch.allclose(seqs[0], seqs[1], atol=0.1, rtol=0)
    assert torch.all(seqs[0] < 0)


def test_bad_positions_argument(items, tiny_tokenizer, tiny_model):
    with pytest.raises(ValueError, match="positions"):
        forward_token_logps(tiny_model, collate_padded(items["pairwise"], 0), positions="prompt")


def test_no_completion_token_still_backpropagates_zero(items, tiny_tokenizer):
    """Every completion masked out (e.g. all rollouts truncated): log-probs are 0 and backward gives
    exact zero gradients on body and head, like the full-logits path (no 'does not require grad')."""
    import dataclasses

    batch = collate_padded(items["pairwise"], tiny_tokenizer.pad_token_id)
    batch = dataclasses.replace(batch, completion_mask=torch.zeros_like(batch.completion_mask))
    model = make_tiny_model(seed=0)
    out = forward_token_logps(model, batch)
    assert torch.all(out.token_logps == 0)
    out.token_logps.sum().backward()
    assert float(model.lm_head.weight.grad.abs().sum()) == 0.0
    assert float(model.model.layers[0].mlp.up_proj.weight.grad.abs().sum()) == 0.0
