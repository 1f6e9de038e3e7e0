"""Toy preference games for acceptance checks (docs/online.md).

A K-arm prompt-free bandit with tabular logits θ ∈ R^K, π = softmax(θ). ``P[i, j]`` is the
probability that arm i beats arm j. ``P_CYC`` (rock-paper-scissors) has the unique Nash
equilibrium uniform; :func:`bt_matrix` gives a transitive Bradley–Terry game.
Everything is float64 torch on CPU and runs in well under a second per 1000 iterations.
"""
from __future__ import annotations

import torch

from prefopt.loops.extragradient import extragradient_step
from prefopt.losses.egpo import online_ipo_loss

__all__ = ["P_CYC", "bt_matrix", "mirror_step", "policy_space_run", "tabular_online_ipo_loss",
           "loss_space_run", "sampled_egpo_run", "duality_gap", "spi_run", "max_abs_to_uniform"]

P_CYC = torch.tensor([[0.5, 1.0, 0.0], [0.0, 0.5, 1.0], [1.0, 0.0, 0.5]], dtype=torch.float64)


def bt_matrix(u) -> torch.Tensor:
    """``P_ij = σ(u_i − u_j)``; the default spec game uses u = (1, 0, −1)."""
    u = torch.as_tensor(u, dtype=torch.float64)
    return torch.sigmoid(u[:, None] - u[None, :])


def max_abs_to_uniform(pi: torch.Tensor) -> float:
    return float((pi - 1.0 / pi.shape[-1]).abs().max())


def mirror_step(pi, pi_ref, P, opp, eta: float, beta: float) -> torch.Tensor:
    """``π' ∝ π^{1−ηβ} π_ref^{ηβ} exp(η P π_s)`` (the KL-regularised mirror step of EGPO, Zhou, Fazel, Du 2025, arXiv 2503.08942), computed in log space."""
    logits = (1 - eta * beta) * torch.log(pi) + eta * beta * torch.log(pi_ref) + eta * (P @ opp)
    return torch.softmax(logits, -1)


def policy_space_run(pi0, P, *, eta: float, beta: float = 0.0, iters: int = 1000,
                     extragradient: bool = True, pi_ref=None) -> torch.Tensor:
    """Iterates ``[iters + 1, K]`` of EGPO (extragradient) or naive self-play (OMD / MWU)."""
    pi = torch.as_tensor(pi0, dtype=torch.float64)
    ref = torch.full_like(pi, 1.0 / pi.numel()) if pi_ref is None else pi_ref
    traj = [pi]
    for _ in range(iters):
        opp = mirror_step(pi, ref, P, pi, eta, beta) if extragradient else pi
        pi = mirror_step(pi, ref, P, opp, eta, beta)
        traj.append(pi)
    return torch.stack(traj)


def tabular_online_ipo_loss(theta, log_ref, P, opp, beta: float) -> torch.Tensor:
    """Exact online IPO loss averaged over all K² ordered pairs:
    ``(1/K²) Σ_{y,y'} (h(y) − h(y') − (g(y) − g(y'))/β)²`` with h = log π_θ − log π_ref, g = P π_s."""
    d = torch.log_softmax(theta, -1) - log_ref - (P @ opp.detach()) / beta
    return (d[:, None] - d[None, :]).pow(2).mean()


class _Logits(torch.nn.Module):
    def __init__(self, pi0):
        super().__init__()
        self.theta = torch.nn.Parameter(torch.log(torch.as_tensor(pi0, dtype=torch.float64)))

    def pi(self) -> torch.Tensor:
        return torch.softmax(self.theta.detach(), -1)


def loss_space_run(pi0, P, *, beta: float, lr: float, iters: int = 1000,
                   extragradient: bool = True) -> torch.Tensor:
    """SGD on the exact tabular loss through :func:`extragradient_step`; returns the final π."""
    model = _Logits(pi0)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    log_ref = torch.full_like(model.theta, -torch.log(torch.tensor(float(P.shape[0]))).item())
    for _ in range(iters):
        if extragradient:
            extragradient_step(
                model, opt,
                half_loss=lambda: tabular_online_ipo_loss(model.theta, log_ref, P, model.pi(), beta),
                sample_opponent=model.pi,
                full_loss=lambda opp: tabular_online_ipo_loss(model.theta, log_ref, P, opp, beta))
        else:
            opt.zero_grad()
            tabular_online_ipo_loss(model.theta, log_ref, P, model.pi(), beta).backward()
            opt.step()
    return model.pi()


def _sampled_batch(pi_opp, P, n: int, gen: torch.Generator):
    k = P.shape[0]
    y = torch.randint(k, (n,), generator=gen)
    y2 = torch.randint(k, (n,), generator=gen)
    ypp = torch.multinomial(pi_opp, n, replacement=True, generator=gen)
    return torch.cat([y, y2]), P[y, ypp] - P[y2, ypp]


def _sampled_loss(theta, batch, beta):
    arms, target = batch
    logps = torch.log_softmax(theta, -1)[arms].unsqueeze(-1)     # one-token "responses"
    ref = torch.full_like(logps, -torch.log(torch.tensor(float(theta.numel()))).item())
    return online_ipo_loss(logps, ref, torch.ones_like(logps), target, beta=beta).loss.mean()


def sampled_egpo_run(pi0, P, *, beta: float, lr: float, steps: int, n_samples: int,
                     seed: int, gap_every: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """EGPO with the *registered* ``online_ipo`` loss on sampled (y, y' uniform, y'' ~ opponent)
    batches. Returns ``(final π, duality gaps at step 0, every gap_every steps, and the last)``."""
    gen = torch.Generator().manual_seed(seed)
    model = _Logits(pi0)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    ref = torch.full((P.shape[0],), 1.0 / P.shape[0], dtype=torch.float64)
    gaps = [duality_gap(model.pi(), P, ref, beta)]
    for step in range(steps):
        extragradient_step(
            model, opt,
            half_loss=lambda: _sampled_loss(model.theta, _sampled_batch(model.pi(), P, n_samples, gen),
                                            beta),
            sample_opponent=lambda: _sampled_batch(model.pi(), P, n_samples, gen),
            full_loss=lambda b: _sampled_loss(model.theta, b, beta))
        if (step + 1) % gap_every == 0 or step + 1 == steps:
            gaps.append(duality_gap(model.pi(), P, ref, beta))
    return model.pi(), torch.tensor(gaps)


def _kl(p, q) -> torch.Tensor:
    return (p * (torch.log(p) - torch.log(q))).sum()


def duality_gap(pi, P, pi_ref, beta: float) -> float:
    """Regularised duality gap ``J_β(b, π) − J_β(π, b)``, b ∝ π_ref exp(Pπ/β) (the regularised preference game of Munos et al. 2023, Nash Learning from Human Feedback)."""
    b = torch.softmax(torch.log(pi_ref) + (P @ pi) / beta, -1)

    def j(p1, p2):
        return p1 @ P @ p2 - beta * _kl(p1, pi_ref) + beta * _kl(p2, pi_ref)

    return float(j(b, pi) - j(pi, b))


def spi_run(pi0, P, *, eta: float, iters: int) -> torch.Tensor:
    """DNO soft policy iteration ``π_{t+1} ∝ π_t exp(P π_t / η)``; iterates ``[iters + 1, K]``."""
    pi = torch.as_tensor(pi0, dtype=torch.float64)
    traj = [pi]
    for _ in range(iters):
        pi = torch.softmax(torch.log(pi) + (P @ pi) / eta, -1)
        traj.append(pi)
    return torch.stack(traj)
