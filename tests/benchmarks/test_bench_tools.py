"""``prefopt bench ... --profile`` (benchmarks.profiler_breakdown), ``benchmarks.gen_levers`` and
``benchmarks.adamw_impl`` on the tiny random model: fields and invariants, not timings."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from benchmarks.profiler_breakdown import GROUPS, HEAD_LABEL, MASK_LABEL, breakdown, classify

pytestmark = pytest.mark.slow


def _ev(name, shapes=(), parents=(), self_us=0.0, flops=0):
    parent = None
    for p in reversed(parents):  # parents: innermost first
        parent = SimpleNamespace(name=p, cpu_parent=parent)
    return SimpleNamespace(name=name, input_shapes=[list(s) for s in shapes], cpu_parent=parent,
                           self_cpu_time_total=self_us, flops=flops)


def test_classify_groups():
    v = 1000
    assert classify(_ev("aten::mm", [(8, 64), (64, v)]), v) == "lm_head"
    assert classify(_ev("aten::mm", [(8, 64), (64, 64)]), v) == "matmul"
    assert classify(_ev("aten::_log_softmax", [(8, v)]), v) == "lm_head"
    assert classify(_ev("aten::_scaled_dot_product_flash_attention_for_cpu"), v) == "attention"
    assert classify(_ev("aten::eq", [(8, 8)], parents=["aten::foo", MASK_LABEL]), v) == "attention"
    assert classify(_ev("aten::mul", [(64,)], parents=["Optimizer.step#AdamW.step"]), v) == "optimizer"
    assert classify(_ev("aten::mm", [(64, 64)], parents=["Optimizer.step#AdamW.step"]), v) == "optimizer"
    assert classify(_ev("aten::mul", [(4, 8, v), ()]), v) == "lm_head"
    assert classify(_ev("aten::addmm_", [(256, 64)], parents=["TrlFn", HEAD_LABEL]), v) == "lm_head"  # logits-shaped elementwise
    assert classify(_ev("aten::add", [(v, 64), (v, 64)]), v) == "other_aten"  # embedding-shaped, not logits
    assert classify(_ev("aten::add", [(8, 64)]), v) == "other_aten"


def test_breakdown_sums_to_wall_and_matmul_mfu():
    evs = [_ev("aten::mm", [(8, 64), (64, 64)], self_us=2e6, flops=4e9),  # 2 s, 2 GFLOP/s
           _ev("aten::mm", [(8, 64), (64, 10)], self_us=1e6, flops=2e9),  # LM head, 1 s
           _ev("aten::add", self_us=0.5e6), _ev("MmBackward0", self_us=9e6)]  # not aten: overhead
    out = breakdown(evs, wall_s=5.0, steps=2, vocab=10, peak_gflops=4.0)
    assert out["s_per_step"] == pytest.approx({"attention": 0, "lm_head": 0.5, "matmul": 1.0, "optimizer": 0,
                                               "other_aten": 0.25, "overhead": 0.75})
    assert sum(out["share"].values()) == pytest.approx(1.0)
    assert out["matmul_gflops_per_s"] == pytest.approx(2.0) and out["matmul_mfu"] == pytest.approx(0.5)


@pytest.mark.parametrize("bench,extra", [("grpo", ["--generations", "2", "--completion-length", "6"]),
                                         ("dpo", [])])
def test_profile_flag_on_tiny_model(tmp_path, bench, extra):
    from benchmarks.cli import cli_main

    out = tmp_path / "p.json"
    assert cli_main([bench, "--model", "tiny-smollm2", "--steps", "1", "--warmup", "1", "--batch-size", "1",
                     "--max-length", "96", "--profile", "--out", str(out), *extra]) == 0
    res = json.loads(out.read_text())["profile"]
    assert set(res) == {"prefopt[shared_prompt]", "trl"}
    for side in res.values():
        assert set(side["s_per_step"]) == set(GROUPS)
        assert sum(side["share"].values()) == pytest.approx(1.0, abs=1e-6)
        for g in ("attention", "lm_head", "matmul", "optimizer", "other_aten"):
            assert side["s_per_step"][g] > 0, g
        assert 0 < side["matmul_mfu"]


def test_gen_levers_smoke(tmp_path):
    from benchmarks.gen_levers import run

    out = tmp_path / "g.json"
    payload = run(["--model", "tiny-smollm2", "--repeats", "2", "--completion-length", "5", "--generations", "2",
                   "--variants", "hf,hf+prealloc,loop+prealloc+drop", "--out", str(out)])
    assert json.loads(out.read_text())["results"] == payload["results"]
    res = payload["results"]
    assert all(r["same_samples_as_hf"] for r in res.values())
    assert len({r["completion_tokens_mean"] for r in res.values()}) == 1
    assert res["hf"]["x_hf_median_per_repeat"] == 1.0 and res["hf"]["x_hf_cpu"] == 1.0 and len(res["hf"]["all_cpu_s"]) == 2


def test_adamw_impl_smoke():
    from benchmarks.adamw_impl import run

    res = run(["--model", "tiny-smollm2", "--steps", "3"])["results"]
    assert res["forloop"]["max_abs_diff_vs_forloop"] == 0.0
    assert res["foreach"]["max_abs_diff_vs_forloop"] < 1e-6 and res["fused"]["max_abs_diff_vs_forloop"] < 1e-6


def test_both_sides_get_the_same_adamw_kernel():
    """``--optim-impl``: ours ``optim.impl`` and TRL's ``optim`` name the same torch AdamW kernel."""
    from benchmarks.cli import parse
    from benchmarks.common import our_optim, trl_args

    for flag, ours, trl in (([], "fused", "adamw_torch_fused"), (["--optim-impl", "forloop"], "forloop", "adamw_torch")):
        args = parse(["dpo", *flag])
        assert our_optim(1e-6, args).impl == ours and trl_args(args)["optim"] == trl
