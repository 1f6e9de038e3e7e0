"""Ensemble reductions and containers (spec section 4, checks E1-E4)."""
from __future__ import annotations

import pytest
import torch

from reward_models.ensemble import (
    EnsembleRewardModel,
    SharedBackboneEnsemble,
    aggregate,
    best_of_n,
    member_variance,
    zscore_members,
)
from reward_models.models import RewardModel


def tiny_lm(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2, intermediate_size=128, pad_token_id=0)).eval()


def batch(side: str = "right"):
    """Four random rows of lengths 5, 9, 3, 7 padded on ``side`` with id 0."""
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(3, 256, (n,), generator=g) for n in (5, 9, 3, 7)]
    ids, mask = torch.zeros(4, 9, dtype=torch.long), torch.zeros(4, 9, dtype=torch.long)
    for i, s in enumerate(seqs):
        sl = slice(0, len(s)) if side == "right" else slice(9 - len(s), 9)
        ids[i, sl], mask[i, sl] = s, 1
    return ids, mask


def test_e1_golden_values():
    """E1: (0.5, 1.0, 3.0): mean 1.5, min 0.5, var 3.5/3 = 1.1667 (ddof 0) / 3.5/2 = 1.75 (ddof 1);
    UWO lam 0.5: 1.5 - 0.5*1.1667 = 0.9167 (ddof 0), 1.5 - 0.5*1.75 = 0.625 (ddof 1)."""
    r = torch.tensor([0.5, 1.0, 3.0])
    mean, var = aggregate(r, "mean")
    assert mean.item() == pytest.approx(1.5) and var.item() == pytest.approx(1.166667, abs=1e-5)
    assert aggregate(r, "wco")[0].item() == pytest.approx(0.5)
    assert aggregate(r, "min")[0].item() == pytest.approx(0.5)
    assert member_variance(r, ddof=1).item() == pytest.approx(1.75)
    assert aggregate(r, "uwo", lam=0.5)[0].item() == pytest.approx(0.916667, abs=1e-5)
    assert aggregate(r, "uwo", lam=0.5, ddof=1)[0].item() == pytest.approx(0.625, abs=1e-6)
    # std penalty (RewardBench offline convention): 1.5 - 0.5 * sqrt(1.1667) = 0.959944
    assert aggregate(r, "uwo", lam=0.5, penalty="std")[0].item() == pytest.approx(0.959944, abs=1e-5)
    with pytest.raises(ValueError, match="method"):
        aggregate(r, "median")


def test_e2_identical_members_and_batched_shapes():
    r = torch.tensor([[0.3, -1.0, 2.0]] * 4)  # 4 identical members, 3 items
    for method in ("mean", "wco", "uwo"):
        agg, var = aggregate(r, method, lam=0.5)
        assert torch.allclose(agg, r[0]) and torch.allclose(var, torch.zeros(3))


def test_e4_best_of_n_wco():
    """E4: candidate-wise minima are (0.1, 0.5, -2.0) -> WCO picks 1 although mean picks 2."""
    s = torch.tensor([[0.1, 0.5, 5.0], [0.9, 0.6, -2.0]])  # [K=2, n=3]
    assert best_of_n(s, "wco").item() == 1
    assert best_of_n(s, "mean").item() == 2


def test_zscore_members():
    s = torch.tensor([[1.0, 3.0], [10.0, 30.0]])
    z = zscore_members(s, [2.0, 20.0], [1.0, 10.0])
    assert torch.allclose(z, torch.tensor([[-1.0, 1.0], [-1.0, 1.0]]))


def test_e3_seeds_and_independent_ensemble():
    """E3: same seed -> identical head; different seeds -> different heads; ensemble aggregates members."""
    lm = tiny_lm()
    a, b, c = (RewardModel(lm, "bt", seed=s) for s in (7, 7, 8))
    assert torch.equal(a.score.weight, b.score.weight)
    assert not torch.equal(a.score.weight, c.score.weight)
    ens = EnsembleRewardModel([a, c], "uwo", lam=0.1).eval()
    ids, mask = batch("right")
    with torch.no_grad():
        out = ens(ids, mask)
        ra, rc = a(ids, mask).rewards, c(ids, mask).rewards
    assert torch.allclose(out.member_rewards, torch.stack([ra, rc]))
    mean = (ra + rc) / 2
    var = ((ra - mean) ** 2 + (rc - mean) ** 2) / 2
    assert torch.allclose(out.rewards, mean - 0.1 * var, atol=1e-6)
    assert torch.allclose(out.variance, var, atol=1e-7)
    with pytest.raises(ValueError, match="k >= 2"):
        EnsembleRewardModel([a])


def test_shared_backbone_ensemble_matches_separate_heads():
    lm = tiny_lm()
    ens = SharedBackboneEnsemble(lm, seeds=[1, 2, 3], method="wco").eval()
    ids, mask = batch("left")
    with torch.no_grad():
        out = ens(ids, mask)
        singles = torch.stack([RewardModel(lm, "bt", seed=s).eval()(ids, mask).rewards for s in (1, 2, 3)])
    assert torch.allclose(out.member_rewards, singles, atol=1e-6)
    assert torch.allclose(out.rewards, singles.min(0).values, atol=1e-6)
    assert sum(p.numel() for p in ens.heads.parameters()) == 3 * 64


def test_ensemble_save_load_round_trip(tmp_path):
    lm = tiny_lm()
    ens = EnsembleRewardModel([RewardModel(lm, "bt", seed=s) for s in (1, 2)], "uwo", lam=0.1, ddof=1,
                              calibration=([0.0, 1.0], [1.0, 2.0])).eval()
    ids, mask = batch("right")
    with torch.no_grad():
        ref = ens(ids, mask)
    ens.save_pretrained(tmp_path)
    back = EnsembleRewardModel.load(tmp_path).eval()
    assert (back.method, back.lam, back.ddof) == ("uwo", 0.1, 1)
    with torch.no_grad():
        out = back(ids, mask)
    assert torch.equal(out.rewards, ref.rewards) and torch.equal(out.member_rewards, ref.member_rewards)
