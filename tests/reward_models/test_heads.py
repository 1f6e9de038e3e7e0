"""Pooling indices, gate values (G3), score matrix (G5) and head init (spec sections 0.2, 1, 2)."""
from __future__ import annotations

import math

import pytest
import torch

from reward_models import heads as H


def test_last_and_first_token_index_left_right():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert H.last_token_index(right).tolist() == [2, 4]
    assert H.last_token_index(left).tolist() == [4, 4]
    assert H.first_token_index(left).tolist() == [2, 0]
    assert H.prompt_last_index(left, torch.tensor([2, 3])).tolist() == [3, 2]
    assert H.prompt_last_index(right, torch.tensor([2, 3])).tolist() == [1, 2]
    assert H.position_ids_from_mask(left).tolist()[0] == [0, 0, 0, 1, 2]
    with pytest.raises(ValueError, match="all-zero"):
        H.last_token_index(torch.tensor([[0, 0]]))
    with pytest.raises(ValueError, match="exceeds"):
        H.prompt_last_index(right, torch.tensor([4, 1]))


def test_g3_gate_and_bound():
    """G3: scaled softmax gate sums to k and is >= 0; with L2-normalised v and the gate |s| <= max lam."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(32, 4, generator=g) * 10
    lam = H.gate_values(logits, "scaled_softmax", hidden_size=64)
    assert torch.allclose(lam.sum(-1), torch.full((32,), 4.0), atol=1e-5)
    assert (lam >= 0).all()
    assert torch.allclose(lam, 4 * torch.softmax(logits / 8.0, -1))
    assert torch.allclose(H.gate_values(logits, "softmax", 64).sum(-1), torch.ones(32), atol=1e-6)
    assert (H.gate_values(logits, "softplus", 64) >= 0).all()
    assert H.gate_values(logits, None, 64) is None
    va = H.embed_values(torch.randn(32, 8, generator=g))
    vb = H.embed_values(torch.randn(32, 8, generator=g))
    assert torch.allclose(va.norm(dim=-1), torch.ones(32), atol=1e-6)
    s = H.skew_score(va, vb, lam)
    assert (s.abs() <= lam.max(-1).values + 1e-6).all()
    with pytest.raises(ValueError, match="gate must be"):
        H.gate_values(logits, "sigmoid", 64)


def test_g5_score_matrix_matches_pairwise_and_is_skew():
    g = torch.Generator().manual_seed(2)
    v = H.embed_values(torch.randn(5, 6, generator=g))
    lam = torch.rand(3, generator=g)
    S = H.score_matrix(v, lam)
    pair = torch.stack([torch.stack([H.skew_score(v[i], v[j], lam) for j in range(5)]) for i in range(5)])
    assert torch.allclose(S, pair, atol=1e-6)
    assert torch.allclose(S, -S.T, atol=1e-6)
    assert torch.allclose(S.diagonal(), torch.zeros(5), atol=1e-7)


def test_head_init_std_zero_and_seeded():
    """Normal init: std 1/(d+1) (d = 255 -> 1/256); zeros; same seed -> same weights (E3)."""
    a = H.make_linear_head(255, 64, "normal", seed=3)
    b = H.make_linear_head(255, 64, "normal", seed=3)
    c = H.make_linear_head(255, 64, "normal", seed=4)
    assert torch.equal(a.weight, b.weight) and not torch.equal(a.weight, c.weight)
    assert a.bias is None
    assert a.weight.std().item() == pytest.approx(1 / 256, rel=0.05)
    assert not H.make_linear_head(8, 1, "zeros").weight.any()
    with pytest.raises(ValueError, match="head_init"):
        H.make_linear_head(8, 1, "xavier")
    assert math.isclose(H.embed_values(torch.tensor([3.0, 4.0]), False)[0].item(), 3.0)
