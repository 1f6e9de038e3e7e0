"""``optim.impl``: the fused torch AdamW (``fused``, or ``auto`` on the single-process backend) updates the
weights as the for-loop AdamW does, to float rounding; the default stays torch's own kernel."""
from __future__ import annotations

import pytest
import torch

from prefopt.core.backend import OptimConfig, make_optimizer


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g)) for s in ((64, 32), (32,), (1000, 16))]


def _run(impl: str, steps: int = 4, **kw) -> tuple[list[torch.Tensor], torch.optim.Optimizer]:
    params = _params()
    opt = make_optimizer([{"params": params}], OptimConfig(lr=1e-2, weight_decay=0.1, impl=impl), **kw)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    return [p.detach() for p in params], opt


def test_the_default_is_torchs_own_kernel():
    """Documented runs used torch's default AdamW; the default keeps them reproducible bit for bit."""
    assert OptimConfig().impl == "default"
    _, opt = _run("default", steps=1)
    assert opt.defaults["fused"] in (None, False) and opt.defaults["foreach"] in (None, False)


def test_auto_is_fused_on_cpu_and_default_where_not_allowed():
    _, opt = _run("auto", steps=1)
    assert opt.defaults["fused"] is True
    _, opt = _run("auto", steps=1, allow_fused=False)
    assert not opt.defaults["fused"] and not opt.defaults["foreach"]
    _, opt = _run("forloop", steps=1)
    assert opt.defaults["fused"] is False and opt.defaults["foreach"] is False


@pytest.mark.parametrize("impl", ["fused", "foreach", "auto"])
def test_update_equals_the_forloop_step(impl):
    ref, _ = _run("forloop")
    got, _ = _run(impl)
    moved = max(float((a - b).abs().max()) for a, b in zip(ref, [p.detach() for p in _params()], strict=True))
    assert moved > 0.03  # 4 steps of lr 1e-2 moved the weights
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_bad_impl_is_rejected_by_the_config_loader():
    from prefopt.core.config import ConfigError, from_dict

    with pytest.raises((ConfigError, ValueError), match="impl"):
        from_dict(OptimConfig, {"impl": "turbo"})
