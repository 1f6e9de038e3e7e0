"""Segment attention (reward_models.segment_attention): the per-block computation of shared-prompt rows
equals sdpa under the dense block mask (outputs and gradients), in a model it gives the padded rows'
log-probs and gradients (also with activation checkpointing), and it never builds the W x W mask."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import data_pipelines.collate as collate_mod
from data_pipelines.collate import (
    additive_mask,
    block_mask,
    collate_packed,
    collate_padded,
    collate_shared_prompt,
)
from data_pipelines.tokenize import TokenizedList
from prefopt.core.models import make_tiny_model
from prefopt.logprobs import forward_token_logps
from reward_models.segment_attention import (
    NAME,
    SegmentPlan,
    packed_inputs,
    segment_attention_forward,
    segments_enabled,
    use_segment_attention,
)

# Row 0: prompt 3, completions of 4, 2, 1 tokens, 3 padding; row 1: prompt 6, completions of 2 and 5;
# row 2: prompt 8, completions of 2 and 1, 2 padding. Scores per form (see _row_plan): row 0 causal
# 3 * 7^2 / 2 = 73.5 vs masked 3^2 / 2 + 3 * 4 * 7 = 88.5; row 1 121 vs 128; row 2 100 vs 72.
SEGMENTS = ((3, ((3, 7), (7, 9), (9, 10))), (6, ((6, 8), (8, 13))), (8, ((8, 10), (10, 11))))
FORMS = ("causal", "causal", "masked")
WIDTH = 13
REAL = torch.tensor([[True] * 10 + [False] * 3, [True] * 13, [True] * 11 + [False] * 2])


class _Attn(torch.nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.num_key_value_groups = groups


def _qkv(heads: int, kv_heads: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    shape = lambda h: (3, h, WIDTH, 8)  # noqa: E731
    return tuple(torch.randn(shape(h), generator=g, requires_grad=True) for h in (heads, kv_heads, kv_heads))


def _dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segments=SEGMENTS) -> torch.Tensor:
    rep = q.shape[1] // k.shape[1]
    mask = additive_mask(block_mask(segments, q.shape[2]))
    out = F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1),
                                         attn_mask=mask, scale=0.3)
    return out.transpose(1, 2)


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2)])
def test_equals_dense_block_mask_outputs_and_grads(heads, kv_heads):
    q, k, v = _qkv(heads, kv_heads)
    plan = SegmentPlan.build(SEGMENTS, WIDTH)
    assert tuple("causal" if r.q_index is None else "masked" for r in plan.rows) == FORMS
    out, weights = segment_attention_forward(_Attn(heads // kv_heads), q, k, v, None, scaling=0.3,
                                             prefopt_segments=plan)
    ref = _dense(q, k, v)
    assert weights is None and out.shape == ref.shape == (3, WIDTH, heads, 8)
    assert torch.allclose(out[REAL], ref[REAL], atol=1e-6)
    assert torch.equal(out[~REAL], torch.zeros_like(out[~REAL]))  # padding positions: zeros
    w = torch.randn(out[REAL].shape, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad((out[REAL] * w).sum(), (q, k, v))
    ref_grads = torch.autograd.grad((ref[REAL] * w).sum(), (q, k, v))
    for a, b in zip(grads, ref_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_empty_prompt_empty_completion_and_prompt_only_rows():
    """A row without prompt tokens and a completion of length 0 (skipped), a long-prompt row (masked form)
    and a row with no completion at all match the dense mask."""
    segments = ((0, ((0, 3), (3, 3), (3, 5))), (3, ((3, 4), (4, 5))), (5, ()))
    assert [r.kv_index is not None and r.q_index is None for r in SegmentPlan.build(segments, 5).rows] == \
        [True, False, False]  # causal form, masked form, prompt only
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(3, 2, 5, 4, generator=g) for _ in range(3))
    out, _ = segment_attention_forward(_Attn(1), q, k, v, None, scaling=0.5,
                                       prefopt_segments=SegmentPlan.build(segments, 5))
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=additive_mask(block_mask(segments, 5)), scale=0.5)
    assert torch.allclose(out, ref.transpose(1, 2), atol=1e-6)
    # Hand check: the first token of each completion sees only itself, so its output is its own value.
    assert torch.allclose(out[0, 0], v[0, :, 0], atol=1e-6) and torch.allclose(out[0, 3], v[0, :, 3], atol=1e-6)


def test_plan_size_mismatch_is_an_error():
    q, k, v = _qkv(2, 2)
    with pytest.raises(ValueError, match="1 rows x 13 tokens, the attention got 3 x 13"):
        segment_attention_forward(_Attn(1), q, k, v, None, prefopt_segments=SegmentPlan.build(SEGMENTS[:1], WIDTH))


def _items():
    return [TokenizedList((5, 6, 7), ((8, 9, 10, 11), (12, 13), (14,)), (1.0, 0.0, 0.0)),
            TokenizedList((20, 21, 22, 23, 24, 25), ((26, 27), (28, 29, 30, 31, 32)), (1.0, 0.0))]


def _weighted_logp_grads(model, batch) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    out = forward_token_logps(model, batch)
    w = torch.linspace(0.5, 1.5, out.token_logps.numel()).reshape(out.token_logps.shape)
    (out.token_logps * w).sum().backward()
    return out.token_logps.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("checkpointing", [False, True])
def test_model_matches_padded_rows(checkpointing):
    """Token log-probs and every parameter gradient of a shared-prompt forward through segment attention
    equal the padded rows' (eager attention, which never sees a segment plan)."""
    seg = make_tiny_model("tiny-llama", attn_implementation="sdpa")
    padded = copy.deepcopy(seg)
    padded.set_attn_implementation("eager")
    if checkpointing:
        seg.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        seg.train()
    lp_seg, g_seg = _weighted_logp_grads(seg, collate_shared_prompt(_items(), 0))
    assert segments_enabled(seg)  # the forward switched the sdpa model over
    lp_pad, g_pad = _weighted_logp_grads(padded, collate_padded(_items(), 0))
    assert torch.allclose(lp_seg, lp_pad, atol=2e-5)
    assert float(lp_pad.abs().sum()) > 1.0
    for a, b in zip(g_seg, g_pad, strict=True):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-3)


def test_no_dense_mask_is_built(monkeypatch):
    model = make_tiny_model("tiny-llama", attn_implementation="sdpa")
    batch = collate_shared_prompt(_items(), 0)
    expected = forward_token_logps(model, batch).token_logps

    def refuse(*a, **k):
        raise AssertionError("the W x W block mask was built")

    monkeypatch.setattr(collate_mod, "block_mask", refuse)
    assert torch.equal(forward_token_logps(model, batch).token_logps, expected)


def test_switch_rules_and_plain_forward_unchanged():
    eager = make_tiny_model("tiny-llama", attn_implementation="eager")
    assert use_segment_attention(eager).config._attn_implementation == "eager"
    model = make_tiny_model("tiny-llama", attn_implementation="sdpa")
    ids = torch.tensor([[5, 6, 7, 8, 0, 0], [9, 10, 11, 12, 13, 14]])
    mask = (torch.arange(6) < torch.tensor([[4], [6]])).long()
    before = model(input_ids=ids, attention_mask=mask).logits
    assert use_segment_attention(model).config._attn_implementation == NAME and segments_enabled(model)
    after = model(input_ids=ids, attention_mask=mask).logits  # no plan: transformers' own sdpa
    assert torch.equal(before, after)


def test_packed_rows_run_as_causal_blocks():
    """A packed row is segment attention with an empty prompt: same log-probs and gradients as padded
    rows, and no mask reaches the model (eager models keep transformers' own packed handling)."""
    seg = make_tiny_model("tiny-llama", attn_implementation="sdpa")
    padded = copy.deepcopy(seg)
    padded.set_attn_implementation("eager")
    batch = collate_packed(_items())
    kw = packed_inputs(seg, ((0, 7), (7, 12), (12, 16)), torch.float32, torch.device("cpu"))
    assert kw["attention_mask"].shape == (1, 1, 1, 1) and kw["prefopt_segments"].rows[0].q_index is None
    assert packed_inputs(padded, ((0, 7),), torch.float32, torch.device("cpu")) == {"attention_mask": None}
    lp_seg, g_seg = _weighted_logp_grads(seg, batch)
    lp_pad, g_pad = _weighted_logp_grads(padded, collate_padded(_items(), 0))
    assert torch.allclose(lp_seg, lp_pad, atol=2e-5) and float(lp_pad.abs().sum()) > 1.0
    for a, b in zip(g_seg, g_pad, strict=True):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-3)
