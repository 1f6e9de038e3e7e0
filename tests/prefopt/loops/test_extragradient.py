"""The one extragradient implementation (prefopt/loops/extragradient.py; Zhou, Fazel, Du 2025,
arXiv 2503.08942): the real step is taken from θ_t with θ_t's optimizer state, on a batch drawn at θ_{t+½}."""
from __future__ import annotations

import copy

import torch

from prefopt.loops.extragradient import (
    extragradient_step,
    extragradient_update,
    restore_snapshot,
    take_snapshot,
)


def _quad_model():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(3, 2)).double()


def test_a_e4_restore_gives_step_from_theta_t_with_half_opponent():
    """Plain SGD: θ_{t+1} = θ_t − lr·∇L(θ_t; opponent computed at θ_half) to 1e-7."""
    model, x = _quad_model(), torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    theta_t = [p.detach().clone() for p in model.parameters()]

    def loss(opp):
        return ((model(x) - opp) ** 2).sum()

    half_out = {}

    def sample():
        half_out["opp"] = model(x).detach() * 0.5  # depends on θ_half
        return half_out["opp"]

    extragradient_step(model, opt, half_loss=lambda: loss(torch.zeros(1, 2, dtype=torch.float64)),
                       sample_opponent=sample, full_loss=loss)
    ref = _quad_model()
    for p, t in zip(ref.parameters(), theta_t, strict=False):
        assert torch.equal(p.detach(), t)
    grads = torch.autograd.grad(((ref(x) - half_out["opp"]) ** 2).sum(), list(ref.parameters()))
    for p, t, g in zip(model.parameters(), theta_t, grads, strict=False):
        torch.testing.assert_close(p.detach(), t - 0.1 * g, atol=1e-7, rtol=0)


def test_snapshot_restores_adam_state():
    """After an Adam step, restore brings back params and the optimizer state exactly (step 0)."""
    model = _quad_model()
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.ones(1, 3, dtype=torch.float64)).sum().backward()
    opt.step()
    snap = take_snapshot(model, opt, device="cpu")
    before = [p.detach().clone() for p in model.parameters()]
    state = {k: v.clone() for k, v in opt.state[model[0].weight].items()}
    model(torch.ones(1, 3, dtype=torch.float64)).pow(2).sum().backward()
    opt.step()
    restore_snapshot(model, opt, snap)
    for p, b in zip(model.parameters(), before, strict=False):
        assert torch.equal(p.detach(), b)
    for k, v in opt.state[model[0].weight].items():
        assert torch.equal(v, state[k])


def test_cpu_snapshot_of_nested_backend_state_restores_exactly():
    """A backend-like state {optimizer, scheduler, micro} backed up on CPU: after the update the real
    step equals one Adam step from θ_t on the batch drawn at θ_{t+½} (x_half = 2·x_t here), bit for bit."""
    model = _quad_model()
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.ones(1, 3, dtype=torch.float64)).sum().backward()
    opt.step()  # non-trivial moments first

    class Holder:  # SingleBackend.state_dict's shape
        def state_dict(self):
            return {"optimizer": opt.state_dict(), "micro": 3}

        def load_state_dict(self, state):
            opt.load_state_dict(state["optimizer"])
            assert state["micro"] == 3

    def step(x):
        opt.zero_grad(set_to_none=True)
        loss = model(x).pow(2).sum()
        loss.backward()
        opt.step()
        return float(loss)

    manual = _quad_model()
    manual.load_state_dict(model.state_dict())
    mopt = torch.optim.Adam(manual.parameters(), lr=0.1)
    mopt.load_state_dict(copy.deepcopy(opt.state_dict()))
    x_t = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
    out = extragradient_update(model, Holder(), half=lambda: x_t, full=lambda: 2 * x_t, step=step,
                               snapshot_device="cpu")
    assert torch.equal(out.half_batch, x_t) and torch.equal(out.full_batch, 2 * x_t)
    mopt.zero_grad(set_to_none=True)
    manual(2 * x_t).pow(2).sum().backward()
    mopt.step()
    for p, q in zip(model.parameters(), manual.parameters(), strict=True):
        assert torch.equal(p, q)
