"""Toy preference games (spec §0 harness; §2 A-D2/A-D3 soft policy iteration; §3 self-play)."""
from __future__ import annotations

import pytest
import torch

from prefopt.toy.games import P_CYC, bt_matrix, duality_gap, max_abs_to_uniform, policy_space_run, spi_run

UNIFORM = torch.full((3,), 1 / 3, dtype=torch.float64)


def test_matrices_are_preference_matrices():
    """P + Pᵀ = 1 (constant-sum game), diagonal ½; uniform is a NE of P_CYC (P·u = ½ for all arms);
    BT with u = (1, 0, −1): P_01 = σ(1) ≈ 0.731059, P_02 = σ(2) ≈ 0.880797."""
    for P in (P_CYC, bt_matrix([1.0, 0.0, -1.0])):
        torch.testing.assert_close(P + P.T, torch.ones(3, 3, dtype=torch.float64))
    torch.testing.assert_close(P_CYC @ UNIFORM, torch.full((3,), 0.5, dtype=torch.float64))
    bt = bt_matrix([1.0, 0.0, -1.0])
    assert bt[0, 1].item() == pytest.approx(0.731059, abs=1e-6)
    assert bt[0, 2].item() == pytest.approx(0.880797, abs=1e-6)


def test_duality_gap_zero_at_ne_positive_elsewhere():
    """With π_ref uniform the regularised NE of P_CYC is uniform (gap 0); any other π has gap > 0."""
    assert abs(duality_gap(UNIFORM, P_CYC, UNIFORM, 0.1)) < 1e-12
    assert duality_gap(torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64), P_CYC, UNIFORM, 0.1) > 0.1


def test_naive_self_play_cycles():
    """β = 0, η = 0.5 multiplicative-weights self-play from (0.6, 0.3, 0.1): the distance to uniform
    grows and keeps oscillating (the leading arm rotates) instead of converging."""
    sp = policy_space_run([0.6, 0.3, 0.1], P_CYC, eta=0.5, iters=1000, extragradient=False)
    dist = torch.tensor([max_abs_to_uniform(p) for p in sp])
    assert dist[-100:].min() >= 0.25 and dist[-1] > dist[0]
    leaders = sp[-300:].argmax(-1)
    assert set(leaders.tolist()) == {0, 1, 2}  # every arm leads at some point: cycling


def test_a_d2_spi_average_iterate_converges_last_does_not():
    """SPI on P_CYC from (0.6, 0.3, 0.1), η = 2, 2000 iterations: the average iterate is within
    0.03 of uniform, the last iterate is > 0.2 away."""
    traj = spi_run([0.6, 0.3, 0.1], P_CYC, eta=2.0, iters=2000)
    assert max_abs_to_uniform(traj[1:].mean(0)) < 0.03
    assert max_abs_to_uniform(traj[-1]) > 0.2


def test_a_d3_spi_bt_game_finds_best_arm():
    """SPI on the BT game from uniform, η = 1, 200 iterations: π(best arm) > 0.99."""
    traj = spi_run(UNIFORM, bt_matrix([1.0, 0.0, -1.0]), eta=1.0, iters=200)
    assert traj[-1, 0].item() > 0.99
