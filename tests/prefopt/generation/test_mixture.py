"""The geometric-mixture sampler (prefopt/generation/mixture.py; Nash-MD / EGPO's μ)."""
from __future__ import annotations

import torch

from prefopt.generation.mixture import geometric_mixture_logits, sample_tokens


def test_geometric_mixture_and_sampling():
    """c = 0 → log π_θ, c = 1 → log π_ref, c = ½ → mean of log-probs; top-k 1 = argmax."""
    pol, ref = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[0.0, 0.0, 3.0]])
    lp, lr = torch.log_softmax(pol, -1), torch.log_softmax(ref, -1)
    torch.testing.assert_close(geometric_mixture_logits(pol, ref, 0.0), lp)
    torch.testing.assert_close(geometric_mixture_logits(pol, ref, 1.0), lr)
    torch.testing.assert_close(geometric_mixture_logits(pol, ref, 0.5), (lp + lr) / 2)
    g = torch.Generator().manual_seed(0)
    assert sample_tokens(pol.expand(50, 3), top_k=1, generator=g).eq(0).all()
    draws = sample_tokens(pol.expand(4000, 3), temperature=2.0, generator=g)
    freq = torch.bincount(draws, minlength=3).float() / 4000
    torch.testing.assert_close(freq, torch.softmax(pol[0] / 2, -1), atol=0.03, rtol=0)
